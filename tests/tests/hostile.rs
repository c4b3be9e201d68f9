//! Hostile input against a running daemon: random bytes, truncated messages, lengths 0, 4
//! and 2^31−1 (before and after authentication), a slow-loris client, a storm of
//! connections that never authenticate, a wrong token repeated, oversized and malformed
//! control messages. Each ends with a clear error or a close of the offending connection
//! only: a live session on the same grant keeps working, the daemon's memory stays bounded,
//! and the canary secret appears nowhere.

use agentd_tests::raw::{frontend_message, read_backend_message, scram_login, startup_packet};
use agentd_tests::*;
use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

/// Everything the listener sends until it closes, bounded by [`STEP_TIMEOUT`].
async fn read_until_close(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut out)).await? {
        // A reset after the listener closed with our bytes unread still ends the connection.
        Ok(_) | Err(_) => Ok(out),
    }
}

/// The SQLSTATE of the first ErrorResponse in `bytes`, if any.
fn sqlstate(bytes: &[u8]) -> Option<String> {
    let start = bytes.iter().position(|&b| b == b'E')?;
    let body = bytes.get(start + 5..)?;
    agentd::listener::postgres::wire::parse_error_fields(body)
        .into_iter()
        .find(|(f, _)| *f == b'C')
        .map(|(_, v)| v)
}

/// A raw connection that has done startup and SCRAM with the grant token and read up to
/// ReadyForQuery.
async fn authenticated(target: &Granted) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", target.port())).await?;
    let user = target.handle["user"].as_str().unwrap_or_default();
    s.write_all(&startup_packet(user)).await?;
    let (kind, _) = read_backend_message(&mut s).await?;
    anyhow::ensure!(kind == b'R');
    scram_login(&mut s, &token(&target.handle)).await?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_truncated_and_extreme_lengths_end_only_their_connection() -> anyhow::Result<()> {
    let target = Granted::start("handshake_timeout = \"2s\"\n").await?;
    let user = target.handle["user"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut tried = 0;

    // Random bytes as the first packet (seeded, so a failure can be replayed). Each client
    // then half-closes: the listener must answer or close, never wait for more.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x8a6e_17d0);
    for _ in 0..64 {
        let len = rng.gen_range(1..4096);
        let garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let mut s = TcpStream::connect(("127.0.0.1", target.port())).await?;
        s.write_all(&garbage).await?;
        s.shutdown().await?;
        let answer = read_until_close(&mut s).await?;
        assert!(
            answer.is_empty() || matches!(answer[0], b'E' | b'N'),
            "unexpected answer to random bytes: {:?}",
            &answer[..answer.len().min(16)]
        );
        tried += 1;
    }

    // Startup packet lengths 0, 4 and 2^31−1, and a truncated StartupMessage.
    let truncated = startup_packet(&user)[..12].to_vec();
    for first in [
        0i32.to_be_bytes().to_vec(),
        4i32.to_be_bytes().to_vec(),
        i32::MAX.to_be_bytes().to_vec(),
        truncated,
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", target.port())).await?;
        s.write_all(&first).await?;
        s.shutdown().await?;
        let answer = read_until_close(&mut s).await?;
        assert!(
            answer.is_empty() || sqlstate(&answer).is_some(),
            "{first:?}: {answer:?}"
        );
        tried += 1;
    }

    // SASLInitialResponse with lengths 0, 4 and 2^31−1, and a truncated one.
    for sasl in [
        b"p\0\0\0\0".to_vec(),
        b"p\0\0\0\x04".to_vec(),
        b"p\x7f\xff\xff\xff".to_vec(),
        frontend_message(b'p', b"SCRAM-SHA-256\0\0\0\0\x20n,,n=,r=abc")[..20].to_vec(),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", target.port())).await?;
        s.write_all(&startup_packet(&user)).await?;
        let (kind, _) = read_backend_message(&mut s).await?;
        assert_eq!(kind, b'R');
        s.write_all(&sasl).await?;
        s.shutdown().await?;
        let answer = read_until_close(&mut s).await?;
        if let Some(code) = sqlstate(&answer) {
            assert!(["08P01", "08006"].contains(&code.as_str()), "{code}");
        }
        tried += 1;
    }

    // After authentication: frontend messages with lengths 0, 4 and 2^31−1. The statement
    // tap stops, the bytes still go to the server, which ends that session; others live.
    for bad in [
        b"Q\0\0\0\0".to_vec(),
        b"Q\0\0\0\x04".to_vec(),
        b"Q\x7f\xff\xff\xff".to_vec(),
    ] {
        let mut s = authenticated(&target).await?;
        s.write_all(&bad).await?;
        s.shutdown().await?;
        let answer = read_until_close(&mut s).await?;
        assert!(
            answer.is_empty() || matches!(answer[0], b'E' | b'I' | b'Z'),
            "{answer:?}"
        );
        tried += 1;
    }
    eprintln!("hostile inputs tried: {tried}");
    assert!(target.daemon.log().contains("session refused"));
    target.bystander_ok().await?;
    target.finish(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_closed_at_the_handshake_timeout() -> anyhow::Result<()> {
    let target = Granted::start("handshake_timeout = \"1s\"\n").await?;
    let user = target.handle["user"].as_str().unwrap_or_default();
    let packet = startup_packet(user);
    let s = TcpStream::connect(("127.0.0.1", target.port())).await?;
    let (mut rd, mut wr) = s.into_split();
    // The attacker: one byte a second (the whole packet would take ~40 s).
    let trickle = tokio::spawn(async move {
        for byte in packet {
            if wr.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, rd.read_to_end(&mut answer)).await??;
    let took = started.elapsed();
    trickle.abort();
    assert_eq!(sqlstate(&answer).as_deref(), Some("08006"), "{answer:?}");
    assert!(String::from_utf8_lossy(&answer).contains("must finish within 1s"));
    assert!(took < Duration::from_secs(10), "closed only after {took:?}");
    assert!(target.daemon.log().contains("handshake timed out after 1s"));
    target.bystander_ok().await?;
    target.finish(&[]).await
}

/// Connections that never authenticate: the number handshaking at once is capped, the rest
/// are refused at once, memory stays bounded. `AGENTD_HOSTILE_CONNECTIONS` sets the storm
/// size (default 300; `scripts/hostile.sh` runs 10,000 with a raised file limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_authenticate_are_capped_and_memory_stays_bounded(
) -> anyhow::Result<()> {
    const CAP: usize = 16;
    let storm: usize = std::env::var("AGENTD_HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let target = Granted::start(&format!(
        "handshake_timeout = \"30s\"\nmax_handshakes = {CAP}\n"
    ))
    .await?;
    let rss_before = vm_rss_kib(target.daemon.pid).unwrap_or(0);

    // Fill every handshake slot with a silent client; one more is refused with 53300.
    let mut holders = Vec::new();
    for _ in 0..CAP {
        holders.push(TcpStream::connect(("127.0.0.1", target.port())).await?);
    }
    let probe = async {
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", target.port())).await?;
            let answer = read_until_close(&mut s).await?;
            if sqlstate(&answer).as_deref() == Some("53300") {
                return anyhow::Ok(String::from_utf8_lossy(&answer).into_owned());
            }
        }
    };
    let refused = tokio::time::timeout(STEP_TIMEOUT, probe).await??;
    assert!(refused.contains("too many connections are authenticating"));

    // The storm: every connection is answered 53300 and closed; none is left waiting. At
    // most STORM_IN_FLIGHT connect at once, so the kernel's listen backlog (not the daemon)
    // is never what refuses them.
    const STORM_IN_FLIGHT: usize = 256;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let port = target.port();
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(STORM_IN_FLIGHT));
    for i in 0..storm {
        let permit = std::sync::Arc::clone(&in_flight).acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            let mut s = TcpStream::connect(("127.0.0.1", port))
                .await
                .with_context(|| format!("storm connection {i}: connect"))?;
            let answer = read_until_close(&mut s)
                .await
                .with_context(|| format!("storm connection {i}: read"))?;
            anyhow::Ok(sqlstate(&answer))
        });
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(r) = tasks.join_next().await {
        let code = r??.unwrap_or_else(|| "closed".to_owned());
        *codes.entry(code).or_default() += 1;
    }
    let rss_peak = vm_rss_kib(target.daemon.pid).unwrap_or(0);
    eprintln!(
        "storm of {storm} unauthenticated connections in {:?}: {codes:?}; daemon VmRSS {rss_before} KiB before, {rss_peak} KiB after",
        started.elapsed()
    );
    assert_eq!(codes.get("53300"), Some(&storm), "{codes:?}");
    // The bystander works while the slots are full (it is already past its handshake).
    let row = target.live.query_one("SELECT 1", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);

    // Closing the silent clients frees the slots: new sessions authenticate again.
    drop(holders);
    let (ok, _, err) = loop {
        let r = psql(&handle_env(&target.handle), "SELECT 1").await?;
        if r.0 || !r.2.contains("53300") && !r.2.contains("too many connections") {
            break r;
        }
    };
    assert!(ok, "{err}");
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "daemon memory grew from {rss_before} KiB to {rss_peak} KiB"
    );
    target.bystander_ok().await?;
    target.finish(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_repeated_is_throttled_and_logged() -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    let wrong = config(&target.handle, "not-the-token");
    let started = Instant::now();
    for attempt in 1..=7 {
        let err = match wrong.connect(NoTls).await {
            Ok(_) => anyhow::bail!("a wrong token was accepted"),
            Err(e) => e,
        };
        let code = err.as_db_error().map(|d| d.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("28P01"), "attempt {attempt}: {err}");
    }
    // Attempts 4..7 are held back 100 + 200 + 400 + 800 ms.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "not throttled: {took:?}"
    );
    let log = target.daemon.log();
    assert!(log.contains("wrong grant token"), "wrong tokens are logged");
    assert!(
        log.contains("answer delayed 800 ms"),
        "the throttle is logged"
    );
    // The right token is not held back.
    target.bystander_ok().await?;
    target.bystander_ok().await?;
    target.finish(&[]).await
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_control_messages_get_an_error_and_the_daemon_carries_on(
) -> anyhow::Result<()> {
    use tokio::net::UnixStream;
    let target = Granted::start("").await?;
    let socket = target.sandbox.socket_path.clone();
    let reply = |mut s: UnixStream| async move {
        let mut out = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut out)).await??;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };

    // Lengths 2^31−1 and 1 MiB + 1: refused before any body is read, with a clear error.
    for len in [i32::MAX as u32, (1 << 20) + 1] {
        let mut s = UnixStream::connect(&socket).await?;
        s.write_all(&len.to_be_bytes()).await?;
        let text = reply(s).await?;
        assert!(
            text.contains("control message too large: the limit is 1048576 bytes"),
            "{text}"
        );
    }
    // Length 0, 4 with a non-request, random bytes: "malformed request", connection stays
    // usable for a good request after them.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let garbage: Vec<u8> = (0..200).map(|_| rng.gen()).collect();
    let mut s = UnixStream::connect(&socket).await?;
    for body in [&b""[..], b"null", &garbage] {
        s.write_all(&frame(body)).await?;
    }
    s.write_all(&frame(br#"{"version":1,"body":{"op":"ping"}}"#))
        .await?;
    s.shutdown().await?;
    let text = reply(s).await?;
    assert_eq!(text.matches("malformed request").count(), 3, "{text}");
    assert!(text.contains("pong"), "{text}");
    // Truncated: a frame announcing 100 bytes, 10 sent, then EOF.
    let mut s = UnixStream::connect(&socket).await?;
    s.write_all(&100u32.to_be_bytes()).await?;
    s.write_all(b"{\"version\"").await?;
    s.shutdown().await?;
    assert_eq!(reply(s).await?, "");

    let status = agentd_cli(&target.sandbox, &["status", "--json"]).await?;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(target
        .daemon
        .log()
        .contains("control message over the size limit"));
    target.bystander_ok().await?;
    target.finish(&[]).await
}
