//! The `agentd` command line: argument parsing (clap) and the subcommands.

/// `print!` for command output, through [`write_stdout`]: a closed stdout ends the command
/// quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` for command output, through [`write_stdout`]: `agentd audit | head` ends the
/// command quietly (exit 0) when `head` closes the pipe, instead of a panic.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod approvals;
pub mod audit;
mod config_check;
pub mod docs;
pub mod doctor;
mod grants;
pub mod mcp_install;
mod secret;
pub mod token;

use crate::config::default_config_path;
use agentd_proto::{Client, Request, Response};
use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Writes command output to stdout. When the reader has gone (`EPIPE`: `agentd audit |
/// head`), the command stops at once with exit status 0, as Unix filters do; any other
/// write error ends it with status 1 and the error on stderr. Never panics.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("agentd: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// agentd keeps database credentials away from AI agents: a local daemon holds the secrets
/// and opens authenticated loopback listeners; agents only ever get short-lived handles.
///
/// Quick start: `agentd demo` runs the whole path against a throwaway PostgreSQL.
///
/// Humans manage access: `agentd requests` lists what agents asked for, `agentd approve ID`
/// / `agentd deny ID` decide (at an interactive terminal only), `agentd status` shows live
/// grants, `agentd revoke` ends them, `agentd audit` shows the tamper-evident log.
#[derive(Debug, Parser)]
#[command(name = "agentd", version, propagate_version = true)]
pub struct Cli {
    /// Profile: a separate config, control socket, data directory, keychain service and MCP
    /// token store (`default` = the standard paths).
    #[arg(long, global = true, env = "AGENTD_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Config file (TOML).
    #[arg(long, global = true, env = "AGENTD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket path (a named pipe on Windows).
    #[arg(long, global = true, env = "AGENTD_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// System mode: the daemon runs as its own user (`agentd daemon --system`, as that
    /// user); the CLI talks to /run/agentd/agentd.sock. The CLI also picks system mode when
    /// that socket exists and no --socket / AGENTD_SOCKET / --profile names another daemon.
    #[arg(long, global = true, env = "AGENTD_SYSTEM", value_parser = clap::builder::BoolishValueParser::new())]
    pub system: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground. Logs go to stderr (AGENTD_LOG sets the level); once
    /// the control socket is bound it prints one line on stdout: {"ready":true,"socket":…,"pid":…}.
    Daemon,
    /// Show whether the daemon is up, and its active grants and pending requests.
    Status(JsonFlag),
    /// Ask for access yourself and print the handle (DSN, env vars, psql command).
    ///
    /// Example: agentd request app-db --permission read_only --ttl 30m
    Request(RequestArgs),
    /// List access requests (pending ones unless --all), newest first. Decided requests
    /// and ended grants are retained for `[daemon] retention` (default 1h); the audit log
    /// has the full history.
    Requests(RequestsArgs),
    /// Approve a pending request. Asks you to type a fresh 4-digit code on the controlling
    /// terminal (/dev/tty): a process without one — e.g. a command an agent runs — is
    /// refused, and one that types into your terminal blind cannot know the code.
    ///
    /// Example: agentd approve r_0123456789abcdef --ttl 30m
    Approve(ApproveArgs),
    /// Deny a pending request (confirmed on the controlling terminal, like approve).
    ///
    /// Example: agentd deny r_0123456789abcdef --reason "use the staging copy"
    Deny(DenyArgs),
    /// Revoke grants: one by id, all on a resource, all of an agent type, or all. Their
    /// listeners close and live sessions are cut with a FATAL error.
    Revoke(RevokeArgs),
    /// Give back a grant this same process requested, before it expires (what an agent
    /// does when it is done). Any other grant is "not found": to end someone else's grant,
    /// an admin runs `agentd revoke GRANT_ID`.
    Release(ReleaseArgs),
    /// Show the audit log, follow it, or verify its hash chain (`agentd audit verify`). In
    /// system mode it is read through the daemon (admins only).
    Audit(audit::AuditArgs),
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Store, delete or list upstream secrets in the OS keychain, or in system mode in the
    /// daemon's store through the socket (admins only). Values are never shown.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Bearer tokens for `agentd-mcp --http` (create, list, revoke).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Install agentd-mcp into an AI client's MCP config, or remove it.
    ///
    /// Example: agentd mcp install --client claude-code
    #[command(subcommand)]
    Mcp(mcp_install::McpCommand),
    /// Run the whole path on a throwaway local PostgreSQL: cluster, grant, psql through the
    /// proxy; then clean up.
    Demo(DemoArgs),
    /// Check this machine for exposures: which daemon is running (system or user mode) and
    /// what the current user could do to get around it (read secrets, edit the config,
    /// passwordless sudo, ptrace, a socket in a shared directory), each with its fix.
    /// Exit code 0 when nothing is exposed, 1 otherwise.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    ///
    /// Example: agentd completions bash > /usr/share/bash-completion/completions/agentd
    Completions(docs::CompletionsArgs),
    /// Write the man pages (roff) into a directory; used when building packages.
    #[command(hide = true)]
    Man(docs::ManArgs),
}

/// `--json` output for scripts.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `agentd request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Resource name from the config.
    pub resource: String,
    /// Permission on that resource.
    #[arg(long, short)]
    pub permission: String,
    /// How long, e.g. 30m, 2h (default: the permission's default_ttl).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Why you need it (recorded).
    #[arg(long, default_value = "requested from the agentd CLI")]
    pub justification: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd requests`.
#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Include decided requests (approved, denied, expired, cancelled).
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The request id (r_…) from `agentd requests`.
    pub request_id: String,
    /// Grant a different duration than requested, e.g. 10m (still capped by the policy's
    /// max_ttl).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Print the result as JSON (the confirmation still happens on the terminal).
    #[arg(long)]
    pub json: bool,
}

/// `agentd deny`.
#[derive(Debug, Args)]
pub struct DenyArgs {
    /// The request id (r_…) from `agentd requests`.
    pub request_id: String,
    /// Why; shown to the agent and recorded in the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["grant_id", "resource", "agent", "all"])))]
pub struct RevokeArgs {
    /// The grant id (g_…) from `agentd status`.
    pub grant_id: Option<String>,
    /// Revoke every active grant on this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Revoke every active grant held by this agent type (e.g. cursor, claude-code).
    #[arg(long)]
    pub agent: Option<String>,
    /// Revoke every active grant.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The grant id (g_…).
    pub grant_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the config; show each resource, permission and policy in plain
    /// English, where the audit log goes, and warnings. Exit code 1 when it does not load.
    Check(config_check::ConfigCheckArgs),
    /// Ask the running daemon to re-read its config file (admin only; SIGHUP does the
    /// same). Active grants keep their settings; mode and data_dir need a restart.
    Reload,
}

/// `agentd secret`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store the secret for RESOURCE/PERMISSION; read from a no-echo prompt, or from stdin
    /// when it is not a terminal (never from the command line). For a `dynamic` permission
    /// this is the admin login's password (entry `credential.admin`, default
    /// `RESOURCE/admin`).
    ///
    /// Example: agentd secret set app-db read_only
    Set {
        /// Resource name.
        resource: String,
        /// Permission name.
        permission: String,
    },
    /// Delete the secret for RESOURCE/PERMISSION.
    Delete {
        /// Resource name.
        resource: String,
        /// Permission name.
        permission: String,
    },
    /// List the keychain entries the config uses — names and present/missing only, never
    /// values — and the permissions whose credential comes from a command instead.
    List {
        /// Print JSON: `{service, entries: [{entry, kind, used_by, state, error?}],
        /// commands: [{permission, program}]}`.
        #[arg(long)]
        json: bool,
    },
}

/// `agentd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep everything running; print one JSON line
    /// `{"dsn","socket","config","dir","cluster_dir","keyring_service"}` first, and clean up
    /// on Ctrl-C, SIGTERM or SIGHUP.
    #[arg(long)]
    pub serve: bool,
    /// Use a dynamic credential: each grant gets its own PostgreSQL role (agentd_g_…),
    /// created by an admin login at grant time and dropped at revoke; shows pg_roles before,
    /// during and after.
    #[arg(long)]
    pub dynamic: bool,
    /// The HTTP listener instead: a local HTTPS upstream that shows what it received, a
    /// grant on it, and curl through the proxy (the upstream gets the credential, curl
    /// never has it).
    #[arg(long, conflicts_with_all = ["serve", "dynamic"])]
    pub http: bool,
}

impl Cli {
    /// The system layout when this client talks to the system daemon (see
    /// [`agentd_proto::system::client_wants_system`]); `None` in user mode.
    pub fn system_layout(&self) -> Option<agentd_proto::system::Layout> {
        let layout = agentd_proto::system::Layout::current().ok()?;
        let other_named = self.socket.is_some() || self.profile.is_some();
        agentd_proto::system::client_wants_system(self.system, other_named, &layout)
            .then_some(layout)
    }
    /// The config path in force.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| match self.system_layout() {
                Some(layout) => layout.config,
                None => default_config_path(),
            })
    }
    /// The control socket path in force.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| match self.system_layout() {
                Some(layout) => layout.socket,
                None => agentd_proto::profile::active().socket_path(),
            })
    }
}

/// Runs a parsed command line; returns the process exit code (0 success, 1 a reported
/// failure such as a tampered audit log or an invalid config).
///
/// # Errors
/// Whatever the subcommand reports; `main` prints it and exits 1.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.system || std::env::var_os(agentd_proto::system::ROOT_ENV).is_some() {
        // Say why a test prefix is not honoured instead of quietly using user mode.
        agentd_proto::system::Layout::current()?;
    }
    let ok = |r: anyhow::Result<()>| r.map(|()| 0u8);
    let code = |r: anyhow::Result<i32>| r.map(|c| u8::try_from(c).unwrap_or(1));
    match &cli.command {
        Command::Daemon => ok(crate::daemon::run(crate::daemon::StartOptions {
            config: cli.config.clone(),
            socket: cli.socket.clone(),
            system: cli.system,
        })
        .await),
        Command::Status(flag) => ok(grants::status(&cli.socket_path(), flag.json).await),
        Command::Request(args) => ok(grants::request(&cli.socket_path(), args).await),
        Command::Requests(args) => ok(approvals::requests(&cli.socket_path(), args).await),
        Command::Approve(args) => ok(approvals::approve(&cli.socket_path(), args).await),
        Command::Deny(args) => ok(approvals::deny(&cli.socket_path(), args).await),
        Command::Revoke(args) => ok(grants::revoke(&cli.socket_path(), args).await),
        Command::Release(args) => ok(grants::release(&cli.socket_path(), args).await),
        Command::Audit(args) if args.dir.is_none() && cli.system_layout().is_some() => {
            code(audit::run_remote(args, &cli.socket_path()).await)
        }
        Command::Audit(args) => {
            let dir = match &args.dir {
                Some(dir) => dir.clone(),
                None => audit_dir_of(&cli.config_path())?,
            };
            code(audit::run(args, &dir))
        }
        Command::Config(ConfigCommand::Reload) => {
            if let Response::Done { message } =
                call(&cli.socket_path(), Request::ReloadConfig).await?
            {
                outln!("{message}");
            }
            Ok(0)
        }
        Command::Config(ConfigCommand::Check(args)) => {
            code(config_check::run(&cli.config_path(), args))
        }
        Command::Secret(cmd) if cli.system_layout().is_some() => {
            ok(secret::run_remote(&cli.socket_path(), cmd).await)
        }
        Command::Secret(cmd) => ok(secret::run(&cli.config_path(), cmd).await),
        Command::Token(cmd) => ok(token::run(cmd)),
        Command::Mcp(cmd) => ok(mcp_install::run(cmd)),
        Command::Demo(args) if args.http => ok(crate::demo_http::run().await),
        Command::Demo(args) => ok(crate::demo::run(args.serve, args.dynamic).await),
        Command::Doctor(args) => code(doctor::run(&cli, args).await),
        Command::Completions(args) => ok(docs::completions(args)),
        Command::Man(args) => ok(docs::man(args)),
    }
}

/// The audit directory the config names; the platform default when there is no config file.
fn audit_dir_of(config_path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if !config_path.exists() {
        return Ok(crate::config::DaemonSettings::default()
            .data_dir()
            .join("audit"));
    }
    Ok(crate::config::Config::load(config_path)?.audit_dir())
}

/// Sends one request to the daemon; a daemon-side error becomes an `Err`.
pub(crate) async fn call(socket: &std::path::Path, request: Request) -> anyhow::Result<Response> {
    let mut client = Client::connect(socket).await.map_err(|e| {
        anyhow!(
            "{:#}\nIs the daemon running? Start it with `agentd daemon`.",
            anyhow::Error::from(e)
        )
    })?;
    match client.call(request).await? {
        Response::Error { code, message } => bail!("{message} ({code:?})"),
        other => Ok(other),
    }
}
