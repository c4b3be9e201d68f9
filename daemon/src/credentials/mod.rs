//! Upstream credentials: where they come from and how they are held.
//!
//! Secrets are held as [`secrecy::SecretString`]: zeroized on drop, `Debug` prints
//! `[REDACTED]`. No function here formats a secret into an error.

pub mod keychain;

use crate::config::{CredentialSource, DaemonSettings};
use secrecy::SecretString;

/// Failure to obtain a credential. Never contains the secret.
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
}

/// Fetches the upstream secret for `resource`/`permission` from its configured source.
/// Blocking (keychain calls may do IPC): call it from `spawn_blocking`.
///
/// # Errors
/// [`CredentialError::Missing`] when nothing is stored, [`CredentialError::Keychain`] when the
/// store fails.
pub fn fetch_secret(
    settings: &DaemonSettings,
    source: &CredentialSource,
    resource: &str,
    permission: &str,
) -> Result<SecretString, CredentialError> {
    match source {
        CredentialSource::Keyring { entry } => {
            let entry = entry
                .clone()
                .unwrap_or_else(|| keychain::entry_name(resource, permission));
            keychain::get(&settings.keyring_service, &entry).map_err(|e| match e {
                keychain::KeychainError::NotFound => CredentialError::Missing {
                    entry,
                    resource: resource.to_owned(),
                    permission: permission.to_owned(),
                },
                keychain::KeychainError::Store(message) => {
                    CredentialError::Keychain { entry, message }
                }
            })
        }
    }
}
