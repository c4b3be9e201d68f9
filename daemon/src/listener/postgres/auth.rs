//! Client authentication to the listener: SCRAM-SHA-256 with the grant's token as password.
//!
//! Sources: RFC 5802 (SCRAM), RFC 7677 (SCRAM-SHA-256), and the PostgreSQL docs
//! "Frontend/Backend Protocol" → "SASL Authentication". We offer only `SCRAM-SHA-256`
//! (no channel binding: the listener is plaintext on loopback). The expensive PBKDF2 step
//! runs once per grant ([`ScramVerifier::derive`]); each connection does two HMACs and a
//! hash, and the proof is compared in constant time.

use super::wire::{self, put_authentication, take_cstr, WireError, MAX_AUTH_MESSAGE_BYTES};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, ZeroizeOnDrop};

const MECHANISM: &str = "SCRAM-SHA-256";
/// PBKDF2 iteration count, as PostgreSQL's default `scram_iterations`.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The server-side SCRAM secrets for one grant token (RFC 5802 §3: StoredKey, ServerKey).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ScramVerifier {
    salt: [u8; 16],
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier([REDACTED])")
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl ScramVerifier {
    /// Derives the verifier from `token` with a fresh random salt. CPU-heavy (PBKDF2 with
    /// [`SCRAM_ITERATIONS`] rounds, a few milliseconds): call once per grant, off the async
    /// threads.
    pub fn derive(token: &SecretString) -> Self {
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            token.expose_secret().as_bytes(),
            &salt,
            SCRAM_ITERATIONS,
            &mut salted,
        );
        let mut client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        salted.zeroize();
        client_key.zeroize();
        Self {
            salt,
            iterations: SCRAM_ITERATIONS,
            stored_key,
            server_key,
        }
    }
}

/// Why client authentication failed. `Display` is safe for the log; what the client sees is
/// decided by the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Socket or framing failure.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The client's SCRAM messages do not follow RFC 5802.
    #[error("SCRAM protocol violation: {0}")]
    Protocol(&'static str),
    /// The proof did not match: wrong token.
    #[error("wrong token")]
    WrongToken,
}

/// Runs the SCRAM-SHA-256 exchange with the client. On success the client has been sent
/// AuthenticationSASLFinal (but not yet AuthenticationOk).
///
/// # Errors
/// [`AuthError::WrongToken`] when the proof does not verify; other variants for malformed
/// messages or I/O failures.
pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    verifier: &ScramVerifier,
) -> Result<(), AuthError> {
    let mut out = BytesMut::new();
    put_authentication(&mut out, 10, format!("{MECHANISM}\0\0").as_bytes());
    write_all(stream, &out).await?;

    // SASLInitialResponse: mechanism, Int32 length, client-first-message.
    let msg = wire::read_message(stream, MAX_AUTH_MESSAGE_BYTES).await?;
    if msg.kind != b'p' {
        return Err(AuthError::Protocol("expected SASLInitialResponse"));
    }
    let mut body = msg.body.as_slice();
    let mechanism = take_cstr(&mut body, "SASLInitialResponse mechanism")?;
    if mechanism != MECHANISM.as_bytes() {
        return Err(AuthError::Protocol("unsupported SASL mechanism"));
    }
    if body.len() < 4 {
        return Err(AuthError::Protocol("truncated SASLInitialResponse"));
    }
    let client_first = std::str::from_utf8(&body[4..])
        .map_err(|_| AuthError::Protocol("client-first-message is not UTF-8"))?;
    let (gs2_header, client_first_bare) = split_gs2_header(client_first)?;
    let client_nonce = attribute(client_first_bare, 'r')
        .ok_or(AuthError::Protocol("client-first-message has no nonce"))?;

    let mut server_nonce_bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut server_nonce_bytes);
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce_bytes));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(verifier.salt),
        verifier.iterations
    );
    out.clear();
    put_authentication(&mut out, 11, server_first.as_bytes());
    write_all(stream, &out).await?;

    // SASLResponse: client-final-message.
    let msg = wire::read_message(stream, MAX_AUTH_MESSAGE_BYTES).await?;
    if msg.kind != b'p' {
        return Err(AuthError::Protocol("expected SASLResponse"));
    }
    let client_final = std::str::from_utf8(&msg.body)
        .map_err(|_| AuthError::Protocol("client-final-message is not UTF-8"))?;
    let (without_proof, proof_b64) = client_final
        .rsplit_once(",p=")
        .ok_or(AuthError::Protocol("client-final-message has no proof"))?;
    if attribute(without_proof, 'c') != Some(&B64.encode(gs2_header)) {
        return Err(AuthError::Protocol("channel binding data does not match"));
    }
    if attribute(without_proof, 'r') != Some(nonce.as_str()) {
        return Err(AuthError::Protocol("nonce does not match"));
    }
    let proof = B64
        .decode(proof_b64)
        .map_err(|_| AuthError::Protocol("proof is not base64"))?;
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    if !verify_proof(verifier, auth_message.as_bytes(), &proof) {
        return Err(AuthError::WrongToken);
    }
    let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
    out.clear();
    put_authentication(
        &mut out,
        12,
        format!("v={}", B64.encode(server_signature)).as_bytes(),
    );
    write_all(stream, &out).await?;
    Ok(())
}

/// Checks `ClientProof` against `StoredKey` in constant time (RFC 5802 §3).
fn verify_proof(verifier: &ScramVerifier, auth_message: &[u8], proof: &[u8]) -> bool {
    if proof.len() != 32 {
        return false;
    }
    let client_signature = hmac(&verifier.stored_key, auth_message);
    let mut client_key = [0u8; 32];
    for (i, byte) in client_key.iter_mut().enumerate() {
        *byte = proof[i] ^ client_signature[i];
    }
    let computed: [u8; 32] = Sha256::digest(client_key).into();
    client_key.zeroize();
    computed.ct_eq(&verifier.stored_key).into()
}

/// Splits `gs2-header` (`n,,` or `y,,`) from `client-first-message-bare`.
fn split_gs2_header(msg: &str) -> Result<(&str, &str), AuthError> {
    let bytes = msg.as_bytes();
    let cb_ok = matches!(bytes.first(), Some(b'n') | Some(b'y'));
    if !cb_ok || bytes.get(1) != Some(&b',') {
        return Err(AuthError::Protocol(
            "channel binding is not offered on this listener",
        ));
    }
    // gs2-header = cbind-flag "," [authzid] ","
    let second_comma = msg[2..]
        .find(',')
        .map(|i| i + 2)
        .ok_or(AuthError::Protocol("malformed gs2 header"))?;
    Ok((&msg[..=second_comma], &msg[second_comma + 1..]))
}

/// The value of attribute `name` in a comma-separated SCRAM message.
fn attribute(msg: &str, name: char) -> Option<&str> {
    msg.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, buf: &[u8]) -> Result<(), AuthError> {
    stream.write_all(buf).await.map_err(WireError::Io)?;
    stream.flush().await.map_err(WireError::Io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::AsyncReadExt;

    /// Drives our server side with postgres-protocol's client implementation.
    async fn run(token: &str, presented: &str) -> Result<(), AuthError> {
        let verifier = ScramVerifier::derive(&SecretString::from(token.to_owned()));
        let (mut client, mut server) = tokio::io::duplex(8192);
        let presented = presented.to_owned();
        let client_task = tokio::spawn(async move {
            let mut hdr = [0u8; 5];
            client.read_exact(&mut hdr).await.ok()?;
            let mut body =
                vec![0u8; i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize - 4];
            client.read_exact(&mut body).await.ok()?;
            let mut scram = ScramSha256::new(presented.as_bytes(), ChannelBinding::unsupported());
            let mut out = BytesMut::new();
            let mut first = b"SCRAM-SHA-256\0".to_vec();
            first.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
            first.extend_from_slice(scram.message());
            wire::put_message(&mut out, b'p', &first);
            client.write_all(&out).await.ok()?;
            let msg = wire::read_message(&mut client, 10_000).await.ok()?;
            scram.update(&msg.body[4..]).ok()?;
            out.clear();
            wire::put_message(&mut out, b'p', scram.message());
            client.write_all(&out).await.ok()?;
            let msg = wire::read_message(&mut client, 10_000).await.ok()?;
            scram.finish(&msg.body[4..]).ok()
        });
        let result = authenticate_client(&mut server, &verifier).await;
        drop(server);
        let client_ok = client_task.await.ok().flatten().is_some();
        assert_eq!(
            client_ok,
            result.is_ok(),
            "client must verify the server signature exactly when auth succeeds"
        );
        result
    }

    #[tokio::test]
    async fn right_token_authenticates_and_server_signature_verifies() {
        run("tok-123", "tok-123").await.unwrap();
    }

    #[tokio::test]
    async fn wrong_token_is_refused() {
        assert!(matches!(
            run("tok-123", "tok-124").await,
            Err(AuthError::WrongToken)
        ));
    }

    #[test]
    fn verifier_debug_is_redacted() {
        let v = ScramVerifier::derive(&SecretString::from("canary-token".to_owned()));
        assert_eq!(format!("{v:?}"), "ScramVerifier([REDACTED])");
    }
}
