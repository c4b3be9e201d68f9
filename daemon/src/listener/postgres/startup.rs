//! The startup phase: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.
//!
//! Source: PostgreSQL docs, "Frontend/Backend Protocol" → "Start-up" and "Message Formats"
//! (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest). A startup packet is an Int32
//! length (counting itself), an Int32 code, then a body; we cap it at
//! [`MAX_STARTUP_PACKET_BYTES`] as Neon's proxy does.

use super::cancel::{BackendKey, CANCEL_REQUEST_CODE};
use super::wire::{take_cstr, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest startup packet accepted, in bytes.
pub const MAX_STARTUP_PACKET_BYTES: usize = 10_000;

/// Protocol 3.0 as sent in StartupMessage (`196608`).
pub const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// A parsed StartupMessage.
#[derive(Debug, Clone, Default)]
pub struct StartupParams {
    /// `user`.
    pub user: String,
    /// `database` (defaults to `user` in libpq; empty when not sent).
    pub database: Option<String>,
    /// Every other parameter in arrival order (`application_name`, `client_encoding`, …).
    pub options: Vec<(String, String)>,
    /// The minor protocol version the client asked for (3.x); we speak 3.0.
    pub protocol_minor: i32,
    /// `_pq_.*` protocol options the client sent; we support none of them.
    pub protocol_options: Vec<String>,
}

impl StartupParams {
    /// True when the client must be sent NegotiateProtocolVersion: it asked for a newer
    /// minor version than 3.0 or for `_pq_.*` options.
    pub fn needs_negotiation(&self) -> bool {
        self.protocol_minor > 0 || !self.protocol_options.is_empty()
    }

    /// Value of a parameter other than `user`/`database`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the client asked for in its first packet(s).
#[derive(Debug)]
pub enum Startup {
    /// A StartupMessage for protocol 3.0.
    Session(StartupParams),
    /// A CancelRequest carrying the BackendKeyData we gave a session.
    Cancel(BackendKey),
}

/// Startup failures; the message is safe to send to the client.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Socket failure or framing error.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A protocol version we do not speak.
    #[error("unsupported frontend protocol {major}.{minor}: agentd supports 3.0 (and answers 3.x with NegotiateProtocolVersion)")]
    UnsupportedProtocol {
        /// Major version.
        major: i32,
        /// Minor version.
        minor: i32,
    },
    /// A replication connection.
    #[error("replication connections are not allowed through agentd")]
    Replication,
    /// No `user` parameter.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// The client asked for SSL/GSS twice or in the wrong order.
    #[error("unexpected {0} after encryption negotiation")]
    Sequence(&'static str),
}

/// Runs the startup phase: answers SSLRequest and GSSENCRequest with `N` (the local listener
/// is plaintext on loopback), then returns the StartupMessage or CancelRequest.
///
/// # Errors
/// [`StartupError`] for truncated, oversized or unknown packets.
pub async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Startup, StartupError> {
    let mut negotiated = false;
    loop {
        let (code, body) = read_startup_packet(stream).await?;
        match code {
            SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
                if negotiated && code == SSL_REQUEST_CODE {
                    return Err(StartupError::Sequence("SSLRequest"));
                }
                negotiated = true;
                stream.write_all(b"N").await.map_err(WireError::Io)?;
                stream.flush().await.map_err(WireError::Io)?;
            }
            CANCEL_REQUEST_CODE => return parse_cancel(&body),
            code if code >> 16 == 3 => {
                let mut params = parse_startup_params(&body)?;
                params.protocol_minor = code & 0xffff;
                return Ok(Startup::Session(params));
            }
            other => {
                return Err(StartupError::UnsupportedProtocol {
                    major: other >> 16,
                    minor: other & 0xffff,
                })
            }
        }
    }
}

/// Appends a NegotiateProtocolVersion message: we speak 3.0 and none of `options`.
///
/// Format ("Message Formats" → NegotiateProtocolVersion): `v`, Int32 length, Int32 newest
/// minor version supported, Int32 count of unrecognised options, then each option name
/// as a String.
pub fn put_negotiate_protocol_version(buf: &mut bytes::BytesMut, options: &[String]) {
    let mut body = Vec::with_capacity(8 + options.iter().map(|o| o.len() + 1).sum::<usize>());
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(options.len() as i32).to_be_bytes());
    for option in options {
        body.extend_from_slice(option.as_bytes());
        body.push(0);
    }
    super::wire::put_message(buf, b'v', &body);
}

/// Reads one startup packet: (code, body after the code).
async fn read_startup_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<(i32, Vec<u8>), WireError> {
    let length = r.read_i32().await?;
    if length < 8 || length as usize > MAX_STARTUP_PACKET_BYTES {
        return Err(WireError::BadLength {
            kind: '\0',
            length: i64::from(length),
            max: MAX_STARTUP_PACKET_BYTES,
        });
    }
    let code = r.read_i32().await?;
    let mut body = vec![0u8; length as usize - 8];
    r.read_exact(&mut body).await?;
    Ok((code, body))
}

fn parse_cancel(body: &[u8]) -> Result<Startup, StartupError> {
    BackendKey::from_body(body)
        .map(Startup::Cancel)
        .ok_or_else(|| WireError::Malformed("CancelRequest").into())
}

/// Parses the NUL-terminated name/value pairs of a StartupMessage body.
fn parse_startup_params(body: &[u8]) -> Result<StartupParams, StartupError> {
    let mut rest = body;
    let mut params = StartupParams::default();
    let mut user = None;
    loop {
        let name = take_cstr(&mut rest, "StartupMessage parameter name")?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest, "StartupMessage parameter value")?;
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        match name.as_str() {
            "user" => user = Some(value),
            "database" => params.database = Some(value),
            "replication" if value != "false" && value != "off" && value != "0" => {
                return Err(StartupError::Replication)
            }
            _ if name.starts_with("_pq_.") => params.protocol_options.push(name),
            _ => params.options.push((name, value)),
        }
    }
    params.user = user.filter(|u| !u.is_empty()).ok_or(StartupError::NoUser)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[tokio::test]
    async fn ssl_then_startup() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut input = packet(SSL_REQUEST_CODE, &[]);
        input.extend(packet(
            PROTOCOL_3_0,
            b"user\0g_1\0database\0app\0application_name\0x\0\0",
        ));
        client.write_all(&input).await.unwrap();
        let got = read_startup(&mut server).await.unwrap();
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        match got {
            Startup::Session(p) => {
                assert_eq!(p.user, "g_1");
                assert_eq!(p.database.as_deref(), Some("app"));
                assert_eq!(p.get("application_name"), Some("x"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_truncated_and_unknown_are_errors() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&100_000i32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_startup(&mut server).await,
            Err(StartupError::Wire(WireError::BadLength { .. }))
        ));

        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(&packet(PROTOCOL_3_0, b"user\0x")[..10])
            .await
            .unwrap();
        drop(client);
        assert!(read_startup(&mut server).await.is_err());

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&packet(2 << 16, b"\0")).await.unwrap();
        assert!(matches!(
            read_startup(&mut server).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));

        let (mut client, mut server) = tokio::io::duplex(256);
        client
            .write_all(&packet(PROTOCOL_3_0, b"user\0u\0replication\0database\0\0"))
            .await
            .unwrap();
        assert!(matches!(
            read_startup(&mut server).await,
            Err(StartupError::Replication)
        ));
    }

    #[tokio::test]
    async fn protocol_3_2_and_pq_options_are_kept_for_negotiation() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let code = (3 << 16) | 2;
        client
            .write_all(&packet(code, b"user\0u\0_pq_.command_marker\0x\0\0"))
            .await
            .unwrap();
        let Startup::Session(p) = read_startup(&mut server).await.unwrap() else {
            panic!("expected a session")
        };
        assert_eq!(p.protocol_minor, 2);
        assert_eq!(p.protocol_options, ["_pq_.command_marker"]);
        assert!(p.options.is_empty());
        assert!(p.needs_negotiation());
        let mut buf = bytes::BytesMut::new();
        put_negotiate_protocol_version(&mut buf, &p.protocol_options);
        assert_eq!(
            &buf[..],
            b"v\0\0\0\x20\0\0\0\0\0\0\0\x01_pq_.command_marker\0"
        );
    }
}
