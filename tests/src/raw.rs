//! Raw PostgreSQL wire helpers for tests that must send what a driver never would: framing
//! per the protocol docs ("Message Formats": type byte, Int32 length including itself,
//! body; the StartupMessage has no type byte).

use crate::{DATABASE, STEP_TIMEOUT};
use anyhow::Context as _;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A frontend message: `kind`, Int32 length (body + 4), `body`.
pub fn frontend_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A StartupMessage for protocol `version` (`3 << 16` is 3.0) with `params` as
/// NUL-terminated name/value pairs.
pub fn startup_message(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A protocol 3.0 StartupMessage for `user` on the demo database.
pub fn startup_packet(user: &str) -> Vec<u8> {
    startup_message(3 << 16, &[("user", user), ("database", DATABASE)])
}

/// Reads one backend message: (type byte, body). The length must be 4 bytes to 1 MiB; the
/// type byte is awaited for at most [`STEP_TIMEOUT`].
///
/// # Errors
/// Timeout, EOF, or a length out of range.
pub async fn read_backend_message(s: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let kind = tokio::time::timeout(STEP_TIMEOUT, s.read_u8()).await??;
    let len = s.read_i32().await?;
    anyhow::ensure!((4..1 << 20).contains(&len), "bad length {len}");
    let mut body = vec![0; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// Completes a SCRAM-SHA-256 login with `password` after the AuthenticationSASL message was
/// read, and reads up to ReadyForQuery.
///
/// # Errors
/// I/O, a failed SCRAM exchange, or an ErrorResponse before ReadyForQuery.
pub async fn scram_login(s: &mut TcpStream, password: &str) -> anyhow::Result<()> {
    scram_login_key(s, password).await.map(|_| ())
}

/// [`scram_login`], returning the BackendKeyData the listener sent: (process id, secret
/// key).
///
/// # Errors
/// As [`scram_login`]; also when no BackendKeyData came before ReadyForQuery.
pub async fn scram_login_key(s: &mut TcpStream, password: &str) -> anyhow::Result<(i32, i32)> {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut first = b"SCRAM-SHA-256\0".to_vec();
    first.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
    first.extend_from_slice(scram.message());
    s.write_all(&frontend_message(b'p', &first)).await?;
    let (_, cont) = read_backend_message(s).await?;
    scram.update(&cont[4..])?;
    s.write_all(&frontend_message(b'p', scram.message()))
        .await?;
    let (_, fin) = read_backend_message(s).await?;
    scram.finish(&fin[4..])?;
    let mut key = None;
    loop {
        let (kind, body) = read_backend_message(s).await?;
        anyhow::ensure!(kind != b'E', "login failed");
        if kind == b'K' && body.len() == 8 {
            key = Some((
                i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            ));
        }
        if kind == b'Z' {
            return key.context("no BackendKeyData before ReadyForQuery");
        }
    }
}

/// What a simple Query returned, read up to ReadyForQuery: the text of every DataRow
/// column (`None` for NULL), the NotificationResponses (sender pid, channel, payload) and
/// the SQLSTATE of an ErrorResponse, if any.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// DataRow columns as text.
    pub rows: Vec<Vec<Option<String>>>,
    /// NotificationResponse: (process id, channel, payload).
    pub notifications: Vec<(i32, String, String)>,
    /// The SQLSTATE of the ErrorResponse, if one came.
    pub error: Option<String>,
}

/// Sends `sql` as a simple Query and reads up to ReadyForQuery.
///
/// # Errors
/// I/O, EOF, or a malformed message.
pub async fn simple_query(s: &mut TcpStream, sql: &str) -> anyhow::Result<QueryResult> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&frontend_message(b'Q', &body)).await?;
    let mut out = QueryResult::default();
    loop {
        let (kind, body) = read_backend_message(s).await?;
        match kind {
            b'D' => out.rows.push(data_row(&body).context("malformed DataRow")?),
            b'A' => {
                let pid = i32::from_be_bytes(body.get(..4).context("short A")?.try_into()?);
                let mut parts = body[4..].split(|&b| b == 0);
                let channel = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let payload = String::from_utf8_lossy(parts.next().unwrap_or_default());
                out.notifications
                    .push((pid, channel.into_owned(), payload.into_owned()));
            }
            b'E' => out.error = error_code(&body),
            b'Z' => return Ok(out),
            _ => {}
        }
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
pub fn error_code(body: &[u8]) -> Option<String> {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut row = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
        } else {
            let value = rest.get(..len as usize)?;
            row.push(Some(String::from_utf8_lossy(value).into_owned()));
            rest = &rest[len as usize..];
        }
    }
    Some(row)
}
