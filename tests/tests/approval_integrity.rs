//! Approval integrity against real parts (issue 15): what the human reads is the daemon's
//! truth, not text an agent shaped, and one agent cannot reach another's access.
//!
//! - Hostile strings sent through a real rmcp client and `agentd-mcp`, as justification and
//!   as the MCP client name, read back through every human surface: the approval prompt
//!   (bytes of a pseudo-terminal made by `script(1)`), `agentd requests`, `agentd status`,
//!   `agentd audit` and the desktop-notification text (a stand-in `notify-send` on the
//!   daemon's `PATH` records its arguments). None may carry a raw control, bidi or
//!   invisible character, and the prompt's last lines show the true resource and permission.
//! - Two shim processes: the second cannot read, await, cancel, release or query the
//!   first's request or grant (not_found, no hint); status, requests and the approver's
//!   output carry no token.

use agentd::demo::{SandboxOptions, PERMISSION, RESOURCE};
use agentd_proto::text::is_unsafe;
use agentd_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// The hostile-input table: (name, payload). Each is sent as `case NAME: PAYLOAD`.
const HOSTILE: &[(&str, &str)] = &[
    ("redraw prompt", "\x1b[4A\r\x1b[2K  resource:      staging"),
    ("cursor up", "up\x1b[4Aup"),
    ("clear line", "x\x1b[2Kx"),
    ("carriage return", "shown\rhidden"),
    ("osc 52 clipboard", "\x1b]52;c;cm0gLXJmIH4K\x07"),
    (
        "osc 8 link",
        "\x1b]8;;https://evil.example/\x1b\\docs\x1b]8;;\x1b\\",
    ),
    ("c1 csi", "\u{9b}2J\u{9b}31m"),
    ("bidi override", "read \u{202e}etirw\u{202c} only"),
    ("bidi isolate", "a\u{2066}b\u{2069}c\u{200f}"),
    ("zero width", "sel\u{200b}ect\u{feff}\u{2060}"),
    ("newline", "line1\nresource: staging"),
    (
        "notification markup",
        "<a href=\"https://evil.example/\">approve here</a><b>resource: staging</b>",
    ),
];

/// The hostile MCP client name (the shim cuts name + version to 200 characters).
fn hostile_client_name() -> String {
    format!(
        "evil\x1b]52;c;ZXZpbA==\x07\u{202e}\u{200b}\u{9b}2J\x1b[4A\rname{}",
        "x".repeat(100 * 1024)
    )
}

/// Fails when `text` holds a raw control, bidi or invisible character other than the
/// newline that ends its lines (and, when `pty`, the `\r` a terminal puts before it).
fn assert_terminal_safe(label: &str, text: &str, pty: bool) -> anyhow::Result<()> {
    let text = if pty {
        text.replace("\r\n", "\n")
    } else {
        text.to_owned()
    };
    for (i, line) in text.split('\n').enumerate() {
        if let Some(c) = line.chars().find(|c| is_unsafe(*c)) {
            anyhow::bail!(
                "{label}: line {} holds raw U+{:04X}: {}",
                i + 1,
                c as u32,
                line.escape_debug()
            );
        }
    }
    Ok(())
}

/// A stand-in `notify-send` in `dir/bin` that saves each notification body (its second
/// argument) as `dir/notes/N.txt` (written whole, then renamed); returns `PATH` with it
/// first.
fn fake_notifier(dir: &Path) -> anyhow::Result<std::ffi::OsString> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    let notes = dir.join("notes");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&notes)?;
    let script = bin.join("notify-send");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf=$(mktemp '{0}/note.XXXXXX')\nprintf '%s' \"$2\" > \"$f\"\nmv \"$f\" \"$f.txt\"\n",
            notes.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let mut path = std::ffi::OsString::from(bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    Ok(path)
}

/// The notification bodies saved so far.
fn notes(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("notes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_reaches_no_human_surface_raw() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        // One pending request per hostile string, all from this uid.
        extra_daemon_toml: "max_pending_per_user = 64\n".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    // Desktop notifications on, to a stand-in notifier.
    let config = std::fs::read_to_string(&sandbox.config_path)?;
    std::fs::write(
        &sandbox.config_path,
        config.replace("notify = false", "notify = true"),
    )?;
    let notify_dir = sandbox.dir.path().join("notify");
    let path = fake_notifier(&notify_dir)?;
    let daemon = DaemonProcess::start_with_env(
        &sandbox,
        &[
            ("PATH", path.as_os_str()),
            ("DISPLAY", std::ffi::OsStr::new(":99")),
        ],
    )
    .await?;
    let mcp = McpSession::start_as(&sandbox, &hostile_client_name(), "6.6.6").await?;
    let mut outputs: Vec<(String, String)> = Vec::new();

    // 1. Every hostile justification is accepted as a pending request.
    let mut ids = Vec::new();
    for (name, payload) in HOSTILE {
        let asked = mcp
            .call(
                "request_access",
                json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "5m",
                       "justification": format!("case {name}: {payload}")}),
            )
            .await?;
        assert!(!asked.is_error, "{name}: {}", asked.raw);
        assert_eq!(asked.value["state"], "pending", "{name}");
        ids.push(asked.value["id"].as_str().unwrap_or_default().to_owned());
    }
    // 100 KB of justification is refused by the control socket with a clear error.
    let huge = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION,
                   "justification": "\x1b[2K".repeat(25 * 1024)}),
        )
        .await?;
    assert!(huge.is_error, "{}", huge.raw);
    assert!(
        huge.raw
            .contains("justification is too long: 102400 characters, the limit is 1000"),
        "{}",
        huge.raw
    );
    // The client name reached the daemon cut to the bound, verbatim otherwise.
    let listed = agentd_cli(&sandbox, &["requests", "--json"])
        .await?
        .json()?;
    let client = listed[0]["agent"]["client_name"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(client.chars().count(), 200, "{client:?}");
    assert!(client.starts_with("evil\x1b]52"), "{client:?}");
    assert_eq!(listed[0]["requester"]["uid"], 0, "{listed}");
    assert_eq!(listed[0]["requester"]["user"], "root", "{listed}");

    // 2. `agentd requests`, `agentd status`: escapes visible, nothing raw.
    let requests = agentd_cli(&sandbox, &["requests"]).await?;
    assert_eq!(requests.code, 0, "{}", requests.stderr);
    assert_terminal_safe("agentd requests", &requests.stdout, false)?;
    assert!(
        requests.stdout.contains("\\x1b[4A\\r\\x1b[2K")
            && requests.stdout.contains("\\u{202e}")
            && requests.stdout.contains("claimed agent e2e-test")
            && requests.stdout.contains("OS user root (uid 0)"),
        "{}",
        requests.stdout
    );
    let status = agentd_cli(&sandbox, &["status"]).await?;
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_terminal_safe("agentd status", &status.stdout, false)?;
    assert!(
        status.stdout.contains("\\x1b]52;c;cm0gLXJmIH4K\\x07"),
        "{}",
        status.stdout
    );
    outputs.push(("requests".into(), requests.stdout));
    outputs.push(("status".into(), status.stdout));

    // 3. The notification text: one per pending request, nothing raw, facts first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while notes(&notify_dir).len() < HOSTILE.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bodies = notes(&notify_dir);
    assert_eq!(bodies.len(), HOSTILE.len(), "{bodies:?}");
    for body in &bodies {
        assert_terminal_safe("notification", body, false)?;
        assert!(
            body.starts_with(&format!(
                "{RESOURCE}/{PERMISSION} requested by OS user root (uid 0)"
            )),
            "{body}"
        );
        // Notification servers render a markup subset: the agent's tags arrive as text.
        assert!(!body.contains('<') && !body.contains('>'), "{body}");
        outputs.push(("notification".into(), body.clone()));
    }
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("&lt;a href=\"https://evil.example/\"&gt;approve here&lt;/a&gt;")),
        "{bodies:?}"
    );

    // 4. The approval prompt at a real (pseudo-)terminal, for the request whose text tries
    //    to redraw it: nothing raw in the terminal's bytes, the daemon's facts last.
    let target = &ids[0];
    let approved = agentd_cli_at_terminal(&sandbox, &["approve", target], APPROVE_CODE).await?;
    assert_eq!(approved.code, 0, "{}{}", approved.stdout, approved.stderr);
    assert_terminal_safe("approval prompt", &approved.stdout, true)?;
    let screen = approved.stdout.replace("\r\n", "\n");
    let lines: Vec<&str> = screen.lines().collect();
    let question = lines
        .iter()
        .position(|l| l.starts_with(&format!("Approve {target} for 5m?")))
        .ok_or_else(|| anyhow::anyhow!("no question in {screen}"))?;
    let last = &lines[question.saturating_sub(5)..question];
    let expected = [
        "Checked by agentd:".to_owned(),
        "  requester:  OS user root (uid 0), pid ".to_owned(),
        format!("  resource:   {RESOURCE}"),
        format!("  permission: {PERMISSION}"),
        "  duration:   5m".to_owned(),
    ];
    for (got, want) in last.iter().zip(&expected) {
        assert!(
            got.starts_with(want.as_str()),
            "{want:?} vs {got:?} in {screen}"
        );
    }
    assert_eq!(last.len(), expected.len(), "{screen}");
    assert!(
        screen.contains(
            "justification:   case redraw prompt: \\x1b[4A\\r\\x1b[2K  resource:      staging"
        ),
        "{screen}"
    );
    let agent_line = lines
        .iter()
        .position(|l| l.contains("justification:"))
        .unwrap_or(usize::MAX);
    assert!(
        agent_line < question - 5,
        "the agent's text comes before the daemon's facts: {screen}"
    );
    outputs.push(("approve prompt".into(), approved.stdout.clone()));
    let view = agentd_cli(&sandbox, &["requests", "--all", "--json"])
        .await?
        .json()?;
    let decided = view
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == target.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(decided["state"], "approved", "{decided}");
    assert_eq!(decided["resource"], RESOURCE);

    // 5. `agentd audit`: the records hold the text verbatim (JSON), the human lines escape it.
    let audit = agentd_cli(&sandbox, &["audit"]).await?;
    assert_eq!(audit.code, 0, "{}", audit.stderr);
    assert_terminal_safe("agentd audit", &audit.stdout, false)?;
    assert!(
        audit.stdout.contains("\\u{9b}2J")
            && audit.stdout.contains("OS user root (uid 0)")
            && audit.stdout.contains("claimed agent e2e-test"),
        "{}",
        audit.stdout
    );
    let raw = agentd_cli(&sandbox, &["audit", "--json"]).await?;
    let request_records: Vec<Value> = raw
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "request")
        .collect();
    assert_eq!(request_records.len(), HOSTILE.len());
    assert!(request_records
        .iter()
        .all(|r| r["requester"]["uid"] == 0 && r["requester"]["pid"].as_u64().is_some()));
    outputs.push(("audit".into(), audit.stdout));

    // 6. The logs a human tails (the daemon's stderr, the shim's log): no forged lines, no
    //    escape sequences — including from an agent type (which the daemon logs) that
    //    holds a newline and a fake log line.
    let forged = raw_call(
        &sandbox,
        agentd_proto::Request::RequestAccess(agentd_proto::AccessRequestSpec {
            resource: RESOURCE.to_owned(),
            permission: PERMISSION.to_owned(),
            duration_seconds: Some(60),
            justification: "log forgery".to_owned(),
            agent: agentd_proto::AgentInfo {
                agent_type: "x\n2026-11-30T00:00:00Z  INFO agentd: FORGED\x1b[2J".to_owned(),
                ..agentd_proto::AgentInfo::default()
            },
        }),
    )
    .await?;
    assert!(
        matches!(forged, agentd_proto::Response::AccessRequest(_)),
        "{forged:?}"
    );
    let closed = mcp.close().await?;
    let daemon_log = daemon.log();
    daemon.stop().await?;
    assert_terminal_safe("shim log", &closed, false)?;
    assert_terminal_safe("daemon log", &daemon_log, false)?;
    assert!(
        daemon_log.contains("x\\n2026-11-30T00:00:00Z  INFO agentd: FORGED\\x1b[2J"),
        "{daemon_log}"
    );
    assert!(
        !daemon_log
            .lines()
            .any(|l| l.starts_with("2026-11-30T00:00:00Z")),
        "{daemon_log}"
    );
    outputs.push(("shim log".into(), closed));
    outputs.push(("daemon log".into(), daemon_log));
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}

/// The tool error's text when `outcome` is a not_found error; fails otherwise.
fn not_found_text(what: &str, outcome: &ToolOutcome) -> anyhow::Result<String> {
    anyhow::ensure!(
        outcome.is_error,
        "{what}: expected not_found: {}",
        outcome.raw
    );
    anyhow::ensure!(
        outcome.raw.contains("not_found"),
        "{what}: expected not_found: {}",
        outcome.raw
    );
    Ok(outcome.raw.clone())
}

/// One raw control call from this test process (a third process: neither shim).
async fn raw_call(
    sandbox: &agentd::demo::Sandbox,
    request: agentd_proto::Request,
) -> anyhow::Result<agentd_proto::Response> {
    let mut client = agentd_proto::Client::connect(&sandbox.socket_path).await?;
    Ok(client.call(request).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shim_cannot_reach_the_first_ones_request_or_grant() -> anyhow::Result<()> {
    use agentd_proto::{ErrorCode, Request, Response};
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let first = McpSession::start(&sandbox, &[]).await?;
    let second = McpSession::start(&sandbox, &[]).await?;
    let mut outputs: Vec<(String, String)> = Vec::new();

    let asked = first
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "5m",
                   "justification": "count orders"}),
        )
        .await?;
    assert_eq!(asked.value["state"], "pending", "{}", asked.raw);
    let request_id = asked.value["id"].as_str().unwrap_or_default().to_owned();
    let unknown = "r_00000000deadbeef";

    // While pending: the second shim cannot read or await it; the answer is the one an
    // unknown id gets (no hint that it exists).
    let read = second
        .call("get_request", json!({"request_id": request_id}))
        .await?;
    let read_unknown = second
        .call("get_request", json!({"request_id": unknown}))
        .await?;
    assert_eq!(
        not_found_text("get_request", &read)?.replace(&request_id, "ID"),
        not_found_text("get_request unknown", &read_unknown)?.replace(unknown, "ID")
    );
    let awaited = second
        .call(
            "await_approval",
            json!({"request_id": request_id, "timeout_seconds": 1}),
        )
        .await?;
    not_found_text("await_approval", &awaited)?;
    // Another process cannot cancel it either.
    let cancel = raw_call(
        &sandbox,
        Request::CancelRequest {
            request_id: request_id.clone(),
        },
    )
    .await?;
    assert!(
        matches!(
            cancel,
            Response::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{cancel:?}"
    );

    // The human approves at a terminal; the approver's output carries no handle.
    let approved =
        agentd_cli_at_terminal(&sandbox, &["approve", &request_id], APPROVE_CODE).await?;
    assert_eq!(approved.code, 0, "{}{}", approved.stdout, approved.stderr);
    let approved_json =
        agentd_cli_at_terminal(&sandbox, &["requests", "--all", "--json"], "").await?;
    let got = first
        .call(
            "await_approval",
            json!({"request_id": request_id, "timeout_seconds": 30}),
        )
        .await?;
    assert_eq!(got.value["state"], "approved", "{}", got.raw);
    let grant = grant_id(&got.value);
    let token = got.value["handle"]["env"]["PGPASSWORD"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(token.len() >= 20, "the owner gets its token");

    // Approved: the second shim still cannot read, release, query or list it.
    let read = second
        .call("get_request", json!({"request_id": request_id}))
        .await?;
    not_found_text("get_request after approval", &read)?;
    let released = second
        .call("release_access", json!({"grant_id": grant}))
        .await?;
    let released_unknown = second
        .call("release_access", json!({"grant_id": "g_00000000deadbeef"}))
        .await?;
    assert_eq!(
        not_found_text("release_access", &released)?.replace(&grant, "ID"),
        not_found_text("release_access unknown", &released_unknown)?
            .replace("g_00000000deadbeef", "ID")
    );
    let queried = second
        .call("run_query", json!({"grant_id": grant, "sql": "SELECT 1"}))
        .await?;
    not_found_text("run_query", &queried)?;
    let listed = second.call("list_grants", json!({})).await?;
    assert_eq!(listed.value["grants"], json!([]), "{}", listed.raw);
    for request in [
        Request::GetRequest {
            request_id: request_id.clone(),
        },
        Request::AwaitRequest {
            request_id: request_id.clone(),
            timeout_seconds: 1,
        },
        Request::Release {
            grant_id: grant.clone(),
        },
    ] {
        let answer = raw_call(&sandbox, request.clone()).await?;
        assert!(
            matches!(
                answer,
                Response::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            ),
            "{request:?} → {answer:?}"
        );
    }

    // Human surfaces carry no token.
    let mut human = vec![
        ("approve output".to_owned(), approved.stdout.clone()),
        ("requests --all --json".to_owned(), approved_json.stdout),
    ];
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["requests", "--all"],
        &["requests", "--all", "--json"],
        &["audit"],
        &["audit", "--json"],
    ] {
        let out = agentd_cli(&sandbox, args).await?;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        human.push((args.join(" "), out.stdout));
    }
    for (label, text) in &human {
        assert!(!text.contains(&token), "{label} carries the grant token");
    }
    assert!(human
        .iter()
        .any(|(l, t)| l == "status" && t.contains(&grant)));

    // The owner still has it, and gives it back.
    let ok = first
        .call(
            "run_query",
            json!({"grant_id": grant, "sql": "SELECT count(*) FROM orders"}),
        )
        .await?;
    assert!(!ok.is_error, "{}", ok.raw);
    let released = first
        .call("release_access", json!({"grant_id": grant}))
        .await?;
    assert_eq!(
        released.value["released"],
        json!([grant]),
        "{}",
        released.raw
    );

    outputs.extend(human);
    outputs.push(("first shim".into(), first.close().await?));
    outputs.push(("second shim".into(), second.close().await?));
    daemon.stop().await?;
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}

/// Runs `psql -X -At -c SQL` as OS user `user` (via `runuser`) with `env`; (success,
/// stdout, stderr).
async fn psql_as(
    user: &str,
    env: &[(String, String)],
    sql: &str,
) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new("runuser")
            .args(["-u", user, "--"])
            .arg(agentd::pgcluster::psql_path())
            .args(["-X", "-At", "-c", sql])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir("/")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The handle's `psql` line holds no token (it uses a 0600 service file that goes away with
/// the grant), and the grant's listeners serve only its owner's uid: a token used by
/// another OS user is refused over TCP (sock_diag) and over the Unix socket (peer creds).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_stay_out_of_argv_and_only_the_owner_uid_may_connect() -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if agentd_proto::socket::current_uid() != 0 {
        eprintln!("SKIPPED: needs root to run psql as another user (runuser -u postgres)");
        return Ok(());
    }
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let granted = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "justification": "argv test"}),
        )
        .await?;
    assert_eq!(granted.value["state"], "approved", "{}", granted.raw);
    let handle = &granted.value["handle"];
    let grant = grant_id(&granted.value);
    let env = handle_env(handle);
    let token = handle["env"]["PGPASSWORD"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // The psql line: no token, a service file that is private to the owner.
    let line = handle["psql"].as_str().unwrap_or_default();
    assert!(!line.contains(&token), "the psql line carries the token");
    assert!(
        line.starts_with("PGSERVICEFILE=") && line.ends_with(&format!("psql service={grant}")),
        "{line}"
    );
    let service_file =
        std::path::PathBuf::from(handle["service_file"].as_str().unwrap_or_default());
    let meta = std::fs::metadata(&service_file)?;
    assert_eq!(meta.mode() & 0o777, 0o600);
    let dir = service_file
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    assert_eq!(std::fs::metadata(&dir)?.mode() & 0o777, 0o700);
    // It works as printed (the shell sees no token).
    let psql_dir = agentd::pgcluster::psql_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut path = std::ffi::OsString::from(&psql_dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{line} -X -At -c 'SELECT count(*) FROM orders'"))
        .env_clear()
        .env("PATH", &path)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Owner over TCP with the env form: served.
    let (ok, stdout, stderr) = psql_as("root", &env, "SELECT 1").await?;
    assert!(ok && stdout.trim() == "1", "{stderr}");
    // Another OS user with the same token over TCP: refused, and logged.
    let (ok, _, stderr) = psql_as("postgres", &env, "SELECT 1").await?;
    assert!(!ok, "another uid used the token over TCP");
    assert!(
        stderr.contains(&format!(
            "grant {grant} belongs to another OS user (uid 0); only its owner may connect"
        )),
        "{stderr}"
    );
    assert!(
        daemon.log().contains("refused TCP peer"),
        "{}",
        daemon.log()
    );
    // The same over the Unix socket, even with its directory (and those above it, up to
    // the sandbox) opened up: the daemon checks the peer's uid itself.
    for opened in dir
        .ancestors()
        .take_while(|d| d.starts_with(sandbox.dir.path()))
    {
        std::fs::set_permissions(opened, std::fs::Permissions::from_mode(0o755))?;
    }
    let socket_dir = handle["socket_dir"].as_str().unwrap_or_default().to_owned();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o666))?;
        }
    }
    let unix_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "PGHOST" => (k.clone(), socket_dir.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let (ok, _, stderr) = psql_as("postgres", &unix_env, "SELECT 1").await?;
    assert!(!ok, "another uid used the token over the Unix socket");
    assert!(
        stderr.contains("serves only the OS user that owns the grant"),
        "{stderr}"
    );
    let (ok, _, stderr) = psql_as("root", &unix_env, "SELECT 1").await?;
    assert!(ok, "{stderr}");

    // Released: the service file and its directory are gone.
    let released = mcp
        .call("release_access", json!({"grant_id": grant}))
        .await?;
    assert_eq!(
        released.value["released"],
        json!([grant]),
        "{}",
        released.raw
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while dir.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !service_file.exists() && !dir.exists(),
        "left: {}",
        dir.display()
    );

    let outputs = vec![
        ("mcp".to_owned(), granted.raw.clone()),
        ("shim log".to_owned(), mcp.close().await?),
    ];
    daemon.stop().await?;
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}
