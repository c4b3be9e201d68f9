//! The run's results: one Markdown table per section, the targets (met or missed),
//! the machine and versions; written as `results.md` and `results.json`.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// A Markdown table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows of cells, already formatted.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub fn new(columns: &[&str]) -> Self {
        Self {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self) -> String {
        let mut s = format!("| {} |\n|", self.columns.join(" | "));
        for (i, _) in self.columns.iter().enumerate() {
            s.push_str(if i == 0 { " --- |" } else { " ---: |" });
        }
        s.push('\n');
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}

/// One section's results.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// `relay`, `connect`, …
    pub key: String,
    /// Heading.
    pub title: String,
    /// What was measured and how, one line each.
    pub notes: Vec<String>,
    /// The table.
    pub table: Table,
    /// Raw figures for scripts.
    pub data: serde_json::Value,
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is compared, e.g. "agentd/direct TPS, 8 clients, -S -M prepared, audit on".
    pub what: String,
    /// The target, e.g. "≥ 0.90".
    pub target: String,
    /// The measured value, formatted.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `--quick` run.
    pub quick: bool,
    /// Work sizes.
    pub plan: serde_json::Value,
    /// UTC start time, RFC 3339.
    pub started_utc: String,
    /// (component, version) pairs.
    pub versions: Vec<(String, String)>,
    /// Sections in run order.
    pub sections: Vec<Section>,
    /// Targets, in section order.
    pub checks: Vec<Check>,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// Load average (1 min) at the start and at the end: a busy machine makes noisy numbers.
    pub loadavg: Vec<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// An empty report for a run with `plan`.
    pub fn new(quick: bool, plan: &crate::Plan) -> Self {
        Self {
            quick,
            plan: serde_json::json!({
                "pgbench_seconds": plan.pgbench_seconds,
                "pgbench_scale": plan.pgbench_scale,
                "connections": plan.connections,
                "copy_out_bytes": plan.copy_out_bytes,
                "copy_in_bytes": plan.copy_in_bytes,
                "requests": plan.requests,
                "revokes": plan.revokes,
                "revoke_sessions": plan.revoke_sessions,
                "process_starts": plan.process_starts,
                "idle_connections": plan.idle_connections,
                "http_seconds": plan.http_seconds,
                "http_warmup_seconds": plan.http_warmup_seconds,
                "http_reps": plan.http_reps,
                "sse_iterations": plan.sse_iterations,
                "sse_events": plan.sse_events,
            }),
            started_utc: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            versions: Vec::new(),
            sections: Vec::new(),
            checks: Vec::new(),
            wall_seconds: 0.0,
            loadavg: vec![loadavg()],
        }
    }

    /// Records the versions.
    pub fn set_versions(&mut self, versions: Vec<(String, String)>) {
        self.versions = versions;
    }

    /// Adds versions not yet listed (by component name).
    pub fn add_versions(&mut self, versions: Vec<(String, String)>) {
        for (k, v) in versions {
            if !self.versions.iter().any(|(name, _)| *name == k) {
                self.versions.push((k, v));
            }
        }
    }

    /// Adds a section and prints its table to stderr as it finishes.
    pub fn add(&mut self, section: Section) {
        eprintln!("\n## {}\n{}", section.title, section.table.markdown());
        self.sections.push(section);
    }

    /// Adds a target check.
    pub fn check(&mut self, what: impl Into<String>, target: &str, measured: String, met: bool) {
        let c = Check {
            what: what.into(),
            target: target.to_owned(),
            measured,
            met,
        };
        eprintln!(
            "target: {} {} — measured {} — {}",
            c.what,
            c.target,
            c.measured,
            if c.met { "met" } else { "MISSED" }
        );
        self.checks.push(c);
    }

    /// Writes `results.json` and `results.md` into `dir` (created if missing).
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.loadavg.push(loadavg());
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run of {} ({} mode, {:.0} s wall; load average 1/5/15 min at start {} and at end {}).\n",
            self.started_utc,
            if self.quick { "quick" } else { "full" },
            self.wall_seconds,
            self.loadavg.first().map(String::as_str).unwrap_or("?"),
            self.loadavg.last().map(String::as_str).unwrap_or("?"),
        );
        let mut versions = Table::new(&["component", "version"]);
        for (k, v) in &self.versions {
            versions.row(vec![k.clone(), v.clone()]);
        }
        let _ = writeln!(s, "### Machine and versions\n\n{}", versions.markdown());
        if !self.checks.is_empty() {
            let mut t = Table::new(&["target", "goal", "measured", "result"]);
            for c in &self.checks {
                t.row(vec![
                    c.what.clone(),
                    c.target.clone(),
                    c.measured.clone(),
                    if c.met { "met" } else { "**missed**" }.to_owned(),
                ]);
            }
            let _ = writeln!(s, "### Targets\n\n{}", t.markdown());
        }
        for section in &self.sections {
            let _ = writeln!(s, "### {}\n", section.title);
            for n in &section.notes {
                let _ = writeln!(s, "- {n}");
            }
            if !section.notes.is_empty() {
                s.push('\n');
            }
            let _ = writeln!(s, "{}", section.table.markdown());
        }
        s
    }
}

/// Percentile `p` (0..=1) of already sorted `values` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Sorts durations (in milliseconds) and returns (p50, p99, mean).
pub fn summarize(ms: &mut [f64]) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let mean = if ms.is_empty() {
        f64::NAN
    } else {
        ms.iter().sum::<f64>() / ms.len() as f64
    };
    (percentile(ms, 0.5), percentile(ms, 0.99), mean)
}

/// `x` with `digits` decimals.
pub fn f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "–".to_owned()
    } else {
        format!("{x:.digits$}")
    }
}
