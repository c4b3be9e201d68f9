//! Where the control socket lives.
//!
//! * Unix: `$XDG_RUNTIME_DIR/agentd/agentd.sock` when `XDG_RUNTIME_DIR` is set; else
//!   `/run/user/$UID/agentd/agentd.sock` when that per-user runtime directory exists and is
//!   ours and private (systemd-logind makes it; a session without the variable, e.g. `su`
//!   or cron, still gets it); otherwise `$TMPDIR/agentd-$UID/agentd.sock`. In a shared
//!   temporary directory another user can create `agentd-$UID` first: the daemon then
//!   refuses to start ([`ensure_private_dir`]) and the clients refuse to talk to a socket in
//!   it ([`crate::client::check_socket_dir`], [`crate::client::check_server`]), naming the
//!   squatter's uid. That is a denial of service, never a fake daemon.
//! * Windows: the named pipe `\\.\pipe\agentd-$USERNAME`.
//!
//! The binaries let `--socket` / `AGENTD_SOCKET` override this.

use std::path::{Path, PathBuf};

/// Name of the socket file inside the runtime directory.
pub const SOCKET_FILE_NAME: &str = "agentd.sock";

/// The socket directory is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    /// It could not be created or inspected.
    #[error("socket directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It exists but is owned by another user or open to others.
    #[error("socket directory {path} must be owned by uid {uid} with mode 0700 (found uid {found_uid}, mode {found_mode:o})")]
    Insecure {
        /// The directory.
        path: PathBuf,
        /// Our uid.
        uid: u32,
        /// Its owner.
        found_uid: u32,
        /// Its permission bits.
        found_mode: u32,
    },
}

/// The default control socket path for this user (see the module docs).
#[cfg(unix)]
pub fn default_socket_path() -> PathBuf {
    runtime_dir().join(SOCKET_FILE_NAME)
}

/// The default control socket path for this user (see the module docs).
#[cfg(windows)]
pub fn default_socket_path() -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_else(|_| "default".to_owned());
    PathBuf::from(format!(r"\\.\pipe\agentd-{user}"))
}

/// The per-user runtime directory: `$XDG_RUNTIME_DIR/agentd`, else `/run/user/$UID/agentd`
/// when `/run/user/$UID` is ours with mode 0700, else `$TMPDIR/agentd-$UID`.
#[cfg(unix)]
pub fn runtime_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("agentd"),
        _ => {
            let uid = current_uid();
            let run_user = PathBuf::from(format!("/run/user/{uid}"));
            match std::fs::metadata(&run_user) {
                Ok(m) if m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0 => {
                    run_user.join("agentd")
                }
                _ => std::env::temp_dir().join(format!("agentd-{uid}")),
            }
        }
    }
}

/// The real uid of this process.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY-free: getuid cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::getuid()
    }
}

/// Creates `dir` with mode 0700 if missing, and checks that it is owned by us and not open to
/// group or others.
///
/// # Errors
/// [`SocketPathError::Io`] when it cannot be created or read, [`SocketPathError::Insecure`]
/// when another user owns it or its mode allows group/other access.
#[cfg(unix)]
pub fn ensure_private_dir(dir: &Path) -> Result<(), SocketPathError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io_err = |source| SocketPathError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let meta = std::fs::metadata(dir).map_err(io_err)?;
    let uid = current_uid();
    let mode = meta.mode() & 0o777;
    if meta.uid() != uid || mode & 0o077 != 0 {
        return Err(SocketPathError::Insecure {
            path: dir.to_owned(),
            uid,
            found_uid: meta.uid(),
            found_mode: mode,
        });
    }
    Ok(())
}

/// On Windows named pipes need no directory.
#[cfg(windows)]
pub fn ensure_private_dir(_dir: &Path) -> Result<(), SocketPathError> {
    Ok(())
}
