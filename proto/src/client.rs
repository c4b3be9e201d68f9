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
    /// Connects to the control socket at `path` (a file path on Unix, a pipe path on Windows).
    ///
    /// # Errors
    /// [`ClientError::Connect`] when no daemon listens there.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = Stream::connect(socket_name(path).map_err(connect_err)?)
            .await
            .map_err(connect_err)?;
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
