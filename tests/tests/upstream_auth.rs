//! No authentication downgrade to the upstream. A fake upstream (real TLS with an rcgen
//! certificate, written here) asks for a cleartext password, an md5 hash, or SCRAM without
//! channel binding; the daemon must refuse to send anything derived from the secret unless
//! the resource opts in, and must tell the client why. Against the real cluster (which
//! offers SCRAM-SHA-256-PLUS over TLS), `channel_binding = "require"` logs in.

use agentd::demo::{Sandbox, SandboxOptions};
use agentd_tests::*;
use secrecy::ExposeSecret as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The authentication request the fake upstream sends after the StartupMessage.
#[derive(Clone, Copy)]
enum Ask {
    Cleartext,
    Md5,
    /// AuthenticationSASL offering only SCRAM-SHA-256 (no PLUS), though TLS is on.
    ScramWithoutPlus,
}

/// What the fake upstream received after its authentication request: the password
/// message's body, or `None` when the daemon closed without answering.
type Answer = Option<Vec<u8>>;

/// A one-connection fake PostgreSQL server: SSLRequest → `S`, TLS with a fresh rcgen
/// certificate, StartupMessage, then `ask`; reports the answer and ends with FATAL 28P01.
async fn fake_upstream(
    ask: Ask,
) -> anyhow::Result<(u16, tokio::task::JoinHandle<anyhow::Result<Answer>>)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await?;
        let mut ssl_request = [0u8; 8];
        tcp.read_exact(&mut ssl_request).await?;
        anyhow::ensure!(
            ssl_request[4..] == [0x04, 0xd2, 0x16, 0x2f],
            "expected SSLRequest"
        );
        tcp.write_all(b"S").await?;
        let mut tls = acceptor.accept(tcp).await?;
        let len = tls.read_i32().await?;
        anyhow::ensure!((8..10_000).contains(&len), "startup length {len}");
        let mut startup = vec![0u8; len as usize - 4];
        tls.read_exact(&mut startup).await?;
        let mut request = Vec::new();
        match ask {
            Ask::Cleartext => request.extend_from_slice(&3i32.to_be_bytes()),
            Ask::Md5 => {
                request.extend_from_slice(&5i32.to_be_bytes());
                request.extend_from_slice(&[1, 2, 3, 4]);
            }
            Ask::ScramWithoutPlus => {
                request.extend_from_slice(&10i32.to_be_bytes());
                request.extend_from_slice(b"SCRAM-SHA-256\0\0");
            }
        }
        tls.write_all(&backend_message(b'R', &request)).await?;
        let answer = match tokio::time::timeout(STEP_TIMEOUT, tls.read_u8()).await? {
            Ok(b'p') => {
                let len = tls.read_i32().await?;
                anyhow::ensure!((4..10_000).contains(&len), "password message length {len}");
                let mut body = vec![0u8; len as usize - 4];
                tls.read_exact(&mut body).await?;
                Some(body)
            }
            Ok(other) => anyhow::bail!("unexpected message {:?}", other as char),
            Err(_) => None, // closed
        };
        let _ = tls
            .write_all(&backend_message(
                b'E',
                b"SFATAL\0C28P01\0Mfake upstream\0\0",
            ))
            .await;
        let _ = tls.shutdown().await;
        Ok(answer)
    });
    Ok((port, task))
}

fn backend_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Points the sandbox's resource at `port` (when given) with `tls` and extra resource keys.
fn rewrite_resource(
    sandbox: &Sandbox,
    port: Option<u16>,
    tls: &str,
    extra: &str,
) -> anyhow::Result<()> {
    let mut config = std::fs::read_to_string(&sandbox.config_path)?;
    if let Some(port) = port {
        let old = format!("port = {}\n", sandbox.cluster.port);
        anyhow::ensure!(config.contains(&old));
        config = config.replacen(&old, &format!("port = {port}\n"), 1);
    }
    anyhow::ensure!(config.contains("tls = \"verify-full\"\n"));
    config = config.replacen(
        "tls = \"verify-full\"\n",
        &format!("tls = \"{tls}\"\n{extra}\n"),
        1,
    );
    std::fs::write(&sandbox.config_path, config)?;
    Ok(())
}

/// Runs psql through a grant against a fake upstream that asks `ask`, with the resource's
/// `tls = "require"` plus `extra`. Returns what the fake received and psql's stderr; checks
/// the secret leaked nowhere (files, psql output).
async fn login_against_fake(ask: Ask, extra: &str) -> anyhow::Result<(Answer, String, Sandbox)> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let (port, fake) = fake_upstream(ask).await?;
    rewrite_resource(&sandbox, Some(port), "require", extra)?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
    let (ok, out, err) = psql(&handle_env(&handle), "SELECT 1").await?;
    assert!(
        !ok,
        "a login through the fake upstream cannot succeed: {out}"
    );
    let answer = tokio::time::timeout(STEP_TIMEOUT, fake).await???;
    let log = daemon.log();
    daemon.stop().await?;
    assert_sandbox_clean(
        &sandbox,
        &[
            ("psql stdout".to_owned(), out),
            ("psql stderr".to_owned(), err.clone()),
            ("daemon log".to_owned(), log),
        ],
    )?;
    Ok((answer, err, sandbox))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_request_without_verify_full_is_refused() -> anyhow::Result<()> {
    let (answer, err, _sandbox) = login_against_fake(Ask::Cleartext, "").await?;
    assert!(
        answer.is_none(),
        "the daemon answered a cleartext-password request"
    );
    assert!(err.contains("asked for a cleartext password"), "{err}");
    assert!(err.contains("verify-full"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_request_without_verify_full_is_refused() -> anyhow::Result<()> {
    let (answer, err, _sandbox) = login_against_fake(Ask::Md5, "").await?;
    assert!(answer.is_none(), "the daemon answered an md5 request");
    assert!(err.contains("asked for an md5 password hash"), "{err}");
    Ok(())
}

/// The opt-in by name: `allow_weak_auth = true` answers the cleartext request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_weak_auth_answers_cleartext() -> anyhow::Result<()> {
    let (answer, _err, sandbox) =
        login_against_fake(Ask::Cleartext, "allow_weak_auth = true").await?;
    let mut expected = sandbox
        .upstream_password
        .expose_secret()
        .as_bytes()
        .to_vec();
    expected.push(0);
    assert!(
        answer == Some(expected),
        "the opted-in resource did not send its password"
    );
    Ok(())
}

/// `channel_binding = "require"`: SCRAM without PLUS is refused before the client-first
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_require_refuses_scram_without_plus() -> anyhow::Result<()> {
    let (answer, err, _sandbox) =
        login_against_fake(Ask::ScramWithoutPlus, "channel_binding = \"require\"").await?;
    assert!(
        answer.is_none(),
        "the daemon started SCRAM without channel binding"
    );
    assert!(err.contains("does not offer SCRAM-SHA-256-PLUS"), "{err}");
    Ok(())
}

/// The default (`prefer`) over TLS when the server offers no PLUS: plain SCRAM-SHA-256 with
/// the `y` flag, so a server that does support binding sees the offer was stripped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_prefer_flags_a_missing_plus_offer() -> anyhow::Result<()> {
    let (answer, _err, _sandbox) = login_against_fake(Ask::ScramWithoutPlus, "").await?;
    let body = answer.ok_or_else(|| anyhow::anyhow!("no SASLInitialResponse"))?;
    let (mechanism, rest) = body.split_at(body.iter().position(|&b| b == 0).unwrap_or(body.len()));
    assert_eq!(mechanism, b"SCRAM-SHA-256");
    let client_first = rest.get(5..).unwrap_or_default();
    assert!(
        client_first.starts_with(b"y,,n=,r="),
        "{:?}",
        String::from_utf8_lossy(client_first)
    );
    Ok(())
}

/// The real cluster offers SCRAM-SHA-256-PLUS over TLS: `channel_binding = "require"` logs
/// in (it refuses anything else), and so does `disable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_logs_in_with_scram_sha_256_plus() -> anyhow::Result<()> {
    for mode in ["require", "disable"] {
        let sandbox = sandbox(SandboxOptions::default()).await?;
        let ca = sandbox.cluster.ca_file.display().to_string();
        // Keep verify-full (and its CA) and add the binding mode.
        let config = std::fs::read_to_string(&sandbox.config_path)?;
        let config = config.replacen(
            &format!("ca_file = \"{ca}\"\n"),
            &format!("ca_file = \"{ca}\"\nchannel_binding = \"{mode}\"\n"),
            1,
        );
        std::fs::write(&sandbox.config_path, config)?;
        let daemon = DaemonProcess::start(&sandbox).await?;
        let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
        let (ok, out, err) = psql(
            &handle_env(&handle),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await?;
        assert!(ok, "channel_binding = {mode}: {err}");
        assert_eq!(out.trim(), "t");
        let log = daemon.log();
        daemon.stop().await?;
        assert_sandbox_clean(
            &sandbox,
            &[
                ("psql stdout".to_owned(), out),
                ("psql stderr".to_owned(), err),
                ("daemon log".to_owned(), log),
            ],
        )?;
    }
    Ok(())
}
