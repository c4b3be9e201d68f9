//! Faults around a running daemon: upstream PostgreSQL going down and coming back, the
//! audit log's disk filling up, the daemon killed with SIGKILL and restarted, a client
//! killed in the middle of COPY. Each test fails if its handling breaks, and each scans
//! everything the system emitted for the canary secret.

use agentd::demo::SandboxOptions;
use agentd_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// A direct superuser connection to the sandbox's cluster (Unix socket, SCRAM).
async fn direct(target: &Granted) -> anyhow::Result<tokio_postgres::Client> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(&target.sandbox.cluster.socket_dir)
        .port(target.sandbox.cluster.port)
        .user("postgres")
        .password(secrecy::ExposeSecret::expose_secret(
            target.sandbox.cluster.superuser_password(),
        ))
        .dbname(DATABASE);
    let (client, conn) = c.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Polls `sql` (one bigint) on `client` until `done(value)`, every 50 ms, bounded by
/// [`STEP_TIMEOUT`]. For server-side conditions that have no event to wait on.
async fn await_count(
    client: &tokio_postgres::Client,
    sql: &str,
    done: impl Fn(i64) -> bool,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let n: i64 = client.query_one(sql, &[]).await?.get(0);
        if done(n) {
            return Ok(n);
        }
        anyhow::ensure!(Instant::now() < deadline, "condition not met: {sql} = {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_clear_fast_errors_and_new_sessions_work_when_it_is_back(
) -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    target.bystander_ok().await?;

    // Upstream stops (fast shutdown) under a live session: the client gets an error.
    target.sandbox.cluster.stop()?;
    let err = match target.live.query_one("SELECT 1", &[]).await {
        Ok(_) => anyhow::bail!("a query succeeded with the upstream down"),
        Err(e) => e.to_string(),
    };
    assert!(!err.is_empty());

    // New sessions while it is down: a clear error, well within the connect timeout.
    let started = Instant::now();
    let (ok, _, down_err) = psql(&handle_env(&target.handle), "SELECT 1").await?;
    let took = started.elapsed();
    assert!(!ok);
    assert!(down_err.contains("is unreachable"), "{down_err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Back up: the same grant serves new sessions again.
    target.sandbox.cluster.start_again()?;
    let (ok, out, up_err) =
        psql(&handle_env(&target.handle), "SELECT count(*) FROM orders").await?;
    assert!(ok, "{up_err}");
    assert_eq!(out.trim(), "3");
    target
        .finish(&[
            ("psql while down".to_owned(), down_err),
            ("live error".to_owned(), err),
        ])
        .await
}

/// Unmounts on drop (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `dir` with one file; returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    if let Ok(mut f) = std::fs::File::create(&path) {
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
    }
    path
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_disk_full_refuses_new_grants_and_sessions_and_says_why() -> anyhow::Result<()> {
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let data = sandbox.dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&data)
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root / CAP_SYS_ADMIN)");
        return Ok(());
    }
    let _mount = Tmpfs(data.clone());
    let daemon = DaemonProcess::start(&sandbox).await?;
    let granted = request_via_cli(&sandbox, "30m").await?.json()?;
    let grant_id = grant_id(&granted);
    let env = handle_env(&granted["handle"]);
    let mut outputs = vec![("first grant".to_owned(), granted.to_string())];

    let filler = fill(&data);
    // A new grant: refused, and both the CLI and the agent are told why. (The audit file's
    // last page may still hold a record or two, as on any filesystem: ask until refused.)
    let mut cli = None;
    for _ in 0..10 {
        let out = agentd_cli(
            &sandbox,
            &[
                "request",
                RESOURCE,
                "--permission",
                PERMISSION,
                "--ttl",
                "5m",
                "--json",
            ],
        )
        .await?;
        if out.code != 0 {
            cli = Some(out);
            break;
        }
        outputs.push(("grant before full".to_owned(), out.stdout));
    }
    let cli = cli.ok_or_else(|| anyhow::anyhow!("still granting with a full disk"))?;
    let said = format!("{}{}", cli.stdout, cli.stderr);
    assert!(said.contains("cannot write its audit log"), "{said}");
    let mcp = McpSession::start(&sandbox, &[]).await?;
    let asked = mcp
        .call(
            "request_access",
            json!({"resource": RESOURCE, "permission": PERMISSION, "duration": "5m",
                   "justification": "faults: disk full"}),
        )
        .await?;
    assert!(asked.is_error, "{}", asked.raw);
    assert!(asked.raw.contains("audit log"), "{}", asked.raw);
    assert!(asked.raw.contains("full disk"), "{}", asked.raw);
    // A new session on the existing grant: refused rather than run unaudited. (A refused
    // grant batch writes nothing, so a session's smaller records may still fit in what is
    // left: a session that runs is audited; ask until refused.)
    let mut refused = None;
    for _ in 0..10 {
        let (ok, _, err) = psql(&env, "SELECT 1").await?;
        if !ok {
            refused = Some(err);
            break;
        }
    }
    let session_err =
        refused.ok_or_else(|| anyhow::anyhow!("still opening sessions with a full disk"))?;
    assert!(
        session_err.contains("audit log cannot be written"),
        "{session_err}"
    );
    // Removing access is never blocked by the audit log.
    let revoked = agentd_cli(&sandbox, &["revoke", &grant_id]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);

    // Space again: grants work again.
    std::fs::remove_file(&filler)?;
    let again = request_via_cli(&sandbox, "5m").await?;
    let (ok, _, err) = psql(&handle_env(&again.json()?["handle"]), "SELECT 1").await?;
    assert!(ok, "{err}");
    assert!(daemon.log().contains("audit log write failed"));
    outputs.extend([
        ("cli".to_owned(), said),
        ("mcp".to_owned(), asked.raw),
        ("shim log".to_owned(), mcp.close().await?),
        ("psql".to_owned(), session_err),
        ("second grant".to_owned(), again.stdout),
    ]);
    daemon.stop().await?;
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_no_listener_behind_and_the_chain_verifies_after_restart(
) -> anyhow::Result<()> {
    let target = Granted::start("").await?;
    let port = target.port();
    let socket_dir =
        std::path::PathBuf::from(target.handle["socket_dir"].as_str().unwrap_or_default());
    let unix_socket = socket_dir.join(format!(".s.PGSQL.{port}"));
    assert!(unix_socket.exists(), "{}", unix_socket.display());
    let Granted {
        sandbox,
        daemon,
        live,
        ..
    } = target;
    daemon.kill().await?;
    assert!(live.query_one("SELECT 1", &[]).await.is_err());

    // Nothing listens any more: the port refuses, the stale socket file refuses.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(tcp.is_err(), "the grant's TCP port still accepts");
    let unix = tokio::net::UnixStream::connect(&unix_socket).await;
    assert!(unix.is_err(), "the grant's Unix socket still accepts");

    // Restart: the stale socket directory is removed, the chain verifies, the old grant is
    // recorded as ended and nothing is active.
    let daemon = DaemonProcess::start(&sandbox).await?;
    assert!(!socket_dir.exists(), "stale {} left", socket_dir.display());
    let verify = agentd_cli(&sandbox, &["audit", "verify", "--json"]).await?;
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(verify.json()?["problems"]
        .as_array()
        .is_some_and(|p| p.is_empty()));
    let status = agentd_cli(&sandbox, &["status", "--json"]).await?.json()?;
    assert_eq!(status["grants"], json!([]));
    assert!(daemon
        .log()
        .contains("recorded what the previous daemon left as ended"));
    daemon.stop().await?;
    assert_sandbox_clean(&sandbox, &[("verify".to_owned(), verify.stdout)])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_copy_ends_its_upstream_session() -> anyhow::Result<()> {
    let target = Granted::start_with(SandboxOptions {
        role_owns_database: true,
        ..SandboxOptions::default()
    })
    .await?;
    let env = handle_env(&target.handle);
    let (ok, _, err) = psql(&env, "CREATE TABLE copy_sink (n int, t text)").await?;
    assert!(ok, "{err}");
    let admin = direct(&target).await?;
    let copying = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND query LIKE 'COPY copy_sink%'",
        agentd::demo::ROLE
    );

    // psql streams rows into COPY … FROM STDIN and is killed before the end marker.
    let mut copy = psql_command(&env)
        .args(["-c", "COPY copy_sink FROM STDIN"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = copy.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    {
        use tokio::io::AsyncWriteExt as _;
        let rows: String = (0..2000).map(|i| format!("{i}\trow {i}\n")).collect();
        stdin.write_all(rows.as_bytes()).await?;
        stdin.flush().await?;
    }
    await_count(&admin, &copying, |n| n == 1).await?;
    copy.start_kill()?;
    copy.wait().await?;
    drop(stdin);

    // The daemon closes the upstream side: the backend goes away, nothing was committed.
    await_count(&admin, &copying, |n| n == 0).await?;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM copy_sink", &[])
        .await?
        .get(0);
    assert_eq!(rows, 0, "a killed COPY must not commit");
    target.bystander_ok().await?;
    target.finish(&[]).await
}
