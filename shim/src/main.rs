//! `agentd-mcp`: the MCP server an AI client (Claude Code, Claude Desktop, Cursor, VS Code)
//! starts, over stdio (default) or streamable HTTP on loopback (`--http`). It forwards tool
//! calls to the agentd daemon over the control socket and returns connection handles only;
//! it never sees an upstream secret.
//!
//! Modules: [`tools`] is the MCP tool surface, [`recommend`] the rules of
//! `recommend_access`, [`query`] runs `run_query` through a grant's listener, [`http`] the
//! HTTP transport with bearer tokens, [`daemon`] reaches (and if needed starts) the daemon.

mod daemon;
mod http;
mod http_call;
mod query;
mod recommend;
mod tools;

use agentd_proto::profile::Profile;
use clap::Parser;
use rmcp::ServiceExt as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

/// MCP server for agentd. Add it to your AI client (`agentd mcp install --client …`); the
/// agent can then discover databases and request short-lived access, receiving a local DSN,
/// never a password.
///
/// Transports: stdio (default), or streamable HTTP on loopback with `--http 127.0.0.1:PORT`
/// (every request needs `Authorization: Bearer TOKEN`, from `agentd token create`).
#[derive(Debug, Parser)]
#[command(name = "agentd-mcp", version)]
struct Args {
    /// Profile: its own config, socket, data dir and keychain entries (see `agentd --help`).
    #[arg(long, env = "AGENTD_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    /// Control socket of the daemon (default: the profile's).
    #[arg(long, env = "AGENTD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Config file the daemon is started with when it is not running.
    #[arg(long, env = "AGENTD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// What kind of agent this is, recorded on every request and matched by policy rules:
    /// claude-code, claude-desktop, cursor, vscode or other.
    #[arg(long, env = "AGENTD_AGENT_TYPE", default_value = "other")]
    agent_type: String,
    /// Serve streamable HTTP on this loopback address (e.g. 127.0.0.1:8765) instead of
    /// stdio. Needs a token from `agentd token create`.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The bearer-token store for --http (default: the profile's mcp-tokens.json).
    #[arg(long, env = "AGENTD_MCP_TOKENS", value_name = "PATH")]
    tokens_file: Option<PathBuf>,
    /// Write debug logs to the platform log file ($XDG_STATE_HOME/agentd/mcp.log,
    /// ~/Library/Logs/agentd/mcp.log, %LOCALAPPDATA%\agentd\mcp.log) instead of stderr.
    #[arg(long)]
    debug: bool,
    /// Write logs to this file instead (implies --debug).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
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
    let profile = match Profile::new(args.profile.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("agentd-mcp: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    agentd_proto::profile::set_active(profile);
    if let Err(e) = init_logging(&args) {
        eprintln!("agentd-mcp: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
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
            tracing::error!(error = %format!("{e:#}"), "agentd-mcp stopped");
            eprintln!("agentd-mcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs never go to stdout (the stdio transport). Default: stderr (MCP clients keep it) at
/// `AGENTD_LOG` or `info`. `--debug` / `--log-file`: appended to the log file at `debug`
/// for agentd-mcp (rmcp stays at `info`, so no message bodies are logged). Every line goes
/// through [`agentd_proto::text::SafeLines`]: client text cannot forge lines or send
/// escape sequences to whoever reads the log.
fn init_logging(args: &Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let log_file = args.log_file.clone().or_else(|| {
        args.debug
            .then(|| agentd_proto::profile::active().mcp_log_path())
    });
    let Some(path) = log_file else {
        let filter =
            EnvFilter::try_from_env("AGENTD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| agentd_proto::text::SafeLines(std::io::stderr()))
            .with_ansi(false)
            .init();
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the log directory {}", dir.display()))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options
        .open(&path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let filter = EnvFilter::try_from_env("AGENTD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,agentd_mcp=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(agentd_proto::text::SafeLines(file)))
        .with_ansi(false)
        .init();
    tracing::info!(log = %path.display(), pid = std::process::id(), "agentd-mcp debug log");
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let profile = agentd_proto::profile::active();
    // System mode (see agentd_proto::system::client_wants_system): the system socket, and
    // never an autostarted daemon (a daemon this user starts would be a user-mode one).
    let system = agentd_proto::system::Layout::current()
        .ok()
        .filter(|layout| {
            agentd_proto::system::client_wants_system(
                false,
                args.socket.is_some() || args.profile.is_some(),
                layout,
            )
        });
    let daemon = Arc::new(daemon::DaemonLink {
        socket: match (&args.socket, &system) {
            (Some(socket), _) => socket.clone(),
            (None, Some(layout)) => layout.socket.clone(),
            (None, None) => profile.socket_path(),
        },
        config: args.config,
        profile: profile.name().map(str::to_owned),
        autostart: !args.no_autostart && system.is_none(),
        agentd_bin: args.agentd_bin,
    });
    if let Some(addr) = args.http {
        let tokens = args
            .tokens_file
            .unwrap_or_else(|| profile.mcp_tokens_path());
        return http::serve(addr, tokens, daemon, args.agent_type).await;
    }
    let server = tools::AgentdTools::new(daemon, args.agent_type);
    tracing::info!("agentd-mcp serving on stdio");
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// Resolves on Ctrl-C or (Unix) SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
