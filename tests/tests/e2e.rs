//! The whole path: MCP client → agentd-mcp → agentd daemon → per-grant listener → real
//! PostgreSQL (SCRAM + TLS), with real psql, and the human's status / revoke.

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use serde_json::json;
use std::net::IpAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_grant_psql_status_revoke_and_no_leak() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let mut leak_places: Vec<(String, String)> = Vec::new();

    let tools = mcp.client.list_all_tools().await?;
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, TOOL_NAMES);

    let resources = mcp.call("list_resources", json!({})).await?;
    assert!(!resources.is_error, "{}", resources.raw);
    assert_eq!(resources.value["resources"][0]["name"], RESOURCE);
    leak_places.push(("list_resources result".into(), resources.raw.clone()));

    let granted = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "10m",
                   "justification": "e2e: read the orders"}),
        )
        .await?;
    leak_places.push(("request_access result".into(), granted.raw.clone()));
    assert!(!granted.is_error, "{}", granted.raw);
    assert_eq!(granted.value["state"], "approved");
    assert_eq!(granted.value["agent"]["agent_type"], "e2e-test");
    let handle = &granted.value["handle"];
    let dsn = handle["dsn"].as_str().unwrap_or_default();
    assert!(
        dsn.starts_with("postgresql://g_") && dsn.contains("@127.0.0.1:"),
        "{dsn}"
    );
    let psql_line = handle["psql"].as_str().unwrap_or_default();
    assert!(
        psql_line.starts_with("PGSERVICEFILE=") && psql_line.contains(" psql service=g_"),
        "{psql_line}"
    );
    assert!(
        !psql_line.contains(handle["env"]["PGPASSWORD"].as_str().unwrap_or("?")),
        "no token in the psql line"
    );
    let grant_id = grant_id(&granted.value);
    let env = handle_env(handle);

    // Real psql through the proxy: rows; the upstream leg is TLS, logged in as the
    // permission's role, with the client's application_name forwarded.
    let (ok, out, err) = psql(
        &env,
        "SELECT string_agg(customer, ',' ORDER BY id) FROM orders; \
         SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid(); SELECT current_user; \
         SELECT current_setting('application_name')",
    )
    .await?;
    assert!(ok, "psql failed: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ada,grace,linus", "t", "agent_ro", "psql"]
    );

    // get_request returns the same grant.
    let request_id = granted.value["id"].as_str().unwrap_or_default().to_owned();
    let again = mcp
        .call("get_request", json!({"request_id": request_id}))
        .await?;
    leak_places.push(("get_request result".into(), again.raw.clone()));
    assert_eq!(again.value["grant"]["id"], grant_id.as_str());

    // A live session shows in `agentd status --json`.
    let mut live = LivePsql::start(&env)?;
    assert_eq!(live.query_line("SELECT 40 + 2;").await?, "42");
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?;
    leak_places.push(("status --json".into(), format!("{status:?}")));
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status = status.json()?;
    let grants = status["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(grants.len(), 1, "{status}");
    assert_eq!(grants[0]["id"], grant_id.as_str());
    assert_eq!(grants[0]["connections"], 1, "{status}");
    assert!(grants[0]["remaining_seconds"].as_u64().unwrap_or(0) > 500);

    let table = agentd_cli(&sandbox, &["status"]).await?;
    leak_places.push(("status table".into(), format!("{table:?}")));
    assert!(table.stdout.contains(&grant_id), "{}", table.stdout);

    // The human revokes: the live session is cut with a clear message.
    let revoked = agentd_cli(&sandbox, &["revoke", &grant_id, "--json"]).await?;
    leak_places.push(("revoke".into(), format!("{revoked:?}")));
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(revoked.json()?["revoked"][0], grant_id.as_str());
    let (ok, err) = live.finish_with("SELECT 1;").await?;
    assert!(!ok, "psql kept working after revoke");
    assert!(err.contains("revoked"), "psql stderr: {err}");

    // The handle no longer works.
    let (ok, _, err) = psql(&env, "SELECT 1").await?;
    assert!(!ok, "a revoked handle connected");
    // The port is still held by agentd (no other user can take it) and says why.
    assert!(
        err.contains("was revoked") && err.contains("request access again"),
        "{err}"
    );

    let shim_log = mcp.close().await?;
    let status = daemon.stop().await?;
    assert!(status.success(), "daemon exit: {status}");

    // Canary: the upstream password is nowhere an agent or a log could see it.
    leak_places.push(("shim log".into(), shim_log));
    leak_places.extend(files_under(sandbox.dir.path()));
    assert!(leak_places.iter().any(|(l, _)| l.ends_with("daemon.log")));
    assert_no_leak(
        &sandbox.upstream_password,
        leak_places.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_expiry_cuts_sessions_and_refuses_new_ones() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let out = request_via_cli(&sandbox, "3s").await?;
    let view = out.json()?;
    let env = handle_env(&view["handle"]);

    // A query still running when the grant expires is cut, not left to finish.
    let started = std::time::Instant::now();
    let (ok, _, err) = psql(&env, "SELECT pg_sleep(25)").await?;
    assert!(!ok, "the session outlived its grant");
    assert!(err.contains("expired"), "psql stderr: {err}");
    assert!(
        started.elapsed().as_secs() < 20,
        "cut took {:?}",
        started.elapsed()
    );

    let (ok, _, _) = psql(&env, "SELECT 1").await?;
    assert!(!ok, "an expired handle connected");
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
    assert_eq!(
        status["grants"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );

    let log = daemon.log();
    daemon.stop().await?;
    assert_no_leak(
        &sandbox.upstream_password,
        [
            ("daemon log".to_owned(), log.as_str()),
            ("request output".to_owned(), out.stdout.as_str()),
        ],
    )?;
    Ok(())
}

/// Connects with tokio-postgres and returns the ErrorResponse's SQLSTATE and message.
async fn refused_with(
    host: IpAddr,
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<(String, String)> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host.to_string())
        .port(port)
        .user(user)
        .password(password)
        .dbname(DATABASE)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(STEP_TIMEOUT);
    let attempt = tokio::time::timeout(STEP_TIMEOUT, config.connect(tokio_postgres::NoTls)).await?;
    match attempt {
        Ok(_) => anyhow::bail!("connection was accepted"),
        Err(e) => {
            let db = e
                .as_db_error()
                .ok_or_else(|| anyhow::anyhow!("not an ErrorResponse: {e}"))?;
            Ok((db.code().code().to_owned(), db.message().to_owned()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_wrong_port_get_an_error_response() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let a = request_via_cli(&sandbox, "10m").await?.json()?;
    let b = request_via_cli(&sandbox, "10m").await?.json()?;
    let (a, b) = (&a["handle"], &b["handle"]);
    let loopback: IpAddr = [127, 0, 0, 1].into();
    let port = handle_port;
    let token = |h: &serde_json::Value| {
        h["env"]["PGPASSWORD"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let user = |h: &serde_json::Value| h["user"].as_str().unwrap_or_default().to_owned();

    // Wrong token on the right listener.
    let (code, message) = refused_with(loopback, port(a), &user(a), "not-the-token").await?;
    assert_eq!(code, "28P01", "{message}");
    // A's credentials on B's listener (the wrong port).
    let (code, message) = refused_with(loopback, port(b), &user(a), &token(a)).await?;
    assert_eq!(code, "28P01", "{message}");
    // Right credentials still work.
    let (ok, out, err) = psql(&handle_env(a), "SELECT count(*) FROM orders").await?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "3");

    let log = daemon.log();
    daemon.stop().await?;
    assert_no_leak(
        &sandbox.upstream_password,
        [("daemon log".to_owned(), log.as_str())],
    )?;
    Ok(())
}

/// This machine's first non-loopback IPv4 address, from the route a UDP socket would take.
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_peer_is_refused() -> anyhow::Result<()> {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address to connect from");
        return Ok(());
    };
    // Bind the listeners on all interfaces so a non-loopback peer can reach them at all.
    let options = SandboxOptions {
        listen_host: Some("0.0.0.0".into()),
        ..SandboxOptions::default()
    };
    let sandbox = sandbox(options).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let view = request_via_cli(&sandbox, "10m").await?.json()?;
    let handle = &view["handle"];
    let port = handle_port(handle);
    let token = handle["env"]["PGPASSWORD"].as_str().unwrap_or_default();
    let user = handle["user"].as_str().unwrap_or_default();
    let (code, message) = refused_with(ip, port, user, token).await?;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("loopback"), "{message}");
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_starts_the_daemon_when_it_is_not_running() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let resources = mcp.call("list_resources", json!({})).await?;
    assert!(!resources.is_error, "{}", resources.raw);
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let pid = status.json()?["pid"].as_u64().unwrap_or(0);
    assert!(pid > 0);
    let granted = mcp
        .call("request_access", json!({"resource": RESOURCE, "permission": PERMISSION, "justification": "autostart test"}))
        .await?;
    assert_eq!(granted.value["state"], "approved", "{}", granted.raw);
    let (ok, out, err) = psql(&handle_env(&granted.value["handle"]), "SELECT 1").await?;
    assert!(ok && out.trim() == "1", "{err}");
    let shim_log = mcp.close().await?;
    terminate(u32::try_from(pid)?);
    assert_no_leak(
        &sandbox.upstream_password,
        [
            ("result".to_owned(), granted.raw.as_str()),
            ("shim log".to_owned(), shim_log.as_str()),
        ],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_reports_errors_as_tool_errors() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let mcp = McpSession::start(&sandbox, &["--no-autostart"]).await?;
    let down = mcp.call("list_resources", json!({})).await?;
    assert!(down.is_error);
    assert_eq!(down.value["error"], "daemon_unavailable", "{}", down.raw);
    let daemon = DaemonProcess::start(&sandbox).await?;
    let unknown = mcp
        .call(
            "request_access",
            json!({"resource": "nope", "permission": "x", "justification": "j"}),
        )
        .await?;
    assert!(unknown.is_error);
    assert!(
        unknown.value["message"]
            .as_str()
            .unwrap_or_default()
            .contains(RESOURCE),
        "{}",
        unknown.raw
    );
    let bad_duration = mcp
        .call("request_access", json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "soon", "justification": "j"}))
        .await?;
    assert_eq!(
        bad_duration.value["error"], "bad_request",
        "{}",
        bad_duration.raw
    );
    mcp.close().await?;
    daemon.stop().await?;
    Ok(())
}

/// The daemon itself refuses control connections from another uid, even when the socket's
/// file permissions are opened up (defence in depth behind the 0700 directory).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_refuses_other_uids() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if agentd_proto::socket::current_uid() != 0 {
        eprintln!("SKIPPED: needs root to connect as another user (runuser -u postgres)");
        return Ok(());
    }
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&sandbox.socket_path, std::fs::Permissions::from_mode(0o666))?;
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("agentd"))
            .arg("--socket")
            .arg(&sandbox.socket_path)
            .args(["status", "--json"])
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "another uid got a status: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("serves only the user that started it"),
        "{stderr}"
    );
    let log = daemon.log();
    assert!(
        log.contains("refused control connection")
            && log.contains("serves only the user that started it"),
        "{log}"
    );
    daemon.stop().await?;
    Ok(())
}
