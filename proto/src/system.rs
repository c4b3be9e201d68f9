//! The fixed layout of **system mode** (see the daemon's `principal` module): the daemon
//! runs as its own OS user [`DAEMON_USER`] and every person or agent is a client on
//! [`SOCKET`]. These paths are the contract between the daemon, the CLI, the MCP shim,
//! `agentd doctor` and the packages (`packaging/`).

/// The OS user the system daemon runs as.
pub const DAEMON_USER: &str = "agentd";

/// The system config file: owned by root, readable by the daemon, writable by nobody else.
pub const CONFIG: &str = "/etc/agentd/config.toml";

/// The system config directory.
pub const CONFIG_DIR: &str = "/etc/agentd";

/// The daemon's data directory (audit log, state file, secret store): owned by
/// [`DAEMON_USER`], mode 0700.
pub const DATA_DIR: &str = "/var/lib/agentd";

/// The runtime directory holding the control socket and the grants' Unix sockets: owned by
/// [`DAEMON_USER`], mode 0755 (clients must reach the socket; the daemon checks every
/// peer's uid).
pub const RUN_DIR: &str = "/run/agentd";

/// The system control socket.
pub const SOCKET: &str = "/run/agentd/agentd.sock";

use std::path::{Path, PathBuf};

/// Environment variable that prefixes every system path for tests
/// (`AGENTD_SYSTEM_ROOT=/tmp/rt` → `/tmp/rt/etc/agentd/config.toml`, …). Honoured only when
/// that directory is owned by root and writable by nobody else ([`Layout::current`]), so
/// only root can set up such a layout: an agent cannot point an admin's CLI or a daemon at
/// files it controls.
pub const ROOT_ENV: &str = "AGENTD_SYSTEM_ROOT";

/// Environment variable that selects system mode for the CLI and the shim (`1`).
pub const SYSTEM_ENV: &str = "AGENTD_SYSTEM";

/// The system layout in force: the fixed paths, or the same paths under a root-owned prefix
/// (see [`ROOT_ENV`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The prefix (`/` for the real layout).
    pub root: PathBuf,
    /// [`CONFIG`] under the prefix.
    pub config: PathBuf,
    /// [`CONFIG_DIR`] under the prefix.
    pub config_dir: PathBuf,
    /// [`DATA_DIR`] under the prefix.
    pub data_dir: PathBuf,
    /// [`RUN_DIR`] under the prefix.
    pub run_dir: PathBuf,
    /// [`SOCKET`] under the prefix.
    pub socket: PathBuf,
}

/// Why a [`ROOT_ENV`] prefix is not honoured.
#[derive(Debug, thiserror::Error)]
#[error("{ROOT_ENV}={path} is not honoured: {reason}")]
pub struct LayoutError {
    /// The prefix given.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl Layout {
    /// The layout under `root` (no checks).
    pub fn under(root: &Path) -> Self {
        let join = |p: &str| root.join(p.trim_start_matches('/'));
        Self {
            root: root.to_owned(),
            config: join(CONFIG),
            config_dir: join(CONFIG_DIR),
            data_dir: join(DATA_DIR),
            run_dir: join(RUN_DIR),
            socket: join(SOCKET),
        }
    }

    /// The fixed layout, or the one under `$AGENTD_SYSTEM_ROOT` when that is an absolute
    /// directory owned by root (uid 0) with no group or other write permission.
    ///
    /// # Errors
    /// [`LayoutError`] when the variable is set but the prefix fails those checks.
    pub fn current() -> Result<Self, LayoutError> {
        match std::env::var_os(ROOT_ENV) {
            Some(root) if !root.is_empty() => {
                let root = PathBuf::from(root);
                check_prefix(&root)?;
                Ok(Self::under(&root))
            }
            _ => Ok(Self::under(Path::new("/"))),
        }
    }
}

#[cfg(unix)]
fn check_prefix(root: &Path) -> Result<(), LayoutError> {
    use std::os::unix::fs::MetadataExt as _;
    let fail = |reason: String| LayoutError {
        path: root.to_owned(),
        reason,
    };
    if !root.is_absolute() {
        return Err(fail("it must be an absolute path".into()));
    }
    let meta = std::fs::symlink_metadata(root).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("it is not a directory".into()));
    }
    if meta.uid() != 0 {
        return Err(fail(format!(
            "it must be owned by root (owner is uid {})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(fail(format!(
            "it must not be writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_prefix(root: &Path) -> Result<(), LayoutError> {
    Err(LayoutError {
        path: root.to_owned(),
        reason: "system mode is Unix-only".into(),
    })
}

/// Whether a client (CLI, shim) should talk to the system daemon: `explicit` (`--system`) or
/// `AGENTD_SYSTEM=1`; otherwise when the system socket exists and nothing names another
/// daemon (`other_named`: `--socket`/`AGENTD_SOCKET`/`--profile` given).
pub fn client_wants_system(explicit: bool, other_named: bool, layout: &Layout) -> bool {
    if explicit || std::env::var(SYSTEM_ENV).is_ok_and(|v| v == "1") {
        return true;
    }
    !other_named && layout.socket.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_under_a_prefix() {
        let l = Layout::under(Path::new("/tmp/rt"));
        assert_eq!(l.config, PathBuf::from("/tmp/rt/etc/agentd/config.toml"));
        assert_eq!(l.socket, PathBuf::from("/tmp/rt/run/agentd/agentd.sock"));
        assert_eq!(
            Layout::under(Path::new("/")).data_dir,
            PathBuf::from(DATA_DIR)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_prefix_writable_by_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("agentd-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_prefix(&dir).unwrap_err();
        assert!(err.reason.contains("owned by root") || err.reason.contains("writable"));
        let _ = std::fs::remove_dir(&dir);
    }
}
