//! The OS keychain through the `keyring` crate: macOS Keychain, Windows Credential Manager,
//! and on Linux the desktop Secret Service when a session bus is present, else the kernel's
//! keyutils (headless servers, containers, CI).
//!
//! Set `AGENTD_KEYRING_BACKEND=keyutils|secret-service` to force a Linux backend.

use secrecy::{ExposeSecret, SecretString};
use std::sync::Once;

/// Keychain failures. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    /// No entry under that name.
    #[error("no such keychain entry")]
    NotFound,
    /// The platform store failed; the text comes from the store.
    #[error("{0}")]
    Store(String),
}

/// The keychain service name secrets live under: `[daemon] keyring_service` (default
/// `agentd`). Every reader and writer goes through here, so a profile can keep its secrets
/// apart by changing this one function's input.
pub fn service_name(settings: &crate::config::DaemonSettings) -> String {
    settings.keyring_service.clone()
}

/// The keychain account name for a permission's secret: `RESOURCE/PERMISSION`.
pub fn entry_name(resource: &str, permission: &str) -> String {
    format!("{resource}/{permission}")
}

static BACKEND: Once = Once::new();

/// Whether this Linux process uses the kernel keyutils store (see the module docs).
#[cfg(target_os = "linux")]
fn use_keyutils() -> bool {
    let forced = std::env::var("AGENTD_KEYRING_BACKEND").unwrap_or_default();
    match forced.as_str() {
        "secret-service" => false,
        "keyutils" => true,
        _ => std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none(),
    }
}

/// Picks the platform backend once per process (see the module docs).
fn select_backend() {
    BACKEND.call_once(|| {
        #[cfg(target_os = "linux")]
        if !use_keyutils() {
            keyring::set_default_credential_builder(
                keyring::secret_service::default_credential_builder(),
            );
        }
    });
}

/// Runs `op` on the entry for `service`/`name`.
///
/// With keyutils, keyring-rs links each key into the user's persistent keyring as well as
/// the session keyring; where the persistent keyring exists but cannot be linked to
/// (containers, some sandboxes) that fails with ENOKEY. We then retry on the session
/// keyring alone, which is what the daemon started from the same session reads.
///
/// Before that, the calling thread gets a session keyring of its own (session keyrings
/// belong to a thread's credentials): keyring-rs reads the session keyring's id and only
/// then asks for the persistent keyring, and that request creates a session keyring for a
/// thread that had none. On such a thread (containers, CI, services without PAM) an entry
/// then went to the shared user-session keyring, which the thread no longer possessed, so
/// no later delete could reach it: every `agentd demo` left its secret there. Building the
/// credential twice makes the first build create the session keyring and the second use
/// it: an entry is then one key, linked into the session and the persistent keyring, and
/// one delete removes it.
fn with_entry<T>(
    service: &str,
    name: &str,
    op: impl Fn(&keyring::Entry) -> keyring::Result<T>,
) -> Result<T, KeychainError> {
    select_backend();
    #[cfg(target_os = "linux")]
    if use_keyutils() {
        use keyring::keyutils::KeyutilsCredential;
        let _ = KeyutilsCredential::new_with_target(None, service, name);
        let credential =
            KeyutilsCredential::new_with_target(None, service, name).map_err(store_error)?;
        let persistent = credential.persistent;
        let first = op(&keyring::Entry::new_with_credential(Box::new(
            credential.clone(),
        )));
        return match (first, persistent) {
            (Err(_), Some(persistent)) => {
                let persistent_only = KeyutilsCredential {
                    session: persistent,
                    persistent: None,
                    ..credential
                };
                op(&keyring::Entry::new_with_credential(Box::new(
                    persistent_only,
                )))
                .map_err(store_error)
            }
            (other, _) => other.map_err(store_error),
        };
    }
    let entry = keyring::Entry::new(service, name).map_err(store_error)?;
    op(&entry).map_err(store_error)
}

fn store_error(e: keyring::Error) -> KeychainError {
    match e {
        keyring::Error::NoEntry => KeychainError::NotFound,
        // keyring's Display for its errors never includes the password.
        other => KeychainError::Store(other.to_string()),
    }
}

/// Reads a secret. Blocking.
///
/// # Errors
/// [`KeychainError::NotFound`] or [`KeychainError::Store`].
pub fn get(service: &str, name: &str) -> Result<SecretString, KeychainError> {
    let password = with_entry(service, name, |e| e.get_password())?;
    Ok(SecretString::from(password))
}

/// Stores (or replaces) a secret. Blocking.
///
/// # Errors
/// [`KeychainError::Store`].
pub fn set(service: &str, name: &str, secret: &SecretString) -> Result<(), KeychainError> {
    with_entry(service, name, |e| e.set_password(secret.expose_secret()))
}

/// Deletes a secret: every copy of it. Blocking.
///
/// With keyutils a secret may be stored twice: [`with_entry`]'s retry stores it in the
/// persistent keyring when the session copy was added but could not be linked there, and
/// one delete finds only the session copy. So this deletes until none is found (at most
/// four rounds); otherwise the persistent copy would outlive the delete and still be read.
///
/// # Errors
/// [`KeychainError::NotFound`] when there was none, [`KeychainError::Store`] otherwise.
pub fn delete(service: &str, name: &str) -> Result<(), KeychainError> {
    let mut deleted = false;
    for _ in 0..4 {
        match with_entry(service, name, |e| e.delete_credential()) {
            Ok(()) => deleted = true,
            Err(KeychainError::NotFound) => break,
            Err(e) => return Err(e),
        }
    }
    if deleted {
        Ok(())
    } else {
        Err(KeychainError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live keys in the kernel's key store whose description names `service` (Linux
    /// `/proc/keys`; invalidated, revoked or dead keys do not count).
    fn live_keys(service: &str) -> Vec<String> {
        std::fs::read_to_string("/proc/keys")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("@{service}:")))
            .filter(|l| {
                let flags = l.split_whitespace().nth(1).unwrap_or_default();
                !flags.contains(['i', 'R', 'D'])
            })
            .map(str::to_owned)
            .collect()
    }

    /// Against this machine's real keychain: a secret set on one fresh thread and deleted
    /// on another can no longer be read, a second `delete` says there is none, and (with
    /// keyutils) no copy of it is left in any keyring.
    #[test]
    fn delete_removes_every_copy() {
        let service = format!("agentd-test-{}", std::process::id());
        let secret = SecretString::from("keychain-delete-canary".to_owned());
        let s = service.clone();
        let stored = std::thread::spawn(move || set(&s, "r/p", &secret))
            .join()
            .unwrap();
        if let Err(e) = stored {
            eprintln!("SKIPPED: no usable keychain here: {e}");
            return;
        }
        assert!(get(&service, "r/p").is_ok());
        let s = service.clone();
        std::thread::spawn(move || delete(&s, "r/p"))
            .join()
            .unwrap()
            .unwrap();
        assert!(matches!(get(&service, "r/p"), Err(KeychainError::NotFound)));
        assert!(matches!(
            delete(&service, "r/p"),
            Err(KeychainError::NotFound)
        ));
        assert_eq!(live_keys(&service), Vec::<String>::new());
    }
}
