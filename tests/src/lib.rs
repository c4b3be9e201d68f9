//! The end-to-end harness: real PostgreSQL (through [`agentd::demo::Sandbox`], which starts
//! a throwaway cluster with SCRAM-SHA-256 and TLS), the real `agentd` and `agentd-mcp`
//! binaries, real `psql`, and rmcp's MCP client over the shim's stdio.
//!
//! Nothing here mocks agentd: tests drive the binaries a user runs.

use agentd::demo::{Sandbox, SandboxOptions};
use anyhow::{bail, Context as _};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

pub use agentd::demo::{DATABASE, PERMISSION, RESOURCE};

mod granted;
pub use granted::{config, token, Granted};
pub mod http;
pub mod raw;

/// Every tool `agentd-mcp` offers, sorted by name.
pub const TOOL_NAMES: [&str; 10] = [
    "await_approval",
    "describe_resource",
    "get_request",
    "http_request",
    "list_grants",
    "list_resources",
    "recommend_access",
    "release_access",
    "request_access",
    "run_query",
];

/// Longest any single step may take before a test fails instead of hanging (seconds).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the `agentd` and `agentd-mcp` binaries once per test process (a no-op when they
/// are fresh) and returns the directory holding them. `cargo test` only builds the binaries
/// of packages with their own integration tests, so the harness asks cargo itself.
///
/// # Panics
/// When cargo fails to build them: no end-to-end test can run then.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let release = !cfg!(debug_assertions);
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(&workspace).args([
            "build",
            "--quiet",
            "-p",
            "agentd",
            "-p",
            "agentd-mcp",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        // Cargo gives this test process the variables it sets for the `agentd-tests`
        // package (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, …). Build scripts such as ring's
        // declare `rerun-if-env-changed` on those names, so passing them on would make this
        // build and the next `cargo test` each rebuild ring, rustls and agentd.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
                || name == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&*name);
            }
        }
        let status = cmd.status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "building agentd and agentd-mcp failed: {status:?}"
        );
        // Tests run from target/<profile>/deps/; the binaries are one level up.
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    })
}

/// Path of one of our binaries (`agentd` or `agentd-mcp`).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A random canary password: if it ever shows up outside the daemon's memory and the
/// keychain, a test fails.
pub fn canary_password() -> SecretString {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    SecretString::from(format!("canary-{hex}"))
}

/// A sandbox (cluster + config + stored secret) whose upstream password is a canary.
///
/// # Errors
/// Cluster or keychain failures.
pub async fn sandbox(mut options: SandboxOptions) -> anyhow::Result<Sandbox> {
    if options.password.is_none() {
        options.password = Some(canary_password());
    }
    tokio::task::spawn_blocking(move || Sandbox::create(options)).await?
}

/// A running `agentd daemon` child process, its stderr captured to a file.
pub struct DaemonProcess {
    child: tokio::process::Child,
    /// The daemon's stderr (its log).
    pub log_path: PathBuf,
    /// Its pid.
    pub pid: u32,
}

impl DaemonProcess {
    /// Starts `agentd daemon` for `sandbox` and waits for its ready line.
    ///
    /// # Errors
    /// The daemon exits or does not become ready within [`STEP_TIMEOUT`].
    pub async fn start(sandbox: &Sandbox) -> anyhow::Result<Self> {
        Self::start_with_env(sandbox, &[]).await
    }

    /// Like [`DaemonProcess::start`], with extra environment variables for the daemon
    /// (e.g. a `PATH` with a stand-in `notify-send` and a `DISPLAY`).
    ///
    /// # Errors
    /// The daemon exits or does not become ready within [`STEP_TIMEOUT`].
    pub async fn start_with_env(
        sandbox: &Sandbox,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        Self::start_in(
            sandbox.dir.path(),
            &sandbox.config_path,
            &sandbox.socket_path,
            env,
        )
        .await
    }

    /// Starts `agentd --config CONFIG --socket SOCKET daemon` (no sandbox: a config of the
    /// test's own) and waits for its ready line; the log goes next to the config.
    ///
    /// # Errors
    /// As [`DaemonProcess::start`].
    pub async fn start_with(config: &Path, socket: &Path) -> anyhow::Result<Self> {
        let dir = config.parent().context("config has no parent directory")?;
        Self::start_in(dir, config, socket, &[]).await
    }

    /// Starts `agentd daemon` with `config` and `socket`, its log in `dir`, and waits for its
    /// ready line.
    ///
    /// # Errors
    /// As [`DaemonProcess::start`].
    pub async fn start_at(dir: &Path, config: &Path, socket: &Path) -> anyhow::Result<Self> {
        Self::start_in(dir, config, socket, &[]).await
    }

    async fn start_in(
        dir: &Path,
        config: &Path,
        socket: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        // A restarted daemon gets a log of its own: daemon.log, daemon-2.log, …
        let log_path = (1..)
            .map(|n| match n {
                1 => dir.join("daemon.log"),
                n => dir.join(format!("daemon-{n}.log")),
            })
            .find(|p| !p.exists())
            .context("log name")?;
        let log = std::fs::File::create(&log_path)?;
        let mut child = tokio::process::Command::new(bin("agentd"))
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .arg("daemon")
            .env("AGENTD_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting agentd daemon")?;
        let pid = child.id().context("daemon pid")?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
            .await
            .context("daemon ready line timed out")??;
        match line {
            Some(l) if l.contains("\"ready\":true") => Ok(Self {
                child,
                log_path,
                pid,
            }),
            other => bail!(
                "daemon did not start: {other:?}; log: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
        }
    }

    /// Stops the daemon with SIGTERM (Unix) and waits for it to exit.
    ///
    /// # Errors
    /// Waiting fails or it does not exit within [`STEP_TIMEOUT`].
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        terminate(self.pid);
        Ok(tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await??)
    }

    /// Kills the daemon with SIGKILL (no cleanup at all) and waits for it to die.
    ///
    /// # Errors
    /// Killing or waiting failed.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await??;
        Ok(())
    }

    /// The daemon log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Sends SIGTERM to `pid` (Unix); kills it elsewhere is left to `kill_on_drop`.
pub fn terminate(pid: u32) {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 when killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// stdout parsed as JSON.
    ///
    /// # Errors
    /// stdout is not JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {:?} / {:?}", self.stdout, self.stderr))
    }
}

/// Runs `agentd --config … --socket … ARGS` the way an agent's shell tool would: stdin from
/// /dev/null and, on Linux, in a new session without a controlling terminal (`setsid -w`),
/// so the test behaves the same whether or not `cargo test` runs in a terminal.
///
/// # Errors
/// The binary cannot run or hangs past [`STEP_TIMEOUT`].
pub async fn agentd_cli(sandbox: &Sandbox, args: &[&str]) -> anyhow::Result<CliOutput> {
    agentd_cli_at(&sandbox.config_path, &sandbox.socket_path, args).await
}

/// [`agentd_cli`] with an explicit config and socket.
///
/// # Errors
/// As [`agentd_cli`].
pub async fn agentd_cli_at(
    config: &Path,
    socket: &Path,
    args: &[&str],
) -> anyhow::Result<CliOutput> {
    let mut cmd = if cfg!(target_os = "linux") {
        let mut c = tokio::process::Command::new("setsid");
        c.arg("-w").arg(bin("agentd"));
        c
    } else {
        tokio::process::Command::new(bin("agentd"))
    };
    cmd.arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    output_of(cmd).await
}

/// Runs `cmd` to completion (at most [`STEP_TIMEOUT`]) and collects its output.
async fn output_of(mut cmd: tokio::process::Command) -> anyhow::Result<CliOutput> {
    let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output()).await??;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What to type at `agentd approve`'s prompt to approve: [`agentd_cli_at_terminal`]
/// replaces it with the confirmation code the prompt shows.
pub const APPROVE_CODE: &str = "{code}\n";

/// The confirmation code in an approval prompt (`… Type 1234 to approve …`), if shown.
pub fn shown_code(screen: &str) -> Option<String> {
    let at = screen.find("? Type ")? + "? Type ".len();
    let code = screen.get(at..at + 4)?;
    (code.bytes().all(|b| b.is_ascii_digit()) && screen[at + 4..].starts_with(" to approve"))
        .then(|| code.to_owned())
}

/// `argv` as one `sh` command line, each word single-quoted (for `script --command`).
pub fn shell_line(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `agentd … ARGS` at a real terminal: inside a pseudo-terminal made by util-linux
/// `script`, with `typed` written to the terminal as the human's keystrokes (see
/// [`type_at_terminal`]). The output is the terminal's (prompts, echoed input and the
/// command's stdout/stderr, in `stdout`).
///
/// # Errors
/// `script` cannot run or hangs past [`STEP_TIMEOUT`].
pub async fn agentd_cli_at_terminal(
    sandbox: &Sandbox,
    args: &[&str],
    typed: &str,
) -> anyhow::Result<CliOutput> {
    let agentd = bin("agentd").display().to_string();
    let config = sandbox.config_path.display().to_string();
    let socket = sandbox.socket_path.display().to_string();
    let mut argv = vec![
        agentd.as_str(),
        "--config",
        config.as_str(),
        "--socket",
        socket.as_str(),
    ];
    argv.extend_from_slice(args);
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["--quiet", "--return", "--command"])
        .arg(shell_line(&argv))
        .arg("/dev/null");
    type_at_terminal(cmd, typed).await
}

/// Runs `cmd` (a `script(1)` terminal) and types `typed` at it as the terminal's owner
/// would. When `typed` holds `{code}` (see [`APPROVE_CODE`]), the keystrokes wait until the
/// approval prompt shows its confirmation code, which replaces `{code}`, as a human reads
/// and types it; if the command ends without showing one, nothing is typed. Returns the
/// terminal's output in `stdout`.
///
/// # Errors
/// `cmd` cannot start, or it or the wait for the prompt takes longer than [`STEP_TIMEOUT`].
pub async fn type_at_terminal(
    mut cmd: tokio::process::Command,
    typed: &str,
) -> anyhow::Result<CliOutput> {
    use tokio::io::AsyncReadExt as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting script(1) for a pseudo-terminal")?;
    let mut stdin = child.stdin.take().context("script stdin")?;
    let mut stdout = child.stdout.take().context("script stdout")?;
    let mut screen = Vec::new();
    let typed = if typed.contains("{code}") {
        let code = tokio::time::timeout(STEP_TIMEOUT, async {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(code) = shown_code(&String::from_utf8_lossy(&screen)) {
                    return anyhow::Ok(Some(code));
                }
                let n = stdout.read(&mut chunk).await?;
                if n == 0 {
                    return anyhow::Ok(None);
                }
                screen.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .context("waiting for the approval prompt")??;
        code.map(|code| typed.replace("{code}", &code))
    } else {
        Some(typed.to_owned())
    };
    if let Some(typed) = typed {
        stdin.write_all(typed.as_bytes()).await?;
    }
    drop(stdin);
    let rest = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await?;
        anyhow::Ok(rest)
    })
    .await??;
    screen.extend_from_slice(&rest);
    let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await??;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&screen).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// An MCP client connected to `agentd-mcp` over stdio.
pub struct McpSession {
    /// rmcp's running client.
    pub client: RunningService<RoleClient, ClientConfig>,
    /// The shim's stderr (its log).
    pub log_path: PathBuf,
}

impl McpSession {
    /// Starts `agentd-mcp --socket … --config … --agent-type e2e-test` (unless `extra_args`
    /// name another `--agent-type`) and initialises MCP.
    ///
    /// # Errors
    /// The shim fails to start or to initialise.
    pub async fn start(sandbox: &Sandbox, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(sandbox, extra_args, &[]).await
    }

    /// Like [`McpSession::start`], with extra environment variables for the shim.
    ///
    /// # Errors
    /// The shim fails to start or to initialise.
    pub async fn start_with_env(
        sandbox: &Sandbox,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        Self::spawn(sandbox, extra_args, env, client_config()).await
    }

    /// Like [`McpSession::start`], with the MCP client announcing itself as
    /// `clientInfo { name, version }` (e.g. a hostile name).
    ///
    /// # Errors
    /// The shim fails to start or to initialise.
    pub async fn start_as(sandbox: &Sandbox, name: &str, version: &str) -> anyhow::Result<Self> {
        let config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(name, version),
        );
        Self::spawn(sandbox, &[], &[], config).await
    }

    /// Like [`McpSession::start_with_env`] with explicit paths: the shim's log goes in `dir`.
    ///
    /// # Errors
    /// The shim fails to start or to initialise.
    pub async fn start_in_dir(
        dir: &Path,
        socket: &Path,
        config: &Path,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> anyhow::Result<Self> {
        Self::spawn_at(dir, socket, config, extra_args, env, client_config()).await
    }

    async fn spawn(
        sandbox: &Sandbox,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        config: ClientConfig,
    ) -> anyhow::Result<Self> {
        Self::spawn_at(
            sandbox.dir.path(),
            &sandbox.socket_path,
            &sandbox.config_path,
            extra_args,
            env,
            config,
        )
        .await
    }

    async fn spawn_at(
        dir: &Path,
        socket: &Path,
        config_path: &Path,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        config: ClientConfig,
    ) -> anyhow::Result<Self> {
        static SHIMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SHIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = dir.join(format!("shim-{}-{n}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = tokio::process::Command::new(bin("agentd-mcp"));
        cmd.arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(config_path)
            .args(if extra_args.contains(&"--agent-type") {
                &[][..]
            } else {
                &["--agent-type", "e2e-test"][..]
            })
            .args(extra_args)
            .envs(env.iter().copied())
            .env("AGENTD_BIN", bin("agentd"));
        let (transport, _) = TokioChildProcess::builder(cmd).stderr(log).spawn()?;
        let client = tokio::time::timeout(STEP_TIMEOUT, config.serve(transport)).await??;
        Ok(Self { client, log_path })
    }

    /// `agentd-mcp --socket SOCKET --no-autostart` (no sandbox: e.g. a socket someone else
    /// serves), its stderr to `log_path`, initialised over stdio.
    ///
    /// # Errors
    /// The shim fails to start or to initialise.
    pub async fn start_at(socket: &Path, log_path: PathBuf) -> anyhow::Result<Self> {
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = tokio::process::Command::new(bin("agentd-mcp"));
        cmd.arg("--socket")
            .arg(socket)
            .args(["--no-autostart", "--agent-type", "e2e-test"]);
        let (transport, _) = TokioChildProcess::builder(cmd).stderr(log).spawn()?;
        let client = tokio::time::timeout(STEP_TIMEOUT, client_config().serve(transport)).await??;
        Ok(Self { client, log_path })
    }

    /// An MCP client over streamable HTTP to `url` (e.g. `http://127.0.0.1:PORT/mcp`),
    /// sending `Authorization: Bearer TOKEN`; `log_path` is the shim's log.
    ///
    /// # Errors
    /// Connection or MCP initialisation failures (e.g. a refused token).
    pub async fn connect_http(url: &str, token: &str, log_path: PathBuf) -> anyhow::Result<Self> {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url).auth_header(token),
        );
        let client = tokio::time::timeout(STEP_TIMEOUT, client_config().serve(transport)).await??;
        Ok(Self { client, log_path })
    }

    /// Calls a tool and returns (structured result, is_error, all text content).
    ///
    /// # Errors
    /// MCP failures or a hang past [`STEP_TIMEOUT`].
    pub async fn call(&self, tool: &'static str, arguments: Value) -> anyhow::Result<ToolOutcome> {
        let mut params = CallToolRequestParams::new(tool);
        if let Value::Object(map) = arguments {
            params = params.with_arguments(map);
        }
        let result = tokio::time::timeout(STEP_TIMEOUT, self.client.call_tool(params)).await??;
        let raw = serde_json::to_string(&result)?;
        Ok(ToolOutcome {
            value: result.structured_content.clone().unwrap_or(Value::Null),
            is_error: result.is_error.unwrap_or(false),
            raw,
        })
    }

    /// Closes the MCP session (the shim exits).
    ///
    /// # Errors
    /// rmcp's shutdown error.
    pub async fn close(self) -> anyhow::Result<String> {
        let _ = self.client.cancel().await;
        Ok(std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }
}

fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("agentd-e2e", "1.0"),
    )
}

/// `agentd-mcp --http 127.0.0.1:0` as a child process; its stderr goes to `log_path` after
/// the `listening on` line, which gives the URL.
pub struct HttpShim {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// The shim's stderr.
    pub log_path: PathBuf,
}

impl HttpShim {
    /// Starts the shim for `sandbox` with `--tokens-file tokens` and `extra_args`, and waits
    /// for its listening line.
    ///
    /// # Errors
    /// The shim exits (its stderr is in the error) or does not listen within
    /// [`STEP_TIMEOUT`].
    pub async fn start(
        sandbox: &Sandbox,
        tokens: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let log_path = sandbox
            .dir
            .path()
            .join(format!("shim-http-{}.log", std::process::id()));
        let mut child = tokio::process::Command::new(bin("agentd-mcp"))
            .arg("--socket")
            .arg(&sandbox.socket_path)
            .arg("--config")
            .arg(&sandbox.config_path)
            .arg("--tokens-file")
            .arg(tokens)
            .args(["--agent-type", "e2e-http", "--http", "127.0.0.1:0"])
            .args(extra_args)
            .env("AGENTD_BIN", bin("agentd"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting agentd-mcp --http")?;
        let stderr = child.stderr.take().context("shim stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = String::new();
        let url = loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
                .await
                .context("agentd-mcp --http did not listen in time")??;
            let Some(line) = line else {
                bail!("agentd-mcp --http exited: {seen}");
            };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(url) = line.split("listening on ").nth(1) {
                break url.trim().to_owned();
            }
        };
        let mut log = tokio::fs::File::create(&log_path).await?;
        log.write_all(seen.as_bytes()).await?;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Ok(Self {
            child,
            url,
            log_path,
        })
    }

    /// Stops the shim (SIGTERM) and returns its log.
    ///
    /// # Errors
    /// It does not exit within [`STEP_TIMEOUT`].
    pub async fn stop(mut self) -> anyhow::Result<String> {
        if let Some(pid) = self.child.id() {
            terminate(pid);
        }
        tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await??;
        Ok(std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }
}

/// Runs the `agentd` binary with `args` and only `env` added to a minimal environment
/// (`PATH`, plus `HOME`/`XDG_*` as given), for commands that need no daemon.
///
/// # Errors
/// The binary cannot run or hangs past [`STEP_TIMEOUT`].
pub async fn agentd_plain(args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(bin("agentd"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    output_of(cmd).await
}

/// A tool call's result.
#[derive(Debug)]
pub struct ToolOutcome {
    /// `structuredContent`.
    pub value: Value,
    /// `isError`.
    pub is_error: bool,
    /// The whole result as JSON text, for leak scans.
    pub raw: String,
}

/// The libpq environment from a handle JSON (`handle.env`).
pub fn handle_env(handle: &Value) -> Vec<(String, String)> {
    handle["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs real `psql -X -At -v ON_ERROR_STOP=1 -c SQL` with `env`; returns (success, stdout,
/// stderr).
///
/// # Errors
/// psql cannot run or hangs past [`STEP_TIMEOUT`].
pub async fn psql(env: &[(String, String)], sql: &str) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        psql_command(env)
            .args(["-At", "-c", sql])
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A `psql -X -v ON_ERROR_STOP=1` command with only `PATH` and `env` set.
pub fn psql_command(env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(agentd::pgcluster::psql_path());
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    cmd
}

/// An interactive `psql` session fed through stdin, for tests that need a live connection.
pub struct LivePsql {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl LivePsql {
    /// Starts `psql -At` reading commands from stdin.
    ///
    /// # Errors
    /// psql cannot start.
    pub fn start(env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut child = psql_command(env)
            .args(["-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("psql stdin")?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().context("psql stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one single-row query and returns its one line of output.
    ///
    /// # Errors
    /// psql exits or hangs past [`STEP_TIMEOUT`].
    pub async fn query_line(&mut self, sql: &str) -> anyhow::Result<String> {
        self.stdin.write_all(format!("{sql}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(STEP_TIMEOUT, self.stdout.next_line()).await??;
        line.context("psql closed its output")
    }

    /// Sends a query expected to fail because the connection was cut, closes stdin and
    /// returns psql's exit success and stderr.
    ///
    /// # Errors
    /// psql hangs past [`STEP_TIMEOUT`].
    pub async fn finish_with(mut self, sql: &str) -> anyhow::Result<(bool, String)> {
        let _ = self.stdin.write_all(format!("{sql}\n").as_bytes()).await;
        drop(self.stdin);
        let out = tokio::time::timeout(STEP_TIMEOUT, self.child.wait_with_output()).await??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Fails if `secret` occurs in any of `(label, text)`; the message names where, never the
/// secret.
///
/// # Errors
/// The first place the secret was found.
pub fn assert_no_leak<'a>(
    secret: &SecretString,
    places: impl IntoIterator<Item = (String, &'a str)>,
) -> anyhow::Result<()> {
    let needle = secret.expose_secret();
    for (label, text) in places {
        if text.contains(needle) {
            bail!("the upstream secret leaked into {label}");
        }
    }
    Ok(())
}

/// Every regular file under `dir` (recursively) as `(path, lossy text)`.
pub fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    out.push((
                        path.display().to_string(),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

/// `agentd request demo --permission read_only --ttl TTL --json`, which must succeed.
///
/// # Errors
/// The CLI fails or exits non-zero (its stderr is in the error).
pub async fn request_via_cli(sandbox: &Sandbox, ttl: &str) -> anyhow::Result<CliOutput> {
    let out = agentd_cli(
        sandbox,
        &[
            "request",
            RESOURCE,
            "--permission",
            PERMISSION,
            "--ttl",
            ttl,
            "--json",
        ],
    )
    .await?;
    anyhow::ensure!(out.code == 0, "agentd request failed: {}", out.stderr);
    Ok(out)
}

/// The grant id in an access-request view JSON (`grant.id`; empty when absent).
pub fn grant_id(view: &Value) -> String {
    view["grant"]["id"].as_str().unwrap_or_default().to_owned()
}

/// The listener port in a handle JSON (0 when absent).
pub fn handle_port(handle: &Value) -> u16 {
    handle["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`); `None` where
/// procfs is missing.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The canary scan over everything the system emitted for `sandbox`: every file under its
/// directory (daemon and shim logs, config, audit log, state file, Unix-socket dirs) plus
/// `outputs` (MCP results, CLI and psql output). Returns how many places were scanned.
///
/// # Errors
/// The first place the upstream secret was found (named, the secret never printed).
pub fn assert_sandbox_clean(
    sandbox: &Sandbox,
    outputs: &[(String, String)],
) -> anyhow::Result<usize> {
    let mut places = files_under(sandbox.dir.path());
    places.extend(outputs.iter().cloned());
    assert_no_leak(
        &sandbox.upstream_password,
        places.iter().map(|(l, t)| (l.clone(), t.as_str())),
    )?;
    Ok(places.len())
}

/// Creates the system user `name` (no home, `nologin` shell) unless it exists, and returns
/// its uid. Tests that play another local OS user call it (they run as root); two tests
/// creating the same user at once is fine.
///
/// # Errors
/// Running `id` or `useradd`, or the user still missing after `useradd`.
pub fn ensure_system_user(name: &str) -> anyhow::Result<u32> {
    let id = || {
        std::process::Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if let Some(uid) = id() {
        return Ok(uid);
    }
    // Another test may create it at the same moment: its "already exists" is fine.
    let _ = std::process::Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()?;
    id().ok_or_else(|| anyhow::anyhow!("useradd {name} failed"))
}
