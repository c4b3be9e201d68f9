//! Reaching the daemon: one control-socket call per tool call, starting `agentd daemon` in
//! the background first when nothing listens on the socket.

use agentd_proto::{Client, ClientError, Request, Response};
use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Mutex;

/// How long to wait for a freshly started daemon's ready line (seconds).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the daemon is and how to start it.
#[derive(Debug)]
pub struct DaemonLink {
    /// Control socket path.
    pub socket: PathBuf,
    /// `--config` for a daemon we start.
    pub config: Option<PathBuf>,
    /// `--profile` for a daemon we start (`None`: the default profile).
    pub profile: Option<String>,
    /// Start the daemon when it is not running.
    pub autostart: bool,
    /// The `agentd` binary.
    pub agentd_bin: Option<PathBuf>,
}

/// Serialises autostart so two concurrent tool calls start one daemon.
static START_LOCK: Mutex<()> = Mutex::const_new(());

impl DaemonLink {
    /// Sends one request, starting the daemon first if needed.
    ///
    /// # Errors
    /// The daemon cannot be reached or started (the message says how to start it by hand).
    pub async fn call(&self, request: Request) -> anyhow::Result<Response> {
        let mut client = self.connect().await?;
        Ok(client.call(request).await?)
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        match Client::connect(&self.socket).await {
            Ok(client) => return Ok(client),
            // A socket someone else serves: never start a daemon next to it or retry.
            Err(e @ (ClientError::NotOurDaemon { .. } | ClientError::OpenDirectory { .. })) => {
                tracing::warn!(error = %e, "refused the control socket");
                return Err(e.into());
            }
            Err(_) => {}
        }
        if !self.autostart {
            bail!(
                "the agentd daemon is not running at {}; ask the human to run `agentd daemon`",
                self.socket.display()
            );
        }
        let _guard = START_LOCK.lock().await;
        if let Ok(client) = Client::connect(&self.socket).await {
            return Ok(client);
        }
        self.start_daemon().await?;
        Client::connect(&self.socket)
            .await
            .context("the daemon started but its socket does not answer")
    }

    fn agentd_bin(&self) -> PathBuf {
        if let Some(bin) = &self.agentd_bin {
            return bin.clone();
        }
        let sibling = std::env::current_exe().ok().and_then(|exe| {
            exe.parent()
                .map(|d| d.join(format!("agentd{}", std::env::consts::EXE_SUFFIX)))
        });
        sibling
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("agentd"))
    }

    /// Starts `agentd daemon` detached (its own process group, stdin closed, logs appended to
    /// `agentd.log` beside the socket) and waits for its ready line on stdout.
    async fn start_daemon(&self) -> anyhow::Result<()> {
        let bin = self.agentd_bin();
        // agentd.sock → agentd.log; agentd-NAME.sock → agentd-NAME.log
        let log_path = self.socket.with_extension("log");
        if let Some(dir) = self.socket.parent() {
            #[cfg(unix)]
            agentd_proto::socket::ensure_private_dir(dir)?;
            #[cfg(not(unix))]
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        if let Some(profile) = &self.profile {
            cmd.arg("--profile").arg(profile);
        }
        cmd.arg("--socket").arg(&self.socket);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        #[cfg(unix)]
        cmd.process_group(0);
        tracing::info!(bin = %bin.display(), socket = %self.socket.display(), "starting the agentd daemon");
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} daemon; is agentd installed?",
                bin.display()
            )
        })?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.contains("\"ready\":true") => Ok(()),
            Ok(_) => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "the agentd daemon did not start ({}); see {}",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "no ready line".into()),
                    log_path.display()
                )
            }
            Err(_) => bail!(
                "the agentd daemon did not become ready within {}s; see {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            ),
        }
    }
}
