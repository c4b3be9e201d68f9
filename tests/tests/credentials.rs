//! Just-in-time credentials against a real PostgreSQL: dynamic per-grant roles (created at
//! grant, dropped at revoke / expiry, swept after a SIGKILL), command sources (JSON, failing,
//! hanging), process hardening, `agentd secret list`, and a canary scan of everything the
//! daemon wrote.

use agentd::demo::{Sandbox, SandboxCredential, SandboxOptions};
use agentd_tests::*;
use serde_json::Value;
use std::time::Duration;

/// Runs SQL as the cluster's superuser (Unix socket) and returns psql's `-At` output.
fn pg(sandbox: &Sandbox, sql: &str) -> anyhow::Result<String> {
    tokio::task::block_in_place(|| sandbox.cluster.psql("postgres", sql))
}

/// The `agentd_g_%` roles on the server, sorted.
fn agentd_roles(sandbox: &Sandbox) -> anyhow::Result<Vec<String>> {
    let out = pg(
        sandbox,
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'agentd!_g!_%' ESCAPE '!' ORDER BY 1",
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Upstream sessions logged in as `role`.
fn sessions_of(sandbox: &Sandbox, role: &str) -> anyhow::Result<u32> {
    let out = pg(
        sandbox,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"),
    )?;
    Ok(out.trim().parse()?)
}

/// Audit records with `"event": event`.
fn audit_events(sandbox: &Sandbox, event: &str) -> anyhow::Result<Vec<Value>> {
    let dir = sandbox.config()?.audit_dir();
    Ok(agentd::audit::read_records(&dir)?
        .into_iter()
        .filter_map(|r| r.value)
        .filter(|v| v["event"] == event)
        .collect())
}

/// Polls `condition` every 50 ms until it holds, failing after [`STEP_TIMEOUT`]. For state
/// the test cannot subscribe to (the audit file, the server's catalogs).
async fn wait_until(
    what: &str,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !condition()? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn dynamic_sandbox() -> anyhow::Result<Sandbox> {
    sandbox(SandboxOptions {
        credential: SandboxCredential::Dynamic,
        ..SandboxOptions::default()
    })
    .await
}

/// psql with `VERBOSITY=verbose`, so errors show their SQLSTATE.
async fn psql_verbose(env: &[(String, String)], sql: &str) -> anyhow::Result<(bool, String)> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        psql_command(env)
            .args(["-At", "-v", "VERBOSITY=verbose", "-c", sql])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await??;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The canary (the admin's or login's password) must be nowhere: not in `outputs`, the
/// daemon logs, or any file under the sandbox dir (config, audit log, state). Neither may a
/// SCRAM verifier (what agentd sends in CREATE ROLE) show up in any of them.
fn leak_scan(sandbox: &Sandbox, outputs: &[(String, String)]) -> anyhow::Result<()> {
    let mut places: Vec<(String, String)> = outputs.to_vec();
    places.extend(files_under(sandbox.dir.path()));
    assert_no_leak(
        &sandbox.upstream_password,
        places.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    for (label, text) in &places {
        anyhow::ensure!(
            !text.contains("SCRAM-SHA-256$"),
            "a role's SCRAM verifier leaked into {label}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_role_has_only_the_granted_privileges_and_revoke_drops_it() -> anyhow::Result<()> {
    let sandbox = dynamic_sandbox().await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mut outputs = Vec::new();
    assert_eq!(agentd_roles(&sandbox)?, Vec::<String>::new());

    let out = request_via_cli(&sandbox, "10m").await?;
    outputs.push(("request output".to_owned(), out.stdout.clone()));
    let view = out.json()?;
    let grant_id = grant_id(&view);
    let role = format!("agentd_{grant_id}");
    let env = handle_env(&view["handle"]);
    assert_eq!(agentd_roles(&sandbox)?, vec![role.clone()]);
    let valid_until = pg(
        &sandbox,
        &format!("SELECT rolvaliduntil IS NOT NULL AND rolconnlimit = 5 FROM pg_roles WHERE rolname = '{role}'"),
    )?;
    assert_eq!(
        valid_until.trim(),
        "t",
        "VALID UNTIL and CONNECTION LIMIT set"
    );

    // The proxy logs in as the grant's own role, which can read but not write.
    let (ok, text) = psql_verbose(&env, "SELECT current_user, count(*) FROM orders").await?;
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("{role}|3"));
    let (ok, text) = psql_verbose(&env, "INSERT INTO orders VALUES (9, 'mallory', 1)").await?;
    assert!(!ok, "a write on a read-only grant succeeded");
    assert!(
        text.contains("42501") && text.contains("permission denied"),
        "{text}"
    );
    outputs.push(("psql output".to_owned(), text));

    // A live session, then revoke: the answer comes after the role is gone.
    let mut live = LivePsql::start(&env)?;
    assert_eq!(live.query_line("SELECT 1;").await?, "1");
    assert_eq!(sessions_of(&sandbox, &role)?, 1);
    let revoked = agentd_cli(&sandbox, &["revoke", &grant_id, "--json"]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    outputs.push(("revoke output".to_owned(), revoked.stdout + &revoked.stderr));
    assert_eq!(agentd_roles(&sandbox)?, Vec::<String>::new());
    let (ok, err) = live.finish_with("SELECT 1;").await?;
    assert!(!ok && err.contains("revoked"), "{err}");
    wait_until("the role's backend to exit", || {
        Ok(sessions_of(&sandbox, &role)? == 0)
    })
    .await?;
    let dropped = audit_events(&sandbox, "role_dropped")?;
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["role"], role.as_str());
    assert_eq!(dropped[0]["dropped"], true);
    let created = audit_events(&sandbox, "role_created")?;
    assert_eq!(created[0]["role"], role.as_str());

    // Keychain listing: names and presence only.
    let list = agentd_cli(&sandbox, &["secret", "list", "--json"]).await?;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let listing = list.json()?;
    assert_eq!(listing["entries"][0]["entry"], "demo/admin");
    assert_eq!(listing["entries"][0]["kind"], "admin");
    assert_eq!(listing["entries"][0]["state"], "present");
    outputs.push(("secret list".to_owned(), list.stdout));
    let check = agentd_cli(&sandbox, &["config", "check"]).await?;
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check.stdout.contains("dynamic role agentd_g_… per grant"),
        "{}",
        check.stdout
    );
    outputs.push(("config check".to_owned(), check.stdout));

    // Hardening: no core dumps (RLIMIT_CORE 0), undumpable, said once in the log.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid))?;
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_default();
    let words: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(words.get(4..6), Some(&["0", "0"][..]), "{core}");
    let log = daemon.log();
    let plain = strip_ansi(&log);
    assert!(
        plain.contains("process hardening not_dumpable=true no_core=true"),
        "{plain}"
    );

    daemon.stop().await?;
    outputs.push(("daemon log".to_owned(), log));
    leak_scan(&sandbox, &outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_role_is_dropped_when_the_grant_expires() -> anyhow::Result<()> {
    let sandbox = dynamic_sandbox().await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let view = request_via_cli(&sandbox, "4s").await?.json()?;
    let grant_id = grant_id(&view);
    let role = format!("agentd_{grant_id}");
    let mut live = LivePsql::start(&handle_env(&view["handle"]))?;
    assert_eq!(live.query_line("SELECT 1;").await?, "1");
    assert_eq!(agentd_roles(&sandbox)?, vec![role.clone()]);

    wait_until("the role_dropped record after expiry", || {
        Ok(!audit_events(&sandbox, "role_dropped")?.is_empty())
    })
    .await?;
    let ended = audit_events(&sandbox, "grant_ended")?;
    assert_eq!(ended[0]["state"], "expired");
    assert_eq!(audit_events(&sandbox, "role_dropped")?[0]["dropped"], true);
    assert_eq!(agentd_roles(&sandbox)?, Vec::<String>::new());
    let (ok, err) = live.finish_with("SELECT 1;").await?;
    assert!(!ok && err.contains("expired"), "{err}");
    wait_until("the role's backend to exit", || {
        Ok(sessions_of(&sandbox, &role)? == 0)
    })
    .await?;
    let log = daemon.log();
    daemon.stop().await?;
    leak_scan(&sandbox, &[("daemon log".to_owned(), log)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_roles_are_swept_after_sigkill_and_restart() -> anyhow::Result<()> {
    let sandbox = dynamic_sandbox().await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let a = request_via_cli(&sandbox, "10m").await?.json()?;
    let b = request_via_cli(&sandbox, "10m").await?.json()?;
    let ours: Vec<String> = [&a, &b]
        .iter()
        .map(|v| format!("agentd_{}", v["grant"]["id"].as_str().unwrap_or_default()))
        .collect();
    // Another daemon (another data directory) shares this server: its role must survive.
    let foreign = "agentd_g_00000000000000ff";
    pg(
        &sandbox,
        &format!(
            "CREATE ROLE {foreign} NOLOGIN;\n\
             COMMENT ON ROLE {foreign} IS 'agentd grant g_00000000000000ff data-dir 0123456789abcdef';"
        ),
    )?;
    let first_log = daemon.log();
    daemon.kill().await?;
    let mut left = agentd_roles(&sandbox)?;
    left.retain(|r| r != foreign);
    let mut want = ours.clone();
    want.sort();
    assert_eq!(left, want, "the killed daemon left its roles behind");

    // The restarted daemon sweeps before it says it is ready.
    let daemon = DaemonProcess::start(&sandbox).await?;
    assert_eq!(agentd_roles(&sandbox)?, vec![foreign.to_owned()]);
    let swept = audit_events(&sandbox, "roles_swept")?;
    let last = swept.last().cloned().unwrap_or_default();
    let mut dropped: Vec<String> = last["dropped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    dropped.sort();
    assert_eq!(dropped, want, "{last}");
    let log = daemon.log();
    daemon.stop().await?;
    leak_scan(
        &sandbox,
        &[
            ("first daemon log".to_owned(), first_log),
            ("second daemon log".to_owned(), log),
        ],
    )
}

/// The text without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes an executable shell script (the daemon runs it directly, no shell in between).
fn script(dir: &std::path::Path, name: &str, body: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_source_json_failing_and_hanging() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let dir = scripts.path();
    let json_file = dir.join("login.json");
    let runs = dir.join("runs");
    let good = script(
        dir,
        "good.sh",
        &format!(
            "echo run >> '{}'\ncat '{}'",
            runs.display(),
            json_file.display()
        ),
    )?;
    // Both print the canary before misbehaving: it must not reach any error.
    let failing = script(
        dir,
        "failing.sh",
        &format!(
            "cat '{}'\ncat '{}' >&2\nexit 3",
            json_file.display(),
            json_file.display()
        ),
    )?;
    let hanging = script(
        dir,
        "hanging.sh",
        &format!("cat '{}'\nexec sleep 30", json_file.display()),
    )?;
    let bad_json = script(
        dir,
        "bad-json.sh",
        &format!("echo \"password=$(cat '{}')\"", json_file.display()),
    )?;
    let extra = [("failing", &failing), ("hanging", &hanging), ("bad_json", &bad_json)]
        .iter()
        .map(|(p, argv0)| {
            format!(
                "\n[resources.demo.permissions.{p}]\npolicy = \"auto\"\n\
                 credential = {{ source = \"command\", argv = [\"{argv0}\"], timeout_seconds = 1 }}\n"
            )
        })
        .collect::<String>();
    let sandbox = sandbox(SandboxOptions {
        credential: SandboxCredential::Command {
            argv: vec![good.clone()],
            timeout_seconds: 5,
        },
        extra_permission_toml: extra,
        ..SandboxOptions::default()
    })
    .await?;
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    std::fs::write(
        &json_file,
        serde_json::json!({
            "username": agentd::demo::ROLE,
            "password": secrecy::ExposeSecret::expose_secret(&sandbox.upstream_password),
            "expires_at": expires.to_rfc3339(),
        })
        .to_string(),
    )?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let mut outputs = Vec::new();

    // The JSON login works, and is cached until its expiry: two grants, one run.
    for _ in 0..2 {
        let view = request_via_cli(&sandbox, "10m").await?.json()?;
        let (ok, out, err) = psql(&handle_env(&view["handle"]), "SELECT current_user").await?;
        assert!(ok, "{err}");
        assert_eq!(out.trim(), agentd::demo::ROLE);
        outputs.push(("psql".to_owned(), out + &err));
    }
    assert_eq!(std::fs::read_to_string(&runs)?.lines().count(), 1);

    let ask = |permission: &'static str| {
        let sandbox = &sandbox;
        async move {
            agentd_cli(
                sandbox,
                &["request", "demo", "--permission", permission, "--json"],
            )
            .await
        }
    };
    let failed = ask("failing").await?;
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains(&format!(
            "credential command {failing:?} exited with status 3"
        )),
        "{}",
        failed.stderr
    );
    let started = std::time::Instant::now();
    let hung = ask("hanging").await?;
    assert_ne!(hung.code, 0);
    assert!(
        hung.stderr.contains(&format!(
            "credential command {hanging:?} timed out after 1s"
        )),
        "{}",
        hung.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout did not bite"
    );
    let bad = ask("bad_json").await?;
    assert!(
        bad.stderr.contains("stdout was not the expected JSON"),
        "{}",
        bad.stderr
    );
    for (label, out) in [("failing", failed), ("hanging", hung), ("bad json", bad)] {
        outputs.push((format!("{label} request"), out.stdout + &out.stderr));
    }
    let list = agentd_cli(&sandbox, &["secret", "list", "--json"]).await?;
    assert_eq!(list.json()?["commands"].as_array().map(Vec::len), Some(4));
    outputs.push(("secret list".to_owned(), list.stdout));

    let log = daemon.log();
    daemon.stop().await?;
    outputs.push(("daemon log".to_owned(), log));
    leak_scan(&sandbox, &outputs)
}

/// Short-lived logins (RDS / Cloud SQL IAM tokens): a command whose logins live 2 seconds,
/// and which rotates the role's password each time it runs with `VALID UNTIL` its expiry,
/// so an expired login no longer works. Sessions opened after the first login expired still log in within the same
/// grant: the listener asks the command again per session once the login is near expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_logins_are_renewed_per_session_after_they_expire() -> anyhow::Result<()> {
    let scripts = tempfile::tempdir()?;
    let dir = scripts.path();
    let runs = dir.join("runs");
    // Filled in once the cluster exists (the script needs its socket and port).
    let rotating = dir.join("rotating.sh");
    let sandbox = sandbox(SandboxOptions {
        credential: SandboxCredential::Command {
            argv: vec![rotating.display().to_string()],
            timeout_seconds: 10,
        },
        ..SandboxOptions::default()
    })
    .await?;
    let psql_bin = agentd::pgcluster::psql_path();
    // The superuser's password for the script's psql, in a 0600 pgpass file (not argv).
    let pgpass = dir.join("pgpass");
    agentd::fsutil::write_private_file(
        &pgpass,
        format!(
            "*:*:*:postgres:{}\n",
            secrecy::ExposeSecret::expose_secret(sandbox.cluster.superuser_password())
        )
        .as_bytes(),
    )?;
    script(
        dir,
        "rotating.sh",
        &format!(
            "set -e\n\
             pw=\"rotating-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n')\"\n\
             exp=\"$(date -u -d '+2 seconds' +%Y-%m-%dT%H:%M:%SZ)\"\n\
             echo \"$pw\" >> '{runs}'\n\
             echo \"ALTER ROLE {role} PASSWORD '$pw' VALID UNTIL '$exp'\" | PGPASSFILE='{pgpass}' '{psql}' -h '{socket}' -p {port} -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 >/dev/null\n\
             printf '{{\"username\":\"{role}\",\"password\":\"%s\",\"expires_at\":\"%s\"}}' \"$pw\" \"$exp\"",
            runs = runs.display(),
            role = agentd::demo::ROLE,
            psql = psql_bin.display(),
            pgpass = pgpass.display(),
            socket = sandbox.cluster.socket_dir.display(),
            port = sandbox.cluster.port,
        ),
    )?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let view = request_via_cli(&sandbox, "10m").await?.json()?;
    let env = handle_env(&view["handle"]);
    let mut outputs = Vec::new();
    let (ok, out, err) = psql(&env, "SELECT current_user").await?;
    assert!(ok, "first session: {err}");
    assert_eq!(out.trim(), agentd::demo::ROLE);
    outputs.push(("psql".to_owned(), out + &err));
    let runs_before = std::fs::read_to_string(&runs)?.lines().count();

    // Let every login issued so far expire (they live 2 s, to the second), then two more
    // sessions in the same grant.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for session in 0..2 {
        let (ok, out, err) = psql(&env, "SELECT current_user").await?;
        assert!(ok, "session {session} after expiry: {err}");
        outputs.push(("psql".to_owned(), out + &err));
    }
    let logins: Vec<String> = std::fs::read_to_string(&runs)?
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        logins.len() > runs_before,
        "the command was not asked again after expiry ({} runs)",
        logins.len()
    );
    let log = daemon.log();
    daemon.stop().await?;
    outputs.push(("daemon log".to_owned(), log.clone()));
    for (i, login) in logins.iter().enumerate() {
        assert!(
            outputs
                .iter()
                .all(|(_, text)| !text.contains(login.as_str())),
            "rotated login {i} leaked into an output"
        );
    }
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}
