//! The daemon's own secret store (system mode): one file per entry under
//! `DATA_DIR/secrets/` (directory 0700, files 0600, owned by the daemon's user), written
//! atomically (temporary file + `rename`). Only the daemon's user (and root) can read them;
//! admins set and delete them through the control socket (`sudo agentd secret set`), never
//! by path.
//!
//! Why files and not systemd's encrypted credentials (`LoadCredentialEncrypted=`): those
//! are sealed at install time and read-only to the service, so `agentd secret set` could not
//! change one without an admin re-running `systemd-creds encrypt` and restarting the unit,
//! and they do not exist off systemd (containers, macOS). The protection that matters here,
//! that a client's uid cannot read the file, is the same; see SECURITY.md.
//!
//! File names: the entry name (`RESOURCE/PERMISSION`) with every byte outside
//! `[A-Za-z0-9_-]` written as `%XX`, so no entry can name a path outside the directory.

use super::keychain::KeychainError;
use secrecy::{ExposeSecret as _, SecretString};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Longest secret the store reads back, in bytes.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// The secret store in one directory.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// The store of a data directory: `DATA_DIR/secrets`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("secrets"),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `entry` (see the module docs for the escaping).
    pub fn path(&self, entry: &str) -> PathBuf {
        let mut name = String::with_capacity(entry.len());
        for b in entry.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        self.dir.join(name)
    }

    /// Reads `entry`. Blocking.
    ///
    /// # Errors
    /// [`KeychainError::NotFound`] when absent, [`KeychainError::Store`] for I/O errors, a
    /// file over [`MAX_SECRET_BYTES`] or not UTF-8 (the text never includes the secret).
    pub fn get(&self, entry: &str) -> Result<SecretString, KeychainError> {
        let path = self.path(entry);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeychainError::NotFound)
            }
            Err(e) => return Err(store_error("open", &path, &e)),
        };
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        file.take(MAX_SECRET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| store_error("read", &path, &e))?;
        if bytes.len() as u64 > MAX_SECRET_BYTES {
            return Err(KeychainError::Store(format!(
                "{} is over {MAX_SECRET_BYTES} bytes",
                path.display()
            )));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| KeychainError::Store(format!("{} is not UTF-8", path.display())))?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Stores (or replaces) `entry`: a new 0600 file renamed over the old one. Blocking.
    ///
    /// # Errors
    /// [`KeychainError::Store`] for I/O errors.
    pub fn set(&self, entry: &str, secret: &SecretString) -> Result<(), KeychainError> {
        crate::fsutil::create_private_dir(&self.dir)
            .map_err(|e| store_error("create", &self.dir, &e))?;
        let path = self.path(entry);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(|e| store_error("create a file in", &self.dir, &e))?;
        // tempfile creates files 0600 on Unix.
        tmp.write_all(secret.expose_secret().as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| store_error("write", &path, &e))?;
        tmp.persist(&path)
            .map_err(|e| store_error("rename onto", &path, &e.error))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Deletes `entry`. Blocking.
    ///
    /// # Errors
    /// [`KeychainError::NotFound`] when absent, [`KeychainError::Store`] otherwise.
    pub fn delete(&self, entry: &str) -> Result<(), KeychainError> {
        let path = self.path(entry);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeychainError::NotFound),
            Err(e) => Err(store_error("delete", &path, &e)),
        }
    }
}

fn store_error(op: &str, path: &Path, e: &std::io::Error) -> KeychainError {
    KeychainError::Store(format!("cannot {op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_replace_delete_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::in_data_dir(dir.path());
        assert!(matches!(store.get("a/b"), Err(KeychainError::NotFound)));
        store
            .set("a/b", &SecretString::from("one".to_owned()))
            .unwrap();
        store
            .set("a/b", &SecretString::from("two".to_owned()))
            .unwrap();
        assert_eq!(store.get("a/b").unwrap().expose_secret(), "two");
        assert_eq!(store.path("a/b"), store.dir().join("a%2Fb"));
        assert_eq!(store.path("../x"), store.dir().join("%2E%2E%2Fx"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            let file = std::fs::metadata(store.path("a/b")).unwrap();
            assert_eq!(file.mode() & 0o777, 0o600);
            let d = std::fs::metadata(store.dir()).unwrap();
            assert_eq!(d.mode() & 0o777, 0o700);
        }
        store.delete("a/b").unwrap();
        assert!(matches!(store.delete("a/b"), Err(KeychainError::NotFound)));
    }
}
