//! What the HTTP benchmark runs against: the bench upstream, an `agentd daemon` with one
//! `kind = "http"` resource (header injection of `x-api-key`) and nginx configured as a
//! reverse proxy that injects the same header.

use super::upstream::{Upstream, API_KEY_HEADER};
use crate::rig::Daemon;
use agentd_proto::{AccessRequestSpec, AgentInfo, Client, Request, Response};
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret as _, SecretString};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// The resource and permission names in the daemon's config.
pub const RESOURCE: &str = "bench-api";
/// See [`RESOURCE`].
pub const PERMISSION: &str = "reader";

/// The daemon config: one http resource on the upstream, `x-api-key: {{secret}}` injected,
/// one auto-approved permission allowing GET on every path; default audit settings (one
/// `http_request` record per request).
pub fn daemon_config(data_dir: &Path, keyring_service: &str, upstream: &Upstream) -> String {
    format!(
        "[daemon]\nkeyring_service = \"{keyring_service}\"\ndata_dir = \"{data}\"\nnotify = false\n\n\
         [resources.{RESOURCE}]\nkind = \"http\"\ndescription = \"bench upstream\"\n\
         base_url = \"https://localhost:{port}\"\nca_file = \"{ca}\"\n\
         auth = {{ scheme = \"header\", name = \"{API_KEY_HEADER}\", value = \"{{{{secret}}}}\" }}\n\n\
         [resources.{RESOURCE}.permissions.{PERMISSION}]\ndescription = \"GET anything\"\n\
         credential = {{ source = \"keyring\" }}\npolicy = \"auto\"\n\
         allow = [{{ methods = [\"GET\"], paths = [\"/**\"] }}]\n",
        data = data_dir.display(),
        port = upstream.port,
        ca = upstream.ca_file.display(),
    )
}

/// A grant's HTTP listener: its port and token.
pub struct Grant {
    /// Listener port on 127.0.0.1.
    pub port: u16,
    /// The grant token (sent in `x-api-key` instead of the key).
    pub token: SecretString,
}

/// The keychain entry holding the key; removed when dropped (also when the run is
/// interrupted and the daemon is killed on drop).
struct KeychainEntry {
    service: String,
}

impl Drop for KeychainEntry {
    fn drop(&mut self) {
        let _ = agentd::credentials::keychain::delete(
            &self.service,
            &agentd::credentials::keychain::entry_name(RESOURCE, PERMISSION),
        );
    }
}

/// An `agentd daemon` serving the http resource, with the key in the keychain.
pub struct AgentdHttp {
    /// The daemon process.
    pub daemon: Daemon,
    _entry: KeychainEntry,
    _dir: tempfile::TempDir,
}

impl AgentdHttp {
    /// Writes the config, stores `key` in the keychain and starts the daemon with `env`
    /// added to its environment.
    ///
    /// # Errors
    /// Keychain, config or daemon start failures.
    pub async fn start(
        agentd: &Path,
        upstream: &Upstream,
        key: &SecretString,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("agentd-bench-{name}-"))
            .tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let keyring_service = format!("agentd-bench-http-{:016x}", rand::random::<u64>());
        agentd::credentials::keychain::set(
            &keyring_service,
            &agentd::credentials::keychain::entry_name(RESOURCE, PERMISSION),
            key,
        )?;
        let entry = KeychainEntry {
            service: keyring_service.clone(),
        };
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            daemon_config(&dir.path().join("data"), &keyring_service, upstream),
        )?;
        let daemon = Daemon::start_with_env(
            agentd,
            &config,
            &dir.path().join("agentd.sock"),
            &dir.path().join("daemon.log"),
            env,
        )
        .await?;
        Ok(Self {
            daemon,
            _entry: entry,
            _dir: dir,
        })
    }

    /// Requests the permission (auto-approved) and returns the grant's listener.
    ///
    /// # Errors
    /// The request is refused or the handle has no HTTP part.
    pub async fn grant(&self) -> anyhow::Result<Grant> {
        let mut client = Client::connect(&self.daemon.socket).await?;
        let spec = AccessRequestSpec {
            resource: RESOURCE.to_owned(),
            permission: PERMISSION.to_owned(),
            duration_seconds: Some(3600),
            justification: "agentd-bench: measure the HTTP listener".to_owned(),
            agent: AgentInfo {
                agent_type: "agentd-bench".to_owned(),
                ..AgentInfo::default()
            },
        };
        let view = match client.call(Request::RequestAccess(spec)).await? {
            Response::AccessRequest(view) => view,
            Response::Error { code, message } => bail!("request refused ({code:?}): {message}"),
            other => bail!("unexpected reply: {other:?}"),
        };
        let message = view.message.clone().unwrap_or_default();
        let handle = view
            .handle
            .with_context(|| format!("no grant: {message}"))?;
        let http = handle.http.context("the handle has no http part")?;
        Ok(Grant {
            port: handle.port,
            token: SecretString::from(http.token),
        })
    }

    /// Stops the daemon (SIGTERM, then wait) and removes the keychain entry.
    pub async fn stop(self) {
        self.daemon.stop().await;
    }
}

/// nginx's config: 2 workers (one per core), an upstream block with keep-alive
/// connections, `proxy_http_version 1.1`, the key injected, TLS verified against the bench
/// CA, responses streamed with a 64 KiB buffer ([`NGINX_BUFFERING`]: as through agentd, and
/// what SSE needs), and an access log line per request (agentd writes an audit record per
/// request).
pub fn nginx_config(dir: &Path, port: u16, upstream: &Upstream, key: &SecretString) -> String {
    format!(
        r#"# agentd-bench: nginx as the reverse proxy that injects the API key.
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{
    worker_connections 4096;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream bench_api {{
        server 127.0.0.1:{up};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host localhost:{up};
        proxy_set_header {header} "{key}";
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_name localhost;
        proxy_ssl_server_name on;
        proxy_ssl_session_reuse on;
        location / {{
            proxy_pass https://bench_api;
            {buffering}
        }}
    }}
}}
"#,
        dir = dir.display(),
        up = upstream.port,
        header = API_KEY_HEADER,
        key = key.expose_secret(),
        ca = upstream.ca_file.display(),
        buffering = NGINX_BUFFERING,
    )
}

/// nginx's response handling, the fastest of three configs tried for 1 MiB responses (see
/// BENCHMARKS.md): streaming with one 64 KiB buffer per request. nginx's default
/// (`proxy_buffering on`, 8 × 4 KiB in memory, then a temp file) and buffering in memory
/// (16 × 64 KiB, no temp file) cost nginx 1.5–1.9× the CPU per 1 MiB response in quick runs.
pub const NGINX_BUFFERING: &str =
    "proxy_buffering off; proxy_buffer_size 64k; proxy_buffers 8 64k;";

/// A running nginx (master in the foreground, `daemon off`).
pub struct Nginx {
    child: tokio::process::Child,
    /// Master pid.
    pub pid: u32,
    /// Listen port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    stopped: bool,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL (kill_on_drop) would orphan the workers; SIGTERM makes the master stop them.
        if !self.stopped {
            signal_term(self.pid);
        }
    }
}

fn signal_term(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Pids whose parent is `ppid` (from /proc/*/stat).
pub fn children(ppid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the `(comm)`: state, ppid, …
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(ppid)
        })
        .collect()
}

/// CPU time (user + system, all threads) of `pid` so far, seconds (`/proc/PID/stat`
/// utime + stime, in clock ticks of 1/100 s: Linux's `USER_HZ` on every architecture we
/// run on).
///
/// # Errors
/// No such process or an unreadable stat line.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s
        .rfind(')')
        .and_then(|i| s.get(i + 2..))
        .context("bad /proc/PID/stat")?;
    // After `(comm) `: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

/// VmRSS of `pid`, bytes.
///
/// # Errors
/// No such process or no VmRSS line.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

impl Nginx {
    /// Writes the config (0600: it holds the key) and starts `nginx -c CONF -p DIR -e LOG`;
    /// waits until it accepts.
    ///
    /// # Errors
    /// nginx missing, a bad config, or no listener within 10 s.
    pub async fn start(upstream: &Upstream, key: &SecretString) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("agentd-bench-nginx-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("nginx.conf");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&conf)?;
            f.write_all(nginx_config(dir.path(), port, upstream, key).as_bytes())?;
        }
        let child = tokio::process::Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (install it: apt-get install nginx)")?;
        let pid = child.id().context("nginx pid")?;
        let nginx = Self {
            child,
            pid,
            port,
            dir,
            stopped: false,
        };
        crate::rig::wait_listening(port, "nginx", &nginx.dir.path().join("error.log")).await?;
        Ok(nginx)
    }

    /// Summed VmRSS of the worker processes, bytes.
    ///
    /// # Errors
    /// No workers found.
    pub fn workers_rss_bytes(&self) -> anyhow::Result<u64> {
        let workers = children(self.pid);
        if workers.is_empty() {
            bail!("no nginx workers under pid {}", self.pid);
        }
        workers.into_iter().map(rss_bytes).sum()
    }

    /// `nginx -v`.
    pub async fn version() -> String {
        match tokio::process::Command::new("nginx")
            .arg("-v")
            .output()
            .await
        {
            // nginx prints its version on stderr.
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("unavailable: {e}"),
        }
    }

    /// SIGTERM (the master stops its workers) and wait.
    pub async fn stop(mut self) {
        signal_term(self.pid);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.stopped = true;
    }
}
