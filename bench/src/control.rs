//! Section 4: control plane. Over the control socket (the same protocol client the shim
//! uses): auto-approved request → handle, dynamic-role request → handle (when supported),
//! revoke → every live session of the grant closed; then process starts: `agentd-mcp` to its
//! `initialize` result, and `agentd status --json`.

use crate::report::{f, summarize, Report, Section, Table};
use crate::rig::{request_handle, Rig, DYNAMIC_PERMISSION};
use crate::Plan;
use agentd::demo::PERMISSION;
use agentd_proto::{Client, Handle, Request, Response, RevokeTarget};
use anyhow::{bail, Context as _};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// Runs the section and adds its table and targets to `report`.
pub async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let mut table = Table::new(&["operation", "n", "p50 ms", "p99 ms", "mean ms"]);
    let mut data = serde_json::Map::new();
    let mut add = |table: &mut Table, key: &str, label: &str, ms: &mut Vec<f64>| -> (f64, f64) {
        let (p50, p99, mean) = summarize(ms);
        table.row(vec![
            label.to_owned(),
            ms.len().to_string(),
            f(p50, 2),
            f(p99, 2),
            f(mean, 2),
        ]);
        data.insert(
            key.to_owned(),
            serde_json::json!({"n": ms.len(), "p50_ms": p50, "p99_ms": p99, "mean_ms": mean}),
        );
        (p50, p99)
    };

    eprintln!("bench: control: {} auto-approved requests", plan.requests);
    let mut ms = request_release(rig, PERMISSION, plan.requests).await?;
    let (_, p99) = add(
        &mut table,
        "request_static",
        "request_access → handle (static credential, auto)",
        &mut ms,
    );
    report.check(
        "auto-approved request → handle, p99",
        "≤ 5 ms",
        format!("{} ms", f(p99, 2)),
        p99 <= 5.0,
    );

    if rig.dynamic_roles {
        eprintln!("bench: control: {} dynamic-role requests", plan.requests);
        match request_release(rig, DYNAMIC_PERMISSION, plan.requests).await {
            Ok(mut ms) => {
                add(
                    &mut table,
                    "request_dynamic",
                    "request_access → handle (dynamic role, auto)",
                    &mut ms,
                );
            }
            Err(e) => table.row(vec![
                format!("dynamic role: failed: {e}"),
                "0".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ]),
        }
    } else {
        eprintln!("bench: control: dynamic-role grant skipped: no dynamic credential support");
        table.row(vec![
            "request_access → handle (dynamic role): skipped: no dynamic credential support".into(),
            "0".into(),
            "–".into(),
            "–".into(),
            "–".into(),
        ]);
    }

    eprintln!(
        "bench: control: {} revokes of {} live sessions each",
        plan.revokes, plan.revoke_sessions
    );
    let mut ms = revokes(rig, plan).await?;
    let (_, p99) = add(
        &mut table,
        "revoke",
        &format!("revoke → all {} sessions closed", plan.revoke_sessions),
        &mut ms,
    );
    report.check(
        "revoke → sessions closed, p99",
        "≤ 50 ms",
        format!("{} ms", f(p99, 2)),
        p99 <= 50.0,
    );

    eprintln!("bench: control: {} shim cold starts", plan.process_starts);
    let mut ms = Vec::new();
    for _ in 0..plan.process_starts {
        ms.push(shim_cold_start(rig).await?);
    }
    let (p50, _) = add(
        &mut table,
        "shim_cold_start",
        "agentd-mcp start → initialize result",
        &mut ms,
    );
    report.check(
        "agentd-mcp cold start → initialize result, p50",
        "≤ 50 ms",
        format!("{} ms", f(p50, 1)),
        p50 <= 50.0,
    );

    let mut ms = Vec::new();
    for _ in 0..plan.process_starts {
        let t0 = Instant::now();
        let out = tokio::process::Command::new(&rig.agentd)
            .arg("--socket")
            .arg(&rig.audit_on.socket)
            .args(["status", "--json"])
            .stdin(Stdio::null())
            .output()
            .await?;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            bail!(
                "agentd status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    add(
        &mut table,
        "status",
        "`agentd status --json` wall time",
        &mut ms,
    );

    report.add(Section {
        key: "control".into(),
        title: "Control plane".into(),
        notes: vec![
            "Requests over one control-socket connection (agentd-proto client, as the shim uses); each grant is released before the next request.".into(),
            format!("Revoke: a grant with {} live sessions (tokio-postgres through the listener), `Revoke {{grant}}` sent; time until every session's connection has ended (FATAL 57P01 / EOF seen by the client).", plan.revoke_sessions),
            "Shim cold start: spawn `agentd-mcp --socket S`, write an MCP `initialize` request on stdin, time until its result line; the daemon is already running.".into(),
            "Daemon config: defaults ([audit] fsync = true: control-plane records are fdatasync'd before the reply).".into(),
        ],
        table,
        data: serde_json::Value::Object(data),
    });
    Ok(())
}

/// `n` requests for `permission`, each released after; request round-trip times in ms.
async fn request_release(rig: &Rig, permission: &str, n: u32) -> anyhow::Result<Vec<f64>> {
    let mut client = Client::connect(&rig.audit_on.socket).await?;
    let mut ms = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (handle, took) = request_handle(&mut client, permission).await?;
        ms.push(took.as_secs_f64() * 1000.0);
        release(&mut client, &handle).await?;
    }
    Ok(ms)
}

async fn release(client: &mut Client, handle: &Handle) -> anyhow::Result<()> {
    match client
        .call(Request::Release {
            grant_id: handle.user.clone(),
        })
        .await?
    {
        Response::Revoked { .. } => Ok(()),
        other => bail!("unexpected reply to release: {other:?}"),
    }
}

/// Revoke timings in ms.
async fn revokes(rig: &Rig, plan: &Plan) -> anyhow::Result<Vec<f64>> {
    let mut client = Client::connect(&rig.audit_on.socket).await?;
    let mut ms = Vec::new();
    for _ in 0..plan.revokes {
        let (handle, _) = request_handle(&mut client, PERMISSION).await?;
        let mut ends = Vec::new();
        for _ in 0..plan.revoke_sessions {
            let (pg, connection) = connect(&handle).await?;
            let end = tokio::spawn(async move {
                let _ = connection.await;
                Instant::now()
            });
            pg.simple_query("SELECT 1").await?;
            ends.push((pg, end));
        }
        let t0 = Instant::now();
        match client
            .call(Request::Revoke {
                target: RevokeTarget::Grant {
                    grant_id: handle.user.clone(),
                },
            })
            .await?
        {
            Response::Revoked { .. } => {}
            other => bail!("unexpected reply to revoke: {other:?}"),
        }
        let mut last = t0;
        for (_pg, end) in ends {
            let at = tokio::time::timeout(Duration::from_secs(10), end)
                .await
                .context("a session outlived its revoked grant by 10 s")??;
            last = last.max(at);
        }
        ms.push((last - t0).as_secs_f64() * 1000.0);
    }
    Ok(ms)
}

/// A tokio-postgres connection through a handle (no TLS: loopback listener).
pub async fn connect(
    handle: &Handle,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    let password = handle
        .env
        .get("PGPASSWORD")
        .context("handle has no PGPASSWORD")?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&handle.host)
        .port(handle.port)
        .user(&handle.user)
        .password(password)
        .dbname(&handle.database)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    Ok(config.connect(tokio_postgres::NoTls).await?)
}

/// Spawns the shim, sends `initialize`, returns ms to its result.
async fn shim_cold_start(rig: &Rig) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(&rig.agentd_mcp)
        .arg("--socket")
        .arg(&rig.audit_on.socket)
        .args(["--agent-type", "agentd-bench"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("shim stdin")?;
    let init = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "agentd-bench", "version": "0"}}
    });
    stdin.write_all(format!("{init}\n").as_bytes()).await?;
    stdin.flush().await?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("shim stdout")?).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("agentd-mcp did not answer initialize in 10 s")??
            .context("agentd-mcp exited before answering initialize")?;
        if line.contains("\"id\":1") && line.contains("\"result\"") {
            break;
        }
    }
    let took = t0.elapsed().as_secs_f64() * 1000.0;
    drop(stdin);
    let _ = child.kill().await;
    Ok(took)
}
