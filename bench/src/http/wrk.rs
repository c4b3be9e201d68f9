//! The load generator: wrk (Debian's `wrk` package, C + epoll, one thread here so it takes at
//! most one of the two cores). A Lua script adds the path's header from the environment
//! (so the key or token is not on wrk's command line) and prints one JSON line of results.

use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Stdio;

/// The wrk script: header from `BENCH_HEADER_NAME` / `BENCH_HEADER_VALUE`, and a
/// `BENCH_RESULT {json}` line from `done` (latencies in microseconds).
pub const SCRIPT: &str = r#"-- agentd-bench: add the path's header; print the results as one JSON line.
local name = os.getenv("BENCH_HEADER_NAME")
if name ~= nil and name ~= "" then
  wrk.headers[name] = os.getenv("BENCH_HEADER_VALUE")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"errors":%.0f,"non_2xx":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"#;

/// What wrk reported for one run.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WrkResult {
    /// Requests completed.
    pub requests: f64,
    /// Run length, µs.
    pub duration_us: f64,
    /// Response bytes read (heads and bodies).
    pub bytes: f64,
    /// Socket errors (connect, read, write, timeout).
    pub errors: f64,
    /// Responses with a status ≥ 400.
    pub non_2xx: f64,
    /// Latency percentiles and mean, µs (wrk's histogram: µs resolution).
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests / (self.duration_us / 1e6)
    }

    /// Response throughput, MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes / (self.duration_us / 1e6) / (1024.0 * 1024.0)
    }
}

/// One wrk run.
pub struct WrkRun<'a> {
    /// Full URL, e.g. `http://127.0.0.1:PORT/small`.
    pub url: String,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Seconds (`-d`).
    pub seconds: u64,
    /// Header the client sends itself, if any.
    pub header: Option<(&'a str, &'a SecretString)>,
    /// Where the script lives.
    pub script: &'a Path,
}

/// `wrk --version`'s first line.
pub async fn version() -> String {
    crate::rig::program_version("wrk", &["--version"]).await
}

/// Runs `wrk -t1 -cC -dSs --latency --timeout 10s -s SCRIPT URL`.
///
/// # Errors
/// wrk missing or failing, no result line, or any socket error or non-2xx response.
pub async fn run(r: &WrkRun<'_>) -> anyhow::Result<WrkResult> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.args(["-t1", "--latency", "--timeout", "10s"])
        .arg(format!("-c{}", r.connections))
        .arg(format!("-d{}s", r.seconds))
        .arg("-s")
        .arg(r.script)
        .arg(&r.url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some((name, value)) = r.header {
        cmd.env("BENCH_HEADER_NAME", name)
            .env("BENCH_HEADER_VALUE", value.expose_secret());
    }
    let out = cmd
        .output()
        .await
        .context("running wrk (install it: apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("BENCH_RESULT ")) else {
        bail!(
            "wrk printed no result for {} (exit {:?}): {}",
            r.url,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let result: WrkResult = serde_json::from_str(line).context("wrk result line")?;
    if result.errors > 0.0 || result.non_2xx > 0.0 {
        bail!(
            "wrk {}: {} socket errors, {} responses ≥ 400 of {}",
            r.url,
            result.errors,
            result.non_2xx,
            result.requests
        );
    }
    Ok(result)
}
