//! Raw PostgreSQL wire helpers for tests that must send what a driver never would: framing
//! per the protocol docs ("Message Formats": type byte, Int32 length including itself,
//! body; the StartupMessage has no type byte).

use crate::{DATABASE, STEP_TIMEOUT};
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
    loop {
        let (kind, _) = read_backend_message(s).await?;
        anyhow::ensure!(kind != b'E', "login failed");
        if kind == b'Z' {
            return Ok(());
        }
    }
}
