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
