//! Upstream credentials: where they come from and how they are held.
//!
//! Three sources (see [`crate::config::CredentialSource`]):
//! - [`keychain`]: a password in the OS keychain for the permission's `username`;
//! - [`command`]: an external program printing `{username, password, expires_at?}` JSON,
//!   cached until its expiry;
//! - [`dynamic`]: a PostgreSQL role created per grant by an admin login ([`pgadmin`]) and
//!   dropped when the grant ends; orphans are swept at daemon start.
//!
//! Secrets are held as [`secrecy::SecretString`]: zeroized on drop, `Debug` prints
//! `[REDACTED]`. No error here carries a secret or a program's output. [`hardening`] makes
//! the process undumpable at start.

pub mod command;
pub mod dynamic;
pub mod hardening;
pub mod keychain;
pub mod pgadmin;
pub mod store;

use crate::config::{CredentialSource, DaemonSettings};
use secrecy::SecretString;

/// An upstream login: user name and password. `Debug` redacts the password.
#[derive(Clone)]
pub struct Login {
    /// Upstream user name.
    pub username: String,
    /// Its password.
    pub password: SecretString,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Failure to obtain a credential. Never contains the secret or a program's output.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No secret is stored for this entry.
    #[error("no secret stored in the keychain for {entry}; run `agentd secret set {resource} {permission}`")]
    Missing {
        /// The keychain entry name.
        entry: String,
        /// Resource name.
        resource: String,
        /// Permission name.
        permission: String,
    },
    /// The keychain itself failed.
    #[error("keychain error for {entry}: {message}")]
    Keychain {
        /// The keychain entry name.
        entry: String,
        /// The store's error text (never the secret).
        message: String,
    },
    /// A `command` source failed: it could not start, timed out, exited non-zero, or printed
    /// something other than the expected JSON.
    #[error("credential command {program:?} {problem}")]
    Command {
        /// `argv[0]`.
        program: String,
        /// What went wrong, e.g. `exited with status 1`, `timed out after 10s`.
        problem: String,
    },
    /// A `dynamic` source failed to create (or prepare) the grant's role.
    #[error("dynamic role: {0}")]
    Dynamic(String),
    /// The blocking keychain task died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Reads the secret `entry`: from the daemon's own store ([`store`], `DATA_DIR/secrets`) in
/// system mode, else from the keychain under the daemon's keyring service. The config's
/// `source = "keyring"` names both: in system mode the daemon has no user session and no
/// keychain, and its store is the keychain's stand-in. Blocking (keychain calls may do
/// IPC): call it from `spawn_blocking`.
///
/// # Errors
/// [`CredentialError::Missing`] when nothing is stored, [`CredentialError::Keychain`] when the
/// store fails.
pub fn keychain_secret(
    settings: &DaemonSettings,
    entry: String,
    resource: &str,
    permission: &str,
) -> Result<SecretString, CredentialError> {
    read_entry(settings, &entry).map_err(|e| match e {
        keychain::KeychainError::NotFound => CredentialError::Missing {
            entry,
            resource: resource.to_owned(),
            permission: permission.to_owned(),
        },
        keychain::KeychainError::Store(message) => CredentialError::Keychain { entry, message },
    })
}

/// Where secrets live for `settings`, in words: `daemon store DIR` (system mode) or
/// `keychain service NAME`.
pub fn store_description(settings: &DaemonSettings) -> String {
    match settings.mode {
        crate::principal::Mode::System => format!(
            "daemon store {}",
            store::SecretStore::in_data_dir(&settings.data_dir())
                .dir()
                .display()
        ),
        crate::principal::Mode::User => {
            format!("keychain service {:?}", keychain::service_name(settings))
        }
    }
}

/// Reads `entry` from the store `settings` selects (see [`keychain_secret`]). Blocking.
///
/// # Errors
/// The store's error.
pub fn read_entry(
    settings: &DaemonSettings,
    entry: &str,
) -> Result<SecretString, keychain::KeychainError> {
    match settings.mode {
        crate::principal::Mode::System => {
            store::SecretStore::in_data_dir(&settings.data_dir()).get(entry)
        }
        crate::principal::Mode::User => keychain::get(&keychain::service_name(settings), entry),
    }
}

/// Stores `entry` in the store `settings` selects. Blocking.
///
/// # Errors
/// The store's error.
pub fn write_entry(
    settings: &DaemonSettings,
    entry: &str,
    secret: &SecretString,
) -> Result<(), keychain::KeychainError> {
    match settings.mode {
        crate::principal::Mode::System => {
            store::SecretStore::in_data_dir(&settings.data_dir()).set(entry, secret)
        }
        crate::principal::Mode::User => {
            keychain::set(&keychain::service_name(settings), entry, secret)
        }
    }
}

/// Deletes `entry` from the store `settings` selects. Blocking.
///
/// # Errors
/// The store's error ([`keychain::KeychainError::NotFound`] when absent).
pub fn delete_entry(settings: &DaemonSettings, entry: &str) -> Result<(), keychain::KeychainError> {
    match settings.mode {
        crate::principal::Mode::System => {
            store::SecretStore::in_data_dir(&settings.data_dir()).delete(entry)
        }
        crate::principal::Mode::User => keychain::delete(&keychain::service_name(settings), entry),
    }
}

/// Fetches the keychain secret a permission's source needs: the login's password for
/// `keyring`, the admin's for `dynamic`. `command` sources have none (`Ok(None)`).
/// Blocking: call it from `spawn_blocking`.
///
/// # Errors
/// As [`keychain_secret`].
pub fn fetch_secret(
    settings: &DaemonSettings,
    source: &CredentialSource,
    resource: &str,
    permission: &str,
) -> Result<Option<SecretString>, CredentialError> {
    match source.keychain_entry(resource, permission) {
        Some(entry) => keychain_secret(settings, entry, resource, permission).map(Some),
        None => Ok(None),
    }
}

/// [`fetch_secret`] on the blocking pool; `Ok(None)` for sources without a keychain entry.
///
/// # Errors
/// As [`fetch_secret`], or [`CredentialError::Internal`] when the task dies.
pub async fn fetch_secret_async(
    settings: &DaemonSettings,
    source: &CredentialSource,
    resource: &str,
    permission: &str,
) -> Result<Option<SecretString>, CredentialError> {
    let (settings, source) = (settings.clone(), source.clone());
    let (resource, permission) = (resource.to_owned(), permission.to_owned());
    tokio::task::spawn_blocking(move || fetch_secret(&settings, &source, &resource, &permission))
        .await
        .map_err(|e| CredentialError::Internal(e.to_string()))?
}
