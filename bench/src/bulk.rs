//! Section 3: bulk transfer. `COPY bulk_src TO STDOUT` and `COPY bulk_dst FROM STDIN`
//! through psql, direct (TLS) and through agentd (audit on and off).

use crate::report::{f, Report, Section, Table};
use crate::rig::{Rig, Target};
use crate::Plan;
use agentd::demo::ROLE;
use anyhow::{bail, Context as _};
use std::process::Stdio;
use std::time::Instant;

/// Bytes per row of the bulk table in COPY text format (id, tab, 992 characters, newline ≈ 1000).
const ROW_BYTES: u64 = 1000;

/// Runs the section and adds its table to `report`.
pub async fn run(rig: &Rig, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let out_rows = plan.copy_out_bytes / ROW_BYTES;
    let in_rows = plan.copy_in_bytes / ROW_BYTES;
    eprintln!(
        "bench: bulk: creating a {} MB table…",
        plan.copy_out_bytes >> 20
    );
    rig.admin_sql(&format!(
        "DROP TABLE IF EXISTS bulk_src, bulk_dst;\n\
         CREATE UNLOGGED TABLE bulk_src AS SELECT i AS id, repeat(md5(i::text), 31) AS payload FROM generate_series(1, {out_rows}) i;\n\
         CREATE UNLOGGED TABLE bulk_dst (LIKE bulk_src);\n\
         GRANT SELECT ON bulk_src TO {ROLE};\nGRANT INSERT ON bulk_dst TO {ROLE};"
    ))
    .await?;
    let input = rig.work.path().join("bulk_in.copy");
    let file = std::fs::File::create(&input)?;
    let status = admin_psql(
        rig,
        &format!("COPY (SELECT * FROM bulk_src LIMIT {in_rows}) TO STDOUT"),
    )
    .stdout(file)
    .status()
    .await?;
    if !status.success() {
        bail!("writing the COPY FROM input failed");
    }
    let out_bytes = copy_size(rig, "bulk_src").await?;
    let in_bytes = std::fs::metadata(&input)?.len();
    let mut table = Table::new(&[
        "direction",
        "MB",
        "target",
        "seconds",
        "MB/s",
        "ratio to direct TLS",
    ]);
    let mut data = serde_json::Map::new();
    for (direction, bytes) in [("COPY TO STDOUT", out_bytes), ("COPY FROM STDIN", in_bytes)] {
        let mut direct = f64::NAN;
        for target in [&rig.direct_tls, &rig.agentd_audit, &rig.agentd_noaudit] {
            eprintln!("bench: bulk {direction} {}", target.label);
            if direction == "COPY FROM STDIN" {
                rig.admin_sql("TRUNCATE bulk_dst").await?;
            }
            let seconds = copy(target, direction, &input).await?;
            let mbps = bytes as f64 / 1_048_576.0 / seconds;
            if target.key == "direct_tls" {
                direct = mbps;
            }
            table.row(vec![
                direction.to_owned(),
                f(bytes as f64 / 1_048_576.0, 0),
                target.label.to_owned(),
                f(seconds, 2),
                f(mbps, 0),
                f(mbps / direct, 2),
            ]);
            data.insert(
                format!("{direction}/{}", target.key),
                serde_json::json!({"bytes": bytes, "seconds": seconds, "mb_per_s": mbps}),
            );
        }
    }
    rig.admin_sql("DROP TABLE bulk_src, bulk_dst").await?;
    let _ = std::fs::remove_file(&input);
    report.add(Section {
        key: "bulk".into(),
        title: "Bulk transfer (COPY)".into(),
        notes: vec![
            "`psql -X -c \"COPY bulk_src TO STDOUT\" > /dev/null` and `psql -X -c \"COPY bulk_dst FROM STDIN\" < file`, wall time of the psql process; unlogged tables; MB = 2^20 bytes of COPY text.".into(),
        ],
        table,
        data: serde_json::Value::Object(data),
    });
    Ok(())
}

fn admin_psql(rig: &Rig, sql: &str) -> tokio::process::Command {
    let mut cmd =
        tokio::process::Command::from(rig.sandbox.cluster.superuser_psql(agentd::demo::DATABASE));
    cmd.args(["-c", sql]).stdin(Stdio::null());
    cmd
}

/// Size of `COPY table TO STDOUT` in bytes (counted once, directly).
async fn copy_size(rig: &Rig, table: &str) -> anyhow::Result<u64> {
    let sql = format!("SELECT sum(length(id::text) + length(payload) + 2) FROM {table}");
    rig.admin_sql(&sql).await?.parse().context("COPY size")
}

/// Runs one COPY through `target` and returns its wall time in seconds.
async fn copy(target: &Target, direction: &str, input: &std::path::Path) -> anyhow::Result<f64> {
    let mut cmd = target.command(&agentd::pgcluster::psql_path());
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdout(Stdio::null());
    if direction == "COPY TO STDOUT" {
        cmd.args(["-c", "COPY bulk_src TO STDOUT"]);
    } else {
        cmd.args(["-c", "COPY bulk_dst FROM STDIN"])
            .stdin(std::fs::File::open(input)?);
    }
    let t0 = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().await?;
    let seconds = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{direction} via {} failed: {}",
            target.label,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(seconds)
}
