//! The MCP shim's whole tool set against real parts: rmcp's client over stdio and over
//! streamable HTTP (bearer tokens), the approval flow with a human at a pseudo-terminal,
//! `run_query` through the grant's listener to real PostgreSQL (truncation, a refused
//! write, one statement only), the size of `tools/list`, the `--debug` log, and that the
//! upstream secret shows up in no result, error or log.

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use serde_json::{json, Value};
use std::path::Path;

/// Budget for the serialized `tools/list` result, in bytes (~ bytes / 4 tokens).
const TOOLS_LIST_BUDGET_BYTES: usize = 8192;

/// A second permission that policy denies, and tags/description on the demo resource.
fn options(policy: &str) -> SandboxOptions {
    SandboxOptions {
        policy: policy.to_owned(),
        extra_permission_toml: format!(
            "\n[resources.{RESOURCE}.permissions.admin]\ndescription = \"owner: ALTER, DROP\"\nusername = \"postgres\"\npolicy = \"deny\"\n"
        ),
        ..SandboxOptions::default()
    }
}

fn add_tags(sandbox: &agentd::demo::Sandbox) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&sandbox.config_path)?;
    let text = text.replacen(
        "kind = \"postgres\"\n",
        "kind = \"postgres\"\ntags = [\"orders\", \"sales\"]\n",
        1,
    );
    std::fs::write(&sandbox.config_path, text)?;
    Ok(())
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Calls `tool` and requires a non-error result.
async fn ok(
    mcp: &McpSession,
    tool: &'static str,
    args: Value,
    seen: &mut Vec<(String, String)>,
) -> anyhow::Result<Value> {
    let out = mcp.call(tool, args).await?;
    seen.push((format!("{tool} result"), out.raw.clone()));
    anyhow::ensure!(!out.is_error, "{tool} failed: {}", out.raw);
    Ok(out.value)
}

/// Calls `tool` and requires an error result; returns it.
async fn err(
    mcp: &McpSession,
    tool: &'static str,
    args: Value,
    seen: &mut Vec<(String, String)>,
) -> anyhow::Result<ToolOutcome> {
    let out = mcp.call(tool, args).await?;
    seen.push((format!("{tool} error"), out.raw.clone()));
    anyhow::ensure!(out.is_error, "{tool} should have failed: {}", out.raw);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_every_tool_with_approval_run_query_and_no_leak() -> anyhow::Result<()> {
    let sandbox = sandbox(options("approval")).await?;
    add_tags(&sandbox)?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let state_home = sandbox.dir.path().join("state");
    let mcp = McpSession::start_with_env(
        &sandbox,
        &["--debug"],
        &[("XDG_STATE_HOME", state_home.as_os_str())],
    )
    .await?;
    let mut seen: Vec<(String, String)> = Vec::new();

    // tools/list: the whole set, small.
    let tools = mcp.client.list_all_tools().await?;
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, TOOL_NAMES);
    let listed = serde_json::to_string(&json!({ "tools": tools }))?;
    eprintln!(
        "tools/list result: {} bytes, ~{} tokens",
        listed.len(),
        listed.len() / 4
    );
    assert!(
        listed.len() <= TOOLS_LIST_BUDGET_BYTES,
        "tools/list is {} bytes, over the {TOOLS_LIST_BUDGET_BYTES}-byte budget",
        listed.len()
    );
    for t in &tools {
        assert!(
            t.input_schema.get("type").is_some(),
            "{} has no schema",
            t.name
        );
    }

    // Discover.
    let all = ok(&mcp, "list_resources", json!({}), &mut seen).await?;
    let demo = &all["resources"][0];
    assert_eq!(demo["name"], RESOURCE);
    assert_eq!(demo["tags"], json!(["orders", "sales"]));
    let perms = demo["permissions"].as_array().cloned().unwrap_or_default();
    let policy_of = |name: &str| {
        perms
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["policy"].clone())
    };
    assert_eq!(policy_of(PERMISSION), Some(json!("approval")));
    assert_eq!(policy_of("admin"), Some(json!("deny")));
    for (filter, count) in [
        (json!({"name": "DEM"}), 1),
        (json!({"name": "sales"}), 1),
        (json!({"name": "nothing"}), 0),
        (json!({"kind": "postgres", "permission": "read_only"}), 1),
        (json!({"permission": "superuser"}), 0),
    ] {
        let r = ok(&mcp, "list_resources", filter.clone(), &mut seen).await?;
        assert_eq!(
            r["resources"].as_array().map(Vec::len),
            Some(count),
            "{filter}"
        );
    }
    let described = ok(
        &mcp,
        "describe_resource",
        json!({"resource": RESOURCE}),
        &mut seen,
    )
    .await?;
    let ro = described["permissions"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == PERMISSION).cloned())
        .unwrap_or_default();
    assert_eq!(ro["approval_needed"], true, "{described}");
    assert_eq!(ro["allows"], "SELECT on public.orders");
    assert_eq!(ro["max_ttl_seconds"], 3600);
    assert!(
        ro["policy_explained"][0]
            .as_str()
            .is_some_and(|l| l.contains("approval")),
        "{ro}"
    );
    let missing = err(
        &mcp,
        "describe_resource",
        json!({"resource": "nope"}),
        &mut seen,
    )
    .await?;
    assert!(missing.raw.contains("list_resources"), "{}", missing.raw);
    let rec = ok(
        &mcp,
        "recommend_access",
        json!({"task": "count last week's orders for the sales report"}),
        &mut seen,
    )
    .await?;
    assert_eq!(
        (
            s(&rec, "resource"),
            s(&rec, "permission"),
            s(&rec, "duration")
        ),
        (RESOURCE, PERMISSION, "15m"),
        "{rec}"
    );
    assert!(!s(&rec, "reason").is_empty());

    // A denied permission: the agent is told not to retry.
    let denied = ok(
        &mcp,
        "request_access",
        json!({"resource": RESOURCE, "permission": "admin", "justification": "e2e: try admin"}),
        &mut seen,
    )
    .await?;
    assert_eq!(denied["state"], "denied");
    assert!(s(&denied, "message").contains("do not retry"), "{denied}");

    // Request → pending, with the exact words for the human.
    let pending = ok(
        &mcp,
        "request_access",
        json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "10m",
               "justification": "e2e: count the orders"}),
        &mut seen,
    )
    .await?;
    assert_eq!(pending["state"], "pending");
    let request_id = s(&pending, "id").to_owned();
    assert!(
        s(&pending, "message").contains(&format!("agentd approve {request_id}")),
        "{pending}"
    );
    let still = ok(
        &mcp,
        "await_approval",
        json!({"request_id": request_id, "timeout_seconds": 1}),
        &mut seen,
    )
    .await?;
    assert_eq!(still["state"], "pending");
    assert!(s(&still, "message").contains("still pending"), "{still}");
    let none = ok(&mcp, "list_grants", json!({}), &mut seen).await?;
    assert_eq!(none["grants"], json!([]));

    // The human approves at a terminal while the agent waits.
    let waiter = mcp.call(
        "await_approval",
        json!({"request_id": request_id, "timeout_seconds": 25}),
    );
    let approve_args = ["approve", request_id.as_str()];
    let approver = agentd_cli_at_terminal(&sandbox, &approve_args, APPROVE_CODE);
    let (waited, approved) = tokio::join!(waiter, approver);
    let (waited, approved) = (waited?, approved?);
    assert_eq!(approved.code, 0, "{}", approved.stdout);
    seen.push(("await_approval result".into(), waited.raw.clone()));
    assert_eq!(waited.value["state"], "approved", "{}", waited.raw);
    let grant_id = s(&waited.value["grant"], "id").to_owned();
    let fetched = ok(
        &mcp,
        "get_request",
        json!({"request_id": request_id}),
        &mut seen,
    )
    .await?;
    assert_eq!(fetched["grant"]["id"], grant_id.as_str());

    // The caller's access shows in list_grants and list_resources.
    let grants = ok(&mcp, "list_grants", json!({}), &mut seen).await?;
    assert_eq!(grants["grants"][0]["grant_id"], grant_id.as_str());
    assert!(
        grants["grants"][0]["remaining_seconds"]
            .as_u64()
            .unwrap_or(0)
            > 500
    );
    let mine = ok(&mcp, "list_resources", json!({}), &mut seen).await?;
    let ro = mine["resources"][0]["permissions"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == PERMISSION).cloned())
        .unwrap_or_default();
    assert_eq!(ro["your_grants"], json!([grant_id]));

    // run_query: rows, truncation by rows and by bytes.
    let q = |sql: &str, extra: Value| {
        let mut args = json!({"grant_id": grant_id, "sql": sql});
        if let (Some(a), Value::Object(e)) = (args.as_object_mut(), extra) {
            a.extend(e);
        }
        args
    };
    // (sql, limits, rows expected, truncated)
    let cases = [
        (
            "SELECT id, customer FROM orders ORDER BY id",
            json!({}),
            json!([["1", "ada"], ["2", "grace"], ["3", "linus"]]),
            false,
        ),
        (
            "SELECT customer FROM orders ORDER BY id",
            json!({"max_rows": 2}),
            json!([["ada"], ["grace"]]),
            true,
        ),
        (
            "SELECT repeat('x', 5000) FROM generate_series(1, 100)",
            json!({"max_bytes": 12000}),
            json!([["x".repeat(5000)], ["x".repeat(5000)]]),
            true,
        ),
    ];
    for (sql, limits, expected, truncated) in cases {
        let got = ok(&mcp, "run_query", q(sql, limits), &mut seen).await?;
        assert_eq!(got["rows"], expected, "{sql}");
        assert_eq!(got["truncated"], truncated, "{sql}");
        assert_eq!(
            got["row_count"].as_u64(),
            expected.as_array().map(|r| r.len() as u64)
        );
    }
    let columns = ok(
        &mcp,
        "run_query",
        q("SELECT 1 AS one, 'a' AS two", json!({})),
        &mut seen,
    )
    .await?;
    assert_eq!(columns["columns"], json!(["one", "two"]));

    // A write on the read-only grant: the server's refusal, with what to do next.
    let write = err(
        &mcp,
        "run_query",
        q("DELETE FROM orders", json!({})),
        &mut seen,
    )
    .await?;
    assert_eq!(write.value["sqlstate"], "42501", "{}", write.raw);
    assert!(write.raw.contains("do not retry"), "{}", write.raw);
    let two_statements = err(
        &mcp,
        "run_query",
        q("SELECT 1; SELECT 2", json!({})),
        &mut seen,
    )
    .await?;
    assert_eq!(two_statements.value["error"], "not_one_statement");
    let typo = err(&mcp, "run_query", q("SELEC 1", json!({})), &mut seen).await?;
    assert_eq!(typo.value["sqlstate"], "42601");

    // run_query went through the listener: audited like any statement.
    let audit = agentd_cli(&sandbox, &["audit", "--grant", &grant_id, "--json"]).await?;
    seen.push(("audit".into(), audit.stdout.clone()));
    assert!(
        audit
            .stdout
            .contains("SELECT id, customer FROM orders ORDER BY id")
            && audit.stdout.contains("DELETE FROM orders"),
        "{}",
        audit.stdout
    );

    // Release: the grant is gone for run_query and list_grants.
    let released = ok(
        &mcp,
        "release_access",
        json!({"grant_id": grant_id}),
        &mut seen,
    )
    .await?;
    assert_eq!(released["released"], json!([grant_id]));
    let gone = err(&mcp, "run_query", q("SELECT 1", json!({})), &mut seen).await?;
    assert!(gone.raw.contains("list_grants"), "{}", gone.raw);
    let none = ok(&mcp, "list_grants", json!({}), &mut seen).await?;
    assert_eq!(none["grants"], json!([]));

    // The debug log went to $XDG_STATE_HOME/agentd/mcp.log, never to stdout.
    let shim_log = mcp.close().await?;
    let debug_log = std::fs::read_to_string(state_home.join("agentd").join("mcp.log"))?;
    assert!(debug_log.contains("agentd-mcp debug log"), "{debug_log}");
    let status = daemon.stop().await?;
    assert!(status.success());
    seen.push(("shim stderr".into(), shim_log));
    seen.push(("shim debug log".into(), debug_log));
    seen.extend(files_under(sandbox.dir.path()));
    assert_no_leak(
        &sandbox.upstream_password,
        seen.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    Ok(())
}

async fn status_without(url: &str, auth: Option<&str>) -> anyhow::Result<u16> {
    status_with(url, auth, &[]).await
}

/// POSTs an MCP `initialize` to `url` with `auth` and extra `headers`; the HTTP status.
async fn status_with(
    url: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<u16> {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}})
            .to_string(),
        );
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Ok(req.send().await?.status().as_u16())
}

async fn create_token(
    sandbox: &agentd::demo::Sandbox,
    store: &Path,
    name: &str,
) -> anyhow::Result<String> {
    let store = store.display().to_string();
    let out = agentd_cli(
        sandbox,
        &[
            "token", "create", "--name", name, "--store", &store, "--json",
        ],
    )
    .await?;
    anyhow::ensure!(out.code == 0, "token create failed: {}", out.stderr);
    Ok(s(&out.json()?, "token").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requires_a_bearer_token_and_serves_every_tool() -> anyhow::Result<()> {
    let sandbox = sandbox(options("auto")).await?;
    add_tags(&sandbox)?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let store = sandbox.dir.path().join("mcp-tokens.json");
    let mut seen: Vec<(String, String)> = Vec::new();

    // No token yet: the shim refuses to serve; a non-loopback bind is refused too.
    let no_token = HttpShim::start(&sandbox, &store, &[]).await;
    assert!(
        no_token
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("agentd token create")),
        "{:?}",
        no_token.as_ref().err()
    );
    let token = create_token(&sandbox, &store, "e2e").await?;
    assert!(token.starts_with("agentd_mcp_"));
    let stored = std::fs::read_to_string(&store)?;
    assert!(!stored.contains(&token), "the token itself was stored");
    let wide = tokio::process::Command::new(bin("agentd-mcp"))
        .args(["--http", "0.0.0.0:0", "--tokens-file"])
        .arg(&store)
        .output()
        .await?;
    assert!(!wide.status.success());
    assert!(String::from_utf8_lossy(&wide.stderr).contains("loopback"));

    let shim = HttpShim::start(&sandbox, &store, &[]).await?;
    assert_eq!(status_without(&shim.url, None).await?, 401);
    assert_eq!(
        status_without(&shim.url, Some("Bearer agentd_mcp_wrong")).await?,
        401
    );
    assert_eq!(
        status_without(&shim.url, Some(&format!("Basic {token}"))).await?,
        401
    );
    // DNS rebinding: a page on a rebound name reaches the port with its own Host and
    // Origin; even with a valid token it gets 403. Loopback origins are served.
    let bearer = format!("Bearer {token}");
    let port = shim
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let evil_host = format!("rebind.evil.example:{port}");
    for headers in [
        vec![("host", evil_host.as_str())],
        vec![("origin", "http://rebind.evil.example")],
        vec![("origin", "null")],
        vec![
            ("host", evil_host.as_str()),
            ("origin", "http://rebind.evil.example"),
        ],
    ] {
        assert_eq!(
            status_with(&shim.url, Some(&bearer), &headers).await?,
            403,
            "{headers:?}"
        );
    }
    let local_origin = format!("http://localhost:{port}");
    let localhost = format!("localhost:{port}");
    assert_eq!(
        status_with(
            &shim.url,
            Some(&bearer),
            &[("origin", &local_origin), ("host", &localhost)]
        )
        .await?,
        200
    );
    assert!(std::fs::read_to_string(&shim.log_path)?.contains("DNS rebinding"));
    assert!(
        McpSession::connect_http(&shim.url, "agentd_mcp_wrong", shim.log_path.clone())
            .await
            .is_err(),
        "an MCP session started with a wrong token"
    );

    let mcp = McpSession::connect_http(&shim.url, &token, shim.log_path.clone()).await?;
    let mut names: Vec<_> = mcp
        .client
        .list_all_tools()
        .await?
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, TOOL_NAMES);
    let listed = ok(&mcp, "list_resources", json!({"name": "orders"}), &mut seen).await?;
    assert_eq!(listed["resources"][0]["permissions"][1]["policy"], "auto");
    ok(
        &mcp,
        "describe_resource",
        json!({"resource": RESOURCE}),
        &mut seen,
    )
    .await?;
    let rec = ok(
        &mcp,
        "recommend_access",
        json!({"task": "select the biggest orders"}),
        &mut seen,
    )
    .await?;
    assert_eq!(s(&rec, "permission"), PERMISSION);
    let granted = ok(
        &mcp,
        "request_access",
        json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "5m",
               "justification": "e2e over HTTP"}),
        &mut seen,
    )
    .await?;
    assert_eq!(granted["state"], "approved", "{granted}");
    assert_eq!(granted["agent"]["agent_type"], "e2e-http");
    let request_id = s(&granted, "id").to_owned();
    let grant_id = s(&granted["grant"], "id").to_owned();
    ok(
        &mcp,
        "get_request",
        json!({"request_id": request_id}),
        &mut seen,
    )
    .await?;
    let awaited = ok(
        &mcp,
        "await_approval",
        json!({"request_id": request_id, "timeout_seconds": 1}),
        &mut seen,
    )
    .await?;
    assert_eq!(awaited["state"], "approved");
    let grants = ok(&mcp, "list_grants", json!({}), &mut seen).await?;
    assert_eq!(grants["grants"][0]["grant_id"], grant_id.as_str());
    let counted = ok(
        &mcp,
        "run_query",
        json!({"grant_id": grant_id, "sql": "SELECT count(*) AS n FROM orders"}),
        &mut seen,
    )
    .await?;
    assert_eq!(counted["rows"], json!([["3"]]));
    ok(
        &mcp,
        "release_access",
        json!({"grant_id": grant_id}),
        &mut seen,
    )
    .await?;

    // A revoked token is refused from the next request on.
    let revoked = agentd_cli(
        &sandbox,
        &[
            "token",
            "revoke",
            "e2e",
            "--store",
            &store.display().to_string(),
        ],
    )
    .await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(
        status_without(&shim.url, Some(&format!("Bearer {token}"))).await?,
        401
    );
    let _ = mcp.client.cancel().await;
    let log = shim.stop().await?;
    assert!(
        !log.contains(&token),
        "the bearer token reached the shim log"
    );
    daemon.stop().await?;
    seen.push(("http shim log".into(), log));
    seen.extend(files_under(sandbox.dir.path()));
    assert_no_leak(
        &sandbox.upstream_password,
        seen.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    Ok(())
}
