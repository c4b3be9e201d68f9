//! The password-change guard against the real cluster: every form of `ALTER ROLE|USER …
//! PASSWORD` through real psql (`-c`, multi-statement, a file with comments between tokens,
//! `\password` at a pseudo-terminal), tokio-postgres (extended and simple protocol, inside a
//! transaction) and the MCP `run_query` tool is refused with SQLSTATE 42501; after each
//! refusal the same session still works, the stored login still works, and the audit log
//! has a `statement_refused` record without the password.

use agentd::demo::{SandboxCredential, SandboxOptions};
use agentd_tests::*;
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;

/// Passwords the agent tries to set; none may reach the server or the audit log.
const TRIED: &str = "agent-chosen-pw";

/// The forms sent with `psql -c`.
fn psql_forms() -> Vec<String> {
    vec![
        format!("ALTER ROLE CURRENT_USER PASSWORD '{TRIED}1'"),
        format!("alter user current_user with encrypted password '{TRIED}2'"),
        format!("ALTER USER SESSION_USER PASSWORD '{TRIED}3'"),
        format!("ALTER ROLE \"agent_ro\" WITH PASSWORD '{TRIED}4' VALID UNTIL 'infinity'"),
        format!("ALTER ROLE agent_ro PASSWORD '{TRIED}5'"),
        "ALTER ROLE postgres PASSWORD NULL".to_owned(),
        format!("SELECT 1; ALTER ROLE CURRENT_USER PASSWORD '{TRIED}6'; SELECT 2"),
        format!("ALTER/**/ROLE/* c */CURRENT_USER--x\nPASSWORD/**/'{TRIED}7'"),
        format!("ALTER ROLE CURRENT_USER PASSWORD $q${TRIED}8$q$"),
        format!("ALTER ROLE CURRENT_USER PASSWORD E'{TRIED}9\\''"),
    ]
}

/// Audit records of one kind, via `agentd audit --json`.
async fn audit_events(sandbox: &agentd::demo::Sandbox, event: &str) -> anyhow::Result<Vec<Value>> {
    let out = agentd_cli(sandbox, &["audit", "--json"]).await?;
    anyhow::ensure!(out.code == 0, "agentd audit: {}", out.stderr);
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_changes_are_refused_through_psql_and_the_session_goes_on() -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    let env = handle_env(&target.handle);
    let mut outputs = Vec::new();
    let forms = psql_forms();
    for sql in &forms {
        let (ok, out, err) = psql(&env, sql).await?;
        outputs.push((format!("psql {sql}"), format!("{out}{err}")));
        assert!(!ok, "refused statement succeeded: {sql}");
        assert!(
            err.contains("agentd refused this statement") && err.contains("HINT:"),
            "{sql}: {err}"
        );
        assert!(
            !out.contains('2'),
            "nothing of a refused string runs: {sql}: {out}"
        );
        // The live session and a new session with the stored login both still work.
        target.bystander_ok().await?;
    }

    // A file with `\set` and comments, psql's own multi-statement splitting, ON_ERROR_STOP.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("sneaky.sql");
    std::fs::write(
        &file,
        format!("SELECT 'first';\n/* a\n comment */ ALTER -- x\n ROLE CURRENT_USER\n PASSWORD\n '{TRIED}f';\nSELECT 'never';\n"),
    )?;
    let out = psql_command(&env)
        .args(["-At", "-f"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!out.status.success());
    assert_eq!(stdout.trim(), "first", "{stderr}");
    assert!(stderr.contains("agentd refused"), "{stderr}");
    outputs.push(("psql -f".into(), format!("{stdout}{stderr}")));

    // psql's \password at a real terminal (script(1)): it sends ALTER USER … PASSWORD
    // 'SCRAM-SHA-256$…' and prints the server's error.
    let terminal = password_at_terminal(&env, &format!("{TRIED}t")).await?;
    assert!(terminal.contains("agentd refused"), "{terminal}");
    outputs.push(("\\password terminal".into(), terminal));
    target.bystander_ok().await?;

    let refused = audit_events(&target.sandbox, "statement_refused").await?;
    assert_eq!(refused.len(), forms.len() + 2, "{refused:#?}");
    let texts = serde_json::to_string(&refused)?;
    assert!(texts.contains("[REDACTED]"));
    assert!(
        !texts.contains(TRIED),
        "a tried password reached the audit log"
    );
    assert!(
        !texts.contains("SCRAM-SHA-256$"),
        "a verifier reached the audit log"
    );
    let all = agentd_cli(&target.sandbox, &["audit"]).await?;
    // The tried passwords are the test's own, not secrets: name the offending lines.
    let leaked: Vec<&str> = all.stdout.lines().filter(|l| l.contains(TRIED)).collect();
    assert!(
        leaked.is_empty(),
        "a tried password reached the audit log: {leaked:#?}"
    );
    assert!(all.stdout.contains("statement_refused"));
    target.finish(&outputs).await
}

/// Runs psql's `\password` inside a pseudo-terminal made by script(1), typing `new` at both
/// prompts once they appear (psql flushes what was typed before a no-echo prompt). Returns
/// what the terminal showed.
async fn password_at_terminal(env: &[(String, String)], new: &str) -> anyhow::Result<String> {
    let psql = agentd::pgcluster::psql_path();
    let mut child = tokio::process::Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!("'{}' -X -c '\\password'", psql.display()))
        .arg("/dev/null")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "dumb")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut seen = String::new();
    let mut answered = 0;
    let mut buf = [0u8; 1024];
    let drive = async {
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            let prompts =
                seen.matches("Enter new password").count() + seen.matches("Enter it again").count();
            while answered < prompts {
                stdin.write_all(format!("{new}\r").as_bytes()).await?;
                stdin.flush().await?;
                answered += 1;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(STEP_TIMEOUT, drive).await??;
    drop(stdin);
    let _ = tokio::time::timeout(STEP_TIMEOUT, child.wait()).await?;
    anyhow::ensure!(answered == 2, "psql did not prompt twice: {seen}");
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_changes_are_refused_through_tokio_postgres_in_both_protocols(
) -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    let live = &target.live;
    // Extended protocol (Parse/Bind/Execute): the error arrives at Execute, as 42501.
    for sql in [
        format!("ALTER ROLE CURRENT_USER PASSWORD '{TRIED}x'"),
        format!("ALTER USER agent_ro ENCRYPTED PASSWORD '{TRIED}y'"),
    ] {
        let e = live.execute(sql.as_str(), &[]).await.expect_err("refused");
        assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
        let db = e
            .as_db_error()
            .map(|d| (d.message().to_owned(), d.hint().map(str::to_owned)));
        let (message, hint) = db.unwrap_or_default();
        assert!(message.starts_with("agentd refused"), "{message}");
        assert!(hint.unwrap_or_default().contains("Do not retry"));
        let one: i32 = live.query_one("SELECT 1", &[]).await?.get(0);
        assert_eq!(one, 1);
    }
    // A named prepared statement: prepare succeeds, executing it is refused, repeatedly.
    let stmt = live
        .prepare(&format!("ALTER ROLE CURRENT_USER PASSWORD '{TRIED}p'"))
        .await?;
    for _ in 0..2 {
        let e = live.execute(&stmt, &[]).await.expect_err("refused");
        assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    }
    // Simple protocol inside a transaction block: the refusal aborts the transaction like
    // any error (ReadyForQuery says so), ROLLBACK recovers it.
    live.batch_execute("BEGIN").await?;
    let e = live
        .simple_query(&format!(
            "SELECT 1; ALTER ROLE CURRENT_USER PASSWORD '{TRIED}s'"
        ))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    let aborted = live.query_one("SELECT 1", &[]).await.expect_err("aborted");
    assert_eq!(aborted.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    live.batch_execute("ROLLBACK").await?;
    target.bystander_ok().await?;
    // Pipelined: statements before and after the refused one in the same flight.
    let pipelined = format!("ALTER ROLE CURRENT_USER PASSWORD '{TRIED}q'");
    let (a, b, c) = tokio::join!(
        live.query_one("SELECT 10", &[]),
        live.execute(pipelined.as_str(), &[]),
        live.query_one("SELECT 30", &[]),
    );
    assert_eq!(a?.get::<_, i32>(0), 10);
    assert_eq!(
        b.expect_err("refused").code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert_eq!(c?.get::<_, i32>(0), 30);

    let refused = audit_events(&target.sandbox, "statement_refused").await?;
    // Two executes of the two ad-hoc statements are one Parse each; the prepared one is
    // refused at its Parse (once); the simple query; the pipelined one.
    assert_eq!(refused.len(), 5, "{refused:#?}");
    assert!(refused.iter().any(|r| r["kind"] == "parse"));
    assert!(refused.iter().any(|r| r["kind"] == "query"));
    assert!(!serde_json::to_string(&refused)?.contains(TRIED));
    target.bystander_ok().await?;
    target.finish(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_changes_are_refused_through_run_query() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let granted = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "10m",
                   "justification": "guard test"}),
        )
        .await?;
    assert!(!granted.is_error, "{}", granted.raw);
    let grant = grant_id(&granted.value);
    let mut outputs = vec![("request_access".to_owned(), granted.raw.clone())];
    for sql in [
        format!("ALTER ROLE CURRENT_USER PASSWORD '{TRIED}m'"),
        format!("/* hi */ alter user session_user with password '{TRIED}n'"),
    ] {
        let out = mcp
            .call("run_query", json!({"grant_id": grant, "sql": sql}))
            .await?;
        outputs.push(("run_query refused".into(), out.raw.clone()));
        assert!(out.is_error, "{}", out.raw);
        assert_eq!(out.value["sqlstate"], "42501", "{}", out.raw);
        assert!(out.raw.contains("agentd refused"), "{}", out.raw);
        let one = mcp
            .call("run_query", json!({"grant_id": grant, "sql": "SELECT 1"}))
            .await?;
        assert!(!one.is_error, "{}", one.raw);
        assert_eq!(one.value["rows"], json!([["1"]]));
    }
    // run_query prepares the statement (Parse) to learn its columns, then runs it (Query):
    // both are refused, so two records per call.
    let refused = audit_events(&sandbox, "statement_refused").await?;
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(!serde_json::to_string(&refused)?.contains(TRIED));
    let log = mcp.close().await?;
    outputs.push(("agentd-mcp log".into(), log));
    let status = daemon.stop().await?;
    assert!(status.success());
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}

/// Dynamic SQL builds the statement on the server, out of the guard's sight: a `DO` block
/// changes the login's password. When the grant ends the daemon finds that the stored login
/// no longer works: `credential_tampered` in the audit log, `agentd status` (text and JSON)
/// says so, and new grants on the permission are refused with what the admin must do. Once
/// the password is right again the next request heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_block_password_change_is_found_after_the_grant() -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    let grant = target.handle["user"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    target
        .live
        .batch_execute(&format!(
            "DO $$BEGIN EXECUTE 'ALTER ROLE CURRENT_USER PASS' || 'WORD ''{TRIED}d'''; END$$"
        ))
        .await?;
    // `agentd revoke` answers once the login check after the grant has run.
    let revoked = agentd_cli(&target.sandbox, &["revoke", &grant]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);

    let status = agentd_cli(&target.sandbox, &["status", "--json"]).await?;
    let status = status.json()?;
    let tampered = status["tampered"].as_array().cloned().unwrap_or_default();
    assert_eq!(tampered.len(), 1, "{status:#}");
    assert_eq!(tampered[0]["resource"], RESOURCE);
    assert_eq!(tampered[0]["permission"], PERMISSION);
    assert_eq!(tampered[0]["grant_id"], grant.as_str());
    assert!(tampered[0]["error"]
        .as_str()
        .unwrap_or_default()
        .starts_with("28P01"));
    let text = agentd_cli(&target.sandbox, &["status"]).await?;
    assert!(
        text.stdout.contains("WARNING: demo/read_only")
            && text.stdout.contains("agentd secret set demo read_only"),
        "{}",
        text.stdout
    );
    let events = audit_events(&target.sandbox, "credential_tampered").await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["grant_id"], grant.as_str());

    let refused = agentd_cli(
        &target.sandbox,
        &[
            "request",
            RESOURCE,
            "--permission",
            PERMISSION,
            "--ttl",
            "5m",
        ],
    )
    .await?;
    assert_ne!(refused.code, 0);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("agentd secret set demo read_only") && said.contains(&grant),
        "{said}"
    );

    // The admin puts the stored password back on the server; the next request works again.
    target.sandbox.cluster.psql(
        DATABASE,
        &format!(
            "ALTER ROLE {} PASSWORD '{}'",
            agentd::demo::ROLE,
            secrecy::ExposeSecret::expose_secret(&target.sandbox.upstream_password)
        ),
    )?;
    let again = request_via_cli(&target.sandbox, "5m").await?;
    let env = handle_env(&again.json()?["handle"]);
    let (ok, out, err) = psql(&env, "SELECT 1").await?;
    assert!(ok && out.trim() == "1", "{err}");
    let status = agentd_cli(&target.sandbox, &["status", "--json"])
        .await?
        .json()?;
    assert_eq!(status["tampered"], serde_json::json!([]));
    let outputs = vec![
        ("status".to_owned(), text.stdout),
        ("refused request".to_owned(), said),
    ];
    target.finish(&outputs).await
}

/// A dynamic role writes a `SECURITY DEFINER` function that would create a role (something
/// only the admin, with CREATEROLE, may do). When the grant ends its objects go to the
/// NOLOGIN `agentd_orphans` role, never to the admin, so calling the function afterwards
/// runs with no rights at all and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_definer_function_left_by_a_dynamic_role_gets_no_admin_rights(
) -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions {
        credential: SandboxCredential::Dynamic,
        role_owns_database: true,
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let granted = request_via_cli(&sandbox, "10m").await?.json()?;
    let grant = grant_id(&granted);
    let env = handle_env(&granted["handle"]);
    let (ok, out, err) = psql(
        &env,
        "CREATE FUNCTION public.escalate() RETURNS text LANGUAGE plpgsql SECURITY DEFINER \
         AS $$BEGIN CREATE ROLE agentd_escalated LOGIN; RETURN current_user; END$$; \
         SELECT current_user",
    )
    .await?;
    assert!(ok, "{err}");
    let who = out.lines().last().unwrap_or_default();
    assert!(who.starts_with("agentd_g_"), "{out}");
    // The grant's own role cannot create roles: the function fails during the grant too.
    let (ok, _, err) = psql(&env, "SELECT public.escalate()").await?;
    assert!(
        !ok && err.contains("permission denied to create role"),
        "{err}"
    );

    let revoked = agentd_cli(&sandbox, &["revoke", &grant]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let dropped = audit_events(&sandbox, "role_dropped").await?;
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["dropped"], true, "{dropped:#?}");

    let owner = sandbox.cluster.psql(
        DATABASE,
        "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'escalate'",
    )?;
    assert_eq!(owner.trim(), "agentd_orphans");
    let orphan = sandbox.cluster.psql(
        DATABASE,
        "SELECT rolcanlogin, rolcreaterole, rolsuper, \
         (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) \
         FROM pg_roles r WHERE rolname = 'agentd_orphans'",
    )?;
    assert_eq!(
        orphan.trim(),
        "f|f|f|0",
        "no login, no rights, no memberships"
    );
    // Called by the admin itself (the worst case), the definer's rights are the orphan's.
    let admin_call = sandbox.cluster.psql(
        DATABASE,
        &format!(
            "SET ROLE {}; SELECT public.escalate();",
            agentd::demo::ADMIN_ROLE
        ),
    );
    let message = format!("{admin_call:?}");
    assert!(
        message.contains("permission denied to create role"),
        "{message}"
    );
    let escalated = sandbox.cluster.psql(
        DATABASE,
        "SELECT count(*) FROM pg_roles WHERE rolname = 'agentd_escalated'",
    )?;
    assert_eq!(escalated.trim(), "0");
    let status = daemon.stop().await?;
    assert!(status.success());
    assert_sandbox_clean(&sandbox, &[])?;
    Ok(())
}
