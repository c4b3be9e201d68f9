//! `agentd daemon`: hardens the process (no core dumps, see
//! [`crate::credentials::hardening`]), loads the config, binds the control socket, sweeps
//! dynamic roles a previous daemon left behind, prints one ready line on stdout and serves
//! until SIGINT or SIGTERM, then ends every grant (cutting their sessions, dropping their
//! dynamic roles) and removes the socket. Logs go to stderr.

use crate::broker::Broker;
use crate::config::Config;
use crate::control;
use crate::principal::Mode;
use agentd_proto::Client;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// How `agentd daemon` was asked to start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// `--config`, if given.
    pub config: Option<PathBuf>,
    /// `--socket`, if given.
    pub socket: Option<PathBuf>,
    /// `--system` (or `AGENTD_SYSTEM=1`).
    pub system: bool,
}

/// Runs the daemon in the foreground until interrupted. In system mode (`--system`, or
/// `[daemon] mode = "system"` in the config) the config defaults to
/// `/etc/agentd/config.toml`, the socket to `/run/agentd/agentd.sock` (mode 0666: the daemon
/// classifies every peer) and the layout is checked first ([`crate::system::prepare`]).
///
/// # Errors
/// Config errors, an insecure layout or socket directory, running as root in system mode,
/// or another daemon already serving the socket.
pub async fn run(options: StartOptions) -> anyhow::Result<()> {
    crate::credentials::hardening::apply();
    let layout = if options.system {
        Some(agentd_proto::system::Layout::current()?)
    } else {
        None
    };
    let config_path = match (&options.config, &layout) {
        (Some(path), _) => path.clone(),
        (None, Some(layout)) => layout.config.clone(),
        (None, None) => crate::config::default_config_path(),
    };
    let mut config = Config::load(&config_path)?;
    let system = options.system || config.daemon.mode == Mode::System;
    let (socket, unix_root, socket_mode) = if system {
        #[cfg(unix)]
        {
            let layout = match layout {
                Some(l) => l,
                None => agentd_proto::system::Layout::current()?,
            };
            config.daemon.mode = Mode::System;
            let prepared =
                crate::system::prepare(&layout, &config_path, options.socket.clone(), &mut config)?;
            refuse_live_daemon(&prepared.socket).await?;
            (prepared.socket, Some(prepared.grant_socket_root), 0o666)
        }
        #[cfg(not(unix))]
        bail!("system mode is supported on Unix only")
    } else {
        let socket = options
            .socket
            .clone()
            .unwrap_or_else(|| agentd_proto::profile::active().socket_path());
        prepare_socket(&socket).await?;
        let unix_root = socket.parent().map(|d| d.join("pg"));
        (socket, unix_root, 0o600)
    };
    let listener = control::bind(&socket, socket_mode)
        .with_context(|| format!("cannot bind control socket {}", socket.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(socket_mode))
            .with_context(|| format!("chmod {socket_mode:o} {}", socket.display()))?;
    }
    let broker = Broker::open(config, config_path.clone(), unix_root)?;
    broker.sweep_dynamic_roles().await;
    let stop = CancellationToken::new();
    info!(socket = %socket.display(), config = %config_path.display(), pid = std::process::id(), mode = %broker.roles().mode().as_str(), "agentd daemon ready");
    announce_ready(&socket);
    let server = tokio::spawn(control::serve(listener, broker.clone(), stop.clone()));
    spawn_reload_on_sighup(broker.clone());
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

/// Refuses when another daemon answers on `socket`; removes a stale socket file. (System
/// mode calls it directly: its run directory was checked by [`crate::system::prepare`].)
#[cfg(unix)]
async fn refuse_live_daemon(socket: &Path) -> anyhow::Result<()> {
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
    Ok(())
}

/// Makes sure the socket's directory is private and no other daemon is serving there; a
/// stale socket file from a dead daemon is removed.
async fn prepare_socket(socket: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        if let Some(dir) = socket.parent() {
            agentd_proto::socket::ensure_private_dir(dir)?;
        }
        refuse_live_daemon(socket).await?;
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

/// SIGHUP re-reads the config ([`Broker::reload_config`]); the outcome is logged.
fn spawn_reload_on_sighup(broker: std::sync::Arc<Broker>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match broker.reload_config("SIGHUP") {
                    agentd_proto::Response::Error { message, .. } => {
                        tracing::warn!(%message, "SIGHUP: config not reloaded");
                    }
                    _ => info!("SIGHUP: config reloaded"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = broker;
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
