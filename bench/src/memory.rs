//! Section 5: daemon memory. A fresh daemon (statement audit on): RSS idle with one grant,
//! with N idle proxied connections (bytes per connection), and with 32 busy ones (pgbench -S).

use crate::control::connect;
use crate::pgbench::{self, Length, Run};
use crate::report::{f, Report, Section, Table};
use crate::rig::{handle_target, request_handle, Rig};
use crate::Plan;
use agentd::demo::PERMISSION;
use agentd_proto::Client;
use futures_util::StreamExt as _;
use std::time::Duration;

/// Connections opened at once while building up the idle set.
const CONNECT_CONCURRENCY: usize = 8;

/// Runs the section and adds its table and target to `report`.
pub async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let daemon = rig.fresh_daemon("memory").await?;
    let result = measure(rig, plan, report, &daemon).await;
    daemon.stop().await;
    result
}

async fn measure(
    rig: &Rig,
    plan: &Plan,
    report: &mut Report,
    daemon: &crate::rig::Daemon,
) -> anyhow::Result<()> {
    let mut client = Client::connect(&daemon.socket).await?;
    let (handle, _) = request_handle(&mut client, PERMISSION).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = daemon.rss_bytes()?;

    eprintln!(
        "bench: memory: opening {} idle connections",
        plan.idle_connections
    );
    let opened: Vec<_> = futures_util::stream::iter(0..plan.idle_connections)
        .map(|_| async {
            let (pg, connection) = connect(&handle).await?;
            let task = tokio::spawn(connection);
            anyhow::Ok((pg, task))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let sessions = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_idle = daemon.rss_bytes()?;
    let per_connection = with_idle.saturating_sub(idle) as f64 / f64::from(plan.idle_connections);
    for (pg, task) in sessions {
        drop(pg);
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_close = daemon.rss_bytes()?;

    eprintln!("bench: memory: 32 busy connections");
    let target = handle_target("agentd_memory", "agentd (fresh daemon)", &handle);
    let seconds = plan.pgbench_seconds.clamp(2, 10);
    let scratch = rig.work.path().to_path_buf();
    let bench = tokio::spawn(async move {
        pgbench::run(
            &target,
            &Run {
                args: vec!["-S".into(), "-M".into(), "prepared".into()],
                clients: 32,
                length: Length::Seconds(seconds),
                scratch: &scratch,
            },
        )
        .await
    });
    let mut busy_max = 0;
    while !bench.is_finished() {
        busy_max = busy_max.max(daemon.rss_bytes().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bench.await??;

    let kib = |b: u64| f(b as f64 / 1024.0, 0);
    let mut table = Table::new(&["state", "daemon VmRSS KiB", "per connection"]);
    table.row(vec![
        "idle, one grant (fresh daemon)".into(),
        kib(idle),
        "–".into(),
    ]);
    table.row(vec![
        format!("{} idle proxied connections", plan.idle_connections),
        kib(with_idle),
        format!("{} KiB", f(per_connection / 1024.0, 1)),
    ]);
    table.row(vec![
        "after closing them".into(),
        kib(after_close),
        "–".into(),
    ]);
    table.row(vec![
        "32 busy connections (pgbench -S -M prepared, max of 100 ms samples)".into(),
        kib(busy_max),
        "–".into(),
    ]);
    report.check(
        "daemon memory per idle proxied connection",
        "≤ 32 KiB",
        format!("{} KiB", f(per_connection / 1024.0, 1)),
        per_connection <= 32.0 * 1024.0,
    );
    report.add(Section {
        key: "memory".into(),
        title: "Daemon memory".into(),
        notes: vec![
            "VmRSS from /proc/PID/status of a freshly started daemon (audit on) with one grant; connections are tokio-postgres clients in the bench process, authenticated and idle (after ReadyForQuery), so each holds a client socket, an upstream TLS session and a PostgreSQL backend.".into(),
            "Per connection = (RSS with N idle − RSS idle) / N.".into(),
        ],
        table,
        data: serde_json::json!({
            "idle_bytes": idle,
            "idle_connections": plan.idle_connections,
            "with_idle_connections_bytes": with_idle,
            "per_connection_bytes": per_connection,
            "after_close_bytes": after_close,
            "busy32_max_bytes": busy_max,
        }),
    });
    Ok(())
}
