//! Wire fidelity: real clients through the proxy behave as they do directly against
//! PostgreSQL — cancel, protocol negotiation, extended protocol, COPY, LISTEN/NOTIFY,
//! errors, pgbench, psycopg — and hostile startup packets end only their own connection.

use agentd::demo::{Sandbox, SandboxOptions};
use agentd_tests::raw::{
    error_code, frontend_message, read_backend_message, scram_login, scram_login_key, simple_query,
    startup_message, startup_packet,
};
use agentd_tests::*;
use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

/// A sandbox, its daemon and one granted handle.
struct Proxy {
    sandbox: Sandbox,
    daemon: DaemonProcess,
    handle: Value,
}

impl Proxy {
    async fn start(options: SandboxOptions) -> anyhow::Result<Self> {
        let sandbox = sandbox(options).await?;
        let daemon = DaemonProcess::start(&sandbox).await?;
        let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
        Ok(Self {
            sandbox,
            daemon,
            handle,
        })
    }

    fn port(&self) -> u16 {
        handle_port(&self.handle)
    }

    fn env(&self) -> Vec<(String, String)> {
        handle_env(&self.handle)
    }

    /// tokio-postgres config for the proxy.
    fn config(&self) -> Config {
        let mut c = Config::new();
        c.host("127.0.0.1")
            .port(self.port())
            .user(self.handle["user"].as_str().unwrap_or_default())
            .password(
                self.handle["env"]["PGPASSWORD"]
                    .as_str()
                    .unwrap_or_default(),
            )
            .dbname(DATABASE)
            .connect_timeout(STEP_TIMEOUT);
        c
    }

    /// tokio-postgres config for a direct superuser connection over the Unix socket
    /// (SCRAM with the cluster's superuser password).
    fn direct_config(&self) -> Config {
        let mut c = Config::new();
        c.host_path(&self.sandbox.cluster.socket_dir)
            .port(self.sandbox.cluster.port)
            .user("postgres")
            .password(secrecy::ExposeSecret::expose_secret(
                self.sandbox.cluster.superuser_password(),
            ))
            .dbname(DATABASE);
        c
    }

    async fn finish(self) -> anyhow::Result<()> {
        let log = self.daemon.log();
        self.daemon.stop().await?;
        assert_no_leak(
            &self.sandbox.upstream_password,
            [("daemon log".to_owned(), log.as_str())],
        )
    }
}

/// Connects and drives the connection on a task; notifications go to the returned channel.
async fn connect(
    config: &Config,
) -> anyhow::Result<(Client, tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>)> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    Ok((client, rx))
}

/// The first asynchronous message `pick` accepts (others are skipped), within
/// [`STEP_TIMEOUT`]; `None` when the connection ended first.
async fn next_message<T>(
    messages: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
    mut pick: impl FnMut(AsyncMessage) -> Option<T>,
) -> anyhow::Result<Option<T>> {
    Ok(tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(m) = messages.recv().await {
            if let Some(found) = pick(m) {
                return Some(found);
            }
        }
        None
    })
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_reaches_the_right_backend_and_wrong_keys_do_nothing() -> anyhow::Result<()>
{
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let (client, _) = connect(&proxy.config()).await?;

    // A wrong key is ignored: the statement runs to completion.
    let sleeper = {
        let (c, _) = connect(&proxy.config()).await?;
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(1)").await.map(|_| ()) })
    };
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    let wrong = agentd::listener::postgres::cancel::BackendKey {
        process_id: 12345,
        secret_key: 678,
    };
    raw.write_all(&wrong.cancel_request()).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, raw.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "a CancelRequest gets no reply");
    tokio::time::timeout(STEP_TIMEOUT, sleeper).await???;

    // The client's own key cancels its running statement.
    let token = client.cancel_token();
    let running = tokio::spawn(async move {
        let started = Instant::now();
        let result = client.simple_query("SELECT pg_sleep(30)").await;
        (result, started.elapsed())
    });
    wait_for_active_query(&proxy.sandbox, "pg_sleep(30)").await?;
    token.cancel_query(NoTls).await?;
    let (result, elapsed) = tokio::time::timeout(STEP_TIMEOUT, running).await??;
    let err = result
        .err()
        .ok_or_else(|| anyhow::anyhow!("pg_sleep(30) was not cancelled"))?;
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    eprintln!("cancelled pg_sleep(30) after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20));
    proxy.finish().await
}

/// The client's BackendKeyData carries the upstream backend's real process id (the one
/// `pg_backend_pid()`, NotificationResponse and `pg_stat_activity` show), so
/// `pg_terminate_backend` on it ends that session with AdminShutdown; the secret key is
/// agentd's own: a CancelRequest with the real pid and another key is ignored, ours cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_pid_is_the_upstream_one_and_only_our_secret_key_cancels() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    s.write_all(&startup_packet(
        proxy.handle["user"].as_str().unwrap_or_default(),
    ))
    .await?;
    let (kind, _) = read_backend_message(&mut s).await?;
    anyhow::ensure!(kind == b'R', "expected AuthenticationSASL");
    let (pid, secret) = scram_login_key(&mut s, &token(&proxy.handle)).await?;

    let r = simple_query(&mut s, "SELECT pg_backend_pid()").await?;
    assert_eq!(r.rows, vec![vec![Some(pid.to_string())]]);
    let r = simple_query(&mut s, "LISTEN agentd_pid; NOTIFY agentd_pid, 'hello'").await?;
    assert_eq!(
        r.notifications,
        vec![(pid, "agentd_pid".to_owned(), "hello".to_owned())]
    );
    let seen = proxy.sandbox.cluster.psql(
        "postgres",
        &format!("SELECT usename FROM pg_stat_activity WHERE pid = {pid}"),
    )?;
    assert_eq!(seen.trim(), "agent_ro");

    let port = proxy.port();
    let cancel = |key: agentd::listener::postgres::cancel::BackendKey| async move {
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        raw.write_all(&key.cancel_request()).await?;
        let mut rest = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, raw.read_to_end(&mut rest)).await??;
        anyhow::ensure!(rest.is_empty(), "a CancelRequest gets no reply");
        anyhow::Ok(())
    };
    // The real pid with a forged secret: ignored, the statement runs to its end.
    s.write_all(&frontend_message(b'Q', b"SELECT pg_sleep(2)\0"))
        .await?;
    wait_for_active_query(&proxy.sandbox, "pg_sleep(2)").await?;
    cancel(agentd::listener::postgres::cancel::BackendKey {
        process_id: pid,
        secret_key: secret.wrapping_add(1),
    })
    .await?;
    let r = read_until_ready(&mut s).await?;
    assert_eq!(r, None, "a forged key cancelled the statement");
    // Our key cancels.
    s.write_all(&frontend_message(b'Q', b"SELECT pg_sleep(30)\0"))
        .await?;
    wait_for_active_query(&proxy.sandbox, "pg_sleep(30)").await?;
    cancel(agentd::listener::postgres::cancel::BackendKey {
        process_id: pid,
        secret_key: secret,
    })
    .await?;
    assert_eq!(read_until_ready(&mut s).await?.as_deref(), Some("57014"));

    // pg_terminate_backend on the pid the client knows ends this session: AdminShutdown.
    let terminated = proxy
        .sandbox
        .cluster
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))?;
    assert_eq!(terminated.trim(), "t");
    let (kind, body) = read_backend_message(&mut s).await?;
    assert_eq!(kind, b'E');
    assert_eq!(error_code(&body).as_deref(), Some("57P01"));
    let mut rest = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "{rest:?}");
    proxy.finish().await
}

/// Reads a simple query's answer up to ReadyForQuery; the SQLSTATE of its error, if any.
async fn read_until_ready(s: &mut tokio::net::TcpStream) -> anyhow::Result<Option<String>> {
    let mut code = None;
    loop {
        match read_backend_message(s).await? {
            (b'E', body) => code = error_code(&body),
            (b'Z', _) => return Ok(code),
            _ => {}
        }
    }
}

/// Waits until the cluster shows `query` running for the demo role: the event the cancel
/// tests need before they cancel.
async fn wait_for_active_query(sandbox: &Sandbox, query: &str) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'agent_ro' AND state = 'active' AND query LIKE '%{query}%'"
    );
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        let sandbox_sql = sql.clone();
        let out = sandbox.cluster.psql("postgres", &sandbox_sql)?;
        if out.trim() != "0" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{query} never showed up in pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_through_the_proxy() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let child = psql_command(&proxy.env())
        .args(["-c", "SELECT pg_sleep(30)"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_for_active_query(&proxy.sandbox, "pg_sleep(30)").await?;
    let started = Instant::now();
    let pid = child.id().unwrap_or(0);
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("psql returned {:?} after Ctrl-C", started.elapsed());
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    proxy.finish().await
}

/// A client asking for protocol 3.2 and a `_pq_` option gets NegotiateProtocolVersion (3.0,
/// the option listed) and then logs in normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_client_gets_negotiate_protocol_version() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    let user = proxy.handle["user"].as_str().unwrap_or_default().to_owned();
    let token = proxy.handle["env"]["PGPASSWORD"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    s.write_all(&startup_message(
        (3 << 16) | 2,
        &[
            ("user", user.as_str()),
            ("database", DATABASE),
            ("_pq_.test_option", "1"),
        ],
    ))
    .await?;

    let (kind, negotiate) = read_backend_message(&mut s).await?;
    assert_eq!(kind, b'v');
    assert_eq!(
        &negotiate[..8],
        &[0, 0, 0, 0, 0, 0, 0, 1],
        "newest minor 0, one option"
    );
    assert_eq!(&negotiate[8..], b"_pq_.test_option\0");

    // SCRAM-SHA-256 login with the grant token, then one query.
    let (kind, auth) = read_backend_message(&mut s).await?;
    assert_eq!((kind, &auth[..4]), (b'R', &10i32.to_be_bytes()[..]));
    scram_login(&mut s, &token).await?;
    send_msg(&mut s, b'Q', b"SELECT 6 * 7\0").await?;
    let mut kinds = Vec::new();
    let mut value = Vec::new();
    loop {
        let (kind, body) = read_backend_message(&mut s).await?;
        kinds.push(kind);
        if kind == b'D' {
            value = body[6..].to_vec();
        }
        if kind == b'Z' {
            break;
        }
    }
    assert_eq!(kinds, b"TDCZ");
    assert_eq!(value, b"42");
    proxy.finish().await
}

async fn send_msg(s: &mut tokio::net::TcpStream, kind: u8, body: &[u8]) -> anyhow::Result<()> {
    s.write_all(&frontend_message(kind, body)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_startup_packets_close_only_their_connection() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let (client, _) = connect(&proxy.config()).await?;

    // Oversized: a length past the 10,000-byte cap gets an ErrorResponse, then close.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    s.write_all(&100_000i32.to_be_bytes()).await?;
    s.write_all(&196_608i32.to_be_bytes()).await?;
    let (kind, body) = read_backend_message(&mut s).await?;
    assert_eq!(kind, b'E');
    assert!(String::from_utf8_lossy(&body).contains("08P01"));

    // Lengths of 0 and 2^31-1, and an unknown request code: each closed with an error,
    // never a hang.
    // (Each sends exactly what the listener reads before it gives up, so the close is a FIN
    // and the ErrorResponse can be read, not a reset.)
    let random_code = b"\0\0\0\x10\xde\xad\xbe\xef\x01\x02\x03\x04\x05\x06\x07\x08".to_vec();
    for first in [
        0i32.to_be_bytes().to_vec(),
        i32::MAX.to_be_bytes().to_vec(),
        random_code,
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
        s.write_all(&first).await?;
        let mut rest = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest)).await??;
        assert_eq!(rest.first(), Some(&b'E'), "{first:?}");
    }

    // Truncated: the packet ends early and the client goes away.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port())).await?;
    s.write_all(&[0, 0, 0, 100, 0, 3, 0, 0, b'u']).await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut rest)).await??;

    // The established session is untouched.
    let rows = client.query_one("SELECT count(*) FROM orders", &[]).await?;
    assert_eq!(rows.get::<_, i64>(0), 3);
    proxy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_copy_notify_and_errors_match_direct() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions {
        role_owns_database: true,
        ..SandboxOptions::default()
    })
    .await?;
    let (client, mut notes) = connect(&proxy.config()).await?;
    let (direct, _) = connect(&proxy.direct_config()).await?;

    // Pipelined extended-protocol queries: all in flight at once.
    let statement = client
        .prepare("SELECT $1::int * 2, repeat('x', $1::int)")
        .await?;
    let (client_ref, statement_ref) = (&client, &statement);
    let futures =
        (0..50i32).map(|i| async move { client_ref.query_one(statement_ref, &[&i]).await });
    let rows = futures_util::future::try_join_all(futures).await?;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i32>(0), 2 * i as i32);
        assert_eq!(row.get::<_, String>(1).len(), i);
    }

    // A large row.
    let big: String = client
        .query_one("SELECT repeat('y', 8 * 1024 * 1024)", &[])
        .await?
        .get(0);
    assert_eq!(big.len(), 8 * 1024 * 1024);

    // COPY FROM STDIN then TO STDOUT, > 100 MB each way; compared with what the server has.
    client
        .batch_execute("CREATE TABLE bulk (id int, body text)")
        .await?;
    let sink = client.copy_in("COPY bulk FROM STDIN").await?;
    futures_util::pin_mut!(sink);
    let line_body = "z".repeat(1000);
    let mut sent = 0usize;
    for chunk in 0..1100 {
        let mut buf = BytesMut::new();
        for i in 0..100 {
            buf.extend_from_slice(format!("{}\t{line_body}\n", chunk * 100 + i).as_bytes());
        }
        sent += buf.len();
        sink.send(buf.freeze()).await?;
    }
    let copied = sink.finish().await?;
    assert_eq!(copied, 110_000);
    assert!(sent > 100 * 1024 * 1024, "sent {sent} bytes");
    let stream = client
        .copy_out("COPY (SELECT * FROM bulk ORDER BY id) TO STDOUT")
        .await?;
    let received: usize = stream
        .map_ok(|b| b.len())
        .try_fold(0, |a, n| async move { Ok(a + n) })
        .await?;
    assert_eq!(received, sent);
    let direct_count: i64 = direct
        .query_one("SELECT count(*) FROM bulk", &[])
        .await?
        .get(0);
    assert_eq!(direct_count, 110_000);

    // LISTEN/NOTIFY across two proxied sessions.
    client.batch_execute("LISTEN agentd_events").await?;
    let (other, _) = connect(&proxy.config()).await?;
    other
        .batch_execute("NOTIFY agentd_events, 'payload-1'")
        .await?;
    let note = next_message(&mut notes, |m| match m {
        AsyncMessage::Notification(n) => Some(n),
        _ => None,
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("no notification"))?;
    assert_eq!(
        (note.channel(), note.payload()),
        ("agentd_events", "payload-1")
    );

    // NoticeResponse passes through.
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await?;
    let notice = next_message(&mut notes, |m| match m {
        AsyncMessage::Notice(n) => Some(n.message().to_owned()),
        _ => None,
    })
    .await?;
    assert_eq!(notice.as_deref(), Some("hello from plpgsql"));

    // ErrorResponse keeps every field: same as direct.
    let sql = "SELECT nope FROM orders";
    let via = client
        .simple_query(sql)
        .await
        .err()
        .and_then(|e| e.as_db_error().cloned());
    let dir = direct
        .simple_query(sql)
        .await
        .err()
        .and_then(|e| e.as_db_error().cloned());
    let (via, dir) = (
        via.ok_or_else(|| anyhow::anyhow!("no error"))?,
        dir.ok_or_else(|| anyhow::anyhow!("no error"))?,
    );
    assert_eq!(
        (
            via.code(),
            via.message(),
            via.severity(),
            via.position(),
            via.hint(),
            via.routine()
        ),
        (
            dir.code(),
            dir.message(),
            dir.severity(),
            dir.position(),
            dir.hint(),
            dir.routine()
        )
    );

    // ParameterStatus changes reach the client.
    client
        .batch_execute("SET application_name = 'renamed'")
        .await?;
    let name: String = client.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(name, "renamed");

    // pg_terminate_backend upstream ends the client with the server's FATAL, not a hang.
    direct
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'agent_ro' AND application_name = 'renamed'")
        .await?;
    let err = tokio::time::timeout(STEP_TIMEOUT, client.simple_query("SELECT 1"))
        .await?
        .err();
    let err = err.ok_or_else(|| anyhow::anyhow!("terminated session still answered"))?;
    assert!(
        err.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN) || err.is_closed(),
        "{err}"
    );
    proxy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_every_query_mode_through_the_proxy() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions {
        role_owns_database: true,
        ..SandboxOptions::default()
    })
    .await?;
    let pgbench = agentd::pgcluster::psql_path().with_file_name("pgbench");
    let pgbench = if pgbench.is_file() {
        pgbench
    } else {
        "pgbench".into()
    };
    let run = |args: Vec<&'static str>| {
        let mut cmd = tokio::process::Command::new(&pgbench);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(proxy.env())
            .kill_on_drop(true);
        async move { tokio::time::timeout(Duration::from_secs(60), cmd.output()).await }
    };
    let init = run(vec!["-i", "-q", "-s", "1"]).await??;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let direct = proxy
        .sandbox
        .cluster
        .psql(DATABASE, "SELECT count(*) FROM pgbench_accounts")?;
    assert_eq!(direct.trim(), "100000");
    for mode in ["simple", "extended", "prepared"] {
        let out = run(vec!["-M", mode, "-c", "8", "-j", "2", "-T", "5", "-n"]).await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{mode}: {stdout}"
        );
        let tps = stdout
            .lines()
            .find(|l| l.starts_with("tps"))
            .unwrap_or_default();
        eprintln!("pgbench -M {mode} -c 8 -T 5 through agentd: {tps}");
    }
    let history = proxy
        .sandbox
        .cluster
        .psql(DATABASE, "SELECT count(*) > 0 FROM pgbench_history")?;
    assert_eq!(history.trim(), "t");
    proxy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_gets_the_same_results_as_direct() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/psycopg_check.py");
    let via_dsn = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={DATABASE} sslmode=disable",
        proxy.port(),
        proxy.handle["user"].as_str().unwrap_or_default(),
        proxy.handle["env"]["PGPASSWORD"]
            .as_str()
            .unwrap_or_default()
    );
    let direct_dsn = format!(
        "host={} port={} user=postgres dbname={DATABASE}",
        proxy.sandbox.cluster.socket_dir.display(),
        proxy.sandbox.cluster.port
    );
    let mut outputs = Vec::new();
    for dsn in [via_dsn, direct_dsn] {
        let out = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio::process::Command::new("python3")
                .arg(&script)
                .arg(dsn)
                // The direct DSN's superuser password (the proxy's DSN carries its own).
                .env(
                    "PGPASSWORD",
                    secrecy::ExposeSecret::expose_secret(
                        proxy.sandbox.cluster.superuser_password(),
                    ),
                )
                .output(),
        )
        .await??;
        assert!(
            out.status.success(),
            "psycopg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(serde_json::from_slice::<Value>(&out.stdout)?);
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(
        outputs[0]["after_copy_in"],
        serde_json::json!([1100, 25090])
    );
    proxy.finish().await
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_serves_libpq_and_goes_away_on_revoke() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let dir = proxy.handle["socket_dir"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(!dir.is_empty(), "no socket_dir in {}", proxy.handle);
    let socket = std::path::Path::new(&dir).join(format!(".s.PGSQL.{}", proxy.port()));
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(&socket)?.permissions().mode() & 0o777,
        0o600
    );

    // libpq's host=/dir form, with the same user, token and port.
    let mut env = proxy.env();
    for (k, v) in &mut env {
        if k == "PGHOST" {
            *v = dir.clone();
        }
    }
    let (ok, out, err) = psql(&env, "SELECT count(*) FROM orders").await?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "3");

    let grant = proxy.handle["user"].as_str().unwrap_or_default().to_owned();
    let revoked = agentd_cli(&proxy.sandbox, &["revoke", &grant]).await?;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    // The listener task removes the socket once it has stopped; psql then cannot connect.
    let (ok, _, _) = psql(&env, "SELECT 1").await?;
    assert!(!ok, "the Unix socket still served a revoked grant");
    proxy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_give_the_agent_a_clear_error_and_no_secret() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let entry = agentd::credentials::keychain::entry_name(RESOURCE, PERMISSION);
    let wrong = canary_password();
    let service = proxy.sandbox.keyring_service.clone();
    let (s, e, w) = (service.clone(), entry.clone(), wrong.clone());
    tokio::task::spawn_blocking(move || agentd::credentials::keychain::set(&s, &e, &w)).await??;

    // A new grant picks up the wrong stored secret: upstream refuses it.
    let handle = request_via_cli(&proxy.sandbox, "5m").await?.json()?["handle"].clone();
    let (ok, _, err) = psql(&handle_env(&handle), "SELECT 1").await?;
    assert!(!ok);
    assert!(err.contains("refused agentd's stored credential"), "{err}");
    let log = proxy.daemon.log();
    assert!(log.contains("28P01"), "the log has the real reason");

    // Upstream down: existing grant, new connection → "unreachable", quickly.
    let down = proxy.sandbox.cluster.stop();
    down?;
    let (ok, _, err) = psql(&proxy.env(), "SELECT 1").await?;
    assert!(!ok);
    assert!(err.contains("is unreachable"), "{err}");

    let log = proxy.daemon.log();
    assert_no_leak(
        &wrong,
        [
            ("daemon log".to_owned(), log.as_str()),
            ("psql".to_owned(), err.as_str()),
        ],
    )?;
    proxy.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_scripts_with_copy_and_many_statements_match_direct() -> anyhow::Result<()> {
    let proxy = Proxy::start(SandboxOptions::default()).await?;
    let data = proxy.sandbox.dir.path().join("rows.tsv");
    let rows: String = (0..5000).map(|i| format!("{i}\tname {i}\n")).collect();
    std::fs::write(&data, &rows)?;
    let script = format!(
        "CREATE TEMP TABLE t (id int, name text);\n\
         \\copy t FROM '{path}'\n\
         SELECT count(*), sum(id), max(name) FROM t;\n\
         BEGIN; DELETE FROM t WHERE id % 2 = 0; SELECT count(*) FROM t; ROLLBACK;\n\
         SELECT count(*) FROM t WHERE name LIKE 'name 4%';\n\
         \\copy (SELECT * FROM t ORDER BY id LIMIT 3) TO STDOUT\n",
        path = data.display()
    );
    let script_path = proxy.sandbox.dir.path().join("script.sql");
    std::fs::write(&script_path, &script)?;
    let run = |env: Vec<(String, String)>| {
        let mut cmd = psql_command(&env);
        cmd.args(["-At", "-f"]).arg(&script_path);
        async move { tokio::time::timeout(STEP_TIMEOUT, cmd.output()).await }
    };
    let via = run(proxy.env()).await??;
    assert!(
        via.status.success(),
        "{}",
        String::from_utf8_lossy(&via.stderr)
    );
    let direct_env = vec![
        (
            "PGHOST".to_owned(),
            proxy.sandbox.cluster.socket_dir.display().to_string(),
        ),
        ("PGPORT".to_owned(), proxy.sandbox.cluster.port.to_string()),
        ("PGUSER".to_owned(), "postgres".to_owned()),
        (
            "PGPASSWORD".to_owned(),
            secrecy::ExposeSecret::expose_secret(proxy.sandbox.cluster.superuser_password())
                .to_owned(),
        ),
        ("PGDATABASE".to_owned(), DATABASE.to_owned()),
    ];
    let direct = run(direct_env).await??;
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&via.stdout),
        String::from_utf8_lossy(&direct.stdout)
    );
    assert!(String::from_utf8_lossy(&via.stdout).contains("5000|12497500|name 999"));
    proxy.finish().await
}
