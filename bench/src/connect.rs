//! Section 2: connection setup. `pgbench -C` opens a new connection for every transaction:
//! connect, authenticate, `SELECT 1`, disconnect, one after another from one client.

use crate::pgbench::{self, Length, Run};
use crate::report::{f, Report, Section, Table};
use crate::rig::Rig;
use crate::Plan;

/// Runs the section and adds its table and target to `report`.
pub async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let script = rig.work.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n")?;
    let mut table = Table::new(&[
        "target",
        "connections",
        "connect + auth ms (pgbench avg)",
        "connect + auth + SELECT 1 + close ms",
        "ratio to direct TLS",
    ]);
    let mut data = serde_json::Map::new();
    let mut direct_ms = f64::NAN;
    for target in [
        &rig.direct_tls,
        &rig.direct_plain,
        &rig.pgbouncer,
        &rig.agentd_audit,
    ] {
        eprintln!("bench: connect ×{} {}", plan.connections, target.label);
        let r = pgbench::run(
            target,
            &Run {
                args: vec!["-C".into(), "-f".into(), script.display().to_string()],
                clients: 1,
                length: Length::Transactions(plan.connections),
                scratch: rig.work.path(),
            },
        )
        .await?;
        let per_connection_ms = 1000.0 / r.tps;
        let connect_ms = r.connection_ms.unwrap_or(f64::NAN);
        if target.key == "direct_tls" {
            direct_ms = connect_ms;
        }
        table.row(vec![
            target.label.to_owned(),
            plan.connections.to_string(),
            f(connect_ms, 2),
            f(per_connection_ms, 2),
            f(connect_ms / direct_ms, 2),
        ]);
        if target.key == "agentd_audit" {
            let ratio = connect_ms / direct_ms;
            report.check(
                "connection setup, agentd / direct TLS",
                "≤ 1.3×",
                format!(
                    "{}× ({} ms vs {} ms)",
                    f(ratio, 2),
                    f(connect_ms, 2),
                    f(direct_ms, 2)
                ),
                ratio <= 1.3,
            );
        }
        data.insert(
            target.key.to_owned(),
            serde_json::json!({"connect_ms": connect_ms, "per_connection_ms": per_connection_ms}),
        );
    }
    report.add(Section {
        key: "connect".into(),
        title: "Connection setup".into(),
        notes: vec![
            format!("`pgbench -n -C -c 1 -t {} -f select1.sql` (`SELECT 1;`): each transaction opens a new connection, authenticates (SCRAM-SHA-256), runs SELECT 1 and disconnects; sequential.", plan.connections),
            "\"connect + auth\" is pgbench's average connection time; the next column is the whole cycle (1000 / tps).".into(),
            "Through agentd a connection is: client SCRAM with the grant token on loopback, then agentd's own TCP + TLS + SCRAM login upstream. PgBouncer (session mode) reuses its server connections, so it does not pay the upstream TLS + SCRAM: shown for reference only.".into(),
        ],
        table,
        data: serde_json::Value::Object(data),
    });
    Ok(())
}
