//! The rig every section shares: one throwaway cluster (SCRAM + TLS, `max_connections`
//! raised), pgbench tables, PgBouncer in session mode, and two `agentd daemon` processes
//! (statement audit on / off), each with one auto-approved grant.

use agentd::demo::{Sandbox, SandboxOptions, DATABASE, PERMISSION, RESOURCE, ROLE};
use agentd_proto::{AccessRequestSpec, AgentInfo, Client, Handle, Request, Response};
use anyhow::{bail, Context as _};
use secrecy::ExposeSecret as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

/// Upstream `max_connections`: the memory section's idle connections plus pgbench's 32,
/// PgBouncer's pool and the daemons' own.
pub const MAX_CONNECTIONS: u32 = 1300;

/// Permission name of the dynamic-role permission, when the daemon supports it.
pub const DYNAMIC_PERMISSION: &str = "dynamic_ro";

/// Where a client connects: libpq environment variables for pgbench/psql.
#[derive(Clone)]
pub struct Target {
    /// Short key used in JSON (`direct_tls`, `agentd_audit`, …).
    pub key: &'static str,
    /// Column label in the Markdown tables.
    pub label: &'static str,
    /// libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, …).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("key", &self.key).finish()
    }
}

impl Target {
    /// A command for `program` with only PATH, a scratch HOME and this target's libpq env.
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }
}

/// A running `agentd daemon` child.
#[derive(Debug)]
pub struct Daemon {
    child: tokio::process::Child,
    /// Its pid (for /proc/PID/status).
    pub pid: u32,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `agentd --config CONFIG --socket SOCKET daemon` (default log level, stderr to
    /// `LOG`) and waits for its ready line.
    pub async fn start(
        agentd: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(agentd, config, socket, log, &[]).await
    }

    /// [`Daemon::start`] with extra environment variables (e.g. `TOKIO_WORKER_THREADS`).
    pub async fn start_with_env(
        agentd: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(agentd)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agentd.display()))?;
        let pid = child.id().context("daemon pid")?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("daemon ready line timed out")??;
        if !line
            .as_deref()
            .unwrap_or_default()
            .contains("\"ready\":true")
        {
            bail!(
                "agentd daemon did not start; its log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(Self {
            child,
            pid,
            socket: socket.to_path_buf(),
        })
    }

    /// Resident set size (`VmRSS` of /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Asks the daemon at `socket` for `permission` on the demo resource; returns the handle
/// and how long the request took.
pub async fn request_handle(
    client: &mut Client,
    permission: &str,
) -> anyhow::Result<(Handle, Duration)> {
    let spec = AccessRequestSpec {
        resource: RESOURCE.to_owned(),
        permission: permission.to_owned(),
        duration_seconds: Some(3600),
        justification: "agentd-bench: measure the proxy".to_owned(),
        agent: AgentInfo {
            agent_type: "agentd-bench".to_owned(),
            ..AgentInfo::default()
        },
    };
    let t0 = Instant::now();
    let response = client.call(Request::RequestAccess(spec)).await?;
    let took = t0.elapsed();
    match response {
        Response::AccessRequest(view) => {
            let message = view.message.clone().unwrap_or_default();
            Ok((
                view.handle
                    .with_context(|| format!("no grant: {message}"))?,
                took,
            ))
        }
        Response::Error { code, message } => bail!("request refused ({code:?}): {message}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

/// The libpq environment of a handle.
pub fn handle_target(key: &'static str, label: &'static str, handle: &Handle) -> Target {
    Target {
        key,
        label,
        env: handle
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// PgBouncer in session mode, run as the `postgres` user when we are root.
#[derive(Debug)]
struct PgBouncer {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Everything the sections share.
pub struct Rig {
    /// Cluster, role, keychain entry.
    pub sandbox: Sandbox,
    /// Scratch directory for configs, logs and data files.
    pub work: tempfile::TempDir,
    /// `agentd` binary.
    pub agentd: PathBuf,
    /// `agentd-mcp` binary.
    pub agentd_mcp: PathBuf,
    /// Daemon with `[audit] statements = true` (the default).
    pub audit_on: Daemon,
    /// Daemon with `[audit] statements = false`.
    pub audit_off: Daemon,
    /// Whether the daemons accept a `source = "dynamic"` credential (issue 6).
    pub dynamic_roles: bool,
    /// Direct over TLS (verify-full) + SCRAM.
    pub direct_tls: Target,
    /// Direct without TLS (SCRAM only).
    pub direct_plain: Target,
    /// PgBouncer, session mode.
    pub pgbouncer: Target,
    /// Through agentd, statement audit on.
    pub agentd_audit: Target,
    /// Through agentd, statement audit off.
    pub agentd_noaudit: Target,
    bouncer: PgBouncer,
}

impl Rig {
    /// Sets everything up (tens of seconds; the pgbench tables dominate).
    pub async fn start(bin_dir: &Path, plan: &crate::Plan) -> anyhow::Result<Self> {
        let agentd = bin_dir.join("agentd");
        let agentd_mcp = bin_dir.join("agentd-mcp");
        for b in [&agentd, &agentd_mcp] {
            if !b.is_file() {
                bail!("{} not found; build it with `cargo build --release -p agentd -p agentd-mcp` or pass --bin-dir", b.display());
            }
        }
        let scale = plan.pgbench_scale;
        let sandbox = tokio::task::spawn_blocking(move || -> anyhow::Result<Sandbox> {
            let sandbox = Sandbox::create(SandboxOptions::default())?;
            sandbox.cluster.psql(
                "postgres",
                &format!("ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS};\nALTER SYSTEM SET shared_buffers = '256MB';\n"),
            )?;
            sandbox.cluster.restart()?;
            Ok(sandbox)
        })
        .await??;
        init_pgbench(&sandbox, scale).await?;
        let work = tempfile::Builder::new().prefix("agentd-bench-").tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            // The control sockets live here: agentd wants a private directory.
            std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let dynamic_roles = setup_dynamic(&sandbox, &agentd, work.path()).await?;
        let mut daemons = Vec::new();
        for (name, statements) in [("audit_on", true), ("audit_off", false)] {
            let config = work.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                daemon_config(&sandbox, work.path(), name, statements, dynamic_roles),
            )?;
            let socket = work.path().join(format!("{name}.sock"));
            let log = work.path().join(format!("{name}.log"));
            daemons.push(Daemon::start(&agentd, &config, &socket, &log).await?);
        }
        let audit_off = daemons.pop().context("daemon")?;
        let audit_on = daemons.pop().context("daemon")?;
        let (on, _) =
            request_handle(&mut Client::connect(&audit_on.socket).await?, PERMISSION).await?;
        let (off, _) =
            request_handle(&mut Client::connect(&audit_off.socket).await?, PERMISSION).await?;
        let password = sandbox.upstream_password.expose_secret().to_owned();
        let direct = |mode: &str| {
            let mut env = vec![
                ("PGHOST".into(), "127.0.0.1".into()),
                ("PGPORT".into(), sandbox.cluster.port.to_string()),
                ("PGUSER".into(), ROLE.into()),
                ("PGPASSWORD".into(), password.clone()),
                ("PGDATABASE".into(), DATABASE.into()),
                ("PGSSLMODE".into(), mode.into()),
            ];
            if mode == "verify-full" {
                env.push((
                    "PGSSLROOTCERT".into(),
                    sandbox.cluster.ca_file.display().to_string(),
                ));
            }
            env
        };
        let bouncer = start_pgbouncer(&sandbox, work.path()).await?;
        let mut bouncer_env = direct("disable");
        bouncer_env[1].1 = bouncer.port.to_string();
        Ok(Rig {
            direct_tls: Target {
                key: "direct_tls",
                label: "direct (TLS)",
                env: direct("verify-full"),
            },
            direct_plain: Target {
                key: "direct_plain",
                label: "direct (no TLS)",
                env: direct("disable"),
            },
            pgbouncer: Target {
                key: "pgbouncer",
                label: "PgBouncer",
                env: bouncer_env,
            },
            agentd_audit: handle_target("agentd_audit", "agentd (audit on)", &on),
            agentd_noaudit: handle_target("agentd_noaudit", "agentd (audit off)", &off),
            sandbox,
            work,
            agentd,
            agentd_mcp,
            audit_on,
            audit_off,
            dynamic_roles,
            bouncer,
        })
    }

    /// Runs SQL as the superuser over the cluster's Unix socket (blocking psql).
    pub async fn admin_sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::from(self.sandbox.cluster.superuser_psql(DATABASE))
            .args(["-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A second daemon for one section (fresh RSS): same config as `audit_on`.
    pub async fn fresh_daemon(&self, name: &str) -> anyhow::Result<Daemon> {
        let socket = self.work.path().join(format!("{name}.sock"));
        let log = self.work.path().join(format!("{name}.log"));
        let config = self.work.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            daemon_config(&self.sandbox, self.work.path(), name, true, false),
        )?;
        Daemon::start(&self.agentd, &config, &socket, &log).await
    }

    /// Versions of everything measured, for the report.
    pub async fn versions(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let agentd = self.agentd.display().to_string();
        for (name, program, args) in [
            ("agentd", agentd.as_str(), &["--version"][..]),
            ("pgbench", "pgbench", &["--version"]),
            ("psql", "psql", &["--version"]),
            ("PgBouncer", "pgbouncer", &["--version"]),
            ("rustc", "rustc", &["--version"]),
            ("kernel", "uname", &["-sr"]),
        ] {
            v.push((name.to_owned(), program_version(program, args).await));
        }
        let server = self
            .admin_sql("SHOW server_version")
            .await
            .unwrap_or_default();
        v.push(("PostgreSQL server".to_owned(), server));
        v.push(("CPU".to_owned(), cpu_summary()));
        let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        v.push((
            "memory".to_owned(),
            mem.lines().next().unwrap_or_default().trim().to_owned(),
        ));
        v
    }

    /// Stops the daemons, PgBouncer and the cluster.
    pub async fn stop(self) {
        self.audit_on.stop().await;
        self.audit_off.stop().await;
        let mut bouncer = self.bouncer;
        // SIGTERM: runuser passes it on to PgBouncer (SIGKILL would orphan PgBouncer).
        if let Some(pid) = bouncer.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), bouncer.child.wait())
            .await
            .is_err()
        {
            let _ = bouncer.child.kill().await;
        }
        let sandbox = self.sandbox;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = sandbox.cluster.stop();
            drop(sandbox);
        })
        .await;
    }
}

/// `pgbench -i -s SCALE` as the superuser, then SELECT for the demo role.
async fn init_pgbench(sandbox: &Sandbox, scale: u32) -> anyhow::Result<()> {
    let cluster = &sandbox.cluster;
    let out = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), "--unlogged-tables"])
        .arg("-h")
        .arg(&cluster.socket_dir)
        .args(["-p", &cluster.port.to_string(), "-U", "postgres", DATABASE])
        // The cluster's local logins use SCRAM too: the password in the child's environment.
        .env("PGPASSWORD", cluster.superuser_password().expose_secret())
        .stdin(Stdio::null())
        .output()
        .await
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cluster_ref = &sandbox.cluster;
    cluster_ref.psql(
        DATABASE,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE};\nVACUUM ANALYZE;\n"),
    )?;
    Ok(())
}

/// The daemon config: the sandbox's resource and static permission, statement audit on or
/// off, and (when supported) a dynamic-role permission.
fn daemon_config(
    sandbox: &Sandbox,
    work: &Path,
    name: &str,
    statements: bool,
    dynamic: bool,
) -> String {
    let base = std::fs::read_to_string(&sandbox.config_path).unwrap_or_default();
    let data_dir = work.join(format!("{name}-data"));
    let mut text = String::new();
    for line in base.lines() {
        if line.starts_with("data_dir = ") {
            text.push_str(&format!("data_dir = \"{}\"\n", data_dir.display()));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    if dynamic {
        text.push_str(&dynamic_permission_toml());
    }
    text.push_str(&format!("\n[audit]\nstatements = {statements}\n"));
    text
}

/// Admin login role and keychain entry the dynamic-role permission uses.
const DYNAMIC_ADMIN_ROLE: &str = "agentd_admin";
const DYNAMIC_ADMIN_ENTRY: &str = "demo/admin";

fn dynamic_permission_toml() -> String {
    format!(
        "\n[resources.{RESOURCE}.permissions.{DYNAMIC_PERMISSION}]\n\
         description = \"per-grant role in readonly\"\n\
         policy = \"auto\"\n\
         max_ttl = \"1h\"\n\
         credential = {{ source = \"dynamic\", admin_username = \"{DYNAMIC_ADMIN_ROLE}\", admin = \"{DYNAMIC_ADMIN_ENTRY}\", grant_roles = [\"readonly\"] }}\n"
    )
}

/// Whether `agentd config check` accepts a dynamic-role credential (issue 6). When it does,
/// creates the admin role and `readonly`, and stores the admin password in the keychain.
async fn setup_dynamic(sandbox: &Sandbox, agentd: &Path, work: &Path) -> anyhow::Result<bool> {
    let probe = work.join("dynamic-probe.toml");
    std::fs::write(&probe, daemon_config(sandbox, work, "probe", true, true))?;
    let out = tokio::process::Command::new(agentd)
        .arg("--config")
        .arg(&probe)
        .args(["config", "check", "--json"])
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Ok(false);
    }
    let password = format!("admin-{}", rand::random::<u64>());
    let verifier = postgres_scram(&password);
    sandbox.cluster.psql(
        DATABASE,
        &format!(
            "CREATE ROLE {DYNAMIC_ADMIN_ROLE} LOGIN CREATEROLE PASSWORD '{verifier}';\n\
             CREATE ROLE readonly NOLOGIN;\nGRANT SELECT ON ALL TABLES IN SCHEMA public TO readonly;\n\
             GRANT readonly TO {DYNAMIC_ADMIN_ROLE} WITH ADMIN OPTION;\n\
             GRANT pg_signal_backend TO {DYNAMIC_ADMIN_ROLE};\n"
        ),
    )?;
    agentd::credentials::keychain::set(
        &sandbox.keyring_service,
        DYNAMIC_ADMIN_ENTRY,
        &secrecy::SecretString::from(password),
    )?;
    Ok(true)
}

fn postgres_scram(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Starts PgBouncer (session mode; clients SCRAM on loopback without TLS, like agentd's
/// local hop; SCRAM + TLS verify-full to the server) and waits until it accepts.
async fn start_pgbouncer(sandbox: &Sandbox, work: &Path) -> anyhow::Result<PgBouncer> {
    let _ = work;
    // Its own directory, readable by the `postgres` user PgBouncer runs as when we are root.
    let tmp = tempfile::Builder::new()
        .prefix("agentd-bench-pgbouncer-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let userlist = dir.join("userlist.txt");
    std::fs::write(
        &userlist,
        format!(
            "\"{ROLE}\" \"{}\"\n",
            sandbox.upstream_password.expose_secret()
        ),
    )?;
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{DATABASE} = host=127.0.0.1 port={pg} dbname={DATABASE}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {userlist}\npool_mode = session\n\
             max_client_conn = 2000\ndefault_pool_size = {pool}\nmax_db_connections = {pool}\n\
             server_tls_sslmode = verify-full\nserver_tls_ca_file = {ca}\n\
             logfile = {log}\npidfile =\nignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\nlog_disconnections = 0\n",
            pg = sandbox.cluster.port,
            userlist = userlist.display(),
            pool = MAX_CONNECTIONS - 200,
            ca = sandbox.cluster.ca_file.display(),
            log = dir.join("pgbouncer.log").display(),
        ),
    )?;
    let root = agentd_proto::socket::current_uid() == 0;
    let mut cmd = if root {
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status();
        let mut c = tokio::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbouncer"]);
        c
    } else {
        tokio::process::Command::new("pgbouncer")
    };
    let child = cmd
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting pgbouncer (install it: apt-get install pgbouncer)")?;
    wait_listening(port, "pgbouncer", &dir.join("pgbouncer.log")).await?;
    Ok(PgBouncer {
        child,
        port,
        _dir: tmp,
    })
}

/// Waits (at most 10 s, polling every 50 ms) until something accepts TCP connections on
/// `127.0.0.1:port`: the proxy `name` that was just started, whose log is `log`.
///
/// # Errors
/// Nothing listens within 10 s; the error holds the log.
pub async fn wait_listening(port: u16, name: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "{name} did not start; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The first line of what `program args` prints on stdout, trimmed (a version line for the
/// report), or `unavailable: ERROR` when it cannot run.
pub async fn program_version(program: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(e) => format!("unavailable: {e}"),
    }
}

/// This machine's CPU for the report: `N × model` (`/proc/cpuinfo`'s model name).
pub fn cpu_summary() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} × {model}")
}
