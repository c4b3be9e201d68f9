//! `agentd-bench`: the benchmark suite of issue 7, in one run against one throwaway
//! PostgreSQL cluster. Usually started by `bench/run`, which installs PgBouncer, builds the
//! release binaries and raises the fd limit first.
//!
//! Sections (all against the same cluster, SCRAM-SHA-256 + TLS):
//! - `relay`: pgbench -S, -M simple and prepared, 1/8/32 clients: direct TLS, direct
//!   without TLS, PgBouncer (session mode, TLS to the server), agentd with statement audit
//!   on and off;
//! - `connect`: connect + authenticate + `SELECT 1`, sequentially (pgbench -C);
//! - `bulk`: COPY TO STDOUT and COPY FROM STDIN through psql;
//! - `control`: request → handle, dynamic-role grant, revoke → sessions closed, shim cold
//!   start, `agentd status`;
//! - `memory`: daemon RSS idle, with N idle proxied connections, with 32 busy ones;
//! - `http` (only when asked for, e.g. `bench/http/run` = `--only http`): the HTTP listener
//!   against direct HTTPS and nginx with wrk, SSE, memory per idle keep-alive connection
//!   (no PostgreSQL cluster is started for it).
//!
//! Results go to `OUT/results.json` and `OUT/results.md` (a Markdown table per section
//! plus the targets of the issue, pass or miss).

mod bulk;
mod connect;
mod control;
mod http;
mod memory;
mod pgbench;
mod relay;
mod report;
mod rig;

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

/// Run agentd's benchmark suite against direct PostgreSQL and PgBouncer.
///
/// Starts a throwaway PostgreSQL cluster (SCRAM + TLS), PgBouncer in session mode, and agentd
/// daemons with statement audit on and off, then measures each section and writes
/// OUT/results.json and OUT/results.md. A full run takes about 15 minutes, --quick about 3.
#[derive(Debug, Parser)]
#[command(name = "agentd-bench", version)]
struct Args {
    /// Short durations and counts (about 3 minutes); numbers are rougher.
    #[arg(long)]
    quick: bool,
    /// Sections to run, comma-separated: relay, connect, bulk, control, memory (the
    /// default: all five), http (only when named; needs nginx and wrk).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// Directory for results.json and results.md.
    #[arg(long, default_value = "bench/results", value_name = "DIR")]
    out: PathBuf,
    /// Directory holding the release `agentd` and `agentd-mcp` binaries (default: next to
    /// this binary).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Seconds per pgbench run in the relay section (default 15, --quick 2).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
    /// Seconds per measured wrk run in the http section (default 10, --quick 3).
    #[arg(long, value_name = "SECONDS")]
    http_seconds: Option<u64>,
    /// Runs per cell in the http section, interleaved; the median is reported (default 3).
    #[arg(long, value_name = "N", default_value_t = 3)]
    reps: u32,
}

/// How big each section's work is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds per pgbench run.
    pub pgbench_seconds: u64,
    /// pgbench scale factor (`-s`) for the relay tables.
    pub pgbench_scale: u32,
    /// Sequential connections in the connect section.
    pub connections: u32,
    /// Bytes for COPY TO STDOUT.
    pub copy_out_bytes: u64,
    /// Bytes for COPY FROM STDIN.
    pub copy_in_bytes: u64,
    /// Access requests timed.
    pub requests: u32,
    /// Revokes timed (each cuts [`Plan::revoke_sessions`] sessions).
    pub revokes: u32,
    /// Live sessions per revoked grant.
    pub revoke_sessions: u32,
    /// Process starts timed (shim cold start, `agentd status`).
    pub process_starts: u32,
    /// Idle proxied connections held open for the memory section (and the http section's
    /// idle keep-alive connections).
    pub idle_connections: u32,
    /// http: seconds per measured wrk run.
    pub http_seconds: u64,
    /// http: seconds of the wrk warm-up run before each measured run.
    pub http_warmup_seconds: u64,
    /// http: runs per cell (interleaved; median reported).
    pub http_reps: u32,
    /// http: time-to-first-event requests per run.
    pub sse_iterations: u32,
    /// http: events in the events/s stream.
    pub sse_events: u64,
}

impl Plan {
    fn new(quick: bool, duration: Option<u64>, http_seconds: Option<u64>, reps: u32) -> Self {
        const MB: u64 = 1024 * 1024;
        if quick {
            Plan {
                pgbench_seconds: duration.unwrap_or(2),
                pgbench_scale: 1,
                connections: 100,
                copy_out_bytes: 64 * MB,
                copy_in_bytes: 16 * MB,
                requests: 100,
                revokes: 20,
                revoke_sessions: 4,
                process_starts: 10,
                idle_connections: 1000,
                http_seconds: http_seconds.unwrap_or(3),
                http_warmup_seconds: 1,
                http_reps: reps.max(1),
                sse_iterations: 100,
                sse_events: 50_000,
            }
        } else {
            Plan {
                pgbench_seconds: duration.unwrap_or(15),
                pgbench_scale: 10,
                connections: 500,
                copy_out_bytes: 1024 * MB,
                copy_in_bytes: 256 * MB,
                requests: 1000,
                revokes: 100,
                revoke_sessions: 4,
                process_starts: 30,
                idle_connections: 1000,
                http_seconds: http_seconds.unwrap_or(10),
                http_warmup_seconds: 2,
                http_reps: reps.max(1),
                sse_iterations: 300,
                sse_events: 200_000,
            }
        }
    }
}

/// The PostgreSQL sections (run by default, against the shared [`rig::Rig`]).
const SECTIONS: [&str; 5] = ["relay", "connect", "bulk", "control", "memory"];
/// Sections run only when named.
const EXTRA_SECTIONS: [&str; 1] = ["http"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) && !EXTRA_SECTIONS.contains(&s.as_str()) {
            anyhow::bail!(
                "unknown section {s:?}; choose from {}, {}",
                SECTIONS.join(", "),
                EXTRA_SECTIONS.join(", ")
            );
        }
    }
    let wanted = |s: &str| {
        (args.only.is_empty() && SECTIONS.contains(&s)) || args.only.iter().any(|o| o == s)
    };
    let needs_rig = SECTIONS.iter().any(|s| wanted(s));
    let plan = Plan::new(args.quick, args.duration, args.http_seconds, args.reps);
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let started = Instant::now();
        let mut report = report::Report::new(args.quick, &plan);
        let rig = if needs_rig {
            eprintln!("bench: setting up the cluster, PgBouncer and two agentd daemons…");
            let rig = rig::Rig::start(&bin_dir, &plan).await?;
            report.set_versions(rig.versions().await);
            Some(rig)
        } else {
            None
        };
        let sections = async {
            if let Some(rig) = &rig {
                if wanted("relay") {
                    relay::run(rig, &plan, &mut report).await?;
                }
                if wanted("connect") {
                    connect::run(rig, &plan, &mut report).await?;
                }
                if wanted("bulk") {
                    bulk::run(rig, &plan, &mut report).await?;
                }
                if wanted("control") {
                    control::run(rig, &plan, &mut report).await?;
                }
                if wanted("memory") {
                    memory::run(rig, &plan, &mut report).await?;
                }
            }
            if wanted("http") {
                http::run(&bin_dir, &plan, &mut report).await?;
            }
            anyhow::Ok(())
        };
        // Ctrl-C or a failed section still stops the daemons, PgBouncer, nginx and the
        // cluster (the http section stops its own processes when its future is dropped).
        let outcome = tokio::select! {
            r = sections => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        if let Some(rig) = rig {
            rig.stop().await;
        }
        outcome?;
        report.wall_seconds = started.elapsed().as_secs_f64();
        report.write(&args.out)?;
        eprintln!(
            "bench: done in {:.0} s; wrote {}/results.md and results.json",
            report.wall_seconds,
            args.out.display()
        );
        Ok(())
    })
}
