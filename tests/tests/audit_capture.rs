//! Audit completeness against the real cluster: FunctionCall messages (OID and argument
//! sizes, never values), statements longer than the capture cap (head, tail, length and
//! SHA-256 of the whole text), the startup parameters of each connection (password-like
//! values redacted), and `[audit] on_overflow` under a flood with a one-record queue:
//! `block` records every statement, `drop` counts what it lost.

use agentd::demo::{Sandbox, SandboxOptions};
use agentd_tests::raw::{frontend_message, read_backend_message, scram_login, startup_packet};
use agentd_tests::*;
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

/// Every audit record (the daemon must be stopped first so queued statements are written).
fn audit(sandbox: &Sandbox) -> anyhow::Result<Vec<Value>> {
    let dir = sandbox.config()?.audit_dir();
    Ok(agentd::audit::read_records(&dir)?
        .into_iter()
        .filter_map(|r| r.value)
        .collect())
}

fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_long_statements_and_startup_parameters_are_recorded() -> anyhow::Result<()>
{
    let sandbox = sandbox(SandboxOptions::default()).await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
    let mut outputs = Vec::new();

    // A FunctionCall (fast path) to octet_length(text) with a value that must not be recorded.
    let oid: u32 = sandbox
        .cluster
        .psql("postgres", "SELECT 'octet_length(text)'::regprocedure::oid")?
        .trim()
        .parse()?;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", handle_port(&handle))).await?;
    s.write_all(&startup_packet(handle["user"].as_str().unwrap_or_default()))
        .await?;
    read_backend_message(&mut s).await?;
    scram_login(&mut s, &token(&handle)).await?;
    let value = b"FunctionArgValue";
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes()); // no format codes: text
    body.extend_from_slice(&1i16.to_be_bytes()); // one argument
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value);
    body.extend_from_slice(&0i16.to_be_bytes()); // text result
    s.write_all(&frontend_message(b'F', &body)).await?;
    let (kind, result) = read_backend_message(&mut s).await?;
    assert_eq!(
        kind,
        b'V',
        "FunctionCallResponse expected: {}",
        String::from_utf8_lossy(&result)
    );
    assert!(result.ends_with(b"16"), "octet_length of the argument");
    let (kind, _) = read_backend_message(&mut s).await?;
    assert_eq!(kind, b'Z');
    s.write_all(&frontend_message(b'X', &[])).await?;
    drop(s);

    // A statement hidden behind a comment longer than the 8 KiB cap.
    let sql = format!(
        "/* {} */ SELECT 'tail-marker' AS hidden",
        "harmless padding ".repeat(1000)
    );
    // Startup parameters: application_name and options, one of them password-like.
    let mut env = handle_env(&handle);
    env.push(("PGAPPNAME".into(), "audit-check".into()));
    env.push((
        "PGOPTIONS".into(),
        "-c search_path=public -c agentd.password=OptionSecretValue".into(),
    ));
    let (ok, out, err) = psql(&env, &sql).await?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "tail-marker");
    outputs.push(("psql".to_owned(), out + &err));

    let log = daemon.log();
    daemon.stop().await?;
    let records = audit(&sandbox)?;
    let text = serde_json::to_string(&records)?;
    for secret in ["FunctionArgValue", "OptionSecretValue"] {
        assert!(!text.contains(secret), "{secret} reached the audit log");
    }

    let calls = events(&records, "function_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["oid"], oid);
    assert_eq!(calls[0]["args"], 1);
    assert_eq!(calls[0]["arg_bytes"], serde_json::json!([value.len()]));

    let long: Vec<_> = events(&records, "statement")
        .into_iter()
        .filter(|r| r["truncated"] == true)
        .collect();
    assert_eq!(long.len(), 1, "{long:?}");
    let overflow = &long[0]["overflow"];
    assert!(
        overflow["tail"]
            .as_str()
            .unwrap_or_default()
            .ends_with("SELECT 'tail-marker' AS hidden"),
        "{overflow}"
    );
    assert_eq!(overflow["bytes"], sql.len());
    let digest: String = sha2::Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(overflow["sha256"], digest);
    assert!(long[0]["text"].as_str().unwrap_or_default().len() <= 8 * 1024);

    let opened = events(&records, "connection_open");
    let psql_open = opened
        .iter()
        .find(|r| r["params"]["application_name"] == "audit-check")
        .ok_or_else(|| {
            anyhow::anyhow!("no connection_open with the startup parameters: {opened:?}")
        })?;
    assert_eq!(
        psql_open["params"]["options"],
        "-c search_path=public -c agentd.password=[REDACTED]"
    );
    outputs.push(("daemon log".to_owned(), log));
    assert_sandbox_clean(&sandbox, &outputs)?;
    Ok(())
}

/// A flood of pipelined statements from several sessions against a one-record queue.
/// Returns (statements recorded, statements_dropped total).
async fn flood(on_overflow: &str) -> anyhow::Result<(usize, u64)> {
    const SESSIONS: usize = 4;
    const PER_SESSION: usize = 500;
    let sandbox = sandbox(SandboxOptions {
        extra_daemon_toml: format!(
            "\n[audit]\nstatement_queue = 1\non_overflow = \"{on_overflow}\"\n"
        ),
        ..SandboxOptions::default()
    })
    .await?;
    let daemon = DaemonProcess::start(&sandbox).await?;
    let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
    let user = handle["user"].as_str().unwrap_or_default().to_owned();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(handle_port(&handle))
        .user(&user)
        .password(token(&handle))
        .dbname(DATABASE);
    let mut tasks = tokio::task::JoinSet::new();
    for session in 0..SESSIONS {
        let config = config.clone();
        tasks.spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            // Pipelined: every query is sent before the first answer is read.
            let queries = (0..PER_SESSION).map(|i| {
                let client = &client;
                async move {
                    client
                        .query_one(&format!("SELECT {session} * 100000 + {i}"), &[])
                        .await
                }
            });
            for row in futures_util::future::try_join_all(queries).await? {
                let _: i32 = row.get(0);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let log = daemon.log();
    daemon.stop().await?;
    let records = audit(&sandbox)?;
    let recorded = events(&records, "statement")
        .iter()
        .filter(|r| {
            r["text"]
                .as_str()
                .unwrap_or_default()
                .contains("* 100000 +")
        })
        .count();
    let dropped = events(&records, "statements_dropped")
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    assert_sandbox_clean(&sandbox, &[("daemon log".to_owned(), log)])?;
    eprintln!("on_overflow = {on_overflow}: {recorded} statements recorded, {dropped} dropped");
    assert_eq!(
        recorded as u64 + dropped,
        (SESSIONS * PER_SESSION) as u64,
        "every statement is either recorded or counted"
    );
    Ok((recorded, dropped))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_overflow_block_records_every_statement_of_a_flood() -> anyhow::Result<()> {
    let (recorded, dropped) = flood("block").await?;
    assert_eq!(dropped, 0);
    assert_eq!(recorded, 2000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_overflow_drop_counts_what_a_flood_loses() -> anyhow::Result<()> {
    let (_recorded, dropped) = flood("drop").await?;
    assert!(
        dropped > 0,
        "a one-record queue under a pipelined flood dropped nothing"
    );
    Ok(())
}
