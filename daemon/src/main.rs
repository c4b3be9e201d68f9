//! The `agentd` binary: parses the command line and runs it on a tokio runtime.

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = agentd::cli::Cli::parse();
    match agentd_proto::profile::Profile::new(cli.profile.as_deref()) {
        Ok(profile) => agentd_proto::profile::set_active(profile),
        Err(e) => {
            eprintln!("agentd: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    // The demo is for reading: only warnings unless AGENTD_LOG asks for more.
    let quiet = matches!(cli.command, agentd::cli::Command::Demo(_));
    init_logging(if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agentd::cli::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("agentd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, plain text, one line per event through
/// [`agentd_proto::text::SafeLines`] (a client's text cannot forge a line or reach the
/// reader's terminal as escape sequences); `AGENTD_LOG` takes a `tracing` filter (default
/// `default_level`).
fn init_logging(default_level: &str) {
    let mut filter =
        EnvFilter::try_from_env("AGENTD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // aws-sigv4 traces the canonical request, which holds an AWS session token: never on.
    if let Ok(off) = "aws_sigv4=off".parse() {
        filter = filter.add_directive(off);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| agentd_proto::text::SafeLines(std::io::stderr()))
        .with_ansi(false)
        .init();
}
