//! A daemon with one grant and one live session: the fixture of the hostile-input, fault
//! and load tests.

use crate::*;
use agentd::demo::{Sandbox, SandboxOptions};
use serde_json::Value;
use tokio_postgres::{Client, Config, NoTls};

/// A daemon with one grant and one live session on it (the bystander every test checks).
pub struct Granted {
    /// The cluster, config and canary secret.
    pub sandbox: Sandbox,
    /// The running daemon.
    pub daemon: DaemonProcess,
    /// The grant's handle (`handle` of `agentd request --json`).
    pub handle: Value,
    /// A session opened at the start, kept live.
    pub live: Client,
}

impl Granted {
    /// A sandbox with `daemon_toml` added to `[daemon]`, its daemon, a 30-minute grant and
    /// a live session on it.
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start(daemon_toml: &str) -> anyhow::Result<Self> {
        Self::start_with(SandboxOptions {
            extra_daemon_toml: daemon_toml.to_owned(),
            ..SandboxOptions::default()
        })
        .await
    }

    /// As [`Granted::start`] with full sandbox options.
    ///
    /// # Errors
    /// Any step failing.
    pub async fn start_with(options: SandboxOptions) -> anyhow::Result<Self> {
        let sandbox = sandbox(options).await?;
        let daemon = DaemonProcess::start(&sandbox).await?;
        let handle = request_via_cli(&sandbox, "30m").await?.json()?["handle"].clone();
        let (live, conn) = config(&handle, &token(&handle)).connect(NoTls).await?;
        tokio::spawn(conn);
        let target = Self {
            sandbox,
            daemon,
            handle,
            live,
        };
        target.bystander_ok().await?;
        Ok(target)
    }

    /// The grant listener's TCP port.
    pub fn port(&self) -> u16 {
        handle_port(&self.handle)
    }

    /// The live session still answers, and a new session with the right token works.
    ///
    /// # Errors
    /// Either failing.
    pub async fn bystander_ok(&self) -> anyhow::Result<()> {
        let row = self.live.query_one("SELECT count(*) FROM orders", &[]);
        let row = tokio::time::timeout(STEP_TIMEOUT, row).await??;
        anyhow::ensure!(row.get::<_, i64>(0) == 3, "live session broken");
        let (ok, out, err) = psql(&handle_env(&self.handle), "SELECT 1").await?;
        anyhow::ensure!(ok && out.trim() == "1", "new session failed: {err}");
        Ok(())
    }

    /// Stops the daemon (SIGTERM, must exit 0) and scans everything the system emitted,
    /// plus `outputs`, for the canary.
    ///
    /// # Errors
    /// A bad exit or a leak.
    pub async fn finish(self, outputs: &[(String, String)]) -> anyhow::Result<()> {
        drop(self.live);
        let status = self.daemon.stop().await?;
        anyhow::ensure!(status.success(), "daemon exit: {status}");
        assert_sandbox_clean(&self.sandbox, outputs)?;
        Ok(())
    }
}

/// The grant token in a handle JSON.
pub fn token(handle: &Value) -> String {
    handle["env"]["PGPASSWORD"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// tokio-postgres settings for the handle's TCP listener with `password`.
pub fn config(handle: &Value, password: &str) -> Config {
    let mut c = Config::new();
    c.host("127.0.0.1")
        .port(handle_port(handle))
        .user(handle["user"].as_str().unwrap_or_default())
        .password(password)
        .dbname(DATABASE)
        .connect_timeout(STEP_TIMEOUT);
    c
}
