//! The broker's state file: which grants are active and which requests are pending, so that
//! a daemon that died (SIGKILL, crash, power cut) can record them as ended when it starts
//! again. Nothing here is secret: ids, names and times only.
//!
//! Restart semantics (chosen, documented in the README): grants are **not** restored. Their
//! listeners, tokens and upstream sessions died with the old process; restoring them would
//! mean persisting tokens. A restarted daemon records every grant it finds here as ended
//! (`grant_ended`, `by = "daemon restart"`) and every pending request as expired, then
//! starts empty. Agents request access again.
//!
//! File: `DATA_DIR/state.json`, mode 0600, replaced atomically (write to a temporary file,
//! then rename) on every change.

use crate::fsutil::create_private_dir;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// An active grant as remembered across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedGrant {
    /// Grant id (`g_…`).
    pub grant_id: String,
    /// Request id that produced it.
    pub request_id: String,
    /// Resource name.
    pub resource: String,
    /// Permission name.
    pub permission: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A pending request as remembered across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersistedRequest {
    /// Request id (`r_…`).
    pub request_id: String,
    /// Resource name.
    pub resource: String,
    /// Permission name.
    pub permission: String,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Process id of the daemon that wrote it.
    pub pid: u32,
    /// Active grants.
    pub grants: Vec<PersistedGrant>,
    /// Pending requests.
    pub pending: Vec<PersistedRequest>,
}

/// The state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file inside `data_dir` (created 0700 when missing).
    ///
    /// # Errors
    /// Creating the directory failed.
    pub fn in_dir(data_dir: &Path) -> std::io::Result<Self> {
        create_private_dir(data_dir)?;
        Ok(Self {
            path: data_dir.join("state.json"),
        })
    }

    /// Reads the snapshot a previous daemon left; an absent file is an empty snapshot.
    ///
    /// # Errors
    /// Unreadable or malformed file (the caller logs it and starts empty).
    pub fn load(&self) -> std::io::Result<Snapshot> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file with `snapshot` atomically.
    ///
    /// # Errors
    /// I/O errors writing or renaming.
    pub fn save(&self, snapshot: &Snapshot) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, snapshot)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_data()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the data directory's exclusive lock (`DATA_DIR/daemon.lock`, an OS file lock held
/// for as long as the returned file lives), so two daemons never share an audit log or a
/// state file. The lock dies with the process, so a SIGKILLed daemon leaves none behind.
///
/// # Errors
/// `WouldBlock` when another daemon holds it; other I/O errors.
pub fn lock_data_dir(data_dir: &Path) -> std::io::Result<std::fs::File> {
    create_private_dir(data_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("daemon.lock"))?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another agentd daemon is using this data directory",
        ),
        std::fs::TryLockError::Error(e) => e,
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(&dir.path().join("data")).unwrap();
        assert_eq!(file.load().unwrap(), Snapshot::default());
        let snap = Snapshot {
            pid: 7,
            grants: vec![PersistedGrant {
                grant_id: "g_1".into(),
                request_id: "r_1".into(),
                resource: "db".into(),
                permission: "ro".into(),
                expires_at: 99,
            }],
            pending: vec![PersistedRequest {
                request_id: "r_2".into(),
                resource: "db".into(),
                permission: "rw".into(),
            }],
        };
        file.save(&snap).unwrap();
        assert_eq!(file.load().unwrap(), snap);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "state file must be private");
        }
    }
}
