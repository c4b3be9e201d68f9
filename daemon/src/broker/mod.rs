//! The broker: access requests, the policy decision, human approvals, grants with a TTL,
//! their listeners, expiry, revoke and release — each step recorded in the audit log before
//! it is acknowledged.
//!
//! - [`lifecycle`](self): `pending → approved | denied | expired | cancelled`; approved
//!   requests produce a grant `active → expired | revoked | released`.
//! - State lives in memory; `persist.rs` keeps a small state file so that a daemon restarted
//!   after a crash records the grants and pending requests it lost as ended (grants are not
//!   restored: their listeners and tokens died with the old process).

mod catalog;
mod credentials;
mod grants;
mod ids;
mod lifecycle;
mod notify;
pub mod persist;
mod views;

use crate::audit::{AuditEvent, AuditLog, AuditOptions, Durability, StatementSink};
use crate::config::Config;
use crate::listener::Listener;
use agentd_proto::{
    AccessRequestSpec, AgentInfo, ErrorCode, GrantState, RequestState, Response, StatusView,
};
use anyhow::Context as _;
use secrecy::SecretString;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Shortest grant, in seconds.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Who sent a control request, as the kernel reported it for the socket's peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    /// Peer process id.
    pub pid: Option<u32>,
    /// Peer user id.
    pub uid: Option<u32>,
}

impl Caller {
    /// `uid U pid P` for the audit log's `by` fields.
    pub fn describe(&self) -> String {
        let show = |v: Option<u32>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!("uid {} pid {}", show(self.uid), show(self.pid))
    }
}

/// An access request as the broker keeps it.
#[derive(Debug)]
struct RequestRecord {
    id: String,
    spec: AccessRequestSpec,
    state: RequestState,
    /// Duration the grant gets (after defaulting and clamping).
    duration: Duration,
    clamped: bool,
    /// The deciding policy's max TTL (a human's `--ttl` is capped by it too).
    max_ttl: Duration,
    created_at: SystemTime,
    pending_until: Option<SystemTime>,
    /// A decision is in progress (a grant is being opened); other decisions must wait.
    deciding: bool,
    decided_by: Option<String>,
    message: Option<String>,
    grant_id: Option<String>,
}

/// A grant as the broker keeps it.
struct GrantRecord {
    id: String,
    request_id: String,
    resource: String,
    permission: String,
    agent: AgentInfo,
    state: GrantState,
    created_at: SystemTime,
    expires_at: SystemTime,
    listener_addr: std::net::SocketAddr,
    socket_dir: Option<PathBuf>,
    database: String,
    token: SecretString,
    listener: Listener,
    /// `http` grants: the Unix socket path and where the client puts the token.
    http: Option<HttpGrantInfo>,
    /// The grant's dynamic role until it is handed to the drop task.
    role: Option<credentials::GrantRole>,
}

/// What an http grant's handle needs besides the TCP address.
struct HttpGrantInfo {
    socket_path: Option<PathBuf>,
    token_placement: String,
    auth_scheme: &'static str,
}

#[derive(Default)]
struct State {
    requests: HashMap<String, RequestRecord>,
    request_order: Vec<String>,
    grants: HashMap<String, GrantRecord>,
    grant_order: Vec<String>,
}

/// The broker. Cheap to share behind an `Arc`.
pub struct Broker {
    config: Arc<Config>,
    config_path: PathBuf,
    /// Where per-grant Unix-socket listeners go (`ROOT/<grant id>/.s.PGSQL.<port>`); `None`
    /// for TCP only.
    unix_socket_root: Option<PathBuf>,
    started: Instant,
    state: Mutex<State>,
    shutdown: CancellationToken,
    audit: Arc<AuditLog>,
    statements: Option<StatementSink>,
    state_file: persist::StateFile,
    /// Bumped on every request state change; `await_request` waits on it.
    changes: watch::Sender<u64>,
    /// Logins from `command` credential sources, cached until their expiry.
    commands: crate::credentials::command::CommandCache,
    /// Background drops of dynamic roles, by grant id.
    role_drops: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
    /// This data directory's id, marking the dynamic roles it creates.
    owner_tag: String,
    /// The data directory's lock, held for the broker's life.
    _data_dir_lock: std::fs::File,
}

impl Broker {
    /// Opens the audit log (`config.audit_dir()`), records the daemon's start, records as
    /// ended whatever a previous daemon left active (see [`persist`]), and starts the
    /// statement-audit writer. Grants get a Unix-socket listener under `unix_socket_root` (a
    /// private directory) besides TCP. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The data directory or audit log cannot be opened or written.
    pub fn open(
        config: Config,
        config_path: PathBuf,
        unix_socket_root: Option<PathBuf>,
    ) -> anyhow::Result<Arc<Self>> {
        let data_dir = config.daemon.data_dir();
        let data_dir_lock = persist::lock_data_dir(&data_dir)
            .with_context(|| format!("cannot lock the data directory {}", data_dir.display()))?;
        let state_file = persist::StateFile::in_dir(&data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let owner_tag = crate::credentials::dynamic::owner_tag(&data_dir)
            .with_context(|| format!("cannot write the instance id in {}", data_dir.display()))?;
        let audit_dir = config.audit_dir();
        let audit = Arc::new(
            AuditLog::open(
                &audit_dir,
                AuditOptions {
                    max_file_bytes: config.audit.max_file_bytes,
                    fsync: config.audit.fsync,
                },
            )
            .with_context(|| format!("cannot open the audit log in {}", audit_dir.display()))?,
        );
        audit
            .append(
                &AuditEvent::DaemonStart {
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                },
                Durability::Sync,
            )
            .context("cannot write the audit log")?;
        let statements = config.audit.statements.then(|| {
            crate::audit::spawn_writer(audit.clone(), crate::audit::sink::DEFAULT_CAPACITY)
        });
        let broker = Arc::new(Self {
            config: Arc::new(config),
            config_path,
            unix_socket_root,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            shutdown: CancellationToken::new(),
            audit,
            statements,
            state_file,
            changes: watch::channel(0).0,
            commands: Default::default(),
            role_drops: Mutex::new(Vec::new()),
            owner_tag,
            _data_dir_lock: data_dir_lock,
        });
        broker.record_previous_daemon_ended()?;
        Ok(broker)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update; the maps are still structurally valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The audit log this broker writes.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Appends a control-plane event and syncs it; the caller acknowledges the action only
    /// after this succeeded.
    fn audit_sync(&self, event: &AuditEvent) -> Result<(), Response> {
        self.audit_sync_all(std::slice::from_ref(event))
    }

    /// Appends control-plane events in order with a single fdatasync (one `write(2)` unless a
    /// rotation falls inside); the caller acknowledges the action only after this succeeded.
    fn audit_sync_all(&self, events: &[AuditEvent]) -> Result<(), Response> {
        self.audit
            .append_batch(events, Durability::Sync)
            .map(|_| ())
            .map_err(|e| {
                error!(error = %e, "audit log write failed");
                error(
                    ErrorCode::AuditUnavailable,
                    "agentd cannot write its audit log, so it refuses to grant unaudited access; \
                     tell the human to check the daemon's log (e.g. a full disk)"
                        .to_owned(),
                )
            })
    }

    /// Records a grant's end; failures are logged but never keep access alive.
    fn audit_best_effort(&self, event: &AuditEvent) {
        if let Err(e) = self.audit.append(event, Durability::Sync) {
            error!(error = %e, "audit log write failed");
        }
    }

    /// Marks a request-state change for long-pollers.
    fn announce_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Writes the state file (active grants and pending requests); failures are logged.
    fn persist(&self) {
        let snapshot = {
            let state = self.state();
            persist::Snapshot {
                pid: std::process::id(),
                grants: state
                    .grant_order
                    .iter()
                    .filter_map(|id| state.grants.get(id))
                    .filter(|g| g.state == GrantState::Active)
                    .map(|g| persist::PersistedGrant {
                        grant_id: g.id.clone(),
                        request_id: g.request_id.clone(),
                        resource: g.resource.clone(),
                        permission: g.permission.clone(),
                        expires_at: views::unix(g.expires_at),
                    })
                    .collect(),
                pending: state
                    .request_order
                    .iter()
                    .filter_map(|id| state.requests.get(id))
                    .filter(|r| r.state == RequestState::Pending)
                    .map(|r| persist::PersistedRequest {
                        request_id: r.id.clone(),
                        resource: r.spec.resource.clone(),
                        permission: r.spec.permission.clone(),
                    })
                    .collect(),
            }
        };
        if let Err(e) = self.state_file.save(&snapshot) {
            warn!(error = %e, path = %self.state_file.path().display(), "cannot write the state file");
        }
    }

    /// Records as ended what a previous daemon (crashed or killed) left in the state file.
    fn record_previous_daemon_ended(&self) -> anyhow::Result<()> {
        let previous = match self.state_file.load() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "state file unreadable; previous grants cannot be recorded as ended");
                return Ok(());
            }
        };
        let now = views::unix(SystemTime::now());
        for g in &previous.grants {
            self.remove_stale_socket_dir(&g.grant_id);
            let state = if g.expires_at <= now {
                "expired"
            } else {
                "revoked"
            };
            self.audit
                .append(
                    &AuditEvent::GrantEnded {
                        grant_id: g.grant_id.clone(),
                        state: state.to_owned(),
                        by: "daemon restart".to_owned(),
                        live_connections: 0,
                    },
                    Durability::Sync,
                )
                .context("cannot write the audit log")?;
        }
        for r in &previous.pending {
            self.audit
                .append(
                    &AuditEvent::Decision {
                        request_id: r.request_id.clone(),
                        decision: "expired".to_owned(),
                        by: "daemon restart".to_owned(),
                        reason: Some("the daemon restarted before a decision".to_owned()),
                        rule: None,
                    },
                    Durability::Sync,
                )
                .context("cannot write the audit log")?;
        }
        if !previous.grants.is_empty() || !previous.pending.is_empty() {
            info!(
                grants = previous.grants.len(),
                pending = previous.pending.len(),
                previous_pid = previous.pid,
                "recorded what the previous daemon left as ended"
            );
        }
        self.persist();
        Ok(())
    }

    /// Removes the Unix-socket directory a killed daemon left for `grant_id` (its socket
    /// file refuses connections already; this removes the file too). Only well-formed grant
    /// ids are joined to the path, so a tampered state file cannot point elsewhere.
    fn remove_stale_socket_dir(&self, grant_id: &str) {
        let well_formed = grant_id.starts_with("g_")
            && grant_id.len() <= 64
            && grant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let Some(root) = self.unix_socket_root.as_ref().filter(|_| well_formed) else {
            return;
        };
        let dir = root.join(grant_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => info!(dir = %dir.display(), "removed a stale grant socket directory"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(error = %e, dir = %dir.display(), "cannot remove a stale grant socket directory")
            }
        }
    }

    /// Looks up a request.
    pub fn get_request(&self, request_id: &str) -> Response {
        let state = self.state();
        match state.requests.get(request_id) {
            Some(r) => Response::AccessRequest(Box::new(views::view_request(&state, r))),
            None => no_such_request(request_id),
        }
    }

    /// Requests, newest first: pending ones, or all with `all`.
    pub fn list_requests(&self, all: bool) -> Response {
        let state = self.state();
        let requests = state
            .request_order
            .iter()
            .rev()
            .filter_map(|id| state.requests.get(id))
            .filter(|r| all || r.state == RequestState::Pending)
            .map(|r| views::view_request(&state, r))
            .collect();
        Response::Requests { requests }
    }

    /// Daemon status.
    pub fn status(&self) -> Response {
        let state = self.state();
        let grants = state
            .grant_order
            .iter()
            .filter_map(|id| state.grants.get(id))
            .filter(|g| g.state == GrantState::Active)
            .map(views::view_grant)
            .collect();
        let pending = state
            .request_order
            .iter()
            .filter_map(|id| state.requests.get(id))
            .filter(|r| r.state == RequestState::Pending)
            .map(|r| views::view_request(&state, r))
            .collect();
        Response::Status(Box::new(StatusView {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            audit_dir: self.config.audit_dir().display().to_string(),
            statements_dropped: self
                .statements
                .as_ref()
                .map_or(0, StatementSink::dropped_total),
            grants,
            pending_requests: pending,
        }))
    }

    /// Ends every grant and pending request, then waits for what they leave behind before
    /// recording the daemon's stop: the cut sessions' close records and queued statement
    /// records (up to [`SHUTDOWN_GRACE`]), and the grants' dynamic roles being dropped (up
    /// to [`credentials::ROLE_DROP_GRACE`]; leftovers are swept at the next start). Nothing
    /// queued at SIGTERM is lost unless a grace period runs out (then it is logged).
    pub async fn shutdown(&self) {
        self.end_everything("daemon shutdown");
        if tokio::time::timeout(SHUTDOWN_GRACE, self.drain_sessions())
            .await
            .is_err()
        {
            warn!(
                grace_seconds = SHUTDOWN_GRACE.as_secs(),
                "shutdown: sessions or statement records still pending after the grace period"
            );
        }
        self.await_role_drops_at_shutdown().await;
        self.record_stop();
    }

    /// Cancels everything, ends every grant and expires every pending request.
    fn end_everything(&self, by: &str) {
        self.shutdown.cancel();
        let (grants, pending): (Vec<String>, Vec<String>) = {
            let state = self.state();
            (
                state.grant_order.clone(),
                state
                    .request_order
                    .iter()
                    .filter(|id| {
                        state
                            .requests
                            .get(*id)
                            .is_some_and(|r| r.state == RequestState::Pending)
                    })
                    .cloned()
                    .collect(),
            )
        };
        for id in grants {
            self.end_grant(&id, GrantState::Revoked, by);
        }
        for id in pending {
            self.expire_request(&id, by);
        }
    }

    /// Records the daemon's stop and writes the state file.
    fn record_stop(&self) {
        self.audit_best_effort(&AuditEvent::DaemonStop {
            pid: std::process::id(),
        });
        self.persist();
    }
}

/// How long shutdown waits for cut sessions and queued statement records.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Broker {
    /// Waits for every listener's session tasks to finish (they were cut) and then for the
    /// statement writer to write what they queued.
    async fn drain_sessions(&self) {
        let listeners: Vec<Listener> = self
            .state()
            .grants
            .values()
            .map(|g| g.listener.clone())
            .collect();
        for listener in listeners {
            listener.sessions().close();
            listener.sessions().wait().await;
        }
        if let Some(sink) = &self.statements {
            sink.flush().await;
        }
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

fn no_such_request(request_id: &str) -> Response {
    error(
        ErrorCode::NotFound,
        format!("no access request {request_id}; request ids look like r_…"),
    )
}
