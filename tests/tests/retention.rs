//! Bounded memory: ended grants and decided requests leave the daemon's memory after
//! `[daemon] retention`, so churning through many grants keeps its RSS bounded, while
//! `agentd requests --all` shows what is still retained and the audit log keeps everything.

use agentd::demo::SandboxOptions;
use agentd_proto::{AccessRequestSpec, AgentInfo, Client, Request, Response};
use agentd_tests::*;
use std::time::Duration;

/// Grants to churn through: 1,000 by default so `cargo test` stays within minutes (each
/// grant derives a SCRAM verifier, PBKDF2 with 4,096 rounds, slow in a debug build);
/// `AGENTD_CHURN_GRANTS=10000` runs the long version.
fn churn_count() -> usize {
    std::env::var("AGENTD_CHURN_GRANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// One grant: request (auto-approved) then release, straight over the control socket.
async fn one_grant(client: &mut Client) -> anyhow::Result<String> {
    let spec = AccessRequestSpec {
        resource: RESOURCE.to_owned(),
        permission: PERMISSION.to_owned(),
        duration_seconds: Some(600),
        justification: "churn".to_owned(),
        agent: AgentInfo {
            agent_type: "churn".to_owned(),
            ..Default::default()
        },
    };
    let Response::AccessRequest(view) = client.call(Request::RequestAccess(spec)).await? else {
        anyhow::bail!("unexpected answer to RequestAccess");
    };
    let grant = view
        .grant
        .map(|g| g.id)
        .ok_or_else(|| anyhow::anyhow!("no grant: {:?}", view.message))?;
    let released = client
        .call(Request::Release {
            grant_id: grant.clone(),
        })
        .await?;
    anyhow::ensure!(
        matches!(released, Response::Revoked { .. }),
        "release failed: {released:?}"
    );
    Ok(grant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_churn_keeps_memory_bounded() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        extra_daemon_toml: "retention = \"1s\"\n".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    // Point the resource at a closed port: grants open without the upstream, and the login
    // check after each grant fails at once (not a refused login, so nothing is marked).
    let config = std::fs::read_to_string(&sandbox.config_path)?;
    let port_line = format!("port = {}", sandbox.cluster.port);
    anyhow::ensure!(config.contains(&port_line), "config has no {port_line}");
    std::fs::write(&sandbox.config_path, config.replace(&port_line, "port = 1"))?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mut client = Client::connect(&sandbox.socket_path).await?;

    let total = churn_count();
    let warmup = (total / 10).max(1);
    for _ in 0..warmup {
        one_grant(&mut client).await?;
    }
    let rss_warm = vm_rss_kib(daemon.pid).unwrap_or(0);
    let mut last = String::new();
    for _ in warmup..total {
        last = one_grant(&mut client).await?;
    }
    let rss_end = vm_rss_kib(daemon.pid).unwrap_or(0);

    // Within the retention the last grant is still there; after it, everything is gone.
    let listed = agentd_cli(&sandbox, &["requests", "--all", "--json"]).await?;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let retained = listed.json()?.as_array().map_or(0, Vec::len);
    assert!(
        retained < total / 2,
        "{retained} of {total} requests still retained"
    );
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let listed = agentd_cli(&sandbox, &["requests", "--all", "--json"])
            .await?
            .json()?;
        let ids: Vec<String> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["grant"]["id"].as_str().map(str::to_owned))
            .collect();
        if !ids.contains(&last) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{last} never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The audit log still has every grant.
    let audit = agentd_cli(&sandbox, &["audit", "--json"]).await?;
    let grants = audit
        .stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"grant\""))
        .count();
    assert_eq!(grants, total);
    eprintln!(
        "churn: {total} grants; daemon RSS {rss_warm} KiB after {warmup}, {rss_end} KiB after {total}; {retained} requests retained at the end"
    );
    // Bounded: the last 90% of the churn may not grow RSS by more than 16 MiB (kept for the
    // daemon's life, 9,000 grants would be far more: each holds a listener, a token and a
    // verifier).
    assert!(
        rss_end <= rss_warm + 16 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    drop(client);
    let status = daemon.stop().await?;
    assert!(status.success());
    assert_sandbox_clean(&sandbox, &[])?;
    Ok(())
}
