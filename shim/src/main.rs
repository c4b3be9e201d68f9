//! `agentd-mcp`: the MCP server an AI client (Claude Code, Claude Desktop, Cursor, VS Code)
//! starts over stdio. It forwards tool calls to the agentd daemon over the control socket
//! and returns connection handles only; it never sees an upstream secret.
//!
//! Modules: [`tools`] is the MCP tool surface, [`daemon`] reaches (and if needed starts)
//! the daemon.

mod daemon;
mod tools;

use clap::Parser;
use rmcp::ServiceExt as _;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// MCP server (stdio) for agentd. Add it to your AI client's MCP config; the agent can then
/// list resources and request short-lived database access, receiving a local DSN, never a
/// password.
#[derive(Debug, Parser)]
#[command(name = "agentd-mcp", version)]
struct Args {
    /// Control socket of the daemon.
    #[arg(long, env = "AGENTD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file the daemon is started with when it is not running.
    #[arg(long, env = "AGENTD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// What kind of agent this is, recorded on every request (claude-code, claude-desktop,
    /// cursor, vscode, …).
    #[arg(long, env = "AGENTD_AGENT_TYPE", default_value = "other")]
    agent_type: String,
    /// Do not start the daemon when it is not running; report an error instead.
    #[arg(long)]
    no_autostart: bool,
    /// The `agentd` binary used to start the daemon (default: next to this binary, else on
    /// PATH).
    #[arg(long, env = "AGENTD_BIN", value_name = "PATH")]
    agentd_bin: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // stdout carries MCP messages; logs go to stderr, which MCP clients keep.
    let filter = EnvFilter::try_from_env("AGENTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd-mcp: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentd-mcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let daemon = daemon::DaemonLink {
        socket: args
            .socket
            .unwrap_or_else(agentd_proto::default_socket_path),
        config: args.config,
        autostart: !args.no_autostart,
        agentd_bin: args.agentd_bin,
    };
    let server = tools::AgentdTools::new(daemon, args.agent_type);
    tracing::info!("agentd-mcp serving on stdio");
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
