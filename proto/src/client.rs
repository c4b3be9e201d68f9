//! A small async client for the control socket: connect, send one [`Request`], read one
//! [`Response`]. Used by the `agentd` CLI and the `agentd-mcp` shim.

use crate::framing::{self, FrameError, FramedStream};
use crate::messages::{Envelope, Request, Response, PROTOCOL_VERSION};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, GenericNamespaced, ToFsName, ToNsName};
use std::path::{Path, PathBuf};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (daemon not running) or it cannot be reached.
    #[error("cannot reach the agentd daemon at {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Framing or JSON failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket (or its directory) belongs to someone who is not our daemon: another
    /// local user may have created it first to receive our requests and answer with fake
    /// handles. Nothing was sent.
    #[error("refusing to talk to {path}: {what} belongs to uid {found_uid}, but agentd runs as uid {expected_uid} (or root); another local user may have created it first. Nothing was sent. Remove it, or set XDG_RUNTIME_DIR / --socket to a private directory")]
    NotOurDaemon {
        /// The socket path.
        path: PathBuf,
        /// `the socket's directory` or `the process serving it`.
        what: &'static str,
        /// Who owns it (the squatter).
        found_uid: u32,
        /// Who should.
        expected_uid: u32,
    },
    /// The socket's directory can be written by other users (anyone could replace the
    /// socket). Nothing was sent.
    #[error("refusing to talk to {path}: its directory is writable by other users (mode {mode:o}); nothing was sent")]
    OpenDirectory {
        /// The socket path.
        path: PathBuf,
        /// The directory's permission bits.
        mode: u32,
    },
    /// The daemon speaks another protocol version.
    #[error("the daemon speaks control protocol version {daemon}, this client speaks {ours}; restart the daemon with the same agentd version")]
    Version {
        /// The daemon's version.
        daemon: u32,
        /// Ours.
        ours: u32,
    },
}

/// A connection to the daemon's control socket.
pub struct Client {
    framed: FramedStream<Stream>,
}

impl Client {
    /// Connects to the control socket at `path` (a file path on Unix, a pipe path on
    /// Windows) and, on Unix, makes sure it is our daemon before anything is sent
    /// ([`check_server`]).
    ///
    /// # Errors
    /// [`ClientError::Connect`] when no daemon listens there;
    /// [`ClientError::NotOurDaemon`] / [`ClientError::OpenDirectory`] when the socket is
    /// not trustworthy.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        check_socket_dir(path)?;
        let stream = Stream::connect(socket_name(path).map_err(connect_err)?)
            .await
            .map_err(connect_err)?;
        #[cfg(unix)]
        check_server(path, &stream)?;
        Ok(Self {
            framed: framing::framed(stream),
        })
    }

    /// Sends `request` and waits for the daemon's response. The connection may be reused.
    ///
    /// # Errors
    /// [`ClientError::Frame`] on I/O or malformed frames, [`ClientError::Version`] when the
    /// daemon's protocol version differs.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        framing::send(&mut self.framed, &Envelope::new(request)).await?;
        let reply: Envelope<Response> = framing::recv(&mut self.framed).await?;
        if reply.version != PROTOCOL_VERSION {
            return Err(ClientError::Version {
                daemon: reply.version,
                ours: PROTOCOL_VERSION,
            });
        }
        Ok(reply.body)
    }
}

/// Turns a socket path into an interprocess name: a filesystem path on Unix, a named pipe
/// (`\\.\pipe\NAME`) on Windows.
///
/// # Errors
/// An I/O error of kind `InvalidInput` when the path cannot name a socket.
pub fn socket_name(path: &Path) -> std::io::Result<interprocess::local_socket::Name<'_>> {
    if cfg!(windows) {
        let s = path.to_string_lossy();
        let short = s.trim_start_matches(r"\\.\pipe\").to_owned();
        short
            .to_ns_name::<GenericNamespaced>()
            .map(|n| n.into_owned())
    } else {
        path.to_fs_name::<GenericFilePath>()
    }
}

/// The uid our daemon runs as for the socket at `path`: the owner of [`crate::system::RUN_DIR`]
/// for the system socket (the daemon's own user, who creates that directory), else our own
/// uid (user mode). Root is trusted as well by the callers.
#[cfg(unix)]
pub fn expected_server_uid(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    // The system run directory in force: the fixed one, or the same under a root-owned
    // `AGENTD_SYSTEM_ROOT` prefix (a prefix that fails its checks is not honoured).
    let run_dirs = [
        Some(std::path::PathBuf::from(crate::system::RUN_DIR)),
        crate::system::Layout::current().ok().map(|l| l.run_dir),
    ];
    for run_dir in run_dirs.into_iter().flatten() {
        if path.starts_with(&run_dir) {
            if let Ok(meta) = std::fs::metadata(&run_dir) {
                return meta.uid();
            }
        }
    }
    crate::socket::current_uid()
}

/// Before connecting: the socket's directory must be owned by the expected server uid (or
/// root) and not writable by group or others (else anyone could put a socket there).
///
/// # Errors
/// [`ClientError::NotOurDaemon`] naming the directory's owner, or
/// [`ClientError::OpenDirectory`]. A missing directory is not an error here (the connect
/// then fails with [`ClientError::Connect`]).
#[cfg(unix)]
pub fn check_socket_dir(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let expected = expected_server_uid(path);
    if meta.uid() != expected && meta.uid() != 0 {
        return Err(ClientError::NotOurDaemon {
            path: path.to_owned(),
            what: "the socket's directory",
            found_uid: meta.uid(),
            expected_uid: expected,
        });
    }
    let mode = meta.mode() & 0o7777;
    // World- or group-writable without the sticky bit: anyone could swap the socket.
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(ClientError::OpenDirectory {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// After connecting, before sending: the process serving the socket (the kernel's
/// `SO_PEERCRED`) must run as the expected server uid or root.
///
/// # Errors
/// [`ClientError::NotOurDaemon`] naming the server's uid; [`ClientError::Connect`] when
/// the platform reports no credentials.
#[cfg(unix)]
pub fn check_server(path: &Path, stream: &Stream) -> Result<(), ClientError> {
    let creds = stream.peer_creds().map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let Some(uid) = creds.euid() else {
        return Err(ClientError::Connect {
            path: path.to_owned(),
            source: std::io::Error::other("the server's credentials are unknown"),
        });
    };
    let expected = expected_server_uid(path);
    if uid != expected && uid != 0 {
        return Err(ClientError::NotOurDaemon {
            path: path.to_owned(),
            what: "the process serving it",
            found_uid: uid,
            expected_uid: expected,
        });
    }
    Ok(())
}
