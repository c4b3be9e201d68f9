//! `agentd audit`: read, follow and verify the audit log.
//!
//! - `agentd audit [--grant ID] [--json] [--follow] [--dir PATH]` prints the records, one
//!   line each (time, seq, event, key fields), or the raw JSON lines with `--json`;
//!   `--follow` keeps printing new ones (polling every 200 ms) across rotations.
//! - `agentd audit verify [--json] [--dir PATH]` checks the hash chain and exits 1 when it
//!   finds problems.
//!
//! Human output renders every text field with [`agentd_proto::text::terminal_safe`]
//! (control, bidi and invisible characters as visible escapes), so neither a statement nor
//! a justification can drive the terminal; statements also have their whitespace runs
//! folded to one space. Agent type and client name are labelled "claimed".

use crate::audit::{verify, AuditEvent, Follower, RawRecord, VerifyReport};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// How often `--follow` looks for new records.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// `agentd audit`: show or verify the audit log.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// `verify`; without it, print the records.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only records about this grant (g_…): its request and decision, the grant, its
    /// connections and statements, and its end.
    #[arg(long, value_name = "ID")]
    pub grant: Option<String>,
    /// Keep printing new records as they are written (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Print the raw JSON lines (for `verify`: the report as JSON).
    #[arg(long, global = true)]
    pub json: bool,
    /// The audit directory (default: the one from the config).
    #[arg(long, global = true, value_name = "PATH")]
    pub dir: Option<std::path::PathBuf>,
}

/// `agentd audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain: every record's hash, seq order and link to the previous one.
    /// Prints `audit log OK: …` or each problem; exits 1 when there are problems.
    Verify,
}

/// Run `agentd audit` against `audit_dir` (overridden by `--dir`). Returns the exit code:
/// 0, or 1 when `verify` found problems.
///
/// Errors: the directory or a file cannot be read; stdout cannot be written (a closed pipe
/// is not an error: it ends the command with 0).
pub fn run(args: &AuditArgs, audit_dir: &Path) -> anyhow::Result<i32> {
    let dir = args.dir.as_deref().unwrap_or(audit_dir);
    if args.command.is_some() && (args.grant.is_some() || args.follow) {
        anyhow::bail!("`agentd audit verify` takes no --grant or --follow");
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = match args.command {
        Some(AuditCommand::Verify) => run_verify(dir, args.json, &mut out),
        None => run_show(dir, args, &mut out),
    };
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(0),
        other => other,
    }
}

/// Whether the chain is keyed, in words.
fn keyed_line(keyed_from: Option<u64>) -> String {
    match keyed_from {
        Some(1) => "chain: keyed (HMAC-SHA-256 with the daemon's key) from the first record".to_owned(),
        Some(k) => format!(
            "chain: keyed (HMAC-SHA-256 with the daemon's key) from seq {k}; records before it are plain SHA-256"
        ),
        None => "chain: not keyed (plain SHA-256: proves order and completeness, not who wrote it)".to_owned(),
    }
}

/// `agentd audit [verify]` through the daemon (system mode: the log is in the daemon's
/// private data directory); admins only. Same output as the local form.
///
/// # Errors
/// The daemon refuses (not an admin) or cannot be reached; stdout errors.
pub async fn run_remote(args: &AuditArgs, socket: &Path) -> anyhow::Result<i32> {
    use agentd_proto::{Request, Response};
    if args.command.is_some() && (args.grant.is_some() || args.follow) {
        anyhow::bail!("`agentd audit verify` takes no --grant or --follow");
    }
    if let Some(AuditCommand::Verify) = args.command {
        let Response::AuditVerified(view) = super::call(socket, Request::VerifyAudit).await? else {
            anyhow::bail!("unexpected answer from the daemon");
        };
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            for p in &view.problems {
                outln!("{p}");
            }
            let plural = if view.files == 1 { "" } else { "s" };
            if view.ok {
                outln!(
                    "audit log OK: {} records in {} file{plural} (verified by the daemon)",
                    view.records,
                    view.files
                );
            } else {
                outln!(
                    "audit log FAILED: {} problem(s) in {} records, {} file{plural}",
                    view.problems.len(),
                    view.records,
                    view.files
                );
            }
            outln!("{}", keyed_line(view.keyed_from));
        }
        return Ok(if view.ok { 0 } else { 1 });
    }
    let mut filter = args.grant.as_ref().map(|g| GrantFilter {
        grant: g.clone(),
        requests: HashSet::new(),
    });
    let mut after_seq = 0u64;
    let stdout = io::stdout();
    loop {
        let Response::AuditRecords { records, more } = super::call(
            socket,
            Request::ReadAudit {
                after_seq,
                limit: agentd_proto::MAX_AUDIT_PAGE,
            },
        )
        .await?
        else {
            anyhow::bail!("unexpected answer from the daemon");
        };
        let mut out = stdout.lock();
        for text in records {
            let value: Option<Value> = serde_json::from_str(&text).ok();
            if let Some(seq) = value
                .as_ref()
                .and_then(|v| v.get("seq"))
                .and_then(Value::as_u64)
            {
                after_seq = after_seq.max(seq);
            }
            if let (Some(f), Some(v)) = (filter.as_mut(), &value) {
                f.learn(v);
            }
            let record = RawRecord {
                file: std::path::PathBuf::new(),
                line: 0,
                text,
                value,
            };
            match print_record(&record, filter.as_ref(), args.json, &mut out) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
                other => other?,
            }
        }
        let _ = out.flush();
        drop(out);
        if !more {
            if !args.follow {
                return Ok(0);
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn run_verify(dir: &Path, json: bool, out: &mut impl Write) -> anyhow::Result<i32> {
    let report = verify(dir).map_err(|e| anyhow::anyhow!("cannot verify the audit log: {e}"))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_verify_report(&report, dir, out)?;
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// The human form of a [`VerifyReport`].
fn write_verify_report(report: &VerifyReport, dir: &Path, out: &mut impl Write) -> io::Result<()> {
    for p in &report.problems {
        let seq = p.seq.map_or(String::new(), |s| format!(" (seq {s})"));
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(out, "{}:{}{seq}: {kind}: {}", p.file, p.line, p.detail)?;
    }
    let span = match (report.first_seq, report.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    let files = report.files.len();
    let plural = if files == 1 { "" } else { "s" };
    if report.ok() {
        if report.records == 0 {
            writeln!(out, "audit log OK: no records yet in {}", dir.display())?;
        } else {
            writeln!(
                out,
                "audit log OK: {} records in {files} file{plural}{span}",
                report.records
            )?;
        }
    } else {
        writeln!(
            out,
            "audit log FAILED: {} problem(s) in {} records, {files} file{plural}{span}",
            report.problems.len(),
            report.records
        )?;
    }
    writeln!(out, "{}", keyed_line(report.keyed_from))?;
    if let Some(first) = report.first_seq.filter(|&s| s > 1) {
        writeln!(
            out,
            "note: the chain starts at seq {first}; the records before it are not here \
             (rotated files removed?)"
        )?;
    }
    Ok(())
}

/// Which records `--grant` keeps: those naming the grant, and the request and decision it
/// came from (known once its `grant` record has been seen).
struct GrantFilter {
    grant: String,
    requests: HashSet<String>,
}

impl GrantFilter {
    fn learn(&mut self, value: &Value) {
        if value.get("event").and_then(Value::as_str) == Some("grant")
            && value.get("grant_id").and_then(Value::as_str) == Some(&self.grant)
        {
            if let Some(r) = value.get("request_id").and_then(Value::as_str) {
                self.requests.insert(r.to_string());
            }
        }
    }

    fn keeps(&self, value: &Value) -> bool {
        if value.get("grant_id").and_then(Value::as_str) == Some(&self.grant) {
            return true;
        }
        value
            .get("request_id")
            .and_then(Value::as_str)
            .is_some_and(|r| self.requests.contains(r))
    }
}

fn run_show(dir: &Path, args: &AuditArgs, out: &mut impl Write) -> anyhow::Result<i32> {
    let mut follower = Follower::new(dir);
    let mut filter = args.grant.as_ref().map(|g| GrantFilter {
        grant: g.clone(),
        requests: HashSet::new(),
    });
    // The first poll reads everything there is; learn the grant's request id first.
    let mut records = Vec::new();
    follower.poll(&mut |r| records.push(r))?;
    if let Some(f) = filter.as_mut() {
        for r in &records {
            if let Some(v) = &r.value {
                f.learn(v);
            }
        }
    }
    if records.is_empty() && !args.follow && !args.json {
        eprintln!("no audit records in {}", dir.display());
    }
    for r in &records {
        print_record(r, filter.as_ref(), args.json, out)?;
    }
    out.flush()?;
    drop(records);
    if !args.follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let mut failed = None;
        follower.poll(&mut |r| {
            if failed.is_some() {
                return;
            }
            if let (Some(f), Some(v)) = (filter.as_mut(), &r.value) {
                f.learn(v);
            }
            if let Err(e) = print_record(&r, filter.as_ref(), args.json, out) {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        out.flush()?;
    }
}

fn print_record(
    record: &RawRecord,
    filter: Option<&GrantFilter>,
    json: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Some(f) = filter {
        if !record.value.as_ref().is_some_and(|v| f.keeps(v)) {
            return Ok(());
        }
    }
    if json {
        writeln!(out, "{}", record.text)
    } else {
        writeln!(out, "{}", format_record(record))
    }
}

/// One human line for a record: `TIME  #SEQ  EVENT  details`.
pub fn format_record(record: &RawRecord) -> String {
    let Some(value) = &record.value else {
        let mut text = clean(&record.text);
        if text.len() > 200 {
            let mut end = 200;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        return format!(
            "{}:{}: not a record: {text}",
            record.file.display(),
            record.line
        );
    };
    let ts = value.get("ts").and_then(Value::as_str).unwrap_or("?");
    let seq = value.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let event = value.get("event").and_then(Value::as_str).unwrap_or("?");
    let details = match serde_json::from_value::<AuditEvent>(value.clone()) {
        Ok(e) => describe(&e),
        Err(_) => generic(value),
    };
    format!("{}  #{seq:<6} {:<17}{details}", clean(ts), clean(event))
}

/// Control characters escaped, whitespace runs collapsed: one safe terminal line.
/// Longest text field shown per record, in characters (`--json` has the full record).
const FIELD_MAX_CHARS: usize = 10_000;

fn clean(s: &str) -> String {
    agentd_proto::text::terminal_safe(s, FIELD_MAX_CHARS)
}

/// A statement on one line: runs of ASCII whitespace (newlines and indentation of
/// formatted SQL) folded to one space, then [`clean`].
fn clean_sql(s: &str) -> String {
    clean(&s.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn describe(event: &AuditEvent) -> String {
    match event {
        AuditEvent::DaemonStart { pid, version } => {
            format!("pid {pid}, version {}", clean(version))
        }
        AuditEvent::DaemonStop { pid } => format!("pid {pid}"),
        AuditEvent::LogRecovered { discarded_bytes } => {
            format!("discarded {discarded_bytes} bytes of a partial record")
        }
        AuditEvent::Request {
            request_id,
            resource,
            permission,
            duration_seconds,
            clamped,
            justification,
            agent: a,
            requester,
        } => format!(
            "{} {}/{} for {}{} by {}: \"{}\"",
            clean(request_id),
            clean(resource),
            clean(permission),
            humantime::format_duration(Duration::from_secs(*duration_seconds)),
            if *clamped { " (clamped)" } else { "" },
            agentd_proto::text::who_asked(a, requester.as_ref()),
            clean(justification)
        ),
        AuditEvent::Decision {
            request_id,
            decision,
            by,
            reason,
            rule,
        } => {
            let mut s = format!("{} {} by {}", clean(request_id), clean(decision), clean(by));
            if let Some(rule) = rule {
                let _ = write!(s, " (rule {})", clean(rule));
            }
            if let Some(reason) = reason {
                let _ = write!(s, ": {}", clean(reason));
            }
            s
        }
        AuditEvent::Grant {
            grant_id,
            request_id,
            resource,
            permission,
            expires_at,
            agent: a,
            requester,
        } => format!(
            "{} {}/{} until {} for {} (request {})",
            clean(grant_id),
            clean(resource),
            clean(permission),
            unix_time(*expires_at),
            agentd_proto::text::who_asked(a, requester.as_ref()),
            clean(request_id)
        ),
        AuditEvent::GrantEnded {
            grant_id,
            state,
            by,
            live_connections,
        } => format!(
            "{} {} by {}, {live_connections} live connection(s)",
            clean(grant_id),
            clean(state),
            clean(by)
        ),
        AuditEvent::ConnectionOpen {
            grant_id,
            session,
            peer,
            params,
        } => {
            let mut s = format!("{} session {session} from {}", clean(grant_id), clean(peer));
            for (k, v) in params {
                let _ = write!(s, " {}={}", clean(k), clean(v));
            }
            s
        }
        AuditEvent::ConnectionClose {
            grant_id,
            session,
            bytes_up,
            bytes_down,
            end,
            binds,
            executes,
        } => format!(
            "{} session {session} ended ({}): {bytes_up} B up, {bytes_down} B down, \
             {binds} binds, {executes} executes",
            clean(grant_id),
            clean(end)
        ),
        AuditEvent::HttpRequest {
            grant_id,
            session,
            method,
            path,
            status,
            bytes_up,
            bytes_down,
            duration_ms,
            rule,
            refused,
            secret_reflected,
            end,
            ..
        } => format!(
            "{} session {session} {} {} → {status} ({}): {bytes_up} B up, {bytes_down} B down, \
             {duration_ms} ms{}{}",
            clean(grant_id),
            clean(method),
            clean(path),
            clean(end),
            rule.as_deref()
                .map(|r| format!(", rule {}", clean(r)))
                .unwrap_or_default(),
            match (refused, secret_reflected) {
                (Some(r), _) => format!(", refused: {}", clean(r)),
                (None, 0) => String::new(),
                (None, n) => format!(", secret reflected {n}× (redacted)"),
            }
        ),
        AuditEvent::Statement {
            grant_id,
            session,
            kind,
            statement,
            text,
            truncated,
            overflow,
        } => {
            let mut s = format!("{} session {session} {}", clean(grant_id), clean(kind));
            if let Some(name) = statement.as_deref().filter(|n| !n.is_empty()) {
                let _ = write!(s, " {}", clean(name));
            }
            let _ = write!(s, ": {}", clean_sql(text));
            if let Some(o) = overflow {
                let _ = write!(
                    s,
                    " […] {} [{} bytes, sha256 {}]",
                    clean_sql(&o.tail),
                    o.bytes,
                    clean(&o.sha256)
                );
            } else if *truncated {
                s.push_str(" [truncated]");
            }
            s
        }
        AuditEvent::FunctionCall {
            grant_id,
            session,
            oid,
            args,
            arg_bytes,
        } => format!(
            "{} session {session} function call oid {oid}, {args} argument(s) of {arg_bytes:?} bytes",
            clean(grant_id)
        ),
        AuditEvent::StatementsDropped { count } => {
            format!("{count} statement event(s) not recorded (the writer fell behind)")
        }
        AuditEvent::RoleCreated {
            grant_id,
            resource,
            permission,
            role,
            valid_until,
        } => format!(
            "{} role {} on {}/{} valid until {}",
            clean(grant_id),
            clean(role),
            clean(resource),
            clean(permission),
            unix_time(*valid_until)
        ),
        AuditEvent::RoleDropped {
            grant_id,
            role,
            dropped,
            terminated_sessions,
            error,
        } => {
            let outcome = match (dropped, error) {
                (true, _) => "dropped".to_owned(),
                (false, Some(e)) => format!("NOT dropped: {}", clean(e)),
                (false, None) => "NOT dropped".to_owned(),
            };
            format!(
                "{} role {} {outcome}, {terminated_sessions} session(s) terminated",
                clean(grant_id),
                clean(role)
            )
        }
        AuditEvent::AdminAction { action, target, by } => {
            format!("{} {} by {}", clean(action), clean(target), clean(by))
        }
        AuditEvent::RolesSwept {
            resource,
            permission,
            dropped,
            failed,
            error,
        } => {
            let mut s = format!(
                "{}/{}: {} orphan role(s) dropped",
                clean(resource),
                clean(permission),
                dropped.len()
            );
            if !dropped.is_empty() {
                s.push_str(&format!(" ({})", clean(&dropped.join(", "))));
            }
            if !failed.is_empty() {
                s.push_str(&format!("; not dropped: {}", clean(&failed.join("; "))));
            }
            if let Some(e) = error {
                s.push_str(&format!("; sweep failed: {}", clean(e)));
            }
            s
        }
        AuditEvent::StatementRefused {
            session,
            kind,
            text,
            reason,
            ..
        } => format!(
            "session {session} {} refused ({}): {}",
            clean(kind),
            clean(reason),
            clean(text)
        ),
        AuditEvent::CredentialTampered {
            resource,
            permission,
            error,
            ..
        } => format!(
            "{}/{}: the stored login no longer authenticates ({}); new grants refused until `agentd secret set`",
            clean(resource),
            clean(permission),
            clean(error)
        ),
    }
}

/// `key=value` for the fields of an event this build does not know.
fn generic(value: &Value) -> String {
    let Some(map) = value.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in map {
        if matches!(k.as_str(), "seq" | "ts" | "event" | "prev" | "hash") {
            continue;
        }
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{}={}", clean(k), clean(&v)));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditOptions, Durability};
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Audit(AuditArgs),
    }

    fn parse(args: &[&str]) -> Result<AuditArgs, clap::Error> {
        let mut full = vec!["agentd", "audit"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| match c.command {
            Top::Audit(a) => a,
        })
    }

    #[test]
    fn arguments() {
        let a = parse(&[]).unwrap();
        assert!(a.command.is_none() && !a.json && !a.follow);
        let a = parse(&["--grant", "g_1", "--follow", "--json", "--dir", "/x"]).unwrap();
        assert_eq!(a.grant.as_deref(), Some("g_1"));
        assert!(a.follow && a.json);
        assert_eq!(a.dir.as_deref(), Some(Path::new("/x")));
        let a = parse(&["verify", "--json", "--dir", "/y"]).unwrap();
        assert!(matches!(a.command, Some(AuditCommand::Verify)));
        assert!(a.json);
        assert_eq!(a.dir.as_deref(), Some(Path::new("/y")));
        let a = parse(&["--json", "verify"]).unwrap();
        assert!(a.json && a.command.is_some());
        assert!(parse(&["verify", "--follow"]).is_err());
        let a = parse(&["--grant", "g", "verify"]).unwrap();
        assert!(run(&a, Path::new("/nonexistent")).is_err());
    }

    fn agent_info() -> agentd_proto::AgentInfo {
        agentd_proto::AgentInfo {
            agent_type: "claude-code".into(),
            client_name: Some("claude".into()),
            pid: Some(42),
            uid: Some(1000),
        }
    }

    fn sample_log(dir: &Path) {
        let log = AuditLog::open(
            dir,
            AuditOptions {
                max_file_bytes: 1 << 20,
                fsync: false,
            },
        )
        .unwrap();
        let events = [
            AuditEvent::DaemonStart {
                pid: 1,
                version: "0.1.0".into(),
            },
            AuditEvent::Request {
                request_id: "r_1".into(),
                resource: "app-db".into(),
                permission: "read_only".into(),
                duration_seconds: 1800,
                clamped: true,
                justification: "look\nat\x1b[31m things".into(),
                agent: agent_info(),
                requester: Some(agentd_proto::Requester {
                    user: "alice".into(),
                    uid: 1000,
                    pid: 42,
                }),
            },
            AuditEvent::Decision {
                request_id: "r_1".into(),
                decision: "approved".into(),
                by: "policy".into(),
                reason: None,
                rule: Some("auto".into()),
            },
            AuditEvent::Grant {
                grant_id: "g_1".into(),
                request_id: "r_1".into(),
                resource: "app-db".into(),
                permission: "read_only".into(),
                expires_at: 1_700_000_000,
                agent: agent_info(),
                requester: None,
            },
            AuditEvent::Request {
                request_id: "r_2".into(),
                resource: "other".into(),
                permission: "read_write".into(),
                duration_seconds: 60,
                clamped: false,
                justification: "x".into(),
                agent: agent_info(),
                requester: None,
            },
            AuditEvent::ConnectionOpen {
                grant_id: "g_1".into(),
                session: 1,
                peer: "127.0.0.1:5000".into(),
                params: Default::default(),
            },
            AuditEvent::Statement {
                grant_id: "g_1".into(),
                session: 1,
                kind: "parse".into(),
                statement: Some("s1".into()),
                text: "SELECT\n  1".into(),
                truncated: true,
                overflow: None,
            },
            AuditEvent::ConnectionClose {
                grant_id: "g_1".into(),
                session: 1,
                bytes_up: 10,
                bytes_down: 20,
                end: "client".into(),
                binds: 1,
                executes: 1,
            },
            AuditEvent::GrantEnded {
                grant_id: "g_1".into(),
                state: "revoked".into(),
                by: "user".into(),
                live_connections: 0,
            },
            AuditEvent::StatementsDropped { count: 3 },
        ];
        for e in &events {
            log.append(e, Durability::Write).unwrap();
        }
    }

    fn show(dir: &Path, args: &[&str]) -> (i32, String) {
        let a = parse(args).unwrap();
        let mut out = Vec::new();
        let code = match a.command {
            Some(AuditCommand::Verify) => run_verify(dir, a.json, &mut out).unwrap(),
            None => run_show(dir, &a, &mut out).unwrap(),
        };
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn human_lines() {
        let dir = tempfile::tempdir().unwrap();
        sample_log(dir.path());
        let (code, out) = show(dir.path(), &[]);
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 10, "{out}");
        assert!(
            lines[0].contains("#1 ") && lines[0].contains("daemon_start"),
            "{out}"
        );
        assert!(
            lines[1].contains(
                "r_1 app-db/read_only for 30m (clamped) by OS user alice (uid 1000) pid 42, claimed agent claude-code \
                 (client \"claude\"): \"look\\nat\\x1b[31m things\""
            ),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("r_1 approved by policy (rule auto)"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("g_1 app-db/read_only until 2023-11-14T22:13:20Z"));
        assert!(
            lines[6].ends_with("g_1 session 1 parse s1: SELECT 1 [truncated]"),
            "{}",
            lines[6]
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn grant_filter_and_json() {
        let dir = tempfile::tempdir().unwrap();
        sample_log(dir.path());
        let (_, out) = show(dir.path(), &["--grant", "g_1"]);
        let events: Vec<&str> = out
            .lines()
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(
            events,
            [
                "request",
                "decision",
                "grant",
                "connection_open",
                "statement",
                "connection_close",
                "grant_ended"
            ]
        );
        let (_, out) = show(dir.path(), &["--grant", "g_1", "--json"]);
        let raw = std::fs::read_to_string(dir.path().join(crate::audit::ACTIVE_FILE)).unwrap();
        for line in out.lines() {
            assert!(raw.lines().any(|l| l == line));
        }
        assert_eq!(out.lines().count(), 7);
    }

    #[test]
    fn verify_output() {
        let dir = tempfile::tempdir().unwrap();
        sample_log(dir.path());
        let (code, out) = show(dir.path(), &["verify"]);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            "audit log OK: 10 records in 1 file (seq 1..10)\n\
             chain: not keyed (plain SHA-256: proves order and completeness, not who wrote it)\n"
        );
        let (code, out) = show(dir.path(), &["verify", "--json"]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["records"], 10);

        let path = dir.path().join(crate::audit::ACTIVE_FILE);
        let raw = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, raw.replace("read_write", "superuser")).unwrap();
        let (code, out) = show(dir.path(), &["verify"]);
        assert_eq!(code, 1);
        assert!(
            out.starts_with("audit.jsonl:5 (seq 5): modified: hash does not match"),
            "{out}"
        );
        assert!(out.contains("audit log FAILED: 1 problem(s)"), "{out}");
    }

    #[test]
    fn not_a_record_and_unknown_events() {
        let r = RawRecord {
            file: "audit.jsonl".into(),
            line: 3,
            text: "garbage\x07".into(),
            value: None,
        };
        assert_eq!(
            format_record(&r),
            "audit.jsonl:3: not a record: garbage\\x07"
        );
        let r = RawRecord {
            file: "audit.jsonl".into(),
            line: 1,
            text: String::new(),
            value: Some(serde_json::json!({
                "seq": 9, "ts": "2025-01-01T00:00:00.000Z", "event": "future_thing",
                "a": 1, "b": "x y", "prev": "0", "hash": "1"
            })),
        };
        let line = format_record(&r);
        assert!(line.ends_with("future_thing     a=1 b=x y"), "{line}");
    }
}
