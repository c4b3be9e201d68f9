//! `agentd demo --http`: the HTTP listener end to end on this machine. A local HTTPS
//! upstream ([`crate::echo_upstream`], throwaway CA) that echoes what it received, a
//! `kind = "http"` resource with a random API key in the OS keychain, a grant, and curl
//! through the proxy: the upstream sees the injected key, curl only ever has the grant
//! token, and the echoed key comes back as `[REDACTED]`.
//!
//! Cleanup as in `agentd demo` ([`crate::demo_cleanup`]): one [`DemoDir`] owns the keychain
//! entry and the files, on every way out (end, error, SIGINT, SIGTERM, SIGHUP).

use crate::config::Config;
use crate::credentials::keychain;
use crate::demo_cleanup::{self, random_hex, DemoDir, InProcessDaemon, Signals};
use crate::echo_upstream::EchoUpstream;
use agentd_proto::Client;
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret, SecretString};

const RESOURCE: &str = "demo-api";
const PERMISSION: &str = "reader";
const LABEL: &str = "agentd demo --http";

/// Runs the demo and cleans up (keychain entry, temp dirs, upstream) on every way out.
///
/// # Errors
/// Any step failing (curl missing, keychain unavailable, …), or a signal.
pub async fn run() -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    demo_cleanup::sweep_and_report(LABEL).await;
    eprintln!("{LABEL}: starting a local HTTPS upstream (throwaway CA)…");
    let entry = keychain::entry_name(RESOURCE, PERMISSION);
    let mut dir = DemoDir::create(vec![entry.clone()])?;
    let upstream = EchoUpstream::start().await?;
    dir.note_other_dir(upstream.dir())?;
    eprintln!(
        "{LABEL}: files in {} and {}, keychain service {}; all removed when the demo ends",
        dir.path().display(),
        upstream.dir().display(),
        dir.keyring_service()
    );
    let secret = SecretString::from(format!("demo-api-key-{}", random_hex(16)));
    let result = match keychain::set(dir.keyring_service(), &entry, &secret)
        .context("storing the demo API key in the OS keychain")
    {
        Ok(()) => run_in(&upstream, &dir, &secret, &mut signals).await,
        Err(e) => Err(e),
    };
    drop(upstream);
    demo_cleanup::close(result, move || dir.cleanup(), &mut signals, LABEL).await
}

async fn run_in(
    upstream: &EchoUpstream,
    demo_dir: &DemoDir,
    secret: &SecretString,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    let dir = demo_dir.path();
    let service = demo_dir.keyring_service();
    let config_path = dir.join("config.toml");
    let socket_path = dir.join("agentd.sock");
    std::fs::write(
        &config_path,
        format!(
            r#"# Written by `agentd demo --http`; removed when it exits.
[daemon]
keyring_service = "{service}"
data_dir = "{data}"
notify = false

[resources.{RESOURCE}]
kind = "http"
description = "Local HTTPS echo API"
base_url = "{base}"
ca_file = "{ca}"
auth = {{ scheme = "bearer" }}

[resources.{RESOURCE}.permissions.{PERMISSION}]
description = "GET and HEAD under /echo"
credential = {{ source = "keyring" }}
policy = "auto"
allow = [{{ methods = ["GET", "HEAD"], paths = ["/echo/**"] }}]
"#,
            data = dir.join("data").display(),
            base = upstream.base_url(),
            ca = upstream.ca_file.display(),
        ),
    )?;
    let config = Config::load(&config_path)?;
    let audit_dir = config.audit_dir();
    let daemon = InProcessDaemon::start(config, config_path, &socket_path, dir.join("sock"))?;
    let outcome = tokio::select! {
        done = session(upstream, &socket_path, secret) => done,
        name = signals.recv() => Err(anyhow::anyhow!("stopped by {name}")),
    };
    daemon.stop().await;
    outcome?;
    println!("\naudit log ({}):", audit_dir.display());
    for record in crate::audit::read_records(&audit_dir)? {
        println!("  {}", crate::cli::audit::format_record(&record));
    }
    Ok(())
}

async fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("curl")
        .arg("-sS")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl (is it installed?)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn session(
    upstream: &EchoUpstream,
    socket: &std::path::Path,
    secret: &SecretString,
) -> anyhow::Result<()> {
    let mut client = Client::connect(socket).await?;
    let handle = demo_cleanup::request_grant(
        &mut client,
        RESOURCE,
        PERMISSION,
        "agentd demo --http: call the echo API",
    )
    .await?;
    let Some(http) = &handle.http else {
        bail!("the grant has no HTTP handle");
    };
    println!("handle (what an agent receives; the API key never leaves the daemon):");
    println!("  base_url: {}", http.base_url);
    println!("  token:    send it as {}", http.token_placement);
    if let Some(sock) = &http.socket_path {
        println!("  socket:   {sock}");
    }
    let auth = format!("Authorization: Bearer {}", http.token);
    let url = format!("{}/echo/hello?page=1", http.base_url);
    println!("\n$ curl -H 'Authorization: Bearer <grant token>' {url}");
    println!("{}", curl(&["-H", &auth, &url]).await?);
    let seen = upstream
        .recorded()
        .pop()
        .context("the upstream saw no request")?;
    let injected = seen.headers.get("authorization").map(String::as_str)
        == Some(format!("Bearer {}", secret.expose_secret()).as_str());
    println!(
        "upstream received {} {} over {} with Authorization: Bearer <the API key from the keychain> ({})",
        seen.method,
        seen.path,
        seen.version,
        if injected { "injected by agentd" } else { "NOT the key: something is wrong" }
    );
    println!(
        "(the upstream echoed the key back; agentd replaced it with [REDACTED] on the way out)"
    );
    let denied = format!("{}/admin", http.base_url);
    println!("\n$ curl -X DELETE -H 'Authorization: Bearer <grant token>' {denied}");
    println!("{}", curl(&["-X", "DELETE", "-H", &auth, &denied]).await?);
    demo_cleanup::revoke_all(&mut client, LABEL).await?;
    if !injected {
        bail!("the upstream did not receive the injected credential");
    }
    Ok(())
}
