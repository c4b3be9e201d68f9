//! Section 1: relay throughput and latency. pgbench -S (select-only), -M simple and
//! prepared, 1, 8 and 32 clients, against every target in turn.

use crate::pgbench::{self, Length, PgbenchResult, Run};
use crate::report::{f, Report, Section, Table};
use crate::rig::{Rig, Target};
use crate::Plan;
use std::collections::BTreeMap;

/// Client counts, as the issue asks.
const CLIENTS: [u32; 3] = [1, 8, 32];
/// Query modes.
const MODES: [&str; 2] = ["simple", "prepared"];

/// Runs the section and adds its table and targets to `report`.
pub async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let targets: [&Target; 5] = [
        &rig.direct_tls,
        &rig.direct_plain,
        &rig.pgbouncer,
        &rig.agentd_audit,
        &rig.agentd_noaudit,
    ];
    let mut results: BTreeMap<String, PgbenchResult> = BTreeMap::new();
    let mut table = Table::new(&[
        "mode",
        "clients",
        "target",
        "TPS",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "TPS / direct TLS",
        "TPS / PgBouncer",
    ]);
    for mode in MODES {
        for clients in CLIENTS {
            let mut row_results = Vec::new();
            for target in targets {
                eprintln!("bench: relay -M {mode} -c {clients} {}", target.label);
                let r = pgbench::run(
                    target,
                    &Run {
                        args: vec!["-S".into(), "-M".into(), mode.into()],
                        clients,
                        length: Length::Seconds(plan.pgbench_seconds),
                        scratch: rig.work.path(),
                    },
                )
                .await?;
                results.insert(format!("{mode}/{clients}/{}", target.key), r.clone());
                row_results.push((target, r));
            }
            let direct = row_results[0].1.tps;
            let bouncer = row_results[2].1.tps;
            for (target, r) in &row_results {
                table.row(vec![
                    mode.to_owned(),
                    clients.to_string(),
                    target.label.to_owned(),
                    f(r.tps, 0),
                    f(r.latency_avg_ms, 3),
                    f(r.latency_p50_ms, 3),
                    f(r.latency_p99_ms, 3),
                    f(r.tps / direct, 2),
                    f(r.tps / bouncer, 2),
                ]);
            }
        }
    }
    let get = |k: &str| results.get(k).cloned();
    if let (Some(a), Some(d), Some(b)) = (
        get("prepared/8/agentd_audit"),
        get("prepared/8/direct_tls"),
        get("prepared/8/pgbouncer"),
    ) {
        let ratio = a.tps / d.tps;
        report.check(
            "agentd (audit on) / direct TPS, -S -M prepared, 8 clients",
            "≥ 0.90",
            f(ratio, 2),
            ratio >= 0.90,
        );
        report.check(
            "agentd (audit on) TPS vs PgBouncer, -S -M prepared, 8 clients",
            "≥ PgBouncer",
            format!("{} vs {}", f(a.tps, 0), f(b.tps, 0)),
            a.tps >= b.tps,
        );
    }
    for mode in MODES {
        if let (Some(a), Some(d)) = (
            get(&format!("{mode}/1/agentd_audit")),
            get(&format!("{mode}/1/direct_tls")),
        ) {
            let added_us = (a.latency_p50_ms - d.latency_p50_ms) * 1000.0;
            report.check(
                format!("added latency p50, 1 client, -M {mode} (agentd audit on − direct TLS)"),
                "≤ 30 µs",
                format!("{} µs", f(added_us, 0)),
                added_us <= 30.0,
            );
        }
    }
    report.add(Section {
        key: "relay".into(),
        title: "Relay: pgbench -S (select-only)".into(),
        notes: vec![
            format!(
                "`pgbench -n -S -M MODE -c N -j min(N,2) -T {} -l --sampling-rate=0.2`, scale {} (unlogged tables), one run per cell; p50/p99 from the sampled per-transaction log.",
                plan.pgbench_seconds, plan.pgbench_scale
            ),
            "direct (TLS) = pgbench → PostgreSQL over TCP with TLS (sslmode=verify-full) + SCRAM-SHA-256: what a user would otherwise do. direct (no TLS) = the same with sslmode=disable.".into(),
            "PgBouncer = session mode; client → PgBouncer SCRAM on loopback without TLS (like agentd's local hop); PgBouncer → server TLS verify-full + SCRAM.".into(),
            "agentd = pgbench → the grant's loopback listener (SCRAM with the grant token, no TLS) → agentd → server TLS verify-full + SCRAM; audit on/off = `[audit] statements = true/false` (two daemons).".into(),
            "pgbench, PostgreSQL and the proxy share the 2 cores: a proxy's CPU is taken from the server and the client.".into(),
        ],
        table,
        data: serde_json::to_value(&results)?,
    });
    Ok(())
}
