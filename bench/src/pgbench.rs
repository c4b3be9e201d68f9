//! Running pgbench against a [`Target`] and reading its results: TPS and average latency
//! from its summary, p50/p99 from its per-transaction log (`-l`, sampled).

use crate::rig::Target;
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::path::Path;

/// Fraction of transactions pgbench logs (`--sampling-rate`) for the percentiles.
const SAMPLING_RATE: f64 = 0.2;

/// One pgbench run's results.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchResult {
    /// Transactions per second (pgbench's `tps`, without initial connection time).
    pub tps: f64,
    /// Average latency in milliseconds (pgbench's `latency average`).
    pub latency_avg_ms: f64,
    /// Median latency in milliseconds, from the sampled per-transaction log.
    pub latency_p50_ms: f64,
    /// 99th percentile latency in milliseconds, from the sampled per-transaction log.
    pub latency_p99_ms: f64,
    /// Transactions pgbench counted as processed.
    pub transactions: u64,
    /// pgbench's `average connection time` in milliseconds (with `-C`).
    pub connection_ms: Option<f64>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// Extra pgbench arguments (`-S`, `-M prepared`, `-C`, `-f FILE`, …).
    pub args: Vec<String>,
    /// Clients (`-c`); threads are `min(clients, 2)`.
    pub clients: u32,
    /// `-T SECONDS` or `-t TRANSACTIONS` per client.
    pub length: Length,
    /// Scratch directory for the logs.
    pub scratch: &'a Path,
}

/// How long pgbench runs.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// `-T`.
    Seconds(u64),
    /// `-t` (per client).
    Transactions(u32),
}

/// Runs pgbench against `target`.
pub async fn run(target: &Target, run: &Run<'_>) -> anyhow::Result<PgbenchResult> {
    let logs = tempfile::tempdir_in(run.scratch)?;
    let prefix = logs.path().join("tx");
    let threads = run.clients.min(2);
    let mut cmd = target.command(Path::new("pgbench"));
    cmd.args([
        "-n",
        "-c",
        &run.clients.to_string(),
        "-j",
        &threads.to_string(),
    ])
    .args(&run.args)
    .args(["-l", &format!("--sampling-rate={SAMPLING_RATE}")])
    .arg(format!("--log-prefix={}", prefix.display()));
    match run.length {
        Length::Seconds(s) => cmd.args(["-T", &s.to_string()]),
        Length::Transactions(t) => cmd.args(["-t", &t.to_string()]),
    };
    let out = cmd.output().await.context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench against {} failed: {}{}",
            target.label,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(logs.path())? {
        let text = std::fs::read_to_string(entry?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    let field = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split([' ', '/']).next()?.parse().ok())
    };
    Ok(PgbenchResult {
        tps: field("tps = ").context("no tps in pgbench output")?,
        latency_avg_ms: field("latency average = ").unwrap_or(f64::NAN),
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        transactions: field("number of transactions actually processed: ").unwrap_or(0.0) as u64,
        connection_ms: field("average connection time = "),
    })
}
