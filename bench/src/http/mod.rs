//! Section `http`: the HTTP listener (issue 17) against direct HTTPS and nginx, with one load
//! generator (wrk) for all three paths:
//! - **direct (TLS)**: wrk → the upstream over HTTPS, sending the real key;
//! - **agentd**: wrk → a grant's loopback listener (plain HTTP, the grant token in
//!   `x-api-key`) → agentd checks and swaps it for the key → upstream over HTTPS (kept-alive
//!   pool);
//! - **nginx**: wrk → nginx (plain HTTP, no key) → nginx sets `x-api-key` → upstream over
//!   HTTPS (`keepalive` upstream block, `proxy_http_version 1.1`).
//!
//! Cases (each run `reps` times, interleaved, median reported): small responses at 1 and 32
//! connections, 1 MiB responses at 8 connections, SSE (time to first event and events/s, by
//! the bench's own client), and memory per idle keep-alive client connection.

pub mod client;
pub mod rig;
pub mod upstream;
pub mod wrk;

use crate::report::{f, summarize, Report, Section, Table};
use crate::Plan;
use client::Endpoint;
use futures_util::StreamExt as _;
use rig::{AgentdHttp, Nginx};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use upstream::{Upstream, API_KEY_HEADER, LARGE_BODY, SMALL_BODY};

/// One path to the upstream.
struct Path3 {
    key: &'static str,
    label: &'static str,
    endpoint: Endpoint,
    /// The proxy's CPU seconds so far (none for direct).
    cpu: Option<Box<dyn Fn() -> anyhow::Result<f64> + Send + Sync>>,
}

impl Path3 {
    fn url(&self, path: &str) -> String {
        let scheme = if self.endpoint.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.endpoint.port)
    }
}

/// A load-generator case.
struct Case {
    key: &'static str,
    label: &'static str,
    path: &'static str,
    connections: u32,
}

const CASES: [Case; 3] = [
    Case {
        key: "small_c1",
        label: "128 B response, 1 connection",
        path: "/small",
        connections: 1,
    },
    Case {
        key: "small_c32",
        label: "128 B response, 32 connections",
        path: "/small",
        connections: 32,
    },
    Case {
        key: "1mb_c8",
        label: "1 MiB response, 8 connections",
        path: "/1mb",
        connections: 8,
    },
];

/// Connections opened at once while building up the idle set.
const CONNECT_CONCURRENCY: usize = 8;
/// Idle connections per grant: a listener admits at most 512 client connections.
const PER_GRANT: u32 = 500;
/// Gap between the two events of a time-to-first-event stream, ms.
const SSE_GAP_MS: u64 = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// Runs the section and adds its tables and the targets to `report`.
///
/// # Errors
/// Any part failing (nginx or wrk missing, a run with errors, …); everything started is
/// stopped first.
pub async fn run(bin_dir: &Path, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let key = SecretString::from(format!("bench-key-{:032x}", rand::random::<u128>()));
    let upstream = Upstream::start(&key).await?;
    let agentd_bin = bin_dir.join("agentd");
    let agentd = AgentdHttp::start(&agentd_bin, &upstream, &key, "http-main", &[]).await?;
    // Diagnostic: the same daemon on a one-thread tokio runtime (see BENCHMARKS.md).
    // Or, for an interleaved A/B comparison of two builds, another agentd binary with the
    // default runtime in that slot (`AGENTD_BENCH_SECOND_BIN=PATH`).
    let second_bin = std::env::var_os("AGENTD_BENCH_SECOND_BIN").map(std::path::PathBuf::from);
    let ab = second_bin.is_some();
    let agentd_1t = match AgentdHttp::start(
        second_bin.as_deref().unwrap_or(&agentd_bin),
        &upstream,
        &key,
        "http-1t",
        if ab {
            &[]
        } else {
            &[("TOKIO_WORKER_THREADS", "1")]
        },
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            agentd.stop().await;
            return Err(e);
        }
    };
    let nginx = match Nginx::start(&upstream, &key).await {
        Ok(n) => n,
        Err(e) => {
            agentd.stop().await;
            agentd_1t.stop().await;
            return Err(e);
        }
    };
    let result = measure(
        plan,
        report,
        &upstream,
        &key,
        [&agentd, &agentd_1t],
        &nginx,
        &agentd_bin,
        ab,
    )
    .await;
    nginx.stop().await;
    agentd.stop().await;
    agentd_1t.stop().await;
    result?;
    let unauthorized = upstream
        .unauthorized
        .load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        unauthorized == 0,
        "the upstream answered {unauthorized} requests with 401: a path did not inject the key"
    );
    Ok(())
}

/// The second daemon's label when `AGENTD_BENCH_SECOND_BIN` names another agentd binary.
const SECOND_BIN_LABEL: &str = "agentd, second binary (A/B)";

#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &Plan,
    report: &mut Report,
    upstream: &Upstream,
    key: &SecretString,
    [agentd, agentd_1t]: [&AgentdHttp; 2],
    nginx: &Nginx,
    agentd_bin: &Path,
    ab: bool,
) -> anyhow::Result<()> {
    let grant = agentd.grant().await?;
    let grant_1t = agentd_1t.grant().await?;
    // bench/http/profile reads this line to attach perf.
    eprintln!(
        "bench: http: agentd daemon pid {}, nginx master pid {}",
        agentd.daemon.pid, nginx.pid
    );
    let tls = client::tls_config(&upstream.ca_der)?;
    let paths = [
        Path3 {
            key: "direct",
            label: "direct (TLS)",
            endpoint: Endpoint {
                port: upstream.port,
                tls: Some(tls.clone()),
                header: Some((API_KEY_HEADER, key.clone())),
            },
            cpu: None,
        },
        Path3 {
            key: "agentd",
            label: "agentd",
            endpoint: Endpoint {
                port: grant.port,
                tls: None,
                header: Some((API_KEY_HEADER, grant.token.clone())),
            },
            cpu: Some(Box::new({
                let pid = agentd.daemon.pid;
                move || rig::cpu_seconds(pid)
            })),
        },
        Path3 {
            key: "nginx",
            label: "nginx",
            endpoint: Endpoint {
                port: nginx.port,
                tls: None,
                header: None,
            },
            cpu: Some(Box::new({
                let pid = nginx.pid;
                move || {
                    rig::children(pid)
                        .into_iter()
                        .map(rig::cpu_seconds)
                        .sum::<anyhow::Result<f64>>()
                }
            })),
        },
        Path3 {
            key: "agentd_1thread",
            label: if ab {
                SECOND_BIN_LABEL
            } else {
                "agentd, 1 runtime thread (diagnostic)"
            },
            endpoint: Endpoint {
                port: grant_1t.port,
                tls: None,
                header: Some((API_KEY_HEADER, grant_1t.token.clone())),
            },
            cpu: Some(Box::new({
                let pid = agentd_1t.daemon.pid;
                move || rig::cpu_seconds(pid)
            })),
        },
    ];
    // Every path returns the right bodies before anything is timed.
    for p in &paths {
        let mut c = client::Connection::open(&p.endpoint).await?;
        anyhow::ensure!(
            c.get_drain("/small").await? == SMALL_BODY as u64,
            "{}: short /small",
            p.label
        );
        anyhow::ensure!(
            c.get_drain("/1mb").await? == LARGE_BODY as u64,
            "{}: short /1mb",
            p.label
        );
    }
    let mut versions = vec![
        ("nginx".to_owned(), Nginx::version().await),
        ("wrk".to_owned(), wrk::version().await),
    ];
    let agentd = agentd_bin.display().to_string();
    for (name, program, args) in [
        ("agentd", agentd.as_str(), &["--version"][..]),
        ("rustc", "rustc", &["--version"]),
        ("kernel", "uname", &["-sr"]),
    ] {
        versions.push((
            name.to_owned(),
            crate::rig::program_version(program, args).await,
        ));
    }
    versions.push(("CPU".to_owned(), crate::rig::cpu_summary()));
    report.add_versions(versions);

    let scratch = tempfile::Builder::new()
        .prefix("agentd-bench-wrk-")
        .tempdir()?;
    let script = scratch.path().join("bench.lua");
    std::fs::write(&script, wrk::SCRIPT)?;

    // Load-generator cases: reps × cases × paths, interleaved, path order rotated per rep.
    let mut runs: BTreeMap<(usize, usize), Vec<wrk::WrkResult>> = BTreeMap::new();
    // The proxy's CPU µs per request, per run.
    let mut cpu: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for rep in 0..plan.http_reps {
        for (ci, case) in CASES.iter().enumerate() {
            for k in 0..paths.len() {
                let pi = (k + rep as usize) % paths.len();
                let p = &paths[pi];
                let header = p.endpoint.header.as_ref().map(|(n, v)| (*n, v));
                let mut run = wrk::WrkRun {
                    url: p.url(case.path),
                    connections: case.connections,
                    seconds: plan.http_warmup_seconds,
                    header,
                    script: &script,
                };
                eprintln!(
                    "bench: http rep {}/{} {} via {}",
                    rep + 1,
                    plan.http_reps,
                    case.label,
                    p.label
                );
                if plan.http_warmup_seconds > 0 {
                    wrk::run(&run).await?;
                }
                run.seconds = plan.http_seconds;
                let cpu0 = p.cpu.as_ref().map(|c| c()).transpose()?;
                let r = wrk::run(&run).await?;
                if let (Some(c), Some(c0)) = (&p.cpu, cpu0) {
                    let used = c()? - c0;
                    cpu.entry((ci, pi))
                        .or_default()
                        .push(used * 1e6 / r.requests.max(1.0));
                }
                runs.entry((ci, pi)).or_default().push(r);
            }
        }
    }

    // SSE: time to first event and events/s, same interleaving.
    let mut ttfe: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    let mut eps: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for rep in 0..plan.http_reps {
        for k in 0..paths.len() {
            let pi = (k + rep as usize) % paths.len();
            let p = &paths[pi];
            eprintln!(
                "bench: http rep {}/{} SSE via {}",
                rep + 1,
                plan.http_reps,
                p.label
            );
            let mut ms =
                client::time_to_first_event(&p.endpoint, plan.sse_iterations, SSE_GAP_MS).await?;
            let (p50, p99, _) = summarize(&mut ms);
            ttfe.entry(pi).or_default().push((p50, p99));
            let (took, events) = client::event_stream(&p.endpoint, plan.sse_events).await?;
            eps.entry(pi)
                .or_default()
                .push(events as f64 / took.as_secs_f64());
        }
    }

    // Tables.
    let agentd_i = 1;
    let nginx_i = 2;
    let med = |ci: usize, pi: usize, get: fn(&wrk::WrkResult) -> f64| -> f64 {
        median(
            runs.get(&(ci, pi))
                .map(|v| v.iter().map(get).collect())
                .unwrap_or_default(),
        )
    };
    let mut table = Table::new(&[
        "case",
        "path",
        "req/s (median)",
        "req/s min–max",
        "MiB/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "req/s / nginx",
        "proxy CPU µs/req",
    ]);
    let mut data = serde_json::Map::new();
    for (ci, case) in CASES.iter().enumerate() {
        let d50 = med(ci, 0, |r| r.p50_us);
        let d99 = med(ci, 0, |r| r.p99_us);
        let nginx_rps = med(ci, nginx_i, wrk::WrkResult::rps);
        for (pi, p) in paths.iter().enumerate() {
            let rps_all: Vec<f64> = runs
                .get(&(ci, pi))
                .map(|v| v.iter().map(wrk::WrkResult::rps).collect())
                .unwrap_or_default();
            let (lo, hi) = min_max(&rps_all);
            let rps = median(rps_all.clone());
            let p50 = med(ci, pi, |r| r.p50_us);
            let p99 = med(ci, pi, |r| r.p99_us);
            let added = |x: f64, d: f64| {
                if pi == 0 {
                    "–".to_owned()
                } else {
                    f((x - d) / 1000.0, 3)
                }
            };
            table.row(vec![
                case.label.to_owned(),
                p.label.to_owned(),
                f(rps, 0),
                format!("{}–{}", f(lo, 0), f(hi, 0)),
                f(med(ci, pi, wrk::WrkResult::mib_per_s), 1),
                f(p50 / 1000.0, 3),
                f(p99 / 1000.0, 3),
                added(p50, d50),
                added(p99, d99),
                f(rps / nginx_rps, 2),
                cpu.get(&(ci, pi))
                    .map_or("–".to_owned(), |v| f(median(v.clone()), 1)),
            ]);
            data.insert(
                format!("{}/{}", case.key, p.key),
                serde_json::json!({
                    "median_rps": rps,
                    "median_p50_us": p50,
                    "median_p99_us": p99,
                    "proxy_cpu_us_per_request": cpu.get(&(ci, pi)),
                    "runs": runs.get(&(ci, pi)),
                }),
            );
        }
    }

    // Targets: throughput ≥ nginx; added latency ≤ 1.2 × nginx's.
    for (ci, case) in CASES.iter().enumerate() {
        let a = med(ci, agentd_i, wrk::WrkResult::rps);
        let n = med(ci, nginx_i, wrk::WrkResult::rps);
        report.check(
            format!("agentd req/s vs nginx, {}", case.label),
            "≥ nginx",
            format!("{} vs {} ({}×)", f(a, 0), f(n, 0), f(a / n, 2)),
            a >= n,
        );
    }
    for (ci, case) in CASES.iter().enumerate() {
        for (pct, get) in [
            (
                "p50",
                (|r: &wrk::WrkResult| r.p50_us) as fn(&wrk::WrkResult) -> f64,
            ),
            ("p99", |r: &wrk::WrkResult| r.p99_us),
        ] {
            let d = med(ci, 0, get);
            let a = med(ci, agentd_i, get) - d;
            let n = med(ci, nginx_i, get) - d;
            report.check(
                format!(
                    "added latency {pct}, {} (agentd vs nginx, each − direct)",
                    case.label
                ),
                "≤ 1.2 × nginx's",
                format!("{} µs vs {} µs", f(a, 0), f(n, 0)),
                a <= 1.2 * n.max(0.0),
            );
        }
    }

    let mut sse = Table::new(&[
        "path",
        "first event p50 ms",
        "first event p99 ms",
        "added p50 ms",
        "events/s (median)",
        "events/s min–max",
    ]);
    let ttfe_med = |pi: usize, which: fn(&(f64, f64)) -> f64| {
        median(
            ttfe.get(&pi)
                .map(|v| v.iter().map(which).collect())
                .unwrap_or_default(),
        )
    };
    let direct_ttfe = ttfe_med(0, |t| t.0);
    for (pi, p) in paths.iter().enumerate() {
        let e = eps.get(&pi).cloned().unwrap_or_default();
        let (lo, hi) = min_max(&e);
        let t50 = ttfe_med(pi, |t| t.0);
        sse.row(vec![
            p.label.to_owned(),
            f(t50, 3),
            f(ttfe_med(pi, |t| t.1), 3),
            if pi == 0 {
                "–".to_owned()
            } else {
                f(t50 - direct_ttfe, 3)
            },
            f(median(e.clone()), 0),
            format!("{}–{}", f(lo, 0), f(hi, 0)),
        ]);
        data.insert(
            format!("sse/{}", p.key),
            serde_json::json!({"ttfe_p50_p99_ms": ttfe.get(&pi), "events_per_s": e}),
        );
    }
    {
        let a = median(eps.get(&agentd_i).cloned().unwrap_or_default());
        let n = median(eps.get(&nginx_i).cloned().unwrap_or_default());
        report.check(
            "agentd SSE events/s vs nginx (one stream)",
            "≥ nginx",
            format!("{} vs {} ({}×)", f(a, 0), f(n, 0), f(a / n, 2)),
            a >= n,
        );
    }

    // Memory per idle keep-alive connection, on a fresh daemon and a fresh nginx.
    let memory = idle_memory(plan, upstream, key, agentd_bin).await?;
    let per = |(before, after): (u64, u64)| {
        after.saturating_sub(before) as f64 / f64::from(plan.idle_connections)
    };
    let mut mem = Table::new(&[
        "process",
        "idle RSS KiB",
        "RSS with N idle KiB",
        "N",
        "per connection",
    ]);
    for (label, m) in [
        ("agentd daemon", memory.agentd),
        ("nginx workers (sum)", memory.nginx),
    ] {
        mem.row(vec![
            label.to_owned(),
            f(m.0 as f64 / 1024.0, 0),
            f(m.1 as f64 / 1024.0, 0),
            plan.idle_connections.to_string(),
            format!("{} KiB", f(per(m) / 1024.0, 1)),
        ]);
    }
    data.insert(
        "memory".into(),
        serde_json::json!({
            "idle_connections": plan.idle_connections,
            "agentd_bytes_before_after": [memory.agentd.0, memory.agentd.1],
            "nginx_workers_bytes_before_after": [memory.nginx.0, memory.nginx.1],
        }),
    );

    let notes = vec![
        format!(
            "wrk 1 thread, `-c N --latency`, {} s warm-up then {} s measured per run; {} runs per cell, interleaved (cases × paths, path order rotated each round); the table shows the median of the runs (req/s, and the median of each run's p50/p99).",
            plan.http_warmup_seconds, plan.http_seconds, plan.http_reps
        ),
        "direct (TLS) = wrk → upstream over HTTPS with the real key; agentd = wrk → grant listener (plain HTTP on loopback, grant token in x-api-key) → agentd → upstream HTTPS; nginx = wrk → nginx (plain HTTP, no key) → upstream HTTPS with the key set by proxy_set_header. Added = path − direct (TLS).".into(),
        if ab {
            format!("{SECOND_BIN_LABEL} = a second daemon, same config, from the binary in AGENTD_BENCH_SECOND_BIN (default runtime), for an interleaved comparison of two builds.")
        } else {
            "agentd, 1 runtime thread (diagnostic) = a second daemon, same config, started with TOKIO_WORKER_THREADS=1 (the daemon's default is one tokio worker per core); not a shipped setting, it isolates the cost of cross-thread wake-ups.".into()
        },
        "Upstream: the bench's hyper HTTP/1.1 server over rustls (ALPN http/1.1 only, so both proxies use HTTP/1.1 keep-alive upstream); it checks x-api-key on every request (a 401 fails the run).".into(),
        "wrk, the upstream, the proxy and the kernel share the machine's 2 cores. Proxy CPU µs/req = the proxy's user + system CPU time during the measured run (/proc/PID/stat of the daemon, summed over nginx's workers; 10 ms ticks) / requests.".into(),
    ];
    report.add(Section {
        key: "http".into(),
        title: "HTTP: direct vs agentd vs nginx (wrk)".into(),
        notes,
        table,
        data: serde_json::Value::Object(data),
    });
    report.add(Section {
        key: "http_sse".into(),
        title: "HTTP: Server-Sent Events".into(),
        notes: vec![
            format!(
                "Time to first event: {} sequential `GET /sse?n=2&gap_ms={SSE_GAP_MS}` on one keep-alive connection (the second event comes {SSE_GAP_MS} ms after the first, so a buffering proxy would show ≥ {SSE_GAP_MS} ms), from sending the request to reading the first complete event; p50/p99 per run, median over {} runs.",
                plan.sse_iterations, plan.http_reps
            ),
            format!(
                "Events/s: one `GET /sse?n={}&gap_ms=0` ({}-byte events sent as fast as the connection takes them) read to the end on a warmed connection; median over {} runs.",
                plan.sse_events, upstream::EVENT_BYTES, plan.http_reps
            ),
        ],
        table: sse,
        data: serde_json::Value::Null,
    });
    report.add(Section {
        key: "http_memory".into(),
        title: "HTTP: memory per idle keep-alive connection".into(),
        notes: vec![
            format!(
                "A fresh daemon with two grants (a listener admits at most 512 client connections, so {PER_GRANT} per grant) and a fresh nginx; each of the N connections sends one `GET /small` with keep-alive, reads the response and stays open; VmRSS (daemon; sum of nginx's workers) before and 1 s after. Per connection = (after − before) / N."
            ),
        ],
        table: mem,
        data: serde_json::Value::Null,
    });
    Ok(())
}

struct Memory {
    agentd: (u64, u64),
    nginx: (u64, u64),
}

/// Opens `n` keep-alive connections to `endpoint`, one request each.
async fn open_idle(endpoint: &Endpoint, n: u32) -> anyhow::Result<Vec<client::Connection>> {
    let opened: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let mut c = client::Connection::open(endpoint).await?;
            c.get_drain("/small").await?;
            anyhow::Ok(c)
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    opened.into_iter().collect()
}

async fn idle_memory(
    plan: &Plan,
    upstream: &Upstream,
    key: &SecretString,
    agentd_bin: &Path,
) -> anyhow::Result<Memory> {
    let grants_needed = plan.idle_connections.div_ceil(PER_GRANT);
    let agentd = AgentdHttp::start(agentd_bin, upstream, key, "http-memory", &[]).await?;
    let result = async {
        let mut endpoints = Vec::new();
        for _ in 0..grants_needed {
            let g = agentd.grant().await?;
            let e = Endpoint {
                port: g.port,
                tls: None,
                header: Some((API_KEY_HEADER, g.token)),
            };
            // The grant's first request opens its upstream pool.
            client::Connection::open(&e)
                .await?
                .get_drain("/small")
                .await?;
            endpoints.push(e);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = agentd.daemon.rss_bytes()?;
        eprintln!(
            "bench: http memory: {} idle connections to agentd",
            plan.idle_connections
        );
        let mut held = Vec::new();
        let mut left = plan.idle_connections;
        for e in &endpoints {
            let n = left.min(PER_GRANT);
            held.extend(open_idle(e, n).await?);
            left -= n;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = agentd.daemon.rss_bytes()?;
        drop(held);
        anyhow::Ok((before, after))
    }
    .await;
    agentd.stop().await;
    let agentd_mem = result?;

    let nginx = Nginx::start(upstream, key).await?;
    let result = async {
        let e = Endpoint {
            port: nginx.port,
            tls: None,
            header: None,
        };
        // Both workers serve a first request (upstream keep-alive connections opened).
        for _ in 0..4 {
            client::Connection::open(&e)
                .await?
                .get_drain("/small")
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = nginx.workers_rss_bytes()?;
        eprintln!(
            "bench: http memory: {} idle connections to nginx",
            plan.idle_connections
        );
        let held = open_idle(&e, plan.idle_connections).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = nginx.workers_rss_bytes()?;
        drop(held);
        anyhow::Ok((before, after))
    }
    .await;
    nginx.stop().await;
    Ok(Memory {
        agentd: agentd_mem,
        nginx: result?,
    })
}
