//! Framing: each frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! Frames longer than [`MAX_FRAME_BYTES`] are refused before any of their body is read.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest frame body accepted or sent, in bytes (1 MiB).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Errors while reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or the length prefix exceeded [`MAX_FRAME_BYTES`].
    #[error("control socket I/O")]
    Io(#[from] std::io::Error),
    /// The frame body was not the expected JSON.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the connection before a full frame arrived.
    #[error("control connection closed")]
    Closed,
}

/// A framed control connection over any byte stream.
pub type FramedStream<S> = Framed<S, LengthDelimitedCodec>;

/// Wraps `io` in the control protocol's length-delimited codec.
pub fn framed<S: AsyncRead + AsyncWrite>(io: S) -> FramedStream<S> {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME_BYTES)
        .new_framed(io)
}

/// Serialises `value` as JSON and sends it as one frame.
///
/// # Errors
/// [`FrameError::Io`] when the body exceeds [`MAX_FRAME_BYTES`] or the socket fails.
pub async fn send<S, T>(framed: &mut FramedStream<S>, value: &T) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(value)?;
    framed.send(Bytes::from(body)).await?;
    Ok(())
}

/// Reads one frame and parses it as JSON.
///
/// # Errors
/// [`FrameError::Closed`] at end of stream, [`FrameError::Io`] for an oversized length or a
/// socket error, [`FrameError::Json`] for a body that does not parse as `T`.
pub async fn recv<S, T>(framed: &mut FramedStream<S>) -> Result<T, FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    match framed.next().await {
        Some(frame) => Ok(serde_json::from_slice(&frame?)?),
        None => Err(FrameError::Closed),
    }
}
