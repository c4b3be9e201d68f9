//! The fixture of the HTTP listener tests: a local HTTPS upstream
//! ([`agentd::echo_upstream`]), a config with one `kind = "http"` resource per auth scheme
//! pointing at it, a canary secret in the keychain for each, and a running daemon.

use crate::{agentd_cli_at, canary_password, CliOutput, DaemonProcess};
use agentd::echo_upstream::EchoUpstream;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::path::PathBuf;

/// The resources the fixture configures, one per auth scheme (SigV4 twice: a service that
/// needs the body hash, and S3).
pub const SCHEMES: [(&str, &str); 6] = [
    ("api", r#"{ scheme = "bearer" }"#),
    (
        "api_header",
        r#"{ scheme = "header", name = "x-api-key", value = "key {{secret}}" }"#,
    ),
    ("api_basic", r#"{ scheme = "basic", username = "ci-bot" }"#),
    ("api_query", r#"{ scheme = "query", param = "api_key" }"#),
    (
        "api_aws",
        r#"{ scheme = "aws_sigv4", service = "execute-api", region = "us-east-1" }"#,
    ),
    (
        "api_s3",
        r#"{ scheme = "aws_sigv4", service = "s3", region = "eu-west-1" }"#,
    ),
];

/// The access key id of the SigV4 resources (an identifier, not a secret).
pub const AWS_KEY_ID: &str = "AKIDAGENTDTEST";

/// What the fixture stores for `resource`: the canary secret, or for the SigV4 resources
/// `AKID:SECRET` (`api_aws`) and `AKID:SECRET:SESSION_TOKEN` (`api_s3`), where the secret
/// access key is the canary and the session token contains it (so the canary scan covers
/// both).
pub fn stored_secret(resource: &str, canary: &SecretString) -> SecretString {
    let c = canary.expose_secret();
    match resource {
        "api_aws" => SecretString::from(format!("{AWS_KEY_ID}:{c}")),
        "api_s3" => SecretString::from(format!("{AWS_KEY_ID}:{c}:{}", session_token(canary))),
        _ => canary.clone(),
    }
}

/// The session token of `api_s3` (it contains the canary).
pub fn session_token(canary: &SecretString) -> String {
    format!("FwoGZXIvYXdzE{}", canary.expose_secret())
}

/// The allow list of every fixture permission `reader`.
pub const ALLOW: &str = r#"allow = [
  { methods = ["GET", "HEAD"], paths = ["/echo/**", "/sse", "/bytes", "/reflect", "/hang", "/compressed"] },
  { methods = ["POST", "PUT"], paths = ["/upload", "/v1/**", "/s3/**"] },
]"#;

/// An upstream, a daemon and the canary secret.
pub struct HttpFixture {
    /// The HTTPS upstream.
    pub upstream: EchoUpstream,
    /// Private directory: config, socket, data, logs.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// The control socket.
    pub socket_path: PathBuf,
    /// The daemon.
    pub daemon: DaemonProcess,
    /// The upstream secret (the same canary for every resource).
    pub secret: SecretString,
    keyring_service: String,
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        for (resource, _) in SCHEMES {
            let _ = agentd::credentials::keychain::delete(
                &self.keyring_service,
                &format!("{resource}/reader"),
            );
        }
    }
}

impl HttpFixture {
    /// Starts everything; `extra_daemon` goes into `[daemon]`.
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start(extra_daemon: &str) -> anyhow::Result<Self> {
        Self::start_with_allow(extra_daemon, ALLOW).await
    }

    /// Starts everything with `allow` (an `allow = [...]` line) as every permission's allow
    /// list instead of [`ALLOW`].
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start_with_allow(extra_daemon: &str, allow: &str) -> anyhow::Result<Self> {
        Self::start_with_upstream(extra_daemon, allow, EchoUpstream::start().await?).await
    }

    /// As [`Self::start`], with an upstream that offers only HTTP/1.1 by ALPN.
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start_http1_upstream(extra_daemon: &str) -> anyhow::Result<Self> {
        Self::start_with_upstream(extra_daemon, ALLOW, EchoUpstream::start_http1().await?).await
    }

    /// Starts everything with `allow` in front of `upstream` (e.g. an HTTP/1.1-only one,
    /// [`EchoUpstream::start_with`]).
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start_with_upstream(
        extra_daemon: &str,
        allow: &str,
        upstream: EchoUpstream,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("agentd-http-").tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let secret = canary_password();
        let keyring_service =
            format!("agentd-http-{}", std::process::id()) + &secret.expose_secret()[7..15];
        let mut config = format!(
            "[daemon]\nkeyring_service = \"{keyring_service}\"\ndata_dir = \"{}\"\nnotify = false\n{extra_daemon}\n",
            dir.path().join("data").display()
        );
        for (resource, auth) in SCHEMES {
            config.push_str(&format!(
                "\n[resources.{resource}]\nkind = \"http\"\ndescription = \"Test API ({resource})\"\nbase_url = \"{}\"\nca_file = \"{}\"\nauth = {auth}\n\n[resources.{resource}.permissions.reader]\ndescription = \"reads\"\ncredential = {{ source = \"keyring\" }}\npolicy = \"auto\"\n{allow}\n",
                upstream.base_url(),
                upstream.ca_file.display(),
            ));
            agentd::credentials::keychain::set(
                &keyring_service,
                &format!("{resource}/reader"),
                &stored_secret(resource, &secret),
            )?;
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let socket_path = dir.path().join("agentd.sock");
        let daemon = DaemonProcess::start_at(dir.path(), &config_path, &socket_path).await?;
        Ok(Self {
            upstream,
            dir,
            config_path,
            socket_path,
            daemon,
            secret,
            keyring_service,
        })
    }

    /// Starts `agentd-mcp` against this daemon (its log in the fixture's directory): the
    /// MCP-only agent.
    ///
    /// # Errors
    /// As [`crate::McpSession::start_in_dir`].
    pub async fn mcp(&self) -> anyhow::Result<crate::McpSession> {
        crate::McpSession::start_in_dir(
            self.dir.path(),
            &self.socket_path,
            &self.config_path,
            &[],
            &[],
        )
        .await
    }

    /// Runs the CLI against this daemon.
    ///
    /// # Errors
    /// As [`agentd_cli_at`].
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        agentd_cli_at(&self.config_path, &self.socket_path, args).await
    }

    /// Requests `resource/reader` for 10 minutes; returns the request view (with `handle`).
    ///
    /// # Errors
    /// The request fails.
    pub async fn grant(&self, resource: &str) -> anyhow::Result<Value> {
        let out = self
            .cli(&[
                "request",
                resource,
                "--permission",
                "reader",
                "--ttl",
                "10m",
                "--json",
            ])
            .await?;
        anyhow::ensure!(out.code == 0, "agentd request failed: {}", out.stderr);
        out.json()
    }

    /// The audit log's records (every `*.jsonl` under the data dir), parsed.
    pub fn audit_records(&self) -> Vec<Value> {
        crate::files_under(&self.dir.path().join("data").join("audit"))
            .into_iter()
            .flat_map(|(_, text)| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The `http_request` audit records.
    pub fn http_records(&self) -> Vec<Value> {
        self.audit_records()
            .into_iter()
            .filter(|r| r["event"] == "http_request")
            .collect()
    }

    /// Waits (at most [`crate::STEP_TIMEOUT`]) until `count` `http_request` records are in the
    /// audit log (each is written when its response ends, which may be just after the
    /// client has read it), and returns them.
    ///
    /// # Errors
    /// Fewer records by the deadline.
    pub async fn wait_http_records(&self, count: usize) -> anyhow::Result<Vec<Value>> {
        let deadline = std::time::Instant::now() + crate::STEP_TIMEOUT;
        loop {
            let records = self.http_records();
            if records.len() >= count {
                return Ok(records);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "only {} of {count} http_request records",
                records.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The canary scan: every file under the fixture's directory (config, logs, audit log,
    /// state) plus `outputs`, for the secret and its base64 form.
    ///
    /// # Errors
    /// The first place it was found.
    pub fn assert_clean(&self, outputs: &[(String, String)]) -> anyhow::Result<usize> {
        use base64::Engine as _;
        let mut places = crate::files_under(self.dir.path());
        places.extend(outputs.iter().cloned());
        let b64 = SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(self.secret.expose_secret()),
        );
        for needle in [&self.secret, &b64] {
            crate::assert_no_leak(needle, places.iter().map(|(l, t)| (l.clone(), t.as_str())))?;
        }
        Ok(places.len())
    }
}

/// The handle's token.
pub fn token(view: &Value) -> String {
    view["handle"]["http"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The handle's base URL.
pub fn base_url(view: &Value) -> String {
    view["handle"]["http"]["base_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `curl -sS ARGS` (at most [`crate::STEP_TIMEOUT`]); returns its output.
///
/// # Errors
/// curl cannot run or hangs.
pub async fn curl(args: &[&str]) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-sS").args(args).kill_on_drop(true);
    let out = tokio::time::timeout(crate::STEP_TIMEOUT, cmd.output()).await??;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Sends `raw` bytes to `127.0.0.1:port` and returns everything the server sends back
/// until it closes (or 10 s pass).
///
/// # Errors
/// Connect or I/O errors.
pub async fn raw_exchange(port: u16, raw: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(raw).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Checks, independently of the daemon, that `seen` (a request as the upstream received it)
/// carries a valid SigV4 signature by `AWS_KEY_ID` with `secret_key` (and `session_token`)
/// for `service` in `region`: the signature is recomputed with the `aws-sigv4` crate over the
/// headers the request lists in `SignedHeaders`, with the payload hash from
/// `x-amz-content-sha256` (S3) or the body's SHA-256 the upstream computed.
///
/// # Errors
/// What does not match (never the key).
pub fn check_upstream_sigv4(
    seen: &agentd::echo_upstream::Recorded,
    secret_key: &SecretString,
    session_token: Option<&str>,
    service: &str,
    region: &str,
) -> anyhow::Result<()> {
    use aws_sigv4::http_request::{
        sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode,
    };
    let auth = seen
        .headers
        .get("authorization")
        .ok_or_else(|| anyhow::anyhow!("no Authorization upstream"))?;
    let date = seen
        .headers
        .get("x-amz-date")
        .ok_or_else(|| anyhow::anyhow!("no x-amz-date upstream"))?;
    let scope = format!(
        "Credential={AWS_KEY_ID}/{}/{region}/{service}/aws4_request,",
        &date[..8]
    );
    anyhow::ensure!(
        auth.starts_with("AWS4-HMAC-SHA256 ") && auth.contains(&scope),
        "upstream Authorization is not ours for {service}/{region}: {auth}"
    );
    let signed_headers: Vec<&str> = auth
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_default()
        .split(';')
        .collect();
    let their_sig = auth.split("Signature=").nth(1).unwrap_or_default();
    let host = seen.authority.clone();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for h in &signed_headers {
        let v = match *h {
            "host" => seen.headers.get("host").unwrap_or(&host).as_str(),
            _ => seen
                .headers
                .get(*h)
                .ok_or_else(|| anyhow::anyhow!("signed header {h} not received"))?
                .as_str(),
        };
        pairs.push((h, v));
    }
    anyhow::ensure!(signed_headers.contains(&"host"), "host not signed");
    let payload = match seen.headers.get("x-amz-content-sha256") {
        Some(v) => v.clone(),
        None => seen
            .body_sha256
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no body hash recorded"))?,
    };
    if service != "s3" {
        anyhow::ensure!(
            Some(&payload) == seen.body_sha256.as_ref(),
            "payload hash is not the body's"
        );
    }
    let time = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")?;
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(time.and_utc().timestamp() as u64);
    let creds = aws_credential_types::Credentials::new(
        AWS_KEY_ID,
        secret_key.expose_secret(),
        session_token.map(str::to_owned),
        None,
        "test",
    );
    let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    if service == "s3" {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()?
        .into();
    let uri = match &seen.query {
        Some(q) => format!("https://{host}{}?{q}", seen.path),
        None => format!("https://{host}{}", seen.path),
    };
    let request = SignableRequest::new(
        &seen.method,
        uri,
        pairs.into_iter(),
        SignableBody::Precomputed(payload),
    )?;
    let ours = sign(request, &params)?;
    anyhow::ensure!(
        ours.signature() == their_sig,
        "the upstream's signature does not verify"
    );
    Ok(())
}
