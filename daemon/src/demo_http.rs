//! `agentd demo --http`: the HTTP listener end to end on this machine. A local HTTPS
//! upstream ([`crate::echo_upstream`], throwaway CA) that echoes what it received, a
//! `kind = "http"` resource with a random API key in the OS keychain, a grant, and curl
//! through the proxy: the upstream sees the injected key, curl only ever has the grant
//! token, and the echoed key comes back as `[REDACTED]`.

use crate::broker::Broker;
use crate::config::Config;
use crate::credentials::keychain;
use crate::echo_upstream::EchoUpstream;
use agentd_proto::{AccessRequestSpec, AgentInfo, Client, Handle, Request, Response, RevokeTarget};
use anyhow::{bail, Context as _};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

const RESOURCE: &str = "demo-api";
const PERMISSION: &str = "reader";

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the demo and cleans up (keychain entry, temp dirs, upstream).
///
/// # Errors
/// Any step failing (curl missing, keychain unavailable, …).
pub async fn run() -> anyhow::Result<()> {
    eprintln!("agentd demo --http: starting a local HTTPS upstream (throwaway CA)…");
    let upstream = EchoUpstream::start().await?;
    let dir = tempfile::Builder::new()
        .prefix("agentd-demo-http-")
        .tempdir()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    let service = format!("agentd-demo-{}", random_hex(6));
    let entry = keychain::entry_name(RESOURCE, PERMISSION);
    let secret = SecretString::from(format!("demo-api-key-{}", random_hex(16)));
    keychain::set(&service, &entry, &secret)
        .context("storing the demo API key in the OS keychain")?;
    let result = run_in(&upstream, dir.path(), &service, &secret).await;
    let _ = keychain::delete(&service, &entry);
    eprintln!("agentd demo --http: cleaning up");
    result
}

async fn run_in(
    upstream: &EchoUpstream,
    dir: &std::path::Path,
    service: &str,
    secret: &SecretString,
) -> anyhow::Result<()> {
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
    let listener = crate::control::bind(&socket_path, 0o600)?;
    let broker = Broker::open(config, config_path.clone(), Some(dir.join("sock")))?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(crate::control::serve(
        listener,
        broker.clone(),
        stop.clone(),
    ));
    let outcome = session(upstream, &socket_path, secret).await;
    stop.cancel();
    broker.shutdown().await;
    let _ = server.await;
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
    let handle = request_grant(&mut client).await?;
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
    match client
        .call(Request::Revoke {
            target: RevokeTarget::All,
        })
        .await?
    {
        Response::Revoked { grant_ids } => {
            eprintln!("agentd demo --http: revoked {}", grant_ids.join(", "))
        }
        other => bail!("unexpected reply to revoke: {other:?}"),
    }
    if !injected {
        bail!("the upstream did not receive the injected credential");
    }
    Ok(())
}

async fn request_grant(client: &mut Client) -> anyhow::Result<Handle> {
    let spec = AccessRequestSpec {
        resource: RESOURCE.to_owned(),
        permission: PERMISSION.to_owned(),
        duration_seconds: Some(600),
        justification: "agentd demo --http: call the echo API".to_owned(),
        agent: AgentInfo {
            agent_type: "agentd-demo".to_owned(),
            ..AgentInfo::default()
        },
    };
    match client.call(Request::RequestAccess(spec)).await? {
        Response::AccessRequest(view) => {
            let view = *view;
            let message = view.message.unwrap_or_default();
            view.handle.with_context(|| format!("no grant: {message}"))
        }
        Response::Error { code, message } => bail!("request refused ({code:?}): {message}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}
