//! Red team: real OS users attack a running daemon, in system mode and in user mode.
//!
//! Users (created with `useradd` when missing; the tests run as root):
//! - `agentd-rt-daemon`, the daemon's own user in system mode (or `agentd` with
//!   `AGENTD_REDTEAM_INSTALLED=1`);
//! - `agentd-rt-agent`, the *agent*: a listed client in system mode; in user mode the daemon
//!   runs as this user, as it would for a shell agent running as the person;
//! - `agentd-rt-other`, a local user who is not a client.
//!
//! System mode: a root-owned layout under a temporary root-owned prefix
//! (`AGENTD_SYSTEM_ROOT`), the canary upstream password set by root through the socket into
//! the daemon's store, `agentd daemon --system` started as the daemon's user. Every attack
//! runs as the agent without a terminal (the pseudo-terminal attack uses `script(1)`) or as
//! the other user, and must fail with a clear reason; then the admin path works end to end
//! (root approves at a pseudo-terminal, the agent's psql gets rows).
//!
//! User mode: the same attacks against a daemon running as the agent's user with the secret
//! in that user's kernel keyring; only what user mode promises is asserted, the rest is
//! printed. The printed table is SECURITY.md's threat table.
//!
//! `AGENTD_REDTEAM_INSTALLED=1` runs the system half against the installed layout:
//! `/usr/bin/agentd`, the real `/etc/agentd`, `/var/lib/agentd`, `/run/agentd`, user
//! `agentd` (created by the package). The test writes `/etc/agentd/config.toml` (the old
//! one is put back at the end) and starts the daemon itself as `agentd`; a daemon already
//! answering on `/run/agentd/agentd.sock` must be stopped first.
//!
//! The TCP half of "a grant token from another uid" is held by the listener's socket-owner
//! check (`listener/peer.rs`, `sock_diag`): `tcp_token_from_another_uid_is_refused`.

#![cfg(target_os = "linux")]

use agentd::demo::{SandboxCredential, SandboxOptions, DATABASE, PERMISSION, RESOURCE, ROLE};
use agentd_tests::{canary_password, CliOutput, STEP_TIMEOUT};
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

const AGENT: &str = "agentd-rt-agent";
const OTHER: &str = "agentd-rt-other";
const RT_DAEMON: &str = "agentd-rt-daemon";
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A raw control-protocol client (4-byte big-endian length + JSON), run as any user:
/// `send SOCKET FRAME_JSON` prints the answer; `request SOCKET RES PERM` sends a request,
/// prints the answer and, while pending, awaits and prints the decision; `rechain FILE`
/// edits the last record of an audit file and recomputes its SHA-256 (the rewrite attack);
/// `ptrace PID` tries PTRACE_ATTACH; `mem PID` opens /proc/PID/mem.
const CLIENT_PY: &str = r#"
import ctypes, hashlib, json, socket, struct, sys
def call(s, body):
    data = json.dumps({"version": 1, "body": body}).encode()
    s.sendall(struct.pack(">I", len(data)) + data)
    def read(n):
        buf = b""
        while len(buf) < n:
            c = s.recv(n - len(buf))
            if not c:
                raise SystemExit("connection closed by the daemon")
            buf += c
        return buf
    n = struct.unpack(">I", read(4))[0]
    return json.loads(read(n))["body"]
mode = sys.argv[1]
if mode == "send":
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
    print(json.dumps(call(s, json.loads(sys.argv[3]))), flush=True)
elif mode == "request":
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
    r = call(s, {"op": "request_access", "resource": sys.argv[3], "permission": sys.argv[4],
                 "justification": "red team", "agent": {"agent_type": "redteam"}})
    print(json.dumps(r), flush=True)
    while r.get("kind") == "access_request" and r.get("state") == "pending":
        r = call(s, {"op": "await_request", "request_id": r["id"], "timeout_seconds": 60})
    print(json.dumps(r), flush=True)
elif mode == "rechain":
    path = sys.argv[2]
    lines = open(path, "rb").read().split(b"\n")[:-1]
    last = lines[-1]
    body = last[: -len(b',"hash":"') - 66] + b"}"
    body = body.replace(b'"ts":"2', b'"ts":"1', 1)
    h = hashlib.sha256(body).hexdigest().encode()
    lines[-1] = body[:-1] + b',"hash":"' + h + b'"}'
    open(path, "wb").write(b"\n".join(lines) + b"\n")
    print("rewritten and re-chained", flush=True)
elif mode == "ptrace":
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.ptrace(16, int(sys.argv[2]), None, None)
    if r == 0:
        libc.ptrace(17, int(sys.argv[2]), None, None)
        print("attached", flush=True)
    else:
        raise SystemExit("ptrace: errno %d" % ctypes.get_errno())
elif mode == "tiocsti":
    import fcntl, termios
    done = 0
    try:
        for b in sys.argv[2].encode():
            fcntl.ioctl(0, termios.TIOCSTI, bytes([b]))
            done += 1
        print("typed %d bytes into the terminal" % done, flush=True)
    except OSError as e:
        print("TIOCSTI refused after %d bytes: %s" % (done, e), flush=True)
elif mode == "mem":
    try:
        f = open("/proc/%s/mem" % sys.argv[2], "rb")
        print("opened", flush=True)
    except OSError as e:
        raise SystemExit("open /proc/PID/mem: %s" % e)
"#;

/// One attack's result.
#[derive(Debug, Clone)]
struct Outcome {
    attack: &'static str,
    /// True when the attack failed (the boundary held).
    held: bool,
    detail: String,
}

fn outcome(attack: &'static str, held: bool, detail: impl Into<String>) -> Outcome {
    let detail: String = detail.into();
    let mut detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    if detail.is_empty() {
        detail = if held { "refused" } else { "succeeded" }.to_owned();
    }
    let detail = if detail.len() > 200 {
        format!(
            "{}…",
            &detail[..detail
                .char_indices()
                .nth(200)
                .map_or(detail.len(), |(i, _)| i)]
        )
    } else {
        detail
    };
    Outcome {
        attack,
        held,
        detail,
    }
}

async fn run(mut cmd: tokio::process::Command, stdin: Option<&str>) -> anyhow::Result<CliOutput> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await??;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `argv` as `user` (setpriv, supplementary groups of the user), in a new session without a
/// controlling terminal, with a clean environment plus `env`.
fn as_user(user: &str, argv: &[&str], env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("setsid");
    cmd.arg("-w")
        .arg("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .args(argv)
        .env_clear()
        .env("PATH", PATH_ENV)
        .env("HOME", "/tmp")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

fn chown(path: &Path, user: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("chown")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()?;
    anyhow::ensure!(status.success(), "chown {}", path.display());
    Ok(())
}

fn mkdir(path: &Path, mode: u32, owner: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(user) = owner {
        chown(path, user)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn resource_toml(port: u16, ca: &Path, policy: &str) -> String {
    format!(
        r#"[resources.{RESOURCE}]
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "{DATABASE}"
tls = "verify-full"
ca_file = "{ca}"

[resources.{RESOURCE}.permissions.{PERMISSION}]
username = "{ROLE}"
credential = {{ source = "keyring" }}
policy = "{policy}"
max_ttl = "1h"

# Auto-approves the agent type the red team's client claims, but only for another OS user:
# the daemon matches `users` against the peer's uid, so the agent's claim must not match.
[[resources.{RESOURCE}.permissions.{PERMISSION}.rules]]
users = ["{OTHER}"]
agents = ["redteam"]
policy = "auto"
"#,
        ca = ca.display()
    )
}

/// Where the daemon under attack lives and how its clients reach it.
struct Target {
    agentd: PathBuf,
    /// Environment for every client command (how the CLI finds the daemon).
    env: Vec<(String, String)>,
    socket: PathBuf,
    config: PathBuf,
    /// Directories whose files the agent tries to read.
    dirs: Vec<PathBuf>,
    audit_file: PathBuf,
    daemon_pid: u32,
    /// A directory the agent may write to (for its rival daemon).
    agent_scratch: PathBuf,
    ca: PathBuf,
    port: u16,
    keyring_service: String,
}

impl Target {
    fn cli(&self, user: &str, args: &[&str]) -> tokio::process::Command {
        let agentd = self.agentd.display().to_string();
        let mut argv = vec![agentd.as_str()];
        argv.extend_from_slice(args);
        as_user(user, &argv, &self.env)
    }

    fn py(&self, user: &str, script: &Path, args: &[&str]) -> tokio::process::Command {
        let script = script.display().to_string();
        let mut argv = vec!["/usr/bin/python3", script.as_str()];
        argv.extend_from_slice(args);
        as_user(user, &argv, &self.env)
    }
}

/// The agent's request process: prints the request, then (once decided) the decision.
struct PendingRequest {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    id: String,
}

async fn agent_request(target: &Target, script: &Path) -> anyhow::Result<PendingRequest> {
    let socket = target.socket.display().to_string();
    let mut cmd = target.py(AGENT, script, &["request", &socket, RESOURCE, PERMISSION]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
        .await??
        .context("no answer to the request")?;
    let v: Value = serde_json::from_str(&first)?;
    anyhow::ensure!(
        v["state"] == "pending",
        "expected a pending request: {first}"
    );
    Ok(PendingRequest {
        child,
        lines,
        id: v["id"].as_str().unwrap_or_default().to_owned(),
    })
}

impl PendingRequest {
    /// The decision line (after an approve / deny).
    async fn decision(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(STEP_TIMEOUT, self.lines.next_line())
            .await??
            .context("no decision")?;
        let _ = self.child.wait().await;
        Ok(serde_json::from_str(&line)?)
    }
}

/// `agentd ARGS` at a pseudo-terminal made by script(1), run as `user` (root: directly);
/// what the caller writes to its stdin is typed at that terminal.
fn at_pty(target: &Target, user: &str, args: &[&str]) -> tokio::process::Command {
    let agentd = target.agentd.display().to_string();
    let mut argv = vec![agentd.as_str()];
    argv.extend_from_slice(args);
    at_pty_line(target, user, &agentd_tests::shell_line(&argv))
}

/// The `sh` command `line` at a pseudo-terminal made by script(1), run as `user` (root:
/// directly), with the target's client environment.
fn at_pty_line(target: &Target, user: &str, line: &str) -> tokio::process::Command {
    let argv = [
        "script",
        "--quiet",
        "--return",
        "--command",
        line,
        "/dev/null",
    ];
    if user == "root" {
        let mut cmd = tokio::process::Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("HOME", "/root")
            .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    } else {
        as_user(user, &argv, &target.env)
    }
}

/// Runs an `agentd approve` made by [`at_pty`] as whoever owns that terminal would: once
/// the prompt shows its confirmation code, types it (the pty's master side sees the output;
/// a process on the terminal's input side does not).
async fn approve_reading_the_code(cmd: tokio::process::Command) -> anyhow::Result<CliOutput> {
    agentd_tests::type_at_terminal(cmd, agentd_tests::APPROVE_CODE).await
}

/// The directory of the `psql` the tests use.
fn psql_dir() -> String {
    agentd::pgcluster::psql_path()
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

fn contains_secret(text: &str, secret: &SecretString) -> bool {
    text.contains(secret.expose_secret())
}

fn files_in(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Every attack, in order; the pending request `req` is the agent's own.
async fn attacks(
    target: &Target,
    script: &Path,
    secret: &SecretString,
    seen: &mut Vec<String>,
) -> anyhow::Result<(Vec<Outcome>, PendingRequest)> {
    let mut out = Vec::new();
    let socket = target.socket.display().to_string();
    let pid = target.daemon_pid.to_string();

    // 1. Every file under the config, data and run directories.
    let files = files_in(&target.dirs);
    let (mut unreadable, mut leaked) = (0, Vec::new());
    for f in &files {
        let path = f.display().to_string();
        let r = run(as_user(AGENT, &["cat", &path], &[]), None).await?;
        if r.code != 0 {
            unreadable += 1;
        }
        if contains_secret(&r.stdout, secret) {
            leaked.push(path);
        }
    }
    out.push(outcome(
        "read the secret from files (config, data, run dirs)",
        leaked.is_empty(),
        if leaked.is_empty() {
            format!(
                "{} files tried, {unreadable} unreadable (permission denied), none held the secret",
                files.len()
            )
        } else {
            format!("secret read from {}", leaked.join(", "))
        },
    ));

    // 2. Keyrings the agent can reach.
    anyhow::ensure!(
        Path::new("/usr/bin/keyctl").exists() || Path::new("/bin/keyctl").exists(),
        "the red team needs keyctl(1): apt-get install keyutils (.ci/run does)"
    );
    let sh = "for r in @s @u @us; do for k in $(keyctl rlist $r 2>/dev/null); do keyctl print $k 2>/dev/null; for j in $(keyctl rlist $k 2>/dev/null); do keyctl print $j 2>/dev/null; done; done; done; true";
    let r = run(as_user(AGENT, &["sh", "-c", sh], &[]), None).await?;
    let held = !contains_secret(&r.stdout, secret);
    out.push(outcome(
        "read the secret from the kernel keyrings (keyctl print)",
        held,
        if held {
            "no key the agent can read holds it"
        } else {
            "keyctl print showed the secret"
        },
    ));
    // (Not added to `seen`: in user mode this output is the attacker's loot, by design.)

    // 3. The daemon's environment and memory.
    let r = run(
        as_user(AGENT, &["cat", &format!("/proc/{pid}/environ")], &[]),
        None,
    )
    .await?;
    let held = r.code != 0 && !contains_secret(&r.stdout, secret);
    out.push(outcome(
        "read /proc/<daemon>/environ",
        held,
        r.stderr.trim().to_owned(),
    ));
    let r = run(target.py(AGENT, script, &["mem", &pid]), None).await?;
    out.push(outcome(
        "open /proc/<daemon>/mem",
        r.code != 0,
        format!("{}{}", r.stdout.trim(), r.stderr.trim()),
    ));

    // 4. Edit the config.
    let config = target.config.display().to_string();
    let r = run(
        as_user(
            AGENT,
            &[
                "sh",
                "-c",
                &format!("echo '# agent was here' >> '{config}'"),
            ],
            &[],
        ),
        None,
    )
    .await?;
    out.push(outcome(
        "edit the config (policy = \"auto\")",
        r.code != 0,
        r.stderr.trim().to_owned(),
    ));

    // 5. A rival daemon of the agent's own that names the same secret.
    let rival_dir = target.agent_scratch.join("rival");
    mkdir(&rival_dir, 0o700, Some(AGENT))?;
    let rival_config = rival_dir.join("config.toml");
    write_file(
        &rival_config,
        &format!(
            "[daemon]\nkeyring_service = \"{}\"\ndata_dir = \"{}\"\nnotify = false\n\n{}",
            target.keyring_service,
            rival_dir.join("data").display(),
            resource_toml(target.port, &target.ca, "auto")
        ),
        0o644,
    )?;
    chown(&rival_config, AGENT)?;
    let rival_socket = rival_dir.join("rival.sock").display().to_string();
    let rc = rival_config.display().to_string();
    let agentd = target.agentd.display().to_string();
    let mut rival = as_user(
        AGENT,
        &[
            &agentd,
            "--config",
            &rc,
            "--socket",
            &rival_socket,
            "daemon",
        ],
        &[],
    );
    rival
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut rival = rival.spawn()?;
    let ready = {
        let stdout = rival.stdout.take().context("rival stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await??
    };
    let rival_outcome = if ready.is_some_and(|l| l.contains("\"ready\":true")) {
        let frame = format!(
            r#"{{"op":"request_access","resource":"{RESOURCE}","permission":"{PERMISSION}","justification":"rival","agent":{{"agent_type":"redteam"}}}}"#
        );
        let r = run(
            target.py(AGENT, script, &["send", &rival_socket, &frame]),
            None,
        )
        .await?;
        seen.push(r.stdout.clone());
        let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
        let granted = v["state"] == "approved";
        outcome(
            "start a rival daemon that names the same secret",
            !granted,
            if granted {
                "the rival daemon read the secret and granted access".to_owned()
            } else {
                format!(
                    "rival started but got no secret: {}",
                    v["message"].as_str().unwrap_or(r.stdout.trim())
                )
            },
        )
    } else {
        outcome(
            "start a rival daemon that names the same secret",
            true,
            "the rival did not start",
        )
    };
    let _ = rival.start_kill();
    let _ = rival.wait().await;
    out.push(rival_outcome);

    // 6. Claim the agent type an auto rule trusts (the rule lists another OS user):
    //    `agent_request` fails unless the request is left pending for a human.
    let req = agent_request(target, script).await?;
    out.push(outcome(
        "claim the agent type of an `auto` rule meant for another OS user",
        true,
        format!("pending: the rule auto-approves `redteam` only for OS user {OTHER}, and the daemon reads the requester's uid"),
    ));

    // 7. Approve its own request: a raw Approve frame, then through script(1).
    let frame = format!(
        r#"{{"op":"approve","request_id":"{}","presence":{{"tty":"/dev/pts/0","user":"root"}}}}"#,
        req.id
    );
    let r = run(target.py(AGENT, script, &["send", &socket, &frame]), None).await?;
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
    out.push(outcome(
        "approve its own request with a raw Approve frame",
        v["kind"] == "error",
        v["message"].as_str().unwrap_or(r.stderr.trim()).to_owned(),
    ));
    let r = approve_reading_the_code(at_pty(target, AGENT, &["approve", &req.id])).await?;
    let approved = r.stdout.contains("approved r_");
    out.push(outcome(
        "approve its own request through script(1) (a pseudo-terminal)",
        !approved,
        r.stdout.lines().last().unwrap_or_default().to_owned(),
    ));
    seen.push(r.stdout);

    // 8. The other user, on the control socket.
    let r = run(target.cli(OTHER, &["status"]), None).await?;
    out.push(outcome(
        "a non-client user uses the control socket",
        r.code != 0,
        r.stderr.trim().to_owned(),
    ));

    // 9. Bury the approver in requests (one connection each, as a looping agent would).
    let frame = format!(
        r#"{{"op":"request_access","resource":"{RESOURCE}","permission":"{PERMISSION}","justification":"flood","agent":{{"agent_type":"flood"}}}}"#
    );
    let (mut accepted, mut refusal) = (0, None);
    for _ in 0..32 {
        let r = run(target.py(AGENT, script, &["send", &socket, &frame]), None).await?;
        let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
        if v["state"] == "pending" {
            accepted += 1;
        } else {
            refusal = Some(v);
            break;
        }
    }
    let limited = refusal
        .as_ref()
        .is_some_and(|v| v["code"] == "limit_reached");
    out.push(outcome(
        "flood the approver with pending requests",
        limited,
        match &refusal {
            Some(v) if limited => format!(
                "{accepted} more accepted as pending, then limit_reached: {}",
                v["message"].as_str().unwrap_or_default()
            ),
            Some(v) => format!("{accepted} accepted, then {v}"),
            None => format!("{accepted} accepted and still accepting"),
        },
    ));
    Ok((out, req))
}

/// Attacks that need the agent's grant (`handle`).
async fn attacks_on_grant(
    target: &Target,
    script: &Path,
    handle: &Value,
    secret: &SecretString,
    seen: &mut Vec<String>,
) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let pid = target.daemon_pid.to_string();
    let env = agentd_tests::handle_env(handle);
    let psql = agentd::pgcluster::psql_path().display().to_string();
    // A grant token used by another uid over the grant's Unix socket.
    if let Some(dir) = handle["socket_dir"].as_str() {
        let mut unix_env = env.clone();
        unix_env.retain(|(k, _)| k != "PGHOST" && k != "PGHOSTADDR");
        unix_env.push(("PGHOST".into(), dir.to_owned()));
        let r = run(
            as_user(OTHER, &[&psql, "-X", "-At", "-c", "SELECT 1"], &unix_env),
            None,
        )
        .await?;
        out.push(outcome(
            "use the agent's grant token from another uid (Unix socket)",
            r.code != 0,
            r.stderr.trim().to_owned(),
        ));
    }
    // ... and over TCP (the listener's sock_diag owner-uid check; asserted in
    // `tcp_token_from_another_uid_is_refused` too).
    let r = run(
        as_user(OTHER, &[&psql, "-X", "-At", "-c", "SELECT 1"], &env),
        None,
    )
    .await?;
    out.push(outcome(
        "use the agent's grant token from another uid (TCP)",
        r.code != 0,
        if r.code == 0 {
            "connected: the TCP listener admitted another uid".to_owned()
        } else {
            r.stderr.trim().to_owned()
        },
    ));

    // Revoke grants (including other users').
    let r = run(target.cli(AGENT, &["revoke", "--all"]), None).await?;
    out.push(outcome(
        "revoke every grant (other users' included)",
        r.code != 0,
        format!("{}{}", r.stdout.trim(), r.stderr.trim()),
    ));
    // Read, then rewrite and re-chain the audit log.
    let audit = target.audit_file.display().to_string();
    let direct = run(as_user(AGENT, &["cat", &audit], &[]), None).await?;
    let via = run(target.cli(AGENT, &["audit"]), None).await?;
    out.push(outcome(
        "read the audit log (file, or `agentd audit`)",
        direct.code != 0 && via.code != 0,
        format!(
            "file: {}; CLI: {}",
            if direct.code == 0 {
                "read"
            } else {
                direct.stderr.trim()
            },
            if via.code == 0 {
                "`agentd audit` printed it"
            } else {
                via.stderr.trim()
            }
        ),
    ));
    seen.push(direct.stdout);
    seen.push(via.stdout);
    let r = run(target.py(AGENT, script, &["rechain", &audit]), None).await?;
    let rewritten = r.code == 0;
    let verify = run(target.cli(AGENT, &["audit", "verify"]), None).await?;
    out.push(outcome(
        "rewrite and re-chain the audit log",
        !(rewritten && verify.code == 0),
        if rewritten {
            format!(
                "rewritten; `agentd audit verify` as the agent: {}",
                verify.stdout.lines().next().unwrap_or(verify.stderr.trim())
            )
        } else {
            r.stderr.trim().to_owned()
        },
    ));
    // Make the daemon re-read a config (after editing it, where that worked).
    let r = run(target.cli(AGENT, &["config", "reload"]), None).await?;
    out.push(outcome(
        "reload the config",
        r.code != 0,
        format!("{}{}", r.stdout.trim(), r.stderr.trim()),
    ));
    // Signal or trace the daemon (kill -0 checks the permission without killing).
    let r = run(as_user(AGENT, &["kill", "-0", &pid], &[]), None).await?;
    out.push(outcome(
        "kill the daemon",
        r.code != 0,
        r.stderr.trim().to_owned(),
    ));
    let r = run(target.py(AGENT, script, &["ptrace", &pid]), None).await?;
    out.push(outcome(
        "ptrace the daemon",
        r.code != 0,
        format!("{}{}", r.stdout.trim(), r.stderr.trim()),
    ));
    // Set (replace) the secret with one of its own.
    let r = run(
        target.cli(AGENT, &["secret", "set", RESOURCE, PERMISSION]),
        Some("agent-chosen\n"),
    )
    .await?;
    out.push(outcome(
        "set / replace the secret",
        r.code != 0,
        r.stderr.trim().to_owned(),
    ));
    seen.push(r.stderr);
    let _ = secret;
    Ok(out)
}

struct SystemRig {
    target: Target,
    daemon: tokio::process::Child,
    daemon_log: PathBuf,
    /// Root of the temporary layout (removed at the end), `None` when installed.
    _root: Option<tempfile::TempDir>,
    restore_config: Option<(PathBuf, Option<Vec<u8>>)>,
}

impl SystemRig {
    async fn stop(mut self) -> anyhow::Result<String> {
        agentd_tests::terminate(self.target.daemon_pid);
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.daemon.wait()).await;
        if let Some((path, old)) = self.restore_config.take() {
            match old {
                Some(bytes) => std::fs::write(&path, bytes)?,
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(std::fs::read_to_string(&self.daemon_log).unwrap_or_default())
    }
}

/// Lays out and starts a system-mode daemon for the sandbox's cluster (port, CA).
/// `extra` is appended to the config (more resources).
async fn start_system(
    port: u16,
    ca_src: &Path,
    policy: &str,
    extra: &str,
) -> anyhow::Result<SystemRig> {
    use std::os::unix::fs::PermissionsExt as _;
    let installed = std::env::var("AGENTD_REDTEAM_INSTALLED").is_ok_and(|v| v == "1");
    let daemon_user = if installed { "agentd" } else { RT_DAEMON };
    for u in [daemon_user, AGENT, OTHER] {
        agentd_tests::ensure_system_user(u)?;
    }
    let (root, layout, agentd) = if installed {
        (
            None,
            agentd_proto::system::Layout::under(Path::new("/")),
            PathBuf::from("/usr/bin/agentd"),
        )
    } else {
        let root = tempfile::Builder::new()
            .prefix("agentd-rt-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
        let layout = agentd_proto::system::Layout::under(root.path());
        (Some(root), layout, agentd_tests::bin("agentd"))
    };
    let scratch = match &root {
        Some(r) => r.path().join("scratch"),
        None => std::env::temp_dir().join(format!("agentd-rt-scratch-{}", std::process::id())),
    };
    mkdir(&scratch, 0o755, None)?;
    mkdir(&layout.config_dir, 0o755, None)?;
    mkdir(&layout.data_dir, 0o700, Some(daemon_user))?;
    mkdir(&layout.run_dir, 0o755, Some(daemon_user))?;
    let ca = layout.config_dir.join("redteam-ca.pem");
    std::fs::copy(ca_src, &ca)?;
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644))?;
    let old = std::fs::read(&layout.config).ok();
    write_file(
        &layout.config,
        &format!(
            "[daemon]\nmode = \"system\"\nclients = [\"{AGENT}\"]\nnotify = false\n\n{}\n{}",
            resource_toml(port, &ca, policy),
            extra.replace("{CA}", &ca.display().to_string())
        ),
        0o644,
    )?;
    let mut env = vec![("AGENTD_SYSTEM".to_owned(), "1".to_owned())];
    if let Some(r) = &root {
        env.push((
            agentd_proto::system::ROOT_ENV.to_owned(),
            r.path().display().to_string(),
        ));
    }
    let daemon_log = scratch.join("daemon.log");
    let log = std::fs::File::create(&daemon_log)?;
    let agentd_s = agentd.display().to_string();
    let mut cmd = as_user(daemon_user, &[&agentd_s, "daemon", "--system"], &env);
    cmd.env("AGENTD_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    let mut daemon = cmd.spawn()?;
    let stdout = daemon.stdout.take().context("daemon stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await??;
    let Some(line) = line.filter(|l| l.contains("\"ready\":true")) else {
        bail!(
            "system daemon did not start; log: {}",
            std::fs::read_to_string(&daemon_log).unwrap_or_default()
        );
    };
    let v: Value = serde_json::from_str(&line)?;
    let daemon_pid = u32::try_from(v["pid"].as_u64().unwrap_or(0))?;
    Ok(SystemRig {
        target: Target {
            agentd,
            env,
            socket: layout.socket.clone(),
            config: layout.config.clone(),
            dirs: vec![
                layout.config_dir.clone(),
                layout.data_dir.clone(),
                layout.run_dir.clone(),
            ],
            audit_file: layout.data_dir.join("audit").join("audit.jsonl"),
            daemon_pid,
            agent_scratch: scratch,
            ca,
            port,
            keyring_service: "agentd".to_owned(),
        },
        daemon,
        daemon_log,
        restore_config: installed.then(|| (layout.config.clone(), old)),
        _root: root,
    })
}

async fn cluster(secret: &SecretString) -> anyhow::Result<agentd::demo::Sandbox> {
    // The cluster and its agent_ro role with the canary password; nothing in any keychain.
    agentd_tests::sandbox(SandboxOptions {
        password: Some(secret.clone()),
        credential: SandboxCredential::Command {
            argv: vec!["/bin/false".into()],
            timeout_seconds: 1,
        },
        ..Default::default()
    })
    .await
}

fn write_client(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("rt_client.py");
    write_file(&path, CLIENT_PY, 0o755)?;
    Ok(path)
}

/// Root stores the canary through the socket (the admin path), approves at a pty.
async fn admin_set_secret(target: &Target, secret: &SecretString) -> anyhow::Result<CliOutput> {
    admin_set_secret_of(target, RESOURCE, PERMISSION, secret).await
}

async fn admin_set_secret_of(
    target: &Target,
    resource: &str,
    permission: &str,
    secret: &SecretString,
) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(&target.agentd);
    cmd.args(["secret", "set", resource, permission])
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let r = run(cmd, Some(&format!("{}\n", secret.expose_secret()))).await?;
    anyhow::ensure!(r.code == 0, "admin secret set failed: {}", r.stderr);
    Ok(r)
}

async fn admin_approve(target: &Target, id: &str) -> anyhow::Result<CliOutput> {
    let r = approve_reading_the_code(at_pty(target, "root", &["approve", id])).await?;
    anyhow::ensure!(
        r.stdout.contains("approved r_"),
        "root could not approve: {}",
        r.stdout
    );
    Ok(r)
}

fn table(system: &[Outcome], user: &[Outcome]) -> String {
    let mut s = String::from("| attack | system mode | user mode |\n| --- | --- | --- |\n");
    for o in system {
        let u = user.iter().find(|u| u.attack == o.attack);
        let cell = |o: &Outcome| {
            format!(
                "{}: {}",
                if o.held { "**held**" } else { "LOST" },
                o.detail.replace('|', "/")
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            o.attack,
            cell(o),
            u.map_or_else(|| "not run".to_owned(), cell)
        ));
    }
    s
}

/// Everything a test saw, scanned for the canary.
fn assert_clean(secret: &SecretString, seen: &[String]) {
    for (i, text) in seen.iter().enumerate() {
        assert!(
            !contains_secret(text, secret),
            "the secret leaked into output #{i}"
        );
    }
}

async fn system_half(
    sandbox: &agentd::demo::Sandbox,
    secret: &SecretString,
    seen: &mut Vec<String>,
) -> anyhow::Result<Vec<Outcome>> {
    let rig = start_system(
        sandbox.cluster.port,
        &sandbox.cluster.ca_file,
        "approval",
        "",
    )
    .await?;
    let target = &rig.target;
    let script = write_client(&target.agent_scratch)?;
    let r = admin_set_secret(target, secret).await?;
    seen.push(r.stderr);
    // The store file is the daemon's: 0600 in 0700, owned by the daemon's user.
    let store = target.dirs[1].join("secrets");
    {
        use std::os::unix::fs::MetadataExt as _;
        let d = std::fs::metadata(&store)?;
        assert_eq!(d.mode() & 0o777, 0o700, "secret store dir mode");
        for f in files_in(std::slice::from_ref(&store)) {
            assert_eq!(
                std::fs::metadata(&f)?.mode() & 0o777,
                0o600,
                "{}",
                f.display()
            );
        }
    }
    let (mut outcomes, mut req) = attacks(target, &script, secret, seen).await?;
    // The admin path: root approves at a pseudo-terminal, the agent's psql gets rows.
    let approved = admin_approve(target, &req.id).await?;
    seen.push(approved.stdout);
    let decision = req.decision().await?;
    anyhow::ensure!(decision["state"] == "approved", "not approved: {decision}");
    let handle = decision["handle"].clone();
    // System mode hands the owner a service file it can read (the daemon's file, shared
    // with the owner's uid through an ACL); checked by running the psql line below.
    anyhow::ensure!(
        handle["service_file"].is_string(),
        "no service file in the system-mode handle: {handle}"
    );
    let psql = agentd::pgcluster::psql_path().display().to_string();
    let env = agentd_tests::handle_env(&handle);
    let rows = run(
        as_user(
            AGENT,
            &[&psql, "-X", "-At", "-c", "SELECT count(*) FROM orders"],
            &env,
        ),
        None,
    )
    .await?;
    anyhow::ensure!(rows.code == 0, "the agent's psql failed: {}", rows.stderr);
    anyhow::ensure!(
        rows.stdout.trim().parse::<u64>().is_ok(),
        "no rows: {}",
        rows.stdout
    );
    // The handle's `psql` line, run as given (what the tool description tells an agent),
    // when it names a service file (without one it expects the handle's environment).
    if let Some(line) = handle["psql"]
        .as_str()
        .filter(|_| handle["service_file"].is_string())
    {
        let r = run(
            as_user(
                AGENT,
                &["sh", "-c", &format!("{line} -X -At -c 'SELECT 1'")],
                &[("PATH".into(), format!("{}:{PATH_ENV}", psql_dir()))],
            ),
            None,
        )
        .await?;
        anyhow::ensure!(
            r.code == 0 && r.stdout.trim() == "1",
            "the handle's psql line failed for its owner: {}",
            r.stderr
        );
    }
    // Its service file (the token) is the owner's to read, nobody else's.
    if let Some(file) = handle["service_file"].as_str() {
        let theirs = run(as_user(OTHER, &["cat", file], &[]), None).await?;
        anyhow::ensure!(
            theirs.code != 0 && theirs.stdout.is_empty(),
            "another user read the grant's service file"
        );
    }
    if let Some(dir) = handle["socket_dir"].as_str() {
        // The owner reaches its grant over the Unix socket too.
        let mut unix_env = env.clone();
        unix_env.retain(|(k, _)| k != "PGHOST" && k != "PGHOSTADDR");
        unix_env.push(("PGHOST".into(), dir.to_owned()));
        let r = run(
            as_user(AGENT, &[&psql, "-X", "-At", "-c", "SELECT 1"], &unix_env),
            None,
        )
        .await?;
        anyhow::ensure!(
            r.code == 0,
            "the owner's psql over the Unix socket failed: {}",
            r.stderr
        );
    }
    outcomes.extend(attacks_on_grant(target, &script, &handle, secret, seen).await?);
    // Admin reads and verifies the keyed audit log through the daemon.
    let mut verify = tokio::process::Command::new(&target.agentd);
    verify
        .args(["audit", "verify"])
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let verified = run(verify, None).await?;
    anyhow::ensure!(
        verified.code == 0,
        "audit verify: {} {}",
        verified.stdout,
        verified.stderr
    );
    anyhow::ensure!(
        verified.stdout.contains("chain: keyed"),
        "not keyed: {}",
        verified.stdout
    );
    seen.push(verified.stdout);
    let mut show = tokio::process::Command::new(&target.agentd);
    show.args(["audit", "--json"])
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let shown = run(show, None).await?;
    anyhow::ensure!(
        shown.stdout.contains("\"secret_set\""),
        "admin audit read: {}",
        shown.stderr
    );
    seen.push(shown.stdout);
    // The admin reloads the (root-owned) config through the socket.
    let mut reload = tokio::process::Command::new(&target.agentd);
    reload
        .args(["config", "reload"])
        .env_clear()
        .env("PATH", PATH_ENV)
        .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let reloaded = run(reload, None).await?;
    anyhow::ensure!(
        reloaded.code == 0 && reloaded.stdout.contains("reloaded"),
        "admin reload: {}",
        reloaded.stderr
    );
    let log = rig.stop().await?;
    seen.push(log);
    Ok(outcomes)
}

async fn user_half(
    sandbox: &agentd::demo::Sandbox,
    secret: &SecretString,
    seen: &mut Vec<String>,
) -> anyhow::Result<Vec<Outcome>> {
    use std::os::unix::fs::PermissionsExt as _;
    for u in [AGENT, OTHER] {
        agentd_tests::ensure_system_user(u)?;
    }
    // The agent's "home": config, data and socket dirs of a user-mode daemon run as it.
    let base = tempfile::Builder::new()
        .prefix("agentd-rt-user-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))?;
    let home = base.path().join("home");
    mkdir(&home, 0o700, Some(AGENT))?;
    let config_dir = home.join("config");
    let data_dir = home.join("data");
    let run_dir = home.join("run");
    for d in [&config_dir, &data_dir, &run_dir] {
        mkdir(d, 0o700, Some(AGENT))?;
    }
    let ca = config_dir.join("ca.pem");
    std::fs::copy(&sandbox.cluster.ca_file, &ca)?;
    chown(&ca, AGENT)?;
    let service = format!("agentd-rt-{}", std::process::id());
    let config = config_dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[daemon]\nkeyring_service = \"{service}\"\ndata_dir = \"{}\"\nnotify = false\n\n{}",
            data_dir.display(),
            resource_toml(sandbox.cluster.port, &ca, "approval")
        ),
        0o600,
    )?;
    chown(&config, AGENT)?;
    let socket = run_dir.join("agentd.sock");
    let env = vec![
        ("AGENTD_CONFIG".to_owned(), config.display().to_string()),
        ("AGENTD_SOCKET".to_owned(), socket.display().to_string()),
        ("AGENTD_KEYRING_BACKEND".to_owned(), "keyutils".to_owned()),
    ];
    let agentd = agentd_tests::bin("agentd");
    let agentd_s = agentd.display().to_string();
    // The person stores the secret in their keyring (as the agent's uid: same user).
    let r = run(
        as_user(
            AGENT,
            &[&agentd_s, "secret", "set", RESOURCE, PERMISSION],
            &env,
        ),
        Some(&format!("{}\n", secret.expose_secret())),
    )
    .await?;
    anyhow::ensure!(r.code == 0, "user-mode secret set: {}", r.stderr);
    let log_path = base.path().join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = as_user(AGENT, &[&agentd_s, "daemon"], &env);
    cmd.stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
    let mut daemon = cmd.spawn()?;
    let stdout = daemon.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
        .await??
        .filter(|l| l.contains("\"ready\":true"))
        .with_context(|| {
            format!(
                "user daemon: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        })?;
    let v: Value = serde_json::from_str(&line)?;
    let target = Target {
        agentd,
        env,
        socket,
        config,
        dirs: vec![config_dir, data_dir.clone(), run_dir],
        audit_file: data_dir.join("audit").join("audit.jsonl"),
        daemon_pid: u32::try_from(v["pid"].as_u64().unwrap_or(0))?,
        agent_scratch: base.path().to_path_buf(),
        ca,
        port: sandbox.cluster.port,
        keyring_service: service.clone(),
    };
    let script = write_client(base.path())?;
    let (mut outcomes, mut req) = attacks(&target, &script, secret, seen).await?;
    // In user mode the script(1) attack approves the request; else approve as the person.
    let decision = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        req.lines.next_line(),
    )
    .await
    {
        Ok(Ok(Some(line))) => serde_json::from_str(&line)?,
        _ => {
            let r = approve_reading_the_code(at_pty(&target, AGENT, &["approve", &req.id])).await?;
            seen.push(r.stdout);
            req.decision().await?
        }
    };
    let handle = decision["handle"].clone();
    outcomes.extend(attacks_on_grant(&target, &script, &handle, secret, seen).await?);
    agentd_tests::terminate(target.daemon_pid);
    let _ = tokio::time::timeout(STEP_TIMEOUT, daemon.wait()).await;
    seen.push(std::fs::read_to_string(&log_path).unwrap_or_default());
    // Remove the key from the agent's keyring.
    let _ = run(
        as_user(
            AGENT,
            &[&agentd_s, "secret", "delete", RESOURCE, PERMISSION],
            &target.env,
        ),
        None,
    )
    .await;
    Ok(outcomes)
}

/// The whole red team: system mode must hold every attack; user mode holds what it
/// promises; the table of both is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_team_system_and_user_mode() -> anyhow::Result<()> {
    if nix_uid() != 0 {
        eprintln!("skipped: the red team needs root (it creates OS users)");
        return Ok(());
    }
    let secret = canary_password();
    let sandbox = cluster(&secret).await?;
    let mut seen = Vec::new();
    let system = system_half(&sandbox, &secret, &mut seen).await?;
    let user = if std::env::var("AGENTD_REDTEAM_INSTALLED").is_ok_and(|v| v == "1") {
        Vec::new()
    } else {
        user_half(&sandbox, &secret, &mut seen).await?
    };
    println!("\n{}", table(&system, &user));
    for o in &system {
        assert!(o.held, "system mode lost: {} — {}", o.attack, o.detail);
    }
    for promise in [
        "open /proc/<daemon>/mem",
        "ptrace the daemon",
        "a non-client user uses the control socket",
        "use the agent's grant token from another uid (Unix socket)",
        "use the agent's grant token from another uid (TCP)",
        "approve its own request with a raw Approve frame",
    ] {
        let o = user.iter().find(|o| o.attack == promise);
        if let Some(o) = o {
            assert!(
                o.held,
                "user mode lost what it promises: {} — {}",
                o.attack, o.detail
            );
        }
    }
    assert_clean(&secret, &seen);
    Ok(())
}

/// TIOCSTI: a process of the agent's user that shares the admin's terminal (started in it,
/// as agents started from a terminal are) types `yes` into the terminal's input queue just
/// before root's `agentd approve` reads it. The kernel lets it type exactly when
/// `dev.tty.legacy_tiocsti` is not 0 (or absent, before Linux 6.2) — what `agentd doctor`
/// reports as `terminal_injection` — but approving takes the 4-digit code the prompt shows,
/// which a process on the terminal's input side cannot read: the typed `yes` declines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_into_the_admins_terminal_cannot_approve_blind() -> anyhow::Result<()> {
    if nix_uid() != 0 {
        return Ok(());
    }
    let secret = canary_password();
    let sandbox = cluster(&secret).await?;
    let rig = start_system(
        sandbox.cluster.port,
        &sandbox.cluster.ca_file,
        "approval",
        "",
    )
    .await?;
    let target = &rig.target;
    let script = write_client(&target.agent_scratch)?;
    admin_set_secret(target, &secret).await?;
    let mut req = agent_request(target, &script).await?;

    // Root's terminal (script(1) makes a pty and a session): first the agent's process,
    // same session and terminal, as the agent's uid; then root's approve on that terminal.
    let script_path = script.display().to_string();
    let inject = agentd_tests::shell_line(&[
        "setpriv",
        "--reuid",
        AGENT,
        "--regid",
        AGENT,
        "--init-groups",
        "--",
        "/usr/bin/python3",
        &script_path,
        "tiocsti",
        "yes\n",
    ]);
    let approve = agentd_tests::shell_line(&[
        &target.agentd.display().to_string(),
        "approve",
        req.id.as_str(),
    ]);
    let line = format!("{inject}; exec {approve}");
    let mut cmd = at_pty_line(target, "root", &line);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut terminal = cmd.spawn()?;
    // Root's keyboard: open, silent (an EOF would reach the prompt as Ctrl-D).
    let mut keyboard = terminal.stdin.take().context("script stdin")?;
    let mut screen_lines =
        tokio::io::BufReader::new(terminal.stdout.take().context("script stdout")?).lines();
    let mut screen = String::new();
    tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(line) = screen_lines.next_line().await? {
            screen.push_str(&line);
            screen.push('\n');
            if line.contains("TIOCSTI refused") {
                // Nothing was typed: root answers the prompt itself, declining.
                keyboard.write_all(b"no\n").await?;
            }
        }
        anyhow::Ok(())
    })
    .await??;
    drop(keyboard);
    let _ = tokio::time::timeout(STEP_TIMEOUT, terminal.wait()).await;
    // Root then denies it at a terminal of its own, so the agent's wait ends.
    let denied = run(
        at_pty(target, "root", &["deny", &req.id, "--reason", "red team"]),
        Some("yes\n"),
    )
    .await?;
    let decision = req.decision().await?;
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").ok();
    let allowed = legacy.as_deref().map(str::trim) != Some("0");
    let typed = screen.contains("typed 4 bytes into the terminal");
    println!(
        "TIOCSTI into root's terminal (dev.tty.legacy_tiocsti = {}): {}; approval: {}",
        legacy.as_deref().map_or("absent", str::trim),
        if typed {
            "typed \"yes\""
        } else {
            "refused by the kernel"
        },
        if screen.contains("approved r_") {
            "LOST"
        } else {
            "held (not the code)"
        },
    );
    assert_eq!(
        typed, allowed,
        "legacy_tiocsti {legacy:?}; terminal: {screen}"
    );
    assert!(
        screen.contains("not approved") && !screen.contains("approved r_"),
        "{screen}"
    );
    assert_eq!(denied.code, 0, "{}", denied.stderr);
    assert_eq!(decision["state"], "denied", "{decision}");
    let log = rig.stop().await?;
    assert_clean(&secret, &[screen, log, decision.to_string()]);
    Ok(())
}

/// A grant token seen by another local user is useless over TCP too: the listener's
/// socket-owner check (sock_diag) refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_token_from_another_uid_is_refused() -> anyhow::Result<()> {
    if nix_uid() != 0 {
        return Ok(());
    }
    let secret = canary_password();
    let sandbox = cluster(&secret).await?;
    let rig = start_system(sandbox.cluster.port, &sandbox.cluster.ca_file, "auto", "").await?;
    let target = &rig.target;
    let script = write_client(&target.agent_scratch)?;
    admin_set_secret(target, &secret).await?;
    let socket = target.socket.display().to_string();
    let frame = format!(
        r#"{{"op":"request_access","resource":"{RESOURCE}","permission":"{PERMISSION}","justification":"t","agent":{{"agent_type":"redteam"}}}}"#
    );
    let r = run(target.py(AGENT, &script, &["send", &socket, &frame]), None).await?;
    let v: Value = serde_json::from_str(r.stdout.trim())?;
    let env = agentd_tests::handle_env(&v["handle"]);
    let psql = agentd::pgcluster::psql_path().display().to_string();
    let mine = run(
        as_user(AGENT, &[&psql, "-X", "-At", "-c", "SELECT 1"], &env),
        None,
    )
    .await?;
    assert_eq!(mine.code, 0, "the owner over TCP: {}", mine.stderr);
    let theirs = run(
        as_user(OTHER, &[&psql, "-X", "-At", "-c", "SELECT 1"], &env),
        None,
    )
    .await?;
    assert_ne!(
        theirs.code, 0,
        "another uid used the agent's token over TCP"
    );
    rig.stop().await?;
    Ok(())
}

/// In system mode an HTTP grant's Unix socket is reachable by its owner (another uid than
/// the daemon's: 0666 in a 0711 directory, as the PostgreSQL listener's) and by no one else
/// (the accept-time `SO_PEERCRED` check); over TCP the same (sock_diag). Refused peers get
/// a 403 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_unix_socket_serves_its_owner_in_system_mode() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if nix_uid() != 0 {
        return Ok(());
    }
    let secret = canary_password();
    let upstream = agentd::echo_upstream::EchoUpstream::start().await?;
    let http = format!(
        "[resources.web]\nkind = \"http\"\nbase_url = \"{}\"\nca_file = \"{{CA}}\"\nauth = {{ scheme = \"bearer\" }}\n\n[resources.web.permissions.reader]\ncredential = {{ source = \"keyring\" }}\npolicy = \"auto\"\nallow = [{{ methods = [\"GET\"], paths = [\"/echo/**\"] }}]\n",
        upstream.base_url()
    );
    // The PostgreSQL resource is configured but never used: no cluster is needed.
    let rig = start_system(1, &upstream.ca_file, "auto", &http).await?;
    let target = &rig.target;
    let script = write_client(&target.agent_scratch)?;
    admin_set_secret_of(target, "web", "reader", &secret).await?;
    let socket = target.socket.display().to_string();
    let frame = r#"{"op":"request_access","resource":"web","permission":"reader","justification":"t","agent":{"agent_type":"redteam"}}"#;
    let r = run(target.py(AGENT, &script, &["send", &socket, frame]), None).await?;
    let v: Value = serde_json::from_str(r.stdout.trim())
        .with_context(|| format!("request_access answer: {}", r.stderr))?;
    let http_handle = &v["handle"]["http"];
    let path = http_handle["socket_path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(!path.is_empty(), "no Unix socket in the handle: {v}");
    let mode = |p: &Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    let sock = Path::new(&path);
    assert_eq!(mode(sock)?, 0o666);
    assert_eq!(mode(sock.parent().context("socket dir")?)?, 0o711);
    let auth = format!(
        "Authorization: Bearer {}",
        http_handle["token"].as_str().unwrap_or_default()
    );
    let tcp_url = format!(
        "{}/echo/sys",
        http_handle["base_url"].as_str().unwrap_or_default()
    );
    let curl = |user: &str, unix: bool| {
        let mut argv = vec!["curl", "-sS", "-H", &auth];
        if unix {
            argv.extend(["--unix-socket", &path, "http://localhost/echo/sys"]);
        } else {
            argv.push(&tcp_url);
        }
        as_user(user, &argv, &[])
    };
    let mut seen = vec![v.to_string()];
    // The Unix socket, then the same over TCP (the sock_diag owner check).
    for unix in [true, false] {
        let mine = run(curl(AGENT, unix), None).await?;
        assert!(
            mine.stdout.contains("\"/echo/sys\""),
            "the owner could not use its HTTP listener (unix: {unix}): {} {}",
            mine.stdout,
            mine.stderr
        );
        let theirs = run(curl(OTHER, unix), None).await?;
        assert!(
            !theirs.stdout.contains("/echo/sys"),
            "another uid used the agent's HTTP listener (unix: {unix}): {}",
            theirs.stdout
        );
        assert!(
            theirs
                .stdout
                .contains("serves only the OS user that owns the grant"),
            "no clear refusal (unix: {unix}): {} {}",
            theirs.stdout,
            theirs.stderr
        );
        seen.extend([mine.stdout, mine.stderr, theirs.stdout, theirs.stderr]);
    }
    let log = rig.stop().await?;
    assert!(
        log.contains("refused Unix-socket peer"),
        "no refusal logged"
    );
    seen.push(log);
    assert_clean(&secret, &seen);
    Ok(())
}

/// The daemon refuses to start in system mode as root, or with a config another user owns
/// or can write, and says which path and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_mode_refuses_unsafe_layouts() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if nix_uid() != 0 {
        return Ok(());
    }
    for u in [RT_DAEMON, AGENT] {
        agentd_tests::ensure_system_user(u)?;
    }
    let root = tempfile::Builder::new()
        .prefix("agentd-rt-bad-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let layout = agentd_proto::system::Layout::under(root.path());
    mkdir(&layout.config_dir, 0o755, None)?;
    mkdir(&layout.data_dir, 0o700, Some(RT_DAEMON))?;
    mkdir(&layout.run_dir, 0o755, Some(RT_DAEMON))?;
    write_file(&layout.config, "[daemon]\nmode = \"system\"\n", 0o644)?;
    let env = vec![(
        agentd_proto::system::ROOT_ENV.to_owned(),
        root.path().display().to_string(),
    )];
    let agentd = agentd_tests::bin("agentd").display().to_string();
    let start = |user: &str| {
        if user == "root" {
            let mut c = tokio::process::Command::new(&agentd);
            c.args(["daemon", "--system"])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            c
        } else {
            as_user(user, &[&agentd, "daemon", "--system"], &env)
        }
    };
    let r = run(start("root"), None).await?;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("refuses to run as root"), "{}", r.stderr);
    // The config owned by the agent.
    chown(&layout.config, AGENT)?;
    let r = run(start(RT_DAEMON), None).await?;
    assert!(r.stderr.contains("must be owned by root"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&layout.config.display().to_string()),
        "{}",
        r.stderr
    );
    chown(&layout.config, "root")?;
    // The config writable by everyone.
    std::fs::set_permissions(&layout.config, std::fs::Permissions::from_mode(0o666))?;
    let r = run(start(RT_DAEMON), None).await?;
    assert!(r.stderr.contains("writable by every user"), "{}", r.stderr);
    std::fs::set_permissions(&layout.config, std::fs::Permissions::from_mode(0o644))?;
    // Its directory owned by the agent.
    chown(&layout.config_dir, AGENT)?;
    let r = run(start(RT_DAEMON), None).await?;
    assert!(r.stderr.contains("is owned by uid"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&layout.config_dir.display().to_string()),
        "{}",
        r.stderr
    );
    chown(&layout.config_dir, "root")?;
    // The data directory open to others.
    std::fs::set_permissions(&layout.data_dir, std::fs::Permissions::from_mode(0o755))?;
    let r = run(start(RT_DAEMON), None).await?;
    assert!(r.stderr.contains("lets other users in"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&layout.data_dir.display().to_string()),
        "{}",
        r.stderr
    );
    // A prefix the agent owns is not honoured at all.
    let theirs = tempfile::Builder::new()
        .prefix("agentd-rt-theirs-")
        .tempdir_in("/tmp")?;
    chown(theirs.path(), AGENT)?;
    let r = run(
        as_user(
            RT_DAEMON,
            &[&agentd, "daemon", "--system"],
            &[(
                agentd_proto::system::ROOT_ENV.to_owned(),
                theirs.path().display().to_string(),
            )],
        ),
        None,
    )
    .await?;
    assert!(r.stderr.contains("is not honoured"), "{}", r.stderr);
    Ok(())
}

fn nix_uid() -> u32 {
    agentd_proto::socket::current_uid()
}
