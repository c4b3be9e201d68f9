//! What every `agentd demo` variant shares to leave nothing behind: one private temporary
//! directory that owns the run's keychain entries ([`DemoDir`], removed with them on drop),
//! a cleanup record inside it naming everything the run made ([`CleanupRecord`]), the
//! signals that stop a demo ([`Signals`]: SIGINT, SIGTERM, SIGHUP), a sweep of what a
//! killed run (SIGKILL, power loss) left ([`sweep_stale`]), and the grant request and
//! revoke both demos make.
//!
//! Order of cleanup, whatever the way out (normal end, signal, error, panic): the cluster
//! is stopped (its owner drops it first), then the keychain entries are deleted, then the
//! directory with the record goes last, so a run killed half-way through cleanup is still
//! swept by the next one.

use crate::credentials::keychain;
use agentd_proto::{AccessRequestSpec, AgentInfo, Client, Handle, Request, Response, RevokeTarget};
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prefix of every demo's temporary directory and keychain service.
pub const PREFIX: &str = "agentd-demo-";

/// File name of the [`CleanupRecord`] inside a demo's directory.
pub const RECORD_FILE: &str = "cleanup.json";

/// Writes one line to stderr, ignoring failure: after SIGHUP the terminal may be gone, and
/// `eprintln!` would panic in the middle of cleanup.
pub fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub use crate::pgcluster::random_hex;

/// What a demo run made, written (0600, replaced atomically) into its directory as
/// [`RECORD_FILE`] before each thing is made, so that [`sweep_stale`] can undo a run that
/// was killed. JSON: `{"pid", "start_time", "keyring_service", "keychain_entries",
/// "cluster_dir", "other_dirs"}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CleanupRecord {
    /// The demo's process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22), to tell a
    /// reused pid from the owner; `None` where there is no `/proc`.
    pub start_time: Option<u64>,
    /// The one-off keychain service (`agentd-demo-<12 hex>`).
    pub keyring_service: String,
    /// Keychain entries (accounts) under that service.
    pub keychain_entries: Vec<String>,
    /// The throwaway PostgreSQL cluster's directory (data in `data/`), when there is one.
    pub cluster_dir: Option<PathBuf>,
    /// Other temporary directories of the run (e.g. the HTTP echo upstream's CA).
    pub other_dirs: Vec<PathBuf>,
}

/// Start time of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22);
/// `None` when the process or `/proc` does not exist, or the process has exited and
/// waits to be reaped (state `Z` or `X`).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl CleanupRecord {
    /// A record for this process.
    fn new(keyring_service: String, keychain_entries: Vec<String>) -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_time: process_start_time(pid),
            keyring_service,
            keychain_entries,
            cluster_dir: None,
            other_dirs: Vec::new(),
        }
    }

    /// Writes the record into `dir` (temporary file, then rename).
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
        crate::fsutil::write_private_file(&tmp, &serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, dir.join(RECORD_FILE))?;
        Ok(())
    }

    /// Whether the process that wrote the record still runs. Without `/proc` (macOS) we
    /// cannot tell a reused pid apart and say yes, so nothing is swept there.
    fn owner_alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        match process_start_time(self.pid) {
            None => false,
            Some(now) => self.start_time.is_none_or(|then| then == now),
        }
    }
}

/// A demo's private (0700) temporary directory `$TMPDIR/agentd-demo-XXXX`, its one-off
/// keychain service, and the [`CleanupRecord`] inside it. Dropping it deletes the keychain
/// entries and removes the directory (errors ignored); [`DemoDir::cleanup`] does the same
/// and reports. Both may run any number of times.
#[derive(Debug)]
pub struct DemoDir {
    dir: tempfile::TempDir,
    record: CleanupRecord,
}

impl DemoDir {
    /// Creates the directory and writes the record naming `keychain_entries` (under a new
    /// `agentd-demo-<12 hex>` service), before any of them is stored.
    ///
    /// # Errors
    /// The directory or the record cannot be written.
    pub fn create(keychain_entries: Vec<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let record = CleanupRecord::new(format!("{PREFIX}{}", random_hex(6)), keychain_entries);
        record.write(dir.path())?;
        Ok(Self { dir, record })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The keychain service of this run.
    pub fn keyring_service(&self) -> &str {
        &self.record.keyring_service
    }

    /// What the record says.
    pub fn record(&self) -> &CleanupRecord {
        &self.record
    }

    /// Records the run's PostgreSQL cluster directory (call as soon as it exists).
    ///
    /// # Errors
    /// The record cannot be written.
    pub fn note_cluster_dir(&mut self, cluster_dir: &Path) -> anyhow::Result<()> {
        self.record.cluster_dir = Some(cluster_dir.to_owned());
        self.record.write(self.dir.path())
    }

    /// Records another temporary directory of the run.
    ///
    /// # Errors
    /// The record cannot be written.
    pub fn note_other_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        self.record.other_dirs.push(dir.to_owned());
        self.record.write(self.dir.path())
    }

    /// Deletes the keychain entries, then removes the directory. Stop the cluster first
    /// (its owner does). Entries already gone are fine.
    ///
    /// # Errors
    /// Every entry or removal that failed, in one message (never a secret).
    pub fn cleanup(&self) -> anyhow::Result<()> {
        let mut problems = delete_entries(&self.record);
        if let Err(e) = remove_dir(self.dir.path()) {
            problems.push(format!("removing {}: {e}", self.dir.path().display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("cleanup incomplete: {}", problems.join("; "))
        }
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// `remove_dir_all`, where a directory already gone is success.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes the record's keychain entries; returns what failed (gone already is fine).
fn delete_entries(record: &CleanupRecord) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in &record.keychain_entries {
        match keychain::delete(&record.keyring_service, entry) {
            Ok(()) | Err(keychain::KeychainError::NotFound) => {}
            Err(e) => problems.push(format!(
                "deleting keychain entry {}/{entry}: {e}",
                record.keyring_service
            )),
        }
    }
    problems
}

/// A path the sweep may remove: directly inside the temporary directory, named
/// `agentd-…`, owned by us (or, for a cluster when we are root, by anyone: `postgres`).
fn sweepable(path: &Path, any_owner: bool) -> bool {
    let tmp = std::env::temp_dir();
    let named = path.parent() == Some(tmp.as_path())
        && path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("agentd-"));
    named && (any_owner || owned_by_us(path))
}

#[cfg(unix)]
fn owned_by_us(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.uid() == agentd_proto::socket::current_uid())
}

#[cfg(not(unix))]
fn owned_by_us(path: &Path) -> bool {
    path.is_dir()
}

/// Undoes the demos whose process is gone (killed with SIGKILL, a crash, a reboot): for
/// every `$TMPDIR/agentd-demo-*` directory of ours holding a [`CleanupRecord`] whose
/// process no longer runs, stops its cluster (`pg_ctl stop -m immediate`), deletes its
/// keychain entries (reachable from this session's keychain), removes its directories.
/// Directories without a record, or whose owner runs, are left alone. Returns one line
/// per swept run, for the user. Blocking. Linux only (elsewhere nothing is swept: see
/// [`CleanupRecord::owner_alive`]).
pub fn sweep_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) || !owned_by_us(&path) {
            continue;
        }
        let Some(record) = std::fs::read(path.join(RECORD_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<CleanupRecord>(&b).ok())
        else {
            continue;
        };
        if record.owner_alive() {
            continue;
        }
        let mut problems = Vec::new();
        if let Some(cluster) = record
            .cluster_dir
            .as_deref()
            .filter(|c| sweepable(c, agentd_proto::socket::current_uid() == 0))
        {
            if let Err(e) = crate::pgcluster::stop_stale(cluster) {
                problems.push(format!("stopping its cluster: {e:#}"));
            } else if let Err(e) = remove_dir(cluster) {
                problems.push(format!("removing {}: {e}", cluster.display()));
            }
        }
        problems.extend(delete_entries(&record));
        for dir in record.other_dirs.iter().filter(|d| sweepable(d, false)) {
            if let Err(e) = remove_dir(dir) {
                problems.push(format!("removing {}: {e}", dir.display()));
            }
        }
        if problems.is_empty() {
            if let Err(e) = remove_dir(&path) {
                problems.push(format!("removing it: {e}"));
            }
        }
        swept.push(if problems.is_empty() {
            format!(
                "removed what a killed demo (pid {}) left in {}",
                record.pid,
                path.display()
            )
        } else {
            format!(
                "could not fully clean up a killed demo (pid {}) in {}: {}",
                record.pid,
                path.display(),
                problems.join("; ")
            )
        });
    }
    swept
}

/// The signals that stop a demo: SIGINT (Ctrl-C), SIGTERM (`kill`, systemd, container
/// runtimes) and SIGHUP (the terminal closed). Once installed, these signals no longer
/// kill the process: a second one during cleanup is only reported.
pub struct Signals {
    #[cfg(unix)]
    streams: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime). Call before making anything.
    ///
    /// # Errors
    /// The handlers cannot be installed.
    pub fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                streams: [
                    (signal(SignalKind::interrupt())?, "SIGINT"),
                    (signal(SignalKind::terminate())?, "SIGTERM"),
                    (signal(SignalKind::hangup())?, "SIGHUP"),
                ],
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next of the signals; returns its name (`"SIGINT"`, …).
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let [(int, a), (term, b), (hup, c)] = &mut self.streams;
            tokio::select! {
                _ = int.recv() => a,
                _ = term.recv() => b,
                _ = hup.recv() => c,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// Awaits a blocking task (making or cleaning up a demo) to the end: a signal meanwhile is
/// reported and ignored, so the work is never left half-done.
///
/// # Errors
/// The task panicked.
pub async fn finish<T>(
    mut task: tokio::task::JoinHandle<T>,
    signals: &mut Signals,
    label: &str,
) -> anyhow::Result<T> {
    loop {
        tokio::select! {
            done = &mut task => return done.context("a demo step panicked"),
            name = signals.recv() => {
                say(&format!("{label}: {name} received; finishing the cleanup first"));
            }
        }
    }
}

/// A demo's way out: says it is cleaning up, runs `cleanup` on a blocking thread to its end
/// (signals meanwhile only reported, as in [`finish`]), then returns the run's `result`, or
/// the cleanup's error when the run succeeded.
///
/// # Errors
/// The run's error first, then the cleanup's, or the cleanup task panicking.
pub async fn close<F>(
    result: anyhow::Result<()>,
    cleanup: F,
    signals: &mut Signals,
    label: &str,
) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    say(&format!("{label}: cleaning up"));
    let cleaned = finish(tokio::task::spawn_blocking(cleanup), signals, label).await;
    result?;
    cleaned?
}

/// Sweeps what killed demos left (see [`sweep_stale`]) and tells the user.
pub async fn sweep_and_report(label: &str) {
    if let Ok(lines) = tokio::task::spawn_blocking(sweep_stale).await {
        for line in lines {
            say(&format!("{label}: {line}"));
        }
    }
}

/// A demo's daemon, in this process: the broker and its control server on a private
/// socket (0600).
pub struct InProcessDaemon {
    /// The broker.
    pub broker: std::sync::Arc<crate::broker::Broker>,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl InProcessDaemon {
    /// Binds `socket`, opens the broker for `config` (grant sockets under `grant_sockets`)
    /// and serves the control protocol.
    ///
    /// # Errors
    /// The socket cannot be bound, or the broker cannot open its data directory.
    pub fn start(
        config: crate::config::Config,
        config_path: PathBuf,
        socket: &Path,
        grant_sockets: PathBuf,
    ) -> anyhow::Result<Self> {
        let listener = crate::control::bind(socket, 0o600)
            .with_context(|| format!("binding {}", socket.display()))?;
        let broker = crate::broker::Broker::open(config, config_path, Some(grant_sockets))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(crate::control::serve(
            listener,
            broker.clone(),
            stop.clone(),
        ));
        Ok(Self {
            broker,
            stop,
            server,
        })
    }

    /// Stops serving and shuts the broker down (grants end, listeners close).
    pub async fn stop(self) {
        self.stop.cancel();
        self.broker.shutdown().await;
        let _ = self.server.await;
    }
}

/// Asks for `resource`/`permission` for 10 minutes as agent type `agentd-demo`; returns
/// the handle.
///
/// # Errors
/// Refused, no grant, or an unexpected reply.
pub async fn request_grant(
    client: &mut Client,
    resource: &str,
    permission: &str,
    justification: &str,
) -> anyhow::Result<Handle> {
    let spec = AccessRequestSpec {
        resource: resource.to_owned(),
        permission: permission.to_owned(),
        duration_seconds: Some(600),
        justification: justification.to_owned(),
        agent: AgentInfo {
            agent_type: "agentd-demo".to_owned(),
            ..AgentInfo::default()
        },
    };
    match client.call(Request::RequestAccess(spec)).await? {
        Response::AccessRequest(view) => {
            let view = *view;
            let message = view.message.unwrap_or_default();
            view.handle.with_context(|| format!("no grant: {message}"))
        }
        Response::Error { code, message } => bail!("request refused ({code:?}): {message}"),
        other => bail!("unexpected reply: {other:?}"),
    }
}

/// Revokes every grant and says which on stderr, prefixed with `label`.
///
/// # Errors
/// The daemon's refusal or an unexpected reply.
pub async fn revoke_all(client: &mut Client, label: &str) -> anyhow::Result<()> {
    match client
        .call(Request::Revoke {
            target: RevokeTarget::All,
        })
        .await?
    {
        Response::Revoked { grant_ids } => {
            eprintln!("{label}: revoked {}", grant_ids.join(", "));
            Ok(())
        }
        other => bail!("unexpected reply to revoke: {other:?}"),
    }
}
