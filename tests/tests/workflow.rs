//! The access workflow against real parts: an MCP client asks, a human approves at a
//! (pseudo-)terminal, psql connects, statements land in the audit log, the human revokes,
//! the session ends; denials, timeouts, revoke variants, release, and a daemon killed with
//! SIGKILL mid-traffic leaving a verifiable audit log.

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use anyhow::Context as _;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

/// `agentd audit --json`: every record, oldest first.
async fn audit_records(
    sandbox: &agentd::demo::Sandbox,
    extra: &[&str],
) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["audit", "--json"];
    args.extend_from_slice(extra);
    let out = agentd_cli(sandbox, &args).await?;
    anyhow::ensure!(out.code == 0, "agentd audit failed: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// `agentd audit verify --json` must report a clean chain; returns the report.
async fn audit_verifies(sandbox: &agentd::demo::Sandbox) -> anyhow::Result<Value> {
    let out = agentd_cli(sandbox, &["audit", "verify", "--json"]).await?;
    let report = out.json()?;
    anyhow::ensure!(
        out.code == 0 && report["problems"].as_array().is_some_and(|p| p.is_empty()),
        "audit verify failed ({}): {}",
        out.code,
        out.stdout
    );
    Ok(report)
}

fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_at_a_terminal_then_audited_queries_then_revoke() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let mut leak_places: Vec<(String, String)> = Vec::new();

    let tools = mcp.client.list_all_tools().await?;
    assert!(
        tools
            .iter()
            .all(|t| !t.name.contains("approve") && !t.name.contains("deny")),
        "the agent-facing surface must have no approve/deny tool"
    );

    // 1. The agent asks; a human must approve.
    let asked = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "10m",
                   "justification": "count last week's orders for the weekly report"}),
        )
        .await?;
    assert!(!asked.is_error, "{}", asked.raw);
    assert_eq!(asked.value["state"], "pending");
    assert!(asked.value.get("handle").is_none());
    let request_id = str_of(&asked.value, "id").to_owned();
    let message = str_of(&asked.value, "message");
    assert!(
        message.contains(&format!("agentd approve {request_id}")),
        "the agent must be told what the human runs: {message}"
    );

    // 2. The agent waits (long poll) while the human looks at the queue.
    let waiter = {
        let request_id = request_id.clone();
        let mcp = &mcp;
        async move {
            mcp.call(
                "await_approval",
                json!({"request_id": request_id, "timeout_seconds": 60}),
            )
            .await
        }
    };
    let human = async {
        let listed = agentd_cli(&sandbox, &["requests", "--json"]).await?;
        let pending = listed.json()?;
        assert_eq!(pending[0]["id"], request_id.as_str(), "{}", listed.stdout);
        assert_eq!(pending[0]["agent"]["agent_type"], "e2e-test");

        // An agent running `agentd approve` through its shell tool has no terminal: refused,
        // and told what the human must run.
        let refused = agentd_cli(&sandbox, &["approve", &request_id]).await?;
        assert_ne!(refused.code, 0);
        assert!(
            refused.stderr.contains("interactive terminal")
                && refused
                    .stderr
                    .contains(&format!("agentd approve {request_id}")),
            "{}",
            refused.stderr
        );
        // Piping "yes" does not help either: the answer is read from the terminal.
        // (Same command, no terminal, so it fails before asking.)
        let state = agentd_cli(&sandbox, &["requests", "--json"])
            .await?
            .json()?;
        assert_eq!(state[0]["state"], "pending");

        // The human, at a terminal, types the code the prompt shows.
        let approved =
            agentd_cli_at_terminal(&sandbox, &["approve", &request_id], APPROVE_CODE).await?;
        assert_eq!(approved.code, 0, "{}{}", approved.stdout, approved.stderr);
        assert!(
            approved.stdout.contains("count last week's orders")
                && approved
                    .stdout
                    .contains("to approve (anything else declines)"),
            "the human sees the justification before confirming: {}",
            approved.stdout
        );
        anyhow::Ok(approved)
    };
    let (awaited, approved) = tokio::join!(waiter, human);
    let (awaited, approved) = (awaited?, approved?);
    leak_places.push(("approve output".into(), approved.stdout.clone()));
    leak_places.push(("await_approval result".into(), awaited.raw.clone()));
    assert!(!awaited.is_error, "{}", awaited.raw);
    assert_eq!(awaited.value["state"], "approved", "{}", awaited.raw);
    let decided_by = str_of(&awaited.value, "decided_by");
    assert!(
        decided_by.starts_with("user ") && decided_by.contains("/dev/pts/"),
        "{decided_by}"
    );
    let grant_id = grant_id(&awaited.value);
    let handle = &awaited.value["handle"];
    let env = handle_env(handle);

    // A second approval of the same request is a conflict, not a second grant.
    let again = agentd_cli_at_terminal(&sandbox, &["approve", &request_id], "").await?;
    assert_ne!(again.code, 0);
    assert!(
        again.stdout.contains("already approved"),
        "{}",
        again.stdout
    );

    // 3. The agent connects: simple-protocol queries (one holding a password literal) and
    //    extended-protocol ones (Parse/Bind/Execute).
    let (ok, out, err) = psql(
        &env,
        "SELECT count(*) FROM orders; \
         CREATE ROLE agentd_probe LOGIN PASSWORD 'literal-canary-4242';",
    )
    .await?;
    assert!(!ok, "creating a role must fail for the read-only role");
    assert!(out.contains('3'), "{out}");
    assert!(err.contains("permission denied"), "{err}");
    {
        let mut config = tokio_postgres::Config::new();
        config
            .host(str_of(handle, "host"))
            .port(handle_port(handle))
            .user(str_of(handle, "user"))
            .password(handle["env"]["PGPASSWORD"].as_str().unwrap_or_default())
            .dbname(DATABASE);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        for i in 0..3i32 {
            let row = client
                .query_one("SELECT customer FROM orders WHERE id = $1", &[&(i + 1)])
                .await?;
            let customer: String = row.get(0);
            assert!(!customer.is_empty());
        }
    }

    // 4. The human revokes by resource while a psql session is live; the session ends.
    let mut live = LivePsql::start(&env)?;
    assert_eq!(live.query_line("SELECT 40 + 2;").await?, "42");
    let revoked = agentd_cli(&sandbox, &["revoke", "--resource", RESOURCE, "--json"]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(revoked.json()?["revoked"], json!([grant_id]));
    let (ok, err) = live.finish_with("SELECT 1;").await?;
    assert!(!ok);
    assert!(err.contains("revoked"), "{err}");

    // 5. The audit log tells the whole story, in order, and verifies.
    let records = audit_records(&sandbox, &[]).await?;
    let story: Vec<&str> = records
        .iter()
        .map(|r| str_of(r, "event"))
        .filter(|e| ["request", "decision", "grant", "grant_ended"].contains(e))
        .collect();
    assert_eq!(
        story,
        ["request", "decision", "grant", "grant_ended"],
        "{records:#?}"
    );
    let decision = events(&records, "decision")[0];
    assert_eq!(decision["decision"], "approved");
    assert!(str_of(decision, "by").contains("/dev/pts/"), "{decision}");
    assert_eq!(
        events(&records, "request")[0]["justification"],
        "count last week's orders for the weekly report"
    );
    assert_eq!(events(&records, "grant_ended")[0]["state"], "revoked");

    let statements = events(&records, "statement");
    let texts: Vec<&str> = statements.iter().map(|s| str_of(s, "text")).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("SELECT count(*) FROM orders")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("PASSWORD '[REDACTED]'")),
        "the password literal must be redacted: {texts:?}"
    );
    assert!(statements
        .iter()
        .any(|s| s["kind"] == "parse" && str_of(s, "text").contains("WHERE id = $1")));
    let closes = events(&records, "connection_close");
    assert!(closes.len() >= 3, "{closes:?}");
    let extended = closes
        .iter()
        .find(|c| c["executes"].as_u64().unwrap_or(0) >= 3)
        .expect("the tokio-postgres session's Bind/Execute counts");
    assert!(extended["binds"].as_u64().unwrap_or(0) >= 3, "{extended}");
    assert!(closes.iter().any(|c| c["end"] == "cut"), "{closes:?}");
    assert!(closes
        .iter()
        .all(|c| c["bytes_up"].as_u64().unwrap_or(0) > 0));

    // --grant filters to one grant's records (and its request's).
    let only = audit_records(&sandbox, &["--grant", &grant_id]).await?;
    assert!(!only.is_empty());
    assert!(
        only.iter()
            .all(|r| r["grant_id"] == grant_id.as_str() || r["request_id"] == request_id.as_str()),
        "{only:#?}"
    );
    audit_verifies(&sandbox).await?;

    // No upstream secret and no password literal anywhere.
    let log = daemon.log();
    leak_places.push(("daemon log".into(), log));
    let audit_files = files_under(&sandbox.dir.path().join("data"));
    let literal = secrecy::SecretString::from("literal-canary-4242".to_owned());
    assert_no_leak(
        &literal,
        audit_files.iter().map(|(p, t)| (p.clone(), t.as_str())),
    )?;
    leak_places.extend(audit_files);
    assert_no_leak(
        &sandbox.upstream_password,
        leak_places.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    mcp.close().await?;
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_timeout_and_pending_expiry_reach_the_waiting_agent() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        extra_daemon_toml: "pending_timeout = \"3s\"\n".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let ask = |why: &'static str| {
        let mcp = &mcp;
        async move {
            let r = mcp
                .call(
                    "request_access",
                    json!({"resource": RESOURCE, "permission": PERMISSION, "justification": why}),
                )
                .await?;
            anyhow::ensure!(r.value["state"] == "pending", "{}", r.raw);
            anyhow::Ok(str_of(&r.value, "id").to_owned())
        }
    };

    // Timeout: a short wait returns "still pending" as a normal result.
    let first = ask("look at orders").await?;
    let waited = mcp
        .call(
            "await_approval",
            json!({"request_id": first, "timeout_seconds": 1}),
        )
        .await?;
    assert!(!waited.is_error, "{}", waited.raw);
    assert_eq!(waited.value["state"], "pending");
    assert!(
        str_of(&waited.value, "message").contains("still pending"),
        "{}",
        waited.raw
    );

    // Deny at the terminal, with a reason the waiting agent receives.
    let waiter = mcp.call(
        "await_approval",
        json!({"request_id": first, "timeout_seconds": 60}),
    );
    let deny_args = ["deny", &first, "--reason", "use the staging copy"];
    let denier = agentd_cli_at_terminal(&sandbox, &deny_args, "yes\n");
    let (waited, denied) = tokio::join!(waiter, denier);
    let (waited, denied) = (waited?, denied?);
    assert_eq!(denied.code, 0, "{}", denied.stdout);
    assert_eq!(waited.value["state"], "denied", "{}", waited.raw);
    let message = str_of(&waited.value, "message");
    assert!(
        message.contains("use the staging copy") && message.contains("do not retry"),
        "{message}"
    );

    // Answering anything but the code shown changes nothing — "yes" included (what a
    // process sharing the terminal would type blind).
    let second = ask("look at orders again").await?;
    for answer in ["no\n", "yes\n"] {
        let declined = agentd_cli_at_terminal(&sandbox, &["approve", &second], answer).await?;
        assert_ne!(declined.code, 0, "{answer:?}");
        assert!(
            declined.stdout.contains("not approved"),
            "{}",
            declined.stdout
        );
    }

    // Nobody decides: the pending request expires after pending_timeout (3 s) and the
    // waiting agent hears it.
    let waited = mcp
        .call(
            "await_approval",
            json!({"request_id": second, "timeout_seconds": 30}),
        )
        .await?;
    assert_eq!(waited.value["state"], "expired", "{}", waited.raw);
    assert_eq!(waited.value["decided_by"], "timeout");

    let records = audit_records(&sandbox, &[]).await?;
    let decisions: Vec<(&str, &str)> = events(&records, "decision")
        .iter()
        .map(|d| (str_of(d, "decision"), str_of(d, "request_id")))
        .collect();
    assert_eq!(
        decisions,
        [("denied", first.as_str()), ("expired", second.as_str())]
    );
    audit_verifies(&sandbox).await?;
    mcp.close().await?;
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_by_grant_agent_and_all_and_release_cut_live_sessions() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;

    // Four grants: one held by the MCP agent (type e2e-test), one by a second MCP agent
    // (type e2e-holder) that releases it, two by CLI processes (type cli).
    let holder = McpSession::start(&sandbox, &["--agent-type", "e2e-holder"]).await?;
    let by_agent = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "justification": "revoke test"}),
        )
        .await?;
    let mut grants = vec![(
        grant_id(&by_agent.value),
        handle_env(&by_agent.value["handle"]),
    )];
    for i in 0..3 {
        let v = if i == 1 {
            holder
                .call(
                    "request_access",
                    json!({"resource": RESOURCE, "permission": PERMISSION,
                           "justification": "release test"}),
                )
                .await?
                .value
        } else {
            request_via_cli(&sandbox, "10m").await?.json()?
        };
        grants.push((grant_id(&v), handle_env(&v["handle"])));
    }
    let mut sessions = Vec::new();
    for (_, env) in &grants {
        let mut live = LivePsql::start(env)?;
        assert_eq!(live.query_line("SELECT 1;").await?, "1");
        sessions.push(live);
    }
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
    let listed = status["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 4);
    assert!(listed
        .iter()
        .all(|g| g["connections"] == 1 && g["remaining_seconds"].as_u64().unwrap_or(0) > 0));

    let mut sessions = sessions.into_iter();
    let mut expect_cut = |word: &'static str| {
        let live = sessions.next();
        async move {
            let (ok, err) = live.expect("a session").finish_with("SELECT 1;").await?;
            anyhow::ensure!(
                !ok && err.contains(word),
                "expected a cut saying {word:?}: {err}"
            );
            anyhow::Ok(())
        }
    };

    // By agent type: only the MCP agent's grant.
    let out = agentd_cli(&sandbox, &["revoke", "--agent", "e2e-test", "--json"]).await?;
    assert_eq!(out.json()?["revoked"], json!([grants[0].0]));
    expect_cut("revoked").await?;
    // By grant id.
    let out = agentd_cli(&sandbox, &["revoke", &grants[1].0, "--json"]).await?;
    assert_eq!(out.json()?["revoked"], json!([grants[1].0]));
    expect_cut("revoked").await?;
    // Released by its holder (through the MCP tool, as an agent does when done).
    let released = holder
        .call("release_access", json!({"grant_id": grants[2].0}))
        .await?;
    assert_eq!(
        released.value["released"],
        json!([grants[2].0]),
        "{}",
        released.raw
    );
    expect_cut("released").await?;
    // Releasing twice says so (to its owner).
    let again = holder
        .call("release_access", json!({"grant_id": grants[2].0}))
        .await?;
    assert!(again.is_error, "{}", again.raw);
    assert!(again.raw.contains("already released"), "{}", again.raw);
    // Another process (this CLI) cannot release someone else's grant: not found, no hint.
    let other = agentd_cli(&sandbox, &["release", &grants[3].0]).await?;
    assert_ne!(other.code, 0);
    assert!(
        other.stderr.contains(&format!("no grant {}", grants[3].0)),
        "{}",
        other.stderr
    );
    // Everything else.
    let out = agentd_cli(&sandbox, &["revoke", "--all", "--json"]).await?;
    assert_eq!(out.json()?["revoked"], json!([grants[3].0]));
    expect_cut("revoked").await?;
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
    assert_eq!(status["grants"], json!([]));

    let records = audit_records(&sandbox, &[]).await?;
    let ended: Vec<(&str, &str)> = events(&records, "grant_ended")
        .iter()
        .map(|e| (str_of(e, "grant_id"), str_of(e, "state")))
        .collect();
    assert_eq!(
        ended,
        [
            (grants[0].0.as_str(), "revoked"),
            (grants[1].0.as_str(), "revoked"),
            (grants[2].0.as_str(), "released"),
            (grants[3].0.as_str(), "revoked"),
        ]
    );
    audit_verifies(&sandbox).await?;
    mcp.close().await?;
    holder.close().await?;
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_leaves_a_verifiable_log_and_restart_records_the_grant_ended(
) -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let granted = request_via_cli(&sandbox, "10m").await?.json()?;
    let grant_id = grant_id(&granted);
    let env = handle_env(&granted["handle"]);

    // Traffic: four pgbench clients running statements through the proxy, reporting
    // progress every second on stderr.
    let script = sandbox.dir.path().join("select.sql");
    std::fs::write(&script, "SELECT count(*) FROM orders;\n")?;
    let mut bench = tokio::process::Command::new("pgbench")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args([
            "-n", "-c", "4", "-T", "60", "-P", "1", "-M", "extended", "-f",
        ])
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The first progress line means transactions are flowing; then SIGKILL mid-traffic.
    let mut progress = {
        use tokio::io::AsyncBufReadExt as _;
        tokio::io::BufReader::new(bench.stderr.take().expect("pgbench stderr")).lines()
    };
    let first = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(line) = progress.next_line().await? {
            if line.starts_with("progress:") && !line.contains(" 0.0 tps") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("pgbench ended without progress")
    })
    .await??;
    daemon.kill().await?;
    assert!(first.contains("tps"), "{first}");
    let bench_out = tokio::time::timeout(STEP_TIMEOUT, bench.wait_with_output()).await??;
    assert!(
        !bench_out.status.success(),
        "pgbench must see its sessions die with the daemon"
    );

    // The log written up to the kill verifies.
    let report = audit_verifies(&sandbox).await?;
    assert!(report["records"].as_u64().unwrap_or(0) >= 50, "{report}");
    let statements = audit_records(&sandbox, &["--grant", &grant_id]).await?;
    assert!(
        events(&statements, "statement").len() >= 40,
        "statements before the kill are kept"
    );

    // Restart: the grant from before is recorded as ended, not silently half-alive.
    let daemon = DaemonProcess::start(&sandbox).await?;
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
    assert_eq!(status["grants"], json!([]));
    let records = audit_records(&sandbox, &["--grant", &grant_id]).await?;
    let ended = events(&records, "grant_ended");
    assert_eq!(ended.len(), 1, "{records:#?}");
    assert_eq!(ended[0]["by"], "daemon restart");
    let (ok, _, err) = psql(&env, "SELECT 1").await?;
    assert!(!ok, "the old handle must not work after the restart");
    assert!(!err.is_empty());
    audit_verifies(&sandbox).await?;
    daemon.stop().await?;
    Ok(())
}

/// One OS user cannot bury the approver in requests or hold unbounded grants: past
/// `max_pending_per_user` requests that need approval, and past `max_grants_per_user`
/// auto-approved ones, are refused with `limit_reached` and advice; releasing a grant makes
/// room again, and the daemon keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_on_pending_requests_and_grants() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        extra_daemon_toml: "max_pending_per_user = 2\nmax_grants_per_user = 1\n".to_owned(),
        extra_permission_toml: format!(
            "\n[[resources.{RESOURCE}.permissions.{PERMISSION}.rules]]\n\
             agents = [\"e2e-test\"]\npolicy = \"auto\"\n"
        ),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let request = ["request", RESOURCE, "--permission", PERMISSION, "--json"];
    for _ in 0..2 {
        let pending = agentd_cli(&sandbox, &request).await?;
        assert_eq!(pending.json()?["state"], "pending", "{}", pending.stdout);
    }
    let third = agentd_cli(&sandbox, &request).await?;
    let said = format!("{}{}", third.stdout, third.stderr);
    assert_ne!(third.code, 0, "{said}");
    assert!(
        said.contains("already has 2 pending requests")
            && said.contains("max_pending_per_user = 2"),
        "{said}"
    );

    let mcp = McpSession::start(&sandbox, &[]).await?;
    let ask = json!({"resource": RESOURCE, "permission": PERMISSION,
                     "justification": "limit test"});
    let first = mcp.call("request_access", ask.clone()).await?;
    assert_eq!(first.value["state"], "approved", "{}", first.raw);
    let over = mcp.call("request_access", ask.clone()).await?;
    assert!(
        over.is_error
            && over.raw.contains("already has 1 active grants")
            && over.raw.contains("release_access"),
        "{}",
        over.raw
    );
    let released = mcp
        .call(
            "release_access",
            json!({"grant_id": grant_id(&first.value)}),
        )
        .await?;
    assert!(!released.is_error, "{}", released.raw);
    let again = mcp.call("request_access", ask).await?;
    assert_eq!(again.value["state"], "approved", "{}", again.raw);
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?;
    assert_eq!(status.code, 0, "{}", status.stderr);
    mcp.close().await?;
    daemon.stop().await?;
    Ok(())
}

/// A rule's `users` is matched against the OS user the daemon reads for the peer's uid: a
/// rule for another user is skipped even when the claimed agent type matches, and the rule
/// for the user the test runs as decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_rule_matches_the_os_user_the_daemon_sees() -> anyhow::Result<()> {
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())?
        .context("the test's uid has no user name")?
        .name;
    let rule = |users: &str, max: &str| {
        format!(
            "\n[[resources.{RESOURCE}.permissions.{PERMISSION}.rules]]\n\
             users = [\"{users}\"]\nagents = [\"e2e-test\"]\npolicy = \"auto\"\nmax_ttl = \"{max}\"\n"
        )
    };
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        extra_permission_toml: format!("{}{}", rule("nobody-agentd-e2e", "5m"), rule(&me, "7m")),
        ..SandboxOptions::default()
    })
    .await?;
    let text = agentd_cli(&sandbox, &["config", "check"]).await?.stdout;
    assert!(
        text.contains(&format!(
            "OS user {me}, e2e-test (claimed) at any time: auto, max 7m"
        )) && text.contains("no OS user \"nobody-agentd-e2e\"")
            && !text.contains("trusts only the agent type"),
        "{text}"
    );

    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let auto = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "1h",
                   "justification": "users rule test"}),
        )
        .await?;
    assert_eq!(auto.value["state"], "approved", "{}", auto.raw);
    assert_eq!(auto.value["decided_by"], "policy rule 1", "{}", auto.raw);
    assert_eq!(auto.value["duration_seconds"], 420);
    mcp.close().await?;
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_rule_decides_and_config_check_explains_it() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        extra_permission_toml: format!(
            "\n[[resources.{RESOURCE}.permissions.{PERMISSION}.rules]]\n\
             agents = [\"e2e-test\"]\npolicy = \"auto\"\nmax_ttl = \"5m\"\n"
        ),
        ..SandboxOptions::default()
    })
    .await?;

    let check = agentd_cli(&sandbox, &["config", "check", "--json"]).await?;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let text = agentd_cli(&sandbox, &["config", "check"]).await?.stdout;
    assert!(
        text.contains("e2e-test")
            && text.contains("auto, max 5m")
            && text.contains("otherwise: approval"),
        "{text}"
    );

    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    // The rule's agent gets auto approval, clamped to the rule's max_ttl…
    let auto = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "1h",
                   "justification": "rule test"}),
        )
        .await?;
    assert_eq!(auto.value["state"], "approved", "{}", auto.raw);
    assert_eq!(auto.value["duration_seconds"], 300);
    assert_eq!(auto.value["clamped"], true);
    assert_eq!(auto.value["decided_by"], "policy rule 0");
    // …everyone else waits for a human.
    let cli = agentd_cli(
        &sandbox,
        &["request", RESOURCE, "--permission", PERMISSION, "--json"],
    )
    .await?
    .json()?;
    assert_eq!(cli["state"], "pending", "{cli}");
    mcp.close().await?;
    daemon.stop().await?;

    // A broken config is refused with the line and the field.
    std::fs::write(
        &sandbox.config_path,
        std::fs::read_to_string(&sandbox.config_path)?
            .replace("max_ttl = \"5m\"", "max_ttl = \"soon\""),
    )?;
    let broken = agentd_cli(&sandbox, &["config", "check"]).await?;
    assert_eq!(broken.code, 1, "{}", broken.stdout);
    let said = format!("{}{}", broken.stdout, broken.stderr);
    assert!(
        said.contains("line ") && said.contains("max_ttl") && said.contains("soon"),
        "{said}"
    );
    Ok(())
}
