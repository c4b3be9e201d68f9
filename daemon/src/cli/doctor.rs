//! `agentd doctor [--json]`: which daemon is running (system mode, user mode, both or none)
//! and every exposure the current user can see on this machine, each with its fix.
//!
//! Everything is read from the OS as the user running `doctor`: the two control sockets are
//! pinged, path permissions are tested with `access(2)` (so ACLs, groups and read-only
//! mounts count), sudo is asked non-interactively (`sudo -n -l`), the Yama ptrace setting
//! is read from `/proc/sys/kernel/yama/ptrace_scope`, terminal injection from
//! `/proc/sys/dev/tty/legacy_tiocsti`. Nothing is changed and no secret is
//! read: keychain entries are reported by the names the config gives them.
//!
//! Exit code: 0 when no check is `exposed`, 1 otherwise (and 1 on an error).
//!
//! JSON (`--json`), stable field names:
//! `{"user": {"uid", "name"}, "mode": "system"|"user"|"both"|"none",
//!   "daemons": [{"mode": "system"|"user", "socket", "state": "up"|"refused"|"down",
//!                "pid"?, "uid"?, "detail"?}],
//!   "checks": [{"id", "status": "ok"|"exposed"|"skipped", "summary", "fix"?, "paths"}],
//!   "exposures": N, "user_mode_note"?}`.
//! Check ids: `user_mode_daemon`, `keychain_secrets`, `store_readable`, `config_writable`,
//! `daemon_dirs_writable`, `sudo_passwordless`, `sudo_global_timestamp`, `ptrace_scope`,
//! `terminal_injection`, `socket_fallback_dir`.

use super::Cli;
use crate::config::Config;
use agentd_proto::{system, Client, Request, Response};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What user mode does not protect against, in one line; shown by `agentd status`,
/// `agentd doctor` and the README.
pub const USER_MODE_WARNING: &str = "user mode does not hold against an agent with a shell running as the same user: it can read the secrets the daemon reads, edit its config and fake a terminal to approve its own requests";

/// How to move to system mode, in one line.
pub const MOVE_TO_SYSTEM: &str = "move to system mode: `sudo apt install ./agentd_*.deb`, add yourself to `[daemon] clients` in /etc/agentd/config.toml, `sudo systemctl enable --now agentd`, then `agentd mcp install --client …`";

/// How long one control-socket probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Most entries looked at under the daemon's data directory.
const MAX_STORE_ENTRIES: usize = 10_000;

/// Process names of AI agents that come with a shell tool (`/proc/PID/comm`, 15 bytes).
const SHELL_AGENTS: &[&str] = &[
    "claude",
    "codex",
    "cursor",
    "cursor-agent",
    "aider",
    "gemini",
    "goose",
    "opencode",
    "amp",
    "copilot",
];

/// `agentd doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON (field names are stable; see the man page).
    #[arg(long)]
    pub json: bool,
    /// Look for the system layout (/etc/agentd, /var/lib/agentd, /run/agentd, /etc/sudoers)
    /// under DIR instead of / (for checking an image or a test root).
    #[arg(long, hide = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Who ran `doctor`.
    pub user: UserInfo,
    /// `system`, `user`, `both` or `none`: which kinds of daemon answered.
    pub mode: &'static str,
    /// One probe per control socket.
    pub daemons: Vec<DaemonProbe>,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
    /// Number of checks with status `exposed`.
    pub exposures: usize,
    /// [`USER_MODE_WARNING`] and [`MOVE_TO_SYSTEM`] when a user-mode daemon runs as you.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_mode_note: Option<String>,
}

/// The user running `doctor` (real uid).
#[derive(Debug, Serialize)]
pub struct UserInfo {
    /// Real uid.
    pub uid: u32,
    /// Name from the password database (`uid N` without one).
    pub name: String,
}

/// One control socket and what answered there.
#[derive(Debug, Serialize)]
pub struct DaemonProbe {
    /// `system` (the fixed system socket) or `user` (this user's socket in force).
    pub mode: &'static str,
    /// The socket path.
    pub socket: String,
    /// `up` (answered a status request), `refused` (answered with an error, e.g. you are
    /// not one of its clients) or `down` (nothing listening).
    pub state: &'static str,
    /// The daemon's pid (from its status answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The uid the daemon process runs as (`/proc/PID/status`, Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The daemon's refusal or the connection error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Stable id (see the module docs).
    pub id: &'static str,
    /// `ok`, `exposed` or `skipped` (could not be checked, or meaningless for this user).
    pub status: &'static str,
    /// What was found, in one sentence.
    pub summary: String,
    /// What to do about it (for `exposed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The paths or names concerned.
    pub paths: Vec<String>,
}

impl Check {
    fn ok(id: &'static str, summary: impl Into<String>) -> Self {
        Self {
            id,
            status: "ok",
            summary: summary.into(),
            fix: None,
            paths: Vec::new(),
        }
    }
    fn skipped(id: &'static str, summary: impl Into<String>) -> Self {
        Self {
            status: "skipped",
            ..Self::ok(id, summary)
        }
    }
    fn exposed(
        id: &'static str,
        summary: impl Into<String>,
        fix: impl Into<String>,
        paths: Vec<String>,
    ) -> Self {
        Self {
            id,
            status: "exposed",
            summary: summary.into(),
            fix: Some(fix.into()),
            paths,
        }
    }
}

/// Runs `agentd doctor`; returns the exit code (0 nothing exposed, 1 otherwise).
///
/// # Errors
/// Only when the report cannot be printed.
pub async fn run(cli: &Cli, args: &DoctorArgs) -> anyhow::Result<i32> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let report = diagnose(&root, &cli.socket_path(), &cli.config_path()).await;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", render(&report));
    }
    Ok(i32::from(report.exposures > 0))
}

/// The system path `abs` (absolute) under `root`.
fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Builds the report: probes both sockets, then runs every check.
pub async fn diagnose(root: &Path, user_socket: &Path, user_config: &Path) -> Report {
    let uid = agentd_proto::socket::current_uid();
    let name = crate::principal::user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    let system_socket = under(root, system::SOCKET);
    let mut daemons = vec![probe("system", &system_socket).await];
    if user_socket != system_socket {
        daemons.push(probe("user", user_socket).await);
    }
    // A daemon running as you is a user-mode daemon whatever socket it is on; one running
    // as another uid (or refusing you) is a system daemon.
    let mine = |d: &DaemonProbe| d.state == "up" && d.uid.map_or(d.mode == "user", |u| u == uid);
    let as_me: Vec<&DaemonProbe> = daemons.iter().filter(|d| mine(d)).collect();
    let other = daemons.iter().any(|d| d.state != "down" && !mine(d));
    let user_mode = !as_me.is_empty();
    let mode = match (other, user_mode) {
        (true, true) => "both",
        (true, false) => "system",
        (false, true) => "user",
        (false, false) => "none",
    };
    let is_root = uid == 0;
    let mut checks = vec![user_mode_daemon(&as_me, uid)];
    drop(as_me);
    checks.push(if user_config == under(root, system::CONFIG) {
        // A CLI in system mode names the system config: its secrets are in the daemon's
        // store (checked by `store_readable`), not in anyone's keychain.
        Check::ok(
            "keychain_secrets",
            "the config in force is the system config; its secrets live in the daemon's store",
        )
    } else {
        keychain_secrets(user_config)
    });
    checks.push(store_readable(root, is_root));
    checks.push(config_writable(root, user_config, is_root));
    checks.push(daemon_dirs_writable(root, is_root));
    checks.push(sudo_passwordless(is_root).await);
    checks.push(sudo_global_timestamp(root));
    checks.push(ptrace_scope());
    checks.push(terminal_injection(
        std::fs::read_to_string(LEGACY_TIOCSTI).ok().as_deref(),
    ));
    checks.push(socket_fallback_dir(user_socket));
    let exposures = checks.iter().filter(|c| c.status == "exposed").count();
    Report {
        user: UserInfo { uid, name },
        mode,
        daemons,
        checks,
        exposures,
        user_mode_note: user_mode.then(|| format!("{USER_MODE_WARNING}; {MOVE_TO_SYSTEM}")),
    }
}

/// Pings the daemon on `socket` with a status request.
async fn probe(mode: &'static str, socket: &Path) -> DaemonProbe {
    let mut p = DaemonProbe {
        mode,
        socket: socket.display().to_string(),
        state: "down",
        pid: None,
        uid: None,
        detail: None,
    };
    if !socket.exists() {
        p.detail = Some("no socket".to_owned());
        return p;
    }
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut client = Client::connect(socket).await?;
        client.call(Request::Status).await
    })
    .await;
    match answer {
        Err(_) => p.detail = Some(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(e)) => {
            // Connected but cut off (a daemon that refuses the peer closes the connection
            // after its error) or nothing listening.
            p.detail = Some(format!("{:#}", anyhow::Error::from(e)));
        }
        Ok(Ok(Response::Status(status))) => {
            p.state = "up";
            p.pid = Some(status.pid);
            p.uid = process_uid(status.pid);
        }
        Ok(Ok(Response::Error { message, .. })) => {
            p.state = "refused";
            p.detail = Some(message);
        }
        Ok(Ok(_)) => {
            p.state = "refused";
            p.detail = Some("unexpected answer to a status request".to_owned());
        }
    }
    p
}

/// The mode of the daemon with process id `pid` answering on `socket`, as the OS shows it:
/// `user` when it runs as the calling user, `system` when it runs as another uid. Where
/// the daemon's uid cannot be read (no `/proc`), `system` for the fixed system socket and
/// `user` otherwise.
pub fn daemon_mode(pid: u32, socket: &Path) -> &'static str {
    match process_uid(pid) {
        Some(uid) if uid == agentd_proto::socket::current_uid() => "user",
        Some(_) => "system",
        None if socket == Path::new(system::SOCKET) => "system",
        None => "user",
    }
}

/// The real uid of process `pid` (`/proc/PID/status`, Linux).
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Processes of `uid` whose name is a known shell-capable agent: `name (pid N)`.
fn shell_agents_of(uid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if SHELL_AGENTS.contains(&comm) && process_uid(pid) == Some(uid) {
            found.push(format!("{comm} (pid {pid})"));
        }
    }
    found
}

fn user_mode_daemon(as_me: &[&DaemonProbe], uid: u32) -> Check {
    const ID: &str = "user_mode_daemon";
    let Some(d) = as_me.first() else {
        return Check::ok(ID, "no agentd daemon is running as you");
    };
    let agents = shell_agents_of(uid);
    let seen = if agents.is_empty() {
        "no known shell agent is running as you right now, but any you start will".to_owned()
    } else {
        format!("running as you now: {}", agents.join(", "))
    };
    Check::exposed(
        ID,
        format!(
            "a user-mode daemon runs as you (pid {}); {USER_MODE_WARNING} ({seen})",
            d.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
        ),
        MOVE_TO_SYSTEM,
        vec![d.socket.clone()],
    )
}

fn keychain_secrets(user_config: &Path) -> Check {
    const ID: &str = "keychain_secrets";
    if !user_config.exists() {
        return Check::ok(
            ID,
            "no user config, so no keychain entries of yours are in use",
        );
    }
    let config = match Config::load(user_config) {
        Ok(c) => c,
        Err(e) => {
            return Check::skipped(ID, format!("the user config does not load: {e}"));
        }
    };
    let entries: Vec<String> = config
        .resources
        .iter()
        .flat_map(|(r, res)| {
            res.permissions
                .iter()
                .filter_map(move |(p, perm)| perm.credential.keychain_entry(r, p))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if entries.is_empty() {
        return Check::ok(
            ID,
            format!("{} names no keychain entries", user_config.display()),
        );
    }
    Check::exposed(
        ID,
        format!(
            "{} names {} keychain entr{} in your own keychain; any process running as you can read them (keyctl, secret-tool, security)",
            user_config.display(),
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        ),
        "store them in the system daemon instead (`sudo agentd secret set RESOURCE PERMISSION` against the system socket), then `agentd secret delete RESOURCE PERMISSION` here",
        entries,
    )
}

/// What [`can`] asks about.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// True when this process may access `path` (real uid, `access(2)`, so groups and ACLs
/// count).
#[cfg(unix)]
fn can(path: &Path, access: Access) -> bool {
    let mode = match access {
        Access::Read => nix::unistd::AccessFlags::R_OK,
        Access::Write => nix::unistd::AccessFlags::W_OK,
    };
    nix::unistd::access(path, mode).is_ok()
}

#[cfg(not(unix))]
fn can(_path: &Path, _access: Access) -> bool {
    false
}

fn store_readable(root: &Path, is_root: bool) -> Check {
    const ID: &str = "store_readable";
    let data = under(root, system::DATA_DIR);
    if is_root {
        return Check::skipped(
            ID,
            "you are root (an admin): you can read the daemon's store by design; run doctor as a client user",
        );
    }
    if !data.exists() {
        return Check::ok(ID, format!("{} does not exist", data.display()));
    }
    let mut readable = Vec::new();
    let mut stack = vec![data.clone()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_STORE_ENTRIES {
                break;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && can(&path, Access::Read) => {
                    readable.push(path.display().to_string());
                }
                _ => {}
            }
        }
    }
    if readable.is_empty() {
        Check::ok(
            ID,
            format!("no file under {} is readable by you", data.display()),
        )
    } else {
        Check::exposed(
            ID,
            format!(
                "{} file(s) under the daemon's data directory are readable by you (secrets, audit key, state)",
                readable.len()
            ),
            format!(
                "sudo chown -R {u}:{u} {d} && sudo chmod -R go-rwx {d}",
                u = system::DAEMON_USER,
                d = system::DATA_DIR
            ),
            readable,
        )
    }
}

fn writable_among(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter(|p| p.exists() && can(p, Access::Write))
        .map(|p| p.display().to_string())
        .collect()
}

fn config_writable(root: &Path, user_config: &Path, is_root: bool) -> Check {
    const ID: &str = "config_writable";
    let mut found = Vec::new();
    if !is_root {
        found = writable_among(&[under(root, system::CONFIG), under(root, system::CONFIG_DIR)]);
    }
    let system_found = !found.is_empty();
    // Your own config is yours to edit: that is the point of user mode, and its weakness.
    let user_found = user_config != under(root, system::CONFIG)
        && user_config.exists()
        && can(user_config, Access::Write);
    if user_found {
        found.push(user_config.display().to_string());
    }
    if found.is_empty() {
        return if is_root {
            Check::skipped(
                ID,
                "you are root (an admin): the system config is yours to edit; run doctor as a client user",
            )
        } else {
            Check::ok(ID, "no agentd config is writable by you")
        };
    }
    let mut fix = Vec::new();
    if system_found {
        fix.push(format!(
            "sudo chown root:{u} {d} {c} && sudo chmod 0750 {d} && sudo chmod 0640 {c}",
            u = system::DAEMON_USER,
            d = system::CONFIG_DIR,
            c = system::CONFIG
        ));
    }
    if user_found {
        fix.push(format!(
            "an agent running as you can edit {} (e.g. to policy = \"auto\"); {MOVE_TO_SYSTEM}",
            user_config.display()
        ));
    }
    Check::exposed(
        ID,
        "an agentd config is writable by you, so its policy and resources are yours (and any agent's running as you) to change",
        fix.join("; "),
        found,
    )
}

fn daemon_dirs_writable(root: &Path, is_root: bool) -> Check {
    const ID: &str = "daemon_dirs_writable";
    if is_root {
        return Check::skipped(ID, "you are root (an admin); run doctor as a client user");
    }
    let found = writable_among(&[under(root, system::DATA_DIR), under(root, system::RUN_DIR)]);
    if found.is_empty() {
        return Check::ok(
            ID,
            "the daemon's data and runtime directories are not writable by you",
        );
    }
    Check::exposed(
        ID,
        "a system daemon directory is writable by you: you could replace its state, audit log or control socket",
        format!(
            "sudo chown {u}:{u} {data} {run} && sudo chmod 0700 {data} && sudo chmod 0755 {run}",
            u = system::DAEMON_USER,
            data = system::DATA_DIR,
            run = system::RUN_DIR
        ),
        found,
    )
}

/// Finds `sudo` on `PATH`.
fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

async fn sudo_passwordless(is_root: bool) -> Check {
    const ID: &str = "sudo_passwordless";
    if is_root {
        return Check::skipped(ID, "you are root");
    }
    let Some(sudo) = find_in_path("sudo") else {
        return Check::ok(ID, "sudo is not installed");
    };
    let run = tokio::process::Command::new(&sudo)
        .args(["-n", "-l"])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Check::skipped(ID, format!("cannot run sudo: {e}")),
        Err(_) => return Check::skipped(ID, "`sudo -n -l` did not answer in time"),
    };
    if !out.status.success() {
        return Check::ok(ID, "sudo asks you for a password (`sudo -n -l` refused)");
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let how = if listing.contains("NOPASSWD") {
        "a NOPASSWD rule"
    } else {
        "a cached sudo timestamp or a rule without authentication"
    };
    Check::exposed(
        ID,
        format!("sudo works for you without a password right now ({how}): an agent running as you can act as root, i.e. as an agentd admin"),
        "remove NOPASSWD rules for this user from /etc/sudoers.d; run `sudo -k` before starting an agent; keep the default timestamp_type=tty",
        vec![sudo.display().to_string()],
    )
}

/// The sudoers files: /etc/sudoers and /etc/sudoers.d/* (under `root`).
fn sudoers_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![under(root, "/etc/sudoers")];
    if let Ok(dir) = std::fs::read_dir(under(root, "/etc/sudoers.d")) {
        let mut extra: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        extra.sort();
        files.extend(extra);
    }
    files
}

/// True when a sudoers line (comments stripped) makes the sudo timestamp global: the
/// `timestamp_type=global` default, or the legacy `!tty_tickets`.
fn sets_global_timestamp(line: &str) -> bool {
    let line = line.split('#').next().unwrap_or_default();
    let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    compact.starts_with("Defaults")
        && (compact.contains("timestamp_type=global") || compact.contains("!tty_tickets"))
}

fn sudo_global_timestamp(root: &Path) -> Check {
    const ID: &str = "sudo_global_timestamp";
    let files = sudoers_files(root);
    if !files[0].exists() {
        return Check::ok(ID, "no /etc/sudoers");
    }
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                if text.lines().any(sets_global_timestamp) {
                    found.push(file.display().to_string());
                }
            }
            Err(_) if file.is_dir() => {}
            Err(_) => unreadable.push(file.display().to_string()),
        }
    }
    if !found.is_empty() {
        return Check::exposed(
            ID,
            "sudo caches authentication for all of your sessions at once (timestamp_type=global or !tty_tickets): after you use sudo in one terminal, an agent's shell can use it without a password",
            "remove `timestamp_type=global` / `!tty_tickets` (the default timestamp_type=tty ties a cached sudo to one terminal)",
            found,
        );
    }
    if !unreadable.is_empty() {
        return Check::skipped(
            ID,
            format!(
                "cannot read {} as this user; run `sudo agentd doctor` to check",
                unreadable.join(", ")
            ),
        );
    }
    Check::ok(ID, "sudo timestamps are per terminal")
}

fn ptrace_scope() -> Check {
    const ID: &str = "ptrace_scope";
    const FIX: &str = "echo kernel.yama.ptrace_scope=1 | sudo tee /etc/sysctl.d/10-ptrace.conf && sudo sysctl --system (1 = only a parent may trace its children)";
    let path = "/proc/sys/kernel/yama/ptrace_scope";
    if !cfg!(target_os = "linux") {
        return Check::skipped(ID, "not Linux");
    }
    match std::fs::read_to_string(path).map(|s| s.trim().to_owned()) {
        Ok(v) if v == "0" => Check::exposed(
            ID,
            "kernel.yama.ptrace_scope = 0: any process running as you can trace and read the memory of your other processes (the MCP shim, your shells)",
            FIX,
            vec![path.to_owned()],
        ),
        Ok(v) => Check::ok(ID, format!("kernel.yama.ptrace_scope = {v}")),
        Err(_) => Check::exposed(
            ID,
            "the Yama LSM is not active: classic ptrace rules let any process running as you trace your other processes",
            "boot a kernel with Yama (CONFIG_SECURITY_YAMA) and set kernel.yama.ptrace_scope=1",
            vec![path.to_owned()],
        ),
    }
}

/// The sysctl that lets a process push characters into its controlling terminal's input
/// queue (`ioctl(TIOCSTI)`); Linux 6.2 and later, `0` turns it off for unprivileged callers.
const LEGACY_TIOCSTI: &str = "/proc/sys/dev/tty/legacy_tiocsti";

/// `terminal_injection` from the content of [`LEGACY_TIOCSTI`] (`None`: the file is absent,
/// a kernel before 6.2, where TIOCSTI is always allowed).
fn terminal_injection(legacy_tiocsti: Option<&str>) -> Check {
    const ID: &str = "terminal_injection";
    const HOW: &str = "a process that shares your terminal (an agent you started there, or its shell) can type into it with TIOCSTI: commands while your sudo timestamp is fresh, and, if it can also read your screen (a multiplexer or X11 session), the code `agentd approve` asks for";
    if !cfg!(target_os = "linux") {
        return Check::skipped(ID, "not Linux");
    }
    match legacy_tiocsti.map(str::trim) {
        Some("0") => Check::ok(
            ID,
            "dev.tty.legacy_tiocsti = 0: processes cannot type into their terminal",
        ),
        Some(v) => Check::exposed(
            ID,
            format!("dev.tty.legacy_tiocsti = {v}: {HOW}"),
            "echo dev.tty.legacy_tiocsti=0 | sudo tee /etc/sysctl.d/10-tiocsti.conf && sudo sysctl --system; and approve from a terminal no agent runs in",
            vec![LEGACY_TIOCSTI.to_owned()],
        ),
        None => Check::exposed(
            ID,
            format!("this kernel (before Linux 6.2) always allows TIOCSTI: {HOW}"),
            "approve from a terminal no agent runs in (agents started with `setsid` have no terminal to type into), or upgrade to Linux 6.2+ and set dev.tty.legacy_tiocsti=0",
            vec![LEGACY_TIOCSTI.to_owned()],
        ),
    }
}

fn socket_fallback_dir(user_socket: &Path) -> Check {
    const ID: &str = "socket_fallback_dir";
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt as _;
    #[cfg(not(unix))]
    return Check::skipped(ID, "named pipes have no directory");
    // The directory that holds the socket's private directory (e.g. /tmp for
    // /tmp/agentd-1000/agentd.sock).
    let Some(parent) = user_socket.parent().and_then(Path::parent) else {
        return Check::ok(ID, "the user socket has no parent directory");
    };
    let world_writable = std::fs::metadata(parent)
        .map(|m| m.permissions().mode() & 0o002 != 0)
        .unwrap_or(false);
    if !world_writable {
        return Check::ok(
            ID,
            format!(
                "the user socket's directory is not in a shared directory ({})",
                parent.display()
            ),
        );
    }
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| !v.is_empty());
    Check::exposed(
        ID,
        format!(
            "the user-mode socket {} lives under the world-writable {}{}: another local user can create that directory first and stop your daemon from starting",
            user_socket.display(),
            parent.display(),
            if xdg { "" } else { " because XDG_RUNTIME_DIR is unset" }
        ),
        "log in through systemd-logind (pam_systemd) so XDG_RUNTIME_DIR=/run/user/$UID is set, or use system mode (/run/agentd)",
        vec![user_socket.display().to_string()],
    )
}

/// The text report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agentd doctor for user {} (uid {})",
        r.user.name, r.user.uid
    );
    let _ = writeln!(out, "mode: {}", r.mode);
    for d in &r.daemons {
        let who = match (d.pid, d.uid) {
            (Some(pid), Some(uid)) => format!(" (pid {pid}, uid {uid})"),
            (Some(pid), None) => format!(" (pid {pid})"),
            _ => String::new(),
        };
        let detail = d
            .detail
            .as_deref()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} daemon at {}: {}{who}{detail}",
            d.mode, d.socket, d.state
        );
    }
    if let Some(note) = &r.user_mode_note {
        let _ = writeln!(out, "\nnote: {note}");
    }
    let _ = writeln!(out);
    for c in &r.checks {
        let _ = writeln!(out, "[{}] {}: {}", c.status, c.id, c.summary);
        for p in &c.paths {
            let _ = writeln!(out, "      - {p}");
        }
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "      fix: {fix}");
        }
    }
    let _ = writeln!(
        out,
        "\n{} exposure{} found",
        r.exposures,
        if r.exposures == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_timestamp_lines() {
        assert!(sets_global_timestamp("Defaults timestamp_type=global"));
        assert!(sets_global_timestamp(
            "Defaults\ttimestamp_type = global  # shared"
        ));
        assert!(sets_global_timestamp("Defaults:alice !tty_tickets"));
        assert!(!sets_global_timestamp("# Defaults timestamp_type=global"));
        assert!(!sets_global_timestamp("Defaults timestamp_type=tty"));
        assert!(!sets_global_timestamp("alice ALL=(ALL) ALL"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn terminal_injection_reads_the_sysctl() {
        assert_eq!(terminal_injection(Some("0\n")).status, "ok");
        let on = terminal_injection(Some("1\n"));
        assert_eq!(on.status, "exposed");
        assert!(on.summary.contains("legacy_tiocsti = 1"), "{}", on.summary);
        let old = terminal_injection(None);
        assert_eq!(old.status, "exposed");
        assert!(old.summary.contains("before Linux 6.2"), "{}", old.summary);
    }

    #[test]
    fn under_keeps_absolute_paths_inside_the_root() {
        assert_eq!(
            under(Path::new("/tmp/r"), system::CONFIG),
            PathBuf::from("/tmp/r/etc/agentd/config.toml")
        );
        assert_eq!(
            under(Path::new("/"), system::SOCKET),
            PathBuf::from(system::SOCKET)
        );
    }
}
