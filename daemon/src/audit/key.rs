//! The audit chain's key (system mode): HMAC-SHA-256 with a 256-bit key that only the
//! daemon's user can read, so that someone who can rewrite the log files but not read the
//! key cannot re-chain an edit.
//!
//! File `DATA_DIR/audit.key` (beside the `audit/` directory), mode 0600, created once with
//! `O_EXCL` at the first system-mode start; one line: `agentd-audit-key v1 <64 hex key>
//! <from>` where `from` is the seq of the first record hashed with the key. Records before
//! `from` (an older, unkeyed log) keep their plain SHA-256 and stay verifiable. User mode
//! keeps plain SHA-256: a key readable by the user's own uid adds nothing against that
//! user's agent.

use super::{to_hex, AuditError};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "audit.key";

const MAGIC: &str = "agentd-audit-key v1";

/// The chain key and the first seq it applies to. `Debug` does not print the key.
pub struct AuditKey {
    key: zeroize::Zeroizing<[u8; 32]>,
    /// The first record hashed with the key.
    pub from: u64,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key", &"[REDACTED]")
            .field("from", &self.from)
            .finish()
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, detail: &str) -> AuditError {
    AuditError::Malformed {
        path: path.to_path_buf(),
        line: 1,
        detail: detail.to_owned(),
    }
}

impl AuditKey {
    /// The key file that belongs to the audit directory `audit_dir`: `audit_dir/../audit.key`.
    pub fn path_beside(audit_dir: &Path) -> PathBuf {
        audit_dir
            .parent()
            .map_or_else(|| PathBuf::from(KEY_FILE), |p| p.join(KEY_FILE))
    }

    /// Loads the key at `path`; `Ok(None)` when there is no such file.
    ///
    /// # Errors
    /// [`AuditError::Io`] when it exists but cannot be read (e.g. permission denied: only the
    /// daemon's user may read it), [`AuditError::Malformed`] when it is not a key file.
    pub fn load(path: &Path) -> Result<Option<Self>, AuditError> {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", path)(e)),
        };
        let mut text = zeroize::Zeroizing::new(String::new());
        (&mut file)
            .take(256)
            .read_to_string(&mut text)
            .map_err(io("read", path))?;
        let mut parts = text.trim_end().rsplitn(3, ' ');
        let (Some(from), Some(hex), Some(magic)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(path, "not an agentd audit key file"));
        };
        if magic != MAGIC || hex.len() != 64 {
            return Err(malformed(path, "not an agentd audit key file"));
        }
        let from: u64 = from
            .parse()
            .map_err(|_| malformed(path, "bad first-record number"))?;
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| malformed(path, "key is not hex"))?;
        }
        Ok(Some(Self { key, from }))
    }

    /// Loads the key at `path`, or creates it (0600, `O_EXCL`, synced) with a random key
    /// applying from `next_seq`.
    ///
    /// # Errors
    /// As [`AuditKey::load`], or the file cannot be created.
    pub fn load_or_create(path: &Path, next_seq: u64) -> Result<Self, AuditError> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        let line = zeroize::Zeroizing::new(format!("{MAGIC} {} {next_seq}\n", to_hex(&key[..])));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io("create", path))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write", path))?;
        Ok(Self {
            key,
            from: next_seq,
        })
    }

    /// A key for tests and in-memory use.
    pub fn from_bytes(key: [u8; 32], from: u64) -> Self {
        Self {
            key: zeroize::Zeroizing::new(key),
            from,
        }
    }

    /// HMAC-SHA-256 of `body` as 64 lowercase hex digits.
    pub fn mac_hex(&self, body: &[u8]) -> String {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(&self.key[..]) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(body);
        to_hex(&mac.finalize().into_bytes())
    }
}

/// The hash of record `seq` with body `body`: HMAC when `key` applies to `seq`, else plain
/// SHA-256.
pub(crate) fn record_hash(key: Option<&AuditKey>, seq: u64, body: &[u8]) -> String {
    match key {
        Some(k) if seq >= k.from => k.mac_hex(body),
        _ => super::sha256_hex(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let k = AuditKey::load_or_create(&path, 5).unwrap();
        let again = AuditKey::load_or_create(&path, 99).unwrap();
        assert_eq!(again.from, 5);
        assert_eq!(k.mac_hex(b"x"), again.mac_hex(b"x"));
        assert_ne!(k.mac_hex(b"x"), super::super::sha256_hex(b"x"));
        assert!(!format!("{k:?}").contains(&to_hex(&k.key[..])));
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        }
        assert_eq!(
            record_hash(Some(&k), 4, b"x"),
            super::super::sha256_hex(b"x")
        );
        assert_eq!(record_hash(Some(&k), 5, b"x"), k.mac_hex(b"x"));
    }

    #[test]
    fn keyed_chain_verifies_and_a_sha256_rechain_is_caught() {
        use crate::audit::tests::{no_fsync, stmt};
        use crate::audit::{verify, AuditLog, Durability, ACTIVE_FILE};
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("audit");
        // Two unkeyed records first (an older user-mode log), then the key from seq 3.
        {
            let log = AuditLog::open(&dir, no_fsync(1 << 20)).unwrap();
            log.append(&stmt(1), Durability::Write).unwrap();
            log.append(&stmt(2), Durability::Write).unwrap();
        }
        let key_path = data.path().join(KEY_FILE);
        let log = AuditLog::open_keyed(&dir, no_fsync(1 << 20), &key_path).unwrap();
        assert_eq!(log.keyed_from(), Some(3));
        log.append(&stmt(3), Durability::Write).unwrap();
        log.append(&stmt(4), Durability::Write).unwrap();
        let report = log.verify().unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.records, report.keyed_from), (4, Some(3)));
        // verify() finds the key beside the directory.
        assert_eq!(verify(&dir).unwrap().keyed_from, Some(3));
        // Edit the last record and re-hash it with plain SHA-256: caught.
        let path = dir.join(ACTIVE_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last = lines.pop().unwrap();
        let (body, _) = super::super::verify::split_hash(last.as_bytes()).unwrap();
        let body = String::from_utf8(body)
            .unwrap()
            .replace("\"ts\":\"2", "\"ts\":\"1");
        let hash = super::super::sha256_hex(body.as_bytes());
        lines.push(format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let report = log.verify().unwrap();
        assert!(!report.ok());
        assert_eq!(report.problems[0].seq, Some(4));
        // Without the key, the keyed records do not verify as plain SHA-256.
        let unkeyed = crate::audit::verify::verify_with_key(&dir, None).unwrap();
        assert!(unkeyed.problems.iter().any(|p| p.seq == Some(3)));
    }
}
