//! `agentd daemon`: hardens the process (no core dumps, see
//! [`crate::credentials::hardening`]), loads the config, binds the control socket, sweeps
//! dynamic roles a previous daemon left behind, prints one ready line on stdout and serves
//! until SIGINT or SIGTERM, then ends every grant (cutting their sessions, dropping their
//! dynamic roles) and removes the socket. Logs go to stderr.

use crate::broker::Broker;
use crate::config::Config;
use crate::control;
use agentd_proto::Client;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Runs the daemon in the foreground until interrupted.
///
/// # Errors
/// Config errors, an insecure socket directory, or another daemon already serving `socket`.
pub async fn run(config_path: PathBuf, socket: PathBuf) -> anyhow::Result<()> {
    crate::credentials::hardening::apply();
    let config = Config::load(&config_path)?;
    prepare_socket(&socket).await?;
    let listener = control::bind(&socket)
        .with_context(|| format!("cannot bind control socket {}", socket.display()))?;
    let unix_root = socket.parent().map(|d| d.join("pg"));
    let broker = Broker::open(config, config_path.clone(), unix_root)?;
    broker.sweep_dynamic_roles().await;
    let stop = CancellationToken::new();
    info!(socket = %socket.display(), config = %config_path.display(), pid = std::process::id(), "agentd daemon ready");
    announce_ready(&socket);
    let server = tokio::spawn(control::serve(listener, broker.clone(), stop.clone()));
    wait_for_shutdown_signal().await;
    info!("shutting down: ending all grants");
    stop.cancel();
    broker.shutdown().await;
    let _ = server.await;
    #[cfg(unix)]
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Prints the one stdout line a supervisor (the MCP shim's autostart, scripts, tests) can
/// wait for: `{"ready":true,"socket":PATH,"pid":N}`. Nothing else is written to stdout, so
/// the reader may close the pipe afterwards.
fn announce_ready(socket: &Path) {
    use std::io::Write as _;
    let line = serde_json::json!({"ready": true, "socket": socket, "pid": std::process::id()});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Makes sure the socket's directory is private and no other daemon is serving there; a
/// stale socket file from a dead daemon is removed.
async fn prepare_socket(socket: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        if let Some(dir) = socket.parent() {
            agentd_proto::socket::ensure_private_dir(dir)?;
        }
        if socket.exists() {
            if Client::connect(socket).await.is_ok() {
                bail!(
                    "another agentd daemon is already serving {}",
                    socket.display()
                );
            }
            std::fs::remove_file(socket)
                .with_context(|| format!("removing stale socket {}", socket.display()))?;
        }
    }
    #[cfg(windows)]
    {
        if Client::connect(socket).await.is_ok() {
            bail!(
                "another agentd daemon is already serving {}",
                socket.display()
            );
        }
    }
    Ok(())
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
