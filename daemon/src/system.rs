//! Starting in **system mode**: the daemon runs as its own OS user (`agentd`), reads a
//! root-owned config, keeps its data in a directory only it can read and serves every
//! person and agent on a world-reachable socket, classifying each peer by uid
//! ([`crate::principal`]).
//!
//! [`prepare`] refuses to start when the layout would let someone else change what the
//! daemon trusts, and says which path and why:
//! - the daemon must not run as root;
//! - the config file must be owned by root and writable by no one else;
//! - the data directory must be owned by the daemon's user with mode 0700;
//! - the run directory (control socket, grant sockets) must be owned by the daemon's user and
//!   writable by no one else (mode 0755: clients must reach the socket);
//! - every directory above those three must be owned by root or the daemon's user and
//!   writable by no one else (a world-writable directory with the sticky bit, such as
//!   `/tmp`, is accepted: others cannot rename or remove what they do not own there).

use crate::config::Config;
use agentd_proto::system::Layout;
use anyhow::{bail, Context as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What a system-mode daemon serves on, after [`prepare`].
#[derive(Debug)]
pub struct Prepared {
    /// The control socket path.
    pub socket: PathBuf,
    /// The directory under which grants' Unix sockets are made (mode 0711).
    pub grant_socket_root: PathBuf,
}

/// The process's effective uid and gid.
fn effective_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// Checks and prepares the system layout for a daemon about to load `config` from
/// `config_path`. Sets `config.daemon.data_dir` to the layout's when the config names none.
///
/// # Errors
/// Running as root, or a path that fails the rules in the module docs (the message names
/// the path and the fix).
pub fn prepare(
    layout: &Layout,
    config_path: &Path,
    socket: Option<PathBuf>,
    config: &mut Config,
) -> anyhow::Result<Prepared> {
    let (uid, gid) = effective_ids();
    if uid == 0 {
        bail!(
            "agentd refuses to run as root in system mode: a compromise of the daemon would be a \
             compromise of the machine. Run it as the `{}` user, e.g. `runuser -u {} -- agentd daemon --system` \
             (the packaged systemd unit does this)",
            agentd_proto::system::DAEMON_USER,
            agentd_proto::system::DAEMON_USER
        );
    }
    check_config_file(config_path, uid, gid)?;
    let data_dir = config
        .daemon
        .data_dir
        .clone()
        .unwrap_or_else(|| layout.data_dir.clone());
    config.daemon.data_dir = Some(data_dir.clone());
    ensure_dir(&data_dir, 0o700)?;
    check_owned_dir(&data_dir, uid, 0o077, "0700")?;
    check_ancestors(&data_dir, uid, gid)?;
    let socket = socket.unwrap_or_else(|| layout.socket.clone());
    let run_dir = socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| layout.run_dir.clone());
    ensure_dir(&run_dir, 0o755)?;
    check_owned_dir(&run_dir, uid, 0o022, "0755")?;
    check_ancestors(&run_dir, uid, gid)?;
    let grant_socket_root = run_dir.join("pg");
    ensure_dir(&grant_socket_root, 0o711)?;
    check_owned_dir(&grant_socket_root, uid, 0o066, "0711")?;
    std::fs::set_permissions(&grant_socket_root, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod 0711 {}", grant_socket_root.display()))?;
    Ok(Prepared {
        socket,
        grant_socket_root,
    })
}

/// The system config file's checks alone (for a reload): owned by root, writable by no one
/// else, its directories safe.
///
/// # Errors
/// The path and why, as at start.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let (uid, gid) = effective_ids();
    check_config_file(path, uid, gid)
}

/// Creates `dir` with `mode` when it is missing (the parent must let us).
fn ensure_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create {} (create it owned by the daemon's user, mode {mode:o})",
                dir.display()
            )
        })
}

/// `dir` must be owned by `uid` and have none of `forbidden` permission bits.
fn check_owned_dir(dir: &Path, uid: u32, forbidden: u32, want: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("refusing to start: {} is not a directory", dir.display());
    }
    if meta.uid() != uid {
        bail!(
            "refusing to start: {} is owned by uid {}, not by the daemon's user (uid {uid}); \
             chown it to the daemon's user, mode {want}",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & forbidden != 0 {
        bail!(
            "refusing to start: {} has mode {:o}, which lets other users in; chmod {want} it",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// The config file: owned by root, writable by no one else, and its directories safe.
fn check_config_file(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the system config {}", path.display()))?;
    if meta.uid() != 0 {
        bail!(
            "refusing to start: the config {} is owned by uid {}; in system mode it must be owned by root \
             (chown root:root it), so that only an admin can change policy",
            path.display(),
            meta.uid()
        );
    }
    check_not_writable_by_others(path, &meta, gid)?;
    check_ancestors(path, uid, gid)
}

/// No group write (unless the group is root's or the daemon's own) and no other write.
fn check_not_writable_by_others(
    path: &Path,
    meta: &std::fs::Metadata,
    daemon_gid: u32,
) -> anyhow::Result<()> {
    let mode = meta.mode();
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky_dir {
        bail!(
            "refusing to start: {} is writable by every user (mode {:o}); chmod o-w it",
            path.display(),
            mode & 0o7777
        );
    }
    if mode & 0o020 != 0 && meta.gid() != 0 && meta.gid() != daemon_gid && !sticky_dir {
        bail!(
            "refusing to start: {} is writable by group {} (mode {:o}); chmod g-w it",
            path.display(),
            group_name(meta.gid()),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Every directory above `path` (after resolving symlinks): owned by root or the daemon's
/// user and not writable by others (sticky world-writable directories accepted).
fn check_ancestors(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut dir = canonical.parent();
    while let Some(d) = dir {
        let meta = std::fs::metadata(d).with_context(|| format!("{}", d.display()))?;
        if meta.uid() != 0 && meta.uid() != uid {
            bail!(
                "refusing to start: {} (a directory above {}) is owned by uid {}; it must be owned by root \
                 or the daemon's user, or that user could swap what the daemon reads",
                d.display(),
                path.display(),
                meta.uid()
            );
        }
        check_not_writable_by_others(d, &meta, gid)?;
        dir = d.parent();
    }
    Ok(())
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| format!("gid {gid}"), |g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let file = open.join("config.toml");
        std::fs::write(&file, "").unwrap();
        let (uid, gid) = effective_ids();
        let err = check_ancestors(&file, uid, gid).unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");
        assert!(err.contains(&open.display().to_string()), "{err}");
        // With the sticky bit (like /tmp) it is accepted.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_ancestors(&file, uid, gid).unwrap();
        // A file writable by others is refused.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert!(check_not_writable_by_others(&file, &meta, gid).is_err());
    }

    #[test]
    fn data_dir_must_be_private_and_ours() {
        let dir = tempfile::tempdir().unwrap();
        let (uid, _) = effective_ids();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = check_owned_dir(dir.path(), uid, 0o077, "0700")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 750"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_owned_dir(dir.path(), uid, 0o077, "0700").unwrap();
        let err = check_owned_dir(dir.path(), uid + 1, 0o077, "0700")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not by the daemon's user"), "{err}");
    }
}
