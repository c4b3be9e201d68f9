//! The `agentd` command line: argument parsing (clap) and the subcommands.

pub mod audit;
mod config_check;
mod grants;
mod secret;

use crate::config::default_config_path;
use agentd_proto::{default_socket_path, Client, Request, Response};
use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// agentd keeps database credentials away from AI agents: a local daemon holds the secrets
/// and opens authenticated loopback listeners; agents only ever get short-lived handles.
///
/// Quick start: `agentd demo` runs the whole path against a throwaway PostgreSQL.
/// Humans manage access with `agentd status` and `agentd revoke`.
#[derive(Debug, Parser)]
#[command(name = "agentd", version, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "AGENTD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket path (a named pipe on Windows).
    #[arg(long, global = true, env = "AGENTD_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
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
    /// Revoke a grant (or all): its listener closes and its live sessions are cut.
    Revoke(RevokeArgs),
    /// Store or delete an upstream secret in the OS keychain.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Run the whole path on a throwaway local PostgreSQL: cluster, grant, psql through the
    /// proxy; then clean up.
    Demo(DemoArgs),
    /// Inspect the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `agentd config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the config; show each resource, permission and policy in plain
    /// English, where the audit log goes, and warnings. Exit code 1 when it does not load.
    Check(config_check::ConfigCheckArgs),
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

/// `agentd revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["grant_id", "all"])))]
pub struct RevokeArgs {
    /// The grant id (g_…) from `agentd status`.
    pub grant_id: Option<String>,
    /// Revoke every active grant.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentd secret`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store the secret for RESOURCE/PERMISSION; read from a no-echo prompt, or from stdin
    /// when it is not a terminal (never from the command line).
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
}

/// `agentd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep everything running; print one JSON line `{"dsn","socket","config"}` first, and
    /// clean up on Ctrl-C.
    #[arg(long)]
    pub serve: bool,
}

impl Cli {
    /// The config path in force.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(default_config_path)
    }
    /// The control socket path in force.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the subcommand reports; `main` prints it and exits 1.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Daemon => crate::daemon::run(cli.config_path(), cli.socket_path()).await,
        Command::Status(flag) => grants::status(&cli.socket_path(), flag.json).await,
        Command::Request(args) => grants::request(&cli.socket_path(), args).await,
        Command::Revoke(args) => grants::revoke(&cli.socket_path(), args).await,
        Command::Secret(cmd) => secret::run(&cli.config_path(), cmd).await,
        Command::Demo(args) => crate::demo::run(args.serve).await,
        Command::Config(ConfigCommand::Check(args)) => {
            match config_check::run(&cli.config_path(), args)? {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
    }
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
