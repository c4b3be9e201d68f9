//! PostgreSQL frontend/backend wire helpers shared by the listener's phases.
//!
//! Formats follow the PostgreSQL docs, "Frontend/Backend Protocol" → "Message Formats"
//! (chapter 55.7 in PostgreSQL 15): a typed message is one type byte, an Int32 length that
//! counts itself but not the type byte, then the body.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest typed message accepted during the startup and authentication phases, in bytes
/// (SASL messages are a few hundred bytes; PostgreSQL itself caps auth messages near 10 kB).
pub const MAX_AUTH_MESSAGE_BYTES: usize = 10_000;

/// Errors reading a typed message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed early.
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A length outside the allowed range.
    #[error("invalid message length {length} for message type {kind:?} (allowed 4..={max})")]
    BadLength {
        /// The message type byte as a char.
        kind: char,
        /// The length read.
        length: i64,
        /// Largest allowed.
        max: usize,
    },
    /// The message does not have the expected shape.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// A typed message read whole into memory (auth phase only; the relay streams).
#[derive(Debug)]
pub struct Message {
    /// The type byte, e.g. `b'R'`.
    pub kind: u8,
    /// The body after the length.
    pub body: Vec<u8>,
}

/// Reads one typed message whose total length is at most `max` bytes.
///
/// # Errors
/// [`WireError::Io`] on EOF or socket errors, [`WireError::BadLength`] when the length is
/// below 4 or above `max`.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Message, WireError> {
    let kind = r.read_u8().await?;
    let length = r.read_i32().await?;
    if length < 4 || length as usize > max {
        return Err(WireError::BadLength {
            kind: kind as char,
            length: i64::from(length),
            max,
        });
    }
    let mut body = vec![0u8; length as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(Message { kind, body })
}

/// Appends a typed message (`kind`, length, body) to `buf`.
pub fn put_message(buf: &mut BytesMut, kind: u8, body: &[u8]) {
    buf.put_u8(kind);
    // Bodies we build are small; the cast is safe below 2 GiB.
    buf.put_i32((body.len() + 4) as i32);
    buf.put_slice(body);
}

/// Appends an Authentication message (`R`) with the given code and extra payload.
/// Codes: 0 Ok, 10 SASL, 11 SASLContinue, 12 SASLFinal.
pub fn put_authentication(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let mut body = Vec::with_capacity(4 + payload.len());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(payload);
    put_message(buf, b'R', &body);
}

/// Severity of an ErrorResponse we generate.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    /// Ends the session.
    Fatal,
    /// Ends the current statement only.
    Error,
}

/// Appends an ErrorResponse (`E`) with severity, SQLSTATE `code` and `message`
/// ("Error and Notice Message Fields": `S`, `V`, `C`, `M`).
pub fn put_error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let sev = match severity {
        Severity::Fatal => "FATAL",
        Severity::Error => "ERROR",
    };
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    put_message(buf, b'E', &body);
}

/// Writes a FATAL ErrorResponse and flushes; errors are ignored because the connection is
/// being closed anyway.
pub async fn send_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    put_error(&mut buf, Severity::Fatal, code, message);
    let _ = w.write_all(&buf).await;
    let _ = w.flush().await;
}

/// Longest a refused connection's input is drained after our half-close ([`linger`]).
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Most bytes drained from a refused connection after our half-close ([`linger`]).
pub const LINGER_BYTES: usize = 64 * 1024;

/// Lingering close: half-closes our side (`shutdown(SHUT_WR)`, so the peer reads EOF after
/// what we sent) and then reads and discards the peer's input until it closes, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing a socket with unread input makes the
/// kernel send a reset, and a reset makes the peer's kernel discard data it has not read
/// yet, e.g. the ErrorResponse that says why: draining first lets the client read it.
/// Errors are ignored: the connection is being closed anyway.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    drain(stream).await;
}

/// The drain half of [`linger`], for a stream whose write half was already shut down (or
/// split off): reads and discards input until EOF, an error, [`LINGER_BYTES`] or
/// [`LINGER_TIME`].
pub async fn drain<R: AsyncRead + Unpin>(r: &mut R) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while total < LINGER_BYTES {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Ends a connection with a FATAL ErrorResponse (SQLSTATE `code`, `message`) and a
/// lingering close ([`linger`]): the one way every refusal path closes, so the client reads
/// the error instead of a reset.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) {
    let mut buf = BytesMut::new();
    put_error(&mut buf, Severity::Fatal, code, message);
    // Bounded: a client that does not read cannot hold the task (or its slot) by refusing
    // to take our bytes.
    let _ = tokio::time::timeout(LINGER_TIME, stream.write_all(&buf)).await;
    linger(stream).await;
}

/// Fields of an ErrorResponse/NoticeResponse body, as (field type, value) pairs.
pub fn parse_error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((field, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    out
}

/// Splits a NUL-terminated C string off the front of `buf`.
///
/// # Errors
/// [`WireError::Malformed`] when there is no NUL.
pub fn take_cstr<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], WireError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed(what))?;
    let s = &buf[..end];
    *buf = &buf[end + 1..];
    Ok(s)
}
