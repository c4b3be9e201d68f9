//! The README's "from a chat" transcript, produced by the real binaries: `agentd mcp
//! install --client claude-code` into a fresh `~/.claude.json`, then rmcp's client starts
//! the shim exactly as that entry says (as Claude Code would) and calls list_resources →
//! request_access → (a human approves at a pseudo-terminal) → await_approval → run_query →
//! release_access. It checks each step and, with `--nocapture`, prints the transcript
//! (grant tokens shown as `…`).

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt as _;
use serde_json::{json, Value};

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_transcript_install_request_approve_query_release() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        policy: "approval".to_owned(),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let home = tempfile::tempdir()?;
    let mut transcript = String::new();

    let install = agentd_plain(
        &["mcp", "install", "--client", "claude-code"],
        &[("HOME", home.path())],
    )
    .await?;
    assert_eq!(install.code, 0, "{}", install.stderr);
    transcript.push_str(&format!(
        "$ agentd mcp install --client claude-code\n{}",
        install
            .stdout
            .replace(&bin_dir().display().to_string(), "~/.cargo/bin")
    ));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join(".claude.json"))?)?;
    let entry = &config["mcpServers"]["agentd"];
    let command = entry["command"].as_str().unwrap_or_default();
    assert!(command.ends_with("agentd-mcp"), "{entry}");

    // Start the shim the way Claude Code does: the entry's command and args.
    let mut cmd = tokio::process::Command::new(command);
    for a in entry["args"].as_array().into_iter().flatten() {
        cmd.arg(a.as_str().unwrap_or_default());
    }
    cmd.env("AGENTD_SOCKET", &sandbox.socket_path)
        .env("AGENTD_CONFIG", &sandbox.config_path);
    let log = std::fs::File::create(sandbox.dir.path().join("transcript-shim.log"))?;
    let (transport, _) = TokioChildProcess::builder(cmd).stderr(log).spawn()?;
    let client = rmcp::model::ClientConfig::new(
        Default::default(),
        rmcp::model::Implementation::new("claude-code", "2.1.0"),
    )
    .serve(transport)
    .await?;
    let mut token = String::new();
    let step = |tool: &'static str, args: Value, transcript: &mut String| {
        let client = &client;
        let line = format!("agent → {tool}({args})\n");
        transcript.push_str(&line);
        let mut params = CallToolRequestParams::new(tool);
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        async move { Ok::<_, anyhow::Error>(client.call_tool(params).await?) }
    };

    let listed = step("list_resources", json!({}), &mut transcript).await?;
    transcript.push_str(&format!("      ← {}\n", text_of(&listed)));
    let requested = step(
        "request_access",
        json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "15m",
               "justification": "count the orders per customer for the weekly report"}),
        &mut transcript,
    )
    .await?;
    transcript.push_str(&format!("      ← {}\n", text_of(&requested)));
    let view = requested.structured_content.clone().unwrap_or_default();
    assert_eq!(view["state"], "pending");
    let request_id = view["id"].as_str().unwrap_or_default().to_owned();

    let approve_args = ["approve", request_id.as_str()];
    let approved = agentd_cli_at_terminal(&sandbox, &approve_args, APPROVE_CODE).await?;
    assert_eq!(approved.code, 0, "{}", approved.stdout);
    transcript.push_str(&format!(
        "you   $ agentd approve {request_id}\n      {}\n",
        approved.stdout.lines().last().unwrap_or_default().trim()
    ));

    let waited = step(
        "await_approval",
        json!({"request_id": request_id}),
        &mut transcript,
    )
    .await?;
    let view = waited.structured_content.clone().unwrap_or_default();
    assert_eq!(view["state"], "approved");
    token.push_str(
        view["handle"]["env"]["PGPASSWORD"]
            .as_str()
            .unwrap_or_default(),
    );
    let grant_id = grant_id(&view);
    transcript.push_str(&format!(
        "      ← {}\n        handle.dsn = {}\n",
        text_of(&waited),
        view["handle"]["dsn"].as_str().unwrap_or_default()
    ));

    let rows = step(
        "run_query",
        json!({"grant_id": grant_id, "sql": "SELECT customer, total_cents FROM orders ORDER BY total_cents DESC"}),
        &mut transcript,
    )
    .await?;
    let result = rows.structured_content.clone().unwrap_or_default();
    assert_eq!(result["row_count"], 3, "{result}");
    transcript.push_str(&format!(
        "      ← {}\n        {}\n",
        text_of(&rows),
        json!({"columns": result["columns"], "rows": result["rows"], "truncated": result["truncated"]})
    ));
    let denied = step(
        "run_query",
        json!({"grant_id": grant_id, "sql": "UPDATE orders SET total_cents = 0"}),
        &mut transcript,
    )
    .await?;
    assert_eq!(denied.is_error, Some(true));
    transcript.push_str(&format!("      ← error: {}\n", text_of(&denied)));
    let released = step(
        "release_access",
        json!({"grant_id": grant_id}),
        &mut transcript,
    )
    .await?;
    transcript.push_str(&format!("      ← {}\n", text_of(&released)));

    let _ = client.cancel().await;
    daemon.stop().await?;
    assert!(!token.is_empty());
    let shown = transcript.replace(&token, "…");
    println!("{shown}");
    assert_no_leak(
        &sandbox.upstream_password,
        [("transcript".to_owned(), transcript.as_str())],
    )?;
    Ok(())
}
