//! `agentd demo`: the whole path on a throwaway PostgreSQL.
//!
//! [`Sandbox::create`] starts a [`Cluster`] (SCRAM + TLS), creates a login role with a
//! random password and a database with a sample `orders` table, writes a config that points
//! at it (`verify-full` against the cluster's CA) and stores the password in the OS keychain
//! under a one-off keychain service. [`run`] then starts the daemon in-process on a private
//! socket, requests a grant over the control protocol, runs the real `psql` through the
//! grant's listener, prints the rows and the handle, and cleans everything up — on every way
//! out, signals included (see [`run`] and [`crate::demo_cleanup`]). The end-to-end tests
//! build on the same [`Sandbox`].

use crate::config::Config;
use crate::credentials::keychain;
use crate::demo_cleanup::{self, random_hex, DemoDir, InProcessDaemon, Signals};
use crate::pgcluster::{psql_path, Cluster};
use agentd_proto::{Client, Handle};
use anyhow::{bail, Context as _};
use secrecy::{ExposeSecret, SecretString};
use std::path::PathBuf;

/// Name of the demo resource in the generated config.
pub const RESOURCE: &str = "demo";
/// Name of the demo permission in the generated config.
pub const PERMISSION: &str = "read_only";
/// The upstream login role the demo permission maps to.
pub const ROLE: &str = "agent_ro";
/// The demo database.
pub const DATABASE: &str = "agentd_demo";
/// The admin role that creates per-grant roles in the dynamic demo (CREATEROLE, not a
/// superuser).
pub const ADMIN_ROLE: &str = "agentd_admin";

/// Where the demo permission's credential comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SandboxCredential {
    /// [`ROLE`]'s password in the keychain (entry `demo/read_only`).
    #[default]
    Keychain,
    /// A role per grant made by [`ADMIN_ROLE`] (password in the keychain, entry
    /// `demo/admin`), member of [`ROLE`] (then a NOLOGIN role carrying the privileges).
    Dynamic,
    /// This program (argv) prints the login as JSON; nothing is stored in the keychain.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Timeout in seconds.
        timeout_seconds: u64,
    },
}

/// A throwaway cluster plus everything agentd needs to proxy to it. It owns its cleanup:
/// dropping it (normal end, `?`, panic) stops the cluster and removes its directory, then
/// deletes the keychain entry and removes [`Sandbox::dir`]; [`Sandbox::cleanup`] does the
/// same with a graceful stop and reports failures. Both are safe to run again.
pub struct Sandbox {
    /// The running cluster. Declared before [`Sandbox::dir`]: dropped (stopped) first.
    pub cluster: Cluster,
    /// Private (0700) directory holding the config, the control socket and the cleanup
    /// record; owns the keychain entry (see [`DemoDir`]).
    pub dir: DemoDir,
    /// The generated config file.
    pub config_path: PathBuf,
    /// Control socket path inside [`Sandbox::dir`].
    pub socket_path: PathBuf,
    /// The one-off keychain service the secret is stored under.
    pub keyring_service: String,
    /// The keychain entry holding [`Sandbox::upstream_password`] (`None` for a command
    /// source).
    pub keychain_entry: Option<String>,
    /// The upstream password agentd holds and must never leak: [`ROLE`]'s, or with a
    /// dynamic credential [`ADMIN_ROLE`]'s.
    pub upstream_password: SecretString,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("cluster", &self.cluster)
            .field("config_path", &self.config_path)
            .field("upstream_password", &"[REDACTED]")
            .finish()
    }
}

/// Options for [`Sandbox::create`].
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Policy of the demo permission: `auto`, `approval` or `deny`.
    pub policy: String,
    /// `max_ttl` of the demo permission, e.g. `1h`.
    pub max_ttl: String,
    /// Upstream password to use; random when `None`.
    pub password: Option<SecretString>,
    /// `[daemon] listen_host` (default loopback).
    pub listen_host: Option<String>,
    /// Make [`ROLE`] the owner of [`DATABASE`] and its `public` schema (for tests that
    /// create tables, e.g. `pgbench -i`); otherwise it may only SELECT from `orders`.
    pub role_owns_database: bool,
    /// Extra lines for the `[daemon]` table, e.g. `pending_timeout = "2s"`.
    pub extra_daemon_toml: String,
    /// Extra TOML appended after the demo permission, e.g. `[[resources.demo.permissions.read_only.rules]]` tables.
    pub extra_permission_toml: String,
    /// Where the demo permission's credential comes from.
    pub credential: SandboxCredential,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            policy: "auto".to_owned(),
            max_ttl: "1h".to_owned(),
            password: None,
            listen_host: None,
            role_owns_database: false,
            extra_daemon_toml: String::new(),
            extra_permission_toml: String::new(),
            credential: SandboxCredential::default(),
        }
    }
}

impl Sandbox {
    /// Makes the directory and its cleanup record, starts the cluster (recorded first),
    /// creates the role, database and table, writes the config and stores the secret (last,
    /// once the sandbox owns its cleanup). Blocking (a few seconds): call from
    /// `spawn_blocking` in async code. On any failure what was made is undone.
    ///
    /// # Errors
    /// Missing PostgreSQL binaries (the message names the package), cluster or keychain
    /// failures.
    pub fn create(options: SandboxOptions) -> anyhow::Result<Self> {
        let keychain_entry = match &options.credential {
            SandboxCredential::Keychain => Some(keychain::entry_name(RESOURCE, PERMISSION)),
            SandboxCredential::Dynamic => Some(format!("{RESOURCE}/admin")),
            SandboxCredential::Command { .. } => None,
        };
        let mut dir = DemoDir::create(keychain_entry.iter().cloned().collect())?;
        let cluster = Cluster::start_noting(|cluster_dir| dir.note_cluster_dir(cluster_dir))?;
        let password = options
            .password
            .unwrap_or_else(|| SecretString::from(format!("demo-{}", random_hex(24))));
        seed_database(&cluster, &password, &options.credential)?;
        if options.role_owns_database {
            cluster.psql(
                DATABASE,
                &format!("ALTER DATABASE {DATABASE} OWNER TO {ROLE};\nALTER SCHEMA public OWNER TO {ROLE};\n"),
            )?;
        }
        let config_path = dir.path().join("config.toml");
        let socket_path = dir.path().join("agentd.sock");
        let keyring_service = dir.keyring_service().to_owned();
        let listen_host = options
            .listen_host
            .map(|h| format!("listen_host = \"{h}\"\n"))
            .unwrap_or_default();
        let config = format!(
            r#"# Written by `agentd demo`; removed when it exits.
[daemon]
keyring_service = "{keyring_service}"
data_dir = "{data_dir}"
notify = false
{listen_host}{extra_daemon}
[resources.{RESOURCE}]
kind = "postgres"
description = "Throwaway demo database with a sample orders table"
host = "127.0.0.1"
port = {port}
database = "{DATABASE}"
tls = "verify-full"
ca_file = "{ca}"

[resources.{RESOURCE}.permissions.{PERMISSION}]
description = "SELECT on public.orders"
{credential}
policy = "{policy}"
max_ttl = "{max_ttl}"
{extra_permission}"#,
            port = cluster.port,
            ca = cluster.ca_file.display(),
            policy = options.policy,
            max_ttl = options.max_ttl,
            data_dir = dir.path().join("data").display(),
            extra_daemon = options.extra_daemon_toml,
            extra_permission = options.extra_permission_toml,
            credential = credential_toml(&options.credential),
        );
        std::fs::write(&config_path, config)?;
        let sandbox = Self {
            cluster,
            dir,
            config_path,
            socket_path,
            keyring_service,
            keychain_entry,
            upstream_password: password,
        };
        if let Some(entry) = &sandbox.keychain_entry {
            keychain::set(&sandbox.keyring_service, entry, &sandbox.upstream_password)
                .context("storing the demo secret in the OS keychain")?;
        }
        Ok(sandbox)
    }

    /// Stops the cluster (fast shutdown) and removes its directory, deletes the keychain
    /// entry and removes [`Sandbox::dir`], in that order. Safe to call again (dropping the
    /// sandbox afterwards finds nothing left).
    ///
    /// # Errors
    /// What could not be undone (never a secret).
    pub fn cleanup(&self) -> anyhow::Result<()> {
        let stopped = self.cluster.stop_and_remove();
        let cleaned = self.dir.cleanup();
        stopped.context("stopping the demo cluster")?;
        cleaned
    }

    /// The loaded config.
    ///
    /// # Errors
    /// Config errors (should not happen for the generated file).
    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.config_path)?)
    }
}

/// The permission's login lines for the generated config.
fn credential_toml(credential: &SandboxCredential) -> String {
    match credential {
        SandboxCredential::Keychain => format!("username = \"{ROLE}\""),
        SandboxCredential::Dynamic => format!(
            "credential = {{ source = \"dynamic\", admin_username = \"{ADMIN_ROLE}\", grant_roles = [\"{ROLE}\"], connection_limit = 5 }}"
        ),
        SandboxCredential::Command {
            argv,
            timeout_seconds,
        } => format!(
            "credential = {{ source = \"command\", argv = {}, timeout_seconds = {timeout_seconds} }}",
            toml::Value::Array(argv.iter().cloned().map(toml::Value::String).collect())
        ),
    }
}

/// Creates [`ROLE`] — for a dynamic credential as a NOLOGIN role, plus [`ADMIN_ROLE`]
/// (CREATEROLE, allowed to terminate backends, ADMIN OPTION on [`ROLE`]) — with a SCRAM verifier computed here, so
/// the password itself never reaches the server or its logs; then [`DATABASE`] and a sample
/// `orders` table.
fn seed_database(
    cluster: &Cluster,
    password: &SecretString,
    credential: &SandboxCredential,
) -> anyhow::Result<()> {
    let verifier = postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
    let roles = match credential {
        SandboxCredential::Dynamic => format!(
            "CREATE ROLE {ROLE} NOLOGIN;\n\
             CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE PASSWORD '{verifier}' IN ROLE pg_signal_backend;\n\
             GRANT {ROLE} TO {ADMIN_ROLE} WITH ADMIN OPTION;\n"
        ),
        _ => format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{verifier}';\n"),
    };
    cluster
        .psql("postgres", &format!("{roles}CREATE DATABASE {DATABASE};\n"))
        .context("creating the demo role and database")?;
    cluster
        .psql(
            DATABASE,
            &format!(
                "CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total_cents int NOT NULL);\n\
                 INSERT INTO orders VALUES (1, 'ada', 4200), (2, 'grace', 1999), (3, 'linus', 75000);\n\
                 GRANT SELECT ON orders TO {ROLE};\n"
            ),
        )
        .context("creating the demo table")?;
    Ok(())
}

/// The demo's query.
pub const DEMO_QUERY: &str = "SELECT id, customer, total_cents FROM orders ORDER BY id";

/// Runs `psql` with the handle's libpq environment (the token stays out of argv) and
/// returns its stdout.
///
/// # Errors
/// psql's failure, with its stderr.
pub async fn psql_through(
    handle: &Handle,
    sql: &str,
    extra_args: &[&str],
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(psql_path())
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(extra_args)
        .args(["-c", sql])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&handle.env)
        .env("PGAPPNAME", "agentd-demo")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql through the proxy failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `agentd demo` (see the module docs). With `serve`, prints one JSON line
/// `{"dsn","socket","config","dir","cluster_dir","keyring_service"}` and keeps running
/// until SIGINT (Ctrl-C), SIGTERM or SIGHUP. With `dynamic`, the grant logs in as its own
/// PostgreSQL role (`agentd_g_…`), created at grant and dropped at revoke; the demo shows
/// `pg_roles` before, during and after.
///
/// Every way out cleans up (cluster, keychain entry, directories): the signals are caught
/// from the start, a signal during set-up or cleanup lets that step finish first, and what
/// an earlier run killed with SIGKILL left is swept first ([`demo_cleanup::sweep_stale`]).
///
/// # Errors
/// Any step's failure, with what to do about it; a signal outside `serve`.
pub async fn run(serve: bool, dynamic: bool) -> anyhow::Result<()> {
    const LABEL: &str = "agentd demo";
    let mut signals = Signals::install()?;
    demo_cleanup::sweep_and_report(LABEL).await;
    eprintln!("{LABEL}: starting a throwaway PostgreSQL cluster (SCRAM-SHA-256, TLS on)…");
    let options = SandboxOptions {
        credential: if dynamic {
            SandboxCredential::Dynamic
        } else {
            SandboxCredential::Keychain
        },
        ..SandboxOptions::default()
    };
    let mut create = tokio::task::spawn_blocking(|| Sandbox::create(options));
    let sandbox = tokio::select! {
        created = &mut create => created.context("setting up the demo panicked")??,
        name = signals.recv() => {
            demo_cleanup::say(&format!("{LABEL}: {name} received; cleaning up"));
            // Set-up has no cancellation point: let it finish, then undo what it made.
            if let Ok(sandbox) = demo_cleanup::finish(create, &mut signals, LABEL).await? {
                demo_cleanup::finish(
                    tokio::task::spawn_blocking(move || sandbox.cleanup()),
                    &mut signals,
                    LABEL,
                )
                .await??;
            }
            bail!("stopped by {name} during set-up; cleaned up");
        }
    };
    eprintln!(
        "{LABEL}: files in {} and {}, keychain service {}; all removed when the demo ends",
        sandbox.dir.path().display(),
        sandbox.cluster.dir().display(),
        sandbox.keyring_service
    );
    let result = run_in(&sandbox, serve, &mut signals).await;
    demo_cleanup::close(result, move || sandbox.cleanup(), &mut signals, LABEL).await
}

async fn run_in(sandbox: &Sandbox, serve: bool, signals: &mut Signals) -> anyhow::Result<()> {
    let daemon = InProcessDaemon::start(
        sandbox.config()?,
        sandbox.config_path.clone(),
        &sandbox.socket_path,
        sandbox.dir.path().join("pg"),
    )?;
    daemon.broker.sweep_dynamic_roles().await;
    let result = tokio::select! {
        done = demo_session(sandbox, serve) => done,
        name = signals.recv() => {
            demo_cleanup::say(&format!("agentd demo: {name} received; stopping"));
            if serve {
                Ok(())
            } else {
                Err(anyhow::anyhow!("stopped by {name}"))
            }
        }
    };
    daemon.stop().await;
    result
}

/// Whether the sandbox's permission uses a dynamic role.
fn is_dynamic(sandbox: &Sandbox) -> bool {
    sandbox.keychain_entry.as_deref() == Some("demo/admin")
}

/// Prints the `agentd_%` roles on the demo server (as the cluster's superuser).
async fn print_agentd_roles(sandbox: &Sandbox, when: &str) -> anyhow::Result<()> {
    let sql = "SELECT coalesce(string_agg(rolname || ' (valid until ' || rolvaliduntil || ')', E'\\n' ORDER BY rolname), '(none)') \
               FROM pg_roles WHERE rolname LIKE 'agentd!_g!_%' ESCAPE '!'";
    let out = sandbox.cluster.psql("postgres", sql)?;
    println!("pg_roles agentd_g_* {when}:");
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {}", line.trim());
    }
    Ok(())
}

async fn demo_session(sandbox: &Sandbox, serve: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(&sandbox.socket_path).await?;
    let dynamic = is_dynamic(sandbox);
    if dynamic && !serve {
        print_agentd_roles(sandbox, "before the grant").await?;
    }
    let handle = demo_cleanup::request_grant(
        &mut client,
        RESOURCE,
        PERMISSION,
        "agentd demo: read the sample orders",
    )
    .await?;
    if serve {
        let line = serde_json::json!({
            "dsn": handle.dsn,
            "socket": sandbox.socket_path,
            "config": sandbox.config_path,
            "dir": sandbox.dir.path(),
            "cluster_dir": sandbox.cluster.dir(),
            "keyring_service": sandbox.keyring_service,
        });
        println!("{line}");
        eprintln!(
            "agentd demo: serving; try `AGENTD_SOCKET={} agentd status`. Ctrl-C (or SIGTERM, SIGHUP) to stop and clean up.",
            sandbox.socket_path.display()
        );
        // Until a signal: `run_in` selects on them.
        std::future::pending::<()>().await;
        return Ok(());
    }
    eprintln!(
        "agentd demo: granted; running psql through the proxy on {}:{}",
        handle.host, handle.port
    );
    let rows = psql_through(&handle, DEMO_QUERY, &[]).await?;
    println!("{rows}");
    if dynamic {
        let who = psql_through(&handle, "SELECT current_user", &["-At"]).await?;
        println!("upstream login through the proxy: {}", who.trim());
        print_agentd_roles(sandbox, "during the grant").await?;
    }
    println!("handle (what an agent receives; the upstream password never leaves the daemon):");
    println!("  dsn:  {}", handle.dsn);
    println!("  psql: {}", handle.psql);
    demo_cleanup::revoke_all(&mut client, "agentd demo").await?;
    if dynamic {
        print_agentd_roles(sandbox, "after revoke").await?;
    }
    print_audit_trail(sandbox)?;
    Ok(())
}

/// Prints what the audit log recorded for the demo and checks its hash chain.
fn print_audit_trail(sandbox: &Sandbox) -> anyhow::Result<()> {
    let dir = sandbox.config()?.audit_dir();
    println!("\naudit log ({}):", dir.display());
    for record in crate::audit::read_records(&dir)? {
        println!("  {}", crate::cli::audit::format_record(&record));
    }
    let report = crate::audit::verify(&dir)?;
    if !report.ok() {
        bail!(
            "the demo's audit log does not verify: {:?}",
            report.problems
        );
    }
    println!(
        "hash chain verified: {} records (`agentd audit verify`)",
        report.records
    );
    Ok(())
}
