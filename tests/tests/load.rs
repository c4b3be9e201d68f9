//! Load: many concurrent proxied sessions running queries while grants are requested and
//! revoked on the control socket. Counts every statement sent and every `statement` record
//! in the audit log after a SIGTERM shutdown (records lost must be 0), errors (must be 0)
//! and the daemon's VmRSS at baseline, peak and after the sessions closed.
//!
//! Ignored in the default run; `scripts/load.sh` runs it in release mode with
//! `AGENTD_LOAD_SESSIONS` (default 500) and `AGENTD_LOAD_SECONDS` (default 60).

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: run by scripts/load.sh"]
async fn sessions_queries_and_grant_churn_lose_no_record() -> anyhow::Result<()> {
    let sessions = env_or("AGENTD_LOAD_SESSIONS", 500) as usize;
    let seconds = env_or("AGENTD_LOAD_SECONDS", 60);
    let sandbox = sandbox(SandboxOptions::default()).await?;
    sandbox.cluster.psql(
        "postgres",
        &format!("ALTER SYSTEM SET max_connections = {};", sessions + 100),
    )?;
    sandbox.cluster.stop()?;
    sandbox.cluster.start_again()?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let granted = request_via_cli(&sandbox, "30m").await?.json()?;
    let grant_id = grant_id(&granted);
    let handle = granted["handle"].clone();
    let rss_base = vm_rss_kib(daemon.pid).unwrap_or(0);

    // Open the sessions the way a pool ramps up: at most 32 handshakes at a time.
    let ramp = Arc::new(tokio::sync::Semaphore::new(32));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (ramp, cfg) = (ramp.clone(), config(&handle, &token(&handle)));
        opening.spawn(async move {
            let _slot = ramp.acquire().await?;
            let (client, conn) = cfg.connect(NoTls).await?;
            tokio::spawn(conn);
            anyhow::Ok(client)
        });
    }
    let mut clients = Vec::with_capacity(sessions);
    while let Some(c) = opening.join_next().await {
        clients.push(c??);
    }

    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut work = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (sent, errors) = (sent.clone(), errors.clone());
        work.spawn(async move {
            let mut n = 0i32;
            while Instant::now() < deadline {
                n = n.wrapping_add(1);
                // Alternate the simple (Query) and extended (Parse/Bind/Execute) protocol;
                // each call is one statement record.
                let ok = if n % 2 == 0 {
                    client
                        .simple_query("SELECT count(*) FROM orders")
                        .await
                        .is_ok()
                } else {
                    client.query("SELECT $1::int + 1", &[&n]).await.is_ok()
                };
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if i == 0 && n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            drop(client);
        });
    }

    // Grant/revoke churn on the control socket and an RSS sampler, until the deadline.
    let churn = {
        let sandbox_ref = &sandbox;
        async move {
            let (mut ops, mut failures) = (0u64, 0u64);
            while Instant::now() < deadline {
                let ok = match request_via_cli(sandbox_ref, "1m").await {
                    Ok(out) => {
                        let id = agentd_tests::grant_id(&out.json()?);
                        agentd_cli(sandbox_ref, &["revoke", &id]).await?.code == 0
                    }
                    Err(_) => false,
                };
                ops += 2;
                failures += u64::from(!ok);
            }
            anyhow::Ok((ops, failures))
        }
    };
    let pid = daemon.pid;
    let sampler = async move {
        let mut peak = 0;
        while Instant::now() < deadline {
            peak = peak.max(vm_rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        peak
    };
    let ((churn_ops, churn_failures), rss_peak) =
        tokio::try_join!(churn, async { anyhow::Ok(sampler.await) })?;
    while let Some(r) = work.join_next().await {
        r?;
    }

    // Sessions closed: wait until the daemon has none, then read its memory.
    let drained = Instant::now() + STEP_TIMEOUT;
    loop {
        let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
        let live: u64 = status["grants"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["connections"].as_u64()).sum())
            .unwrap_or(0);
        if live == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < drained, "{live} sessions still open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_after = vm_rss_kib(daemon.pid).unwrap_or(0);
    let log = daemon.log();
    let exit = daemon.stop().await?;
    anyhow::ensure!(exit.success(), "daemon exit {exit}");

    // Count: every statement sent is in the log (after SIGTERM: queued records included).
    let audit = agentd_cli(&sandbox, &["audit", "--json"]).await?;
    let (mut recorded, mut dropped) = (0u64, 0u64);
    for line in audit.stdout.lines() {
        let r: serde_json::Value = serde_json::from_str(line)?;
        match r["event"].as_str() {
            Some("statement") if r["grant_id"] == grant_id.as_str() => recorded += 1,
            Some("statements_dropped") => dropped += r["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    let verify = agentd_cli(&sandbox, &["audit", "verify", "--json"]).await?;
    let sent = sent.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let figures = serde_json::json!({
        "sessions": sessions, "seconds": seconds, "statements_sent": sent,
        "statement_records": recorded, "records_lost": sent.saturating_sub(recorded),
        "statements_dropped": dropped, "query_errors": errors,
        "churn_control_ops": churn_ops, "churn_failures": churn_failures,
        "rss_kib": {"baseline": rss_base, "peak": rss_peak, "after": rss_after},
        "audit_verify_exit": verify.code,
    });
    println!("LOAD FIGURES {figures}");
    assert_eq!(errors, 0, "query errors");
    assert_eq!(churn_failures, 0, "grant/revoke churn failures");
    assert_eq!(dropped, 0, "statement records dropped");
    assert_eq!(recorded, sent, "statement records lost");
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(
        rss_after < rss_base + 64 * 1024,
        "RSS {rss_base} KiB → {rss_after} KiB after the sessions closed"
    );
    assert_sandbox_clean(
        &sandbox,
        &[
            ("daemon log".to_owned(), log),
            ("audit".to_owned(), audit.stdout),
        ],
    )?;
    Ok(())
}
