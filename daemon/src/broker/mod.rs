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
use crate::principal::{Owner, Principal, Roles};
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

/// An access request as the broker keeps it.
#[derive(Debug)]
struct RequestRecord {
    id: String,
    spec: AccessRequestSpec,
    /// The requesting instance (from the OS); only it sees the handle, awaits or cancels.
    owner: Owner,
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
    /// The requesting instance (from the OS); only it sees the token or releases the grant.
    owner: Owner,
    state: GrantState,
    created_at: SystemTime,
    expires_at: SystemTime,
    /// When it stopped being active (for [`Broker::forget_old`]).
    ended_at: Option<SystemTime>,
    listener_addr: std::net::SocketAddr,
    socket_dir: Option<PathBuf>,
    /// The grant's libpq service file (0600, in `socket_dir`), when written.
    service_file: Option<PathBuf>,
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
    /// `aws_sigv4`: the region, for the handle's `AWS_*` variables.
    aws_region: Option<String>,
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
    config: std::sync::RwLock<Arc<Config>>,
    config_path: PathBuf,
    /// Who is served and as what (from `[daemon] mode`, `clients`, `admin_group`).
    roles: std::sync::RwLock<Roles>,
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
    commands: Arc<crate::credentials::command::CommandCache>,
    /// Background drops of dynamic roles, by grant id.
    role_drops: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
    /// This data directory's id, marking the dynamic roles it creates.
    owner_tag: String,
    /// Fixed-login permissions whose stored login stopped authenticating after a grant, by
    /// (resource, permission); see [`credentials`]'s login check.
    tampered: Arc<Mutex<HashMap<(String, String), agentd_proto::TamperedView>>>,
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
        let audit_options = AuditOptions {
            max_file_bytes: config.audit.max_file_bytes,
            fsync: config.audit.fsync,
        };
        // System mode keys the chain with a secret only the daemon's user can read.
        let opened = match config.daemon.mode {
            crate::principal::Mode::System => AuditLog::open_keyed(
                &audit_dir,
                audit_options,
                &data_dir.join(crate::audit::key::KEY_FILE),
            ),
            crate::principal::Mode::User => AuditLog::open(&audit_dir, audit_options),
        };
        let audit =
            Arc::new(opened.with_context(|| {
                format!("cannot open the audit log in {}", audit_dir.display())
            })?);
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
            crate::audit::spawn_writer(
                audit.clone(),
                config.audit.statement_queue,
                config.audit.on_overflow,
            )
        });
        let roles = Roles::new(
            config.daemon.mode,
            daemon_uid(),
            config.daemon.clients.clone(),
            config.daemon.admin_group.clone(),
        );
        let broker = Arc::new(Self {
            roles: std::sync::RwLock::new(roles),
            config: std::sync::RwLock::new(Arc::new(config)),
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
            tampered: Default::default(),
            _data_dir_lock: data_dir_lock,
        });
        broker.record_previous_daemon_ended()?;
        spawn_forgetter(&broker);
        Ok(broker)
    }

    /// Forgets grants that ended, and decided requests created, more than `[daemon]
    /// retention` ago (a request stays while its grant is remembered), and finished
    /// background role-drop / login-check tasks. Returns how many grants and requests were
    /// forgotten. The audit log keeps their history.
    pub fn forget_old(&self) -> (usize, usize) {
        let retention = self.config().daemon.retention;
        let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
            return (0, 0);
        };
        let mut state = self.state();
        let before = (state.grants.len(), state.requests.len());
        state
            .grants
            .retain(|_, g| g.state == GrantState::Active || g.ended_at.is_none_or(|t| t > cutoff));
        let State {
            requests, grants, ..
        } = &mut *state;
        requests.retain(|_, r| {
            r.state == RequestState::Pending
                || r.deciding
                || r.created_at > cutoff
                || r.grant_id.as_ref().is_some_and(|g| grants.contains_key(g))
        });
        let State {
            requests,
            request_order,
            grants,
            grant_order,
        } = &mut *state;
        grant_order.retain(|id| grants.contains_key(id));
        request_order.retain(|id| requests.contains_key(id));
        let forgotten = (
            before.0 - state.grants.len(),
            before.1 - state.requests.len(),
        );
        drop(state);
        self.role_drops_lock().retain(|(_, t)| !t.is_finished());
        forgotten
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update; the maps are still structurally valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who this daemon serves and as what (a copy: a config reload may change it).
    pub fn roles(&self) -> Roles {
        self.roles.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The config in force (a reload replaces it; grants keep what they started with).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the config file (the `ReloadConfig` verb, SIGHUP). The mode and the data
    /// directory cannot change without a restart; in system mode the file must still pass
    /// the ownership checks. Active grants keep their settings; new requests, policy
    /// decisions and client roles follow the new config. Recorded as `admin_action
    /// config_reloaded`.
    pub fn reload_config(&self, by: &str) -> Response {
        let old = self.config();
        let mut new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    ErrorCode::BadRequest,
                    format!("config not reloaded, the old one stays in force: {e}"),
                )
            }
        };
        let mode = old.daemon.mode;
        #[cfg(unix)]
        if mode == crate::principal::Mode::System {
            if let Err(e) = crate::system::check_config(&self.config_path) {
                return error(ErrorCode::Denied, format!("config not reloaded: {e:#}"));
            }
            new.daemon.mode = mode;
        }
        if new.daemon.mode != mode {
            return error(
                ErrorCode::BadRequest,
                "config not reloaded: [daemon] mode changed; restart the daemon for that"
                    .to_owned(),
            );
        }
        let data_dir = old.daemon.data_dir();
        if new.daemon.data_dir.as_ref().is_some_and(|d| *d != data_dir) {
            return error(
                ErrorCode::BadRequest,
                "config not reloaded: [daemon] data_dir changed; restart the daemon for that"
                    .to_owned(),
            );
        }
        new.daemon.data_dir = Some(data_dir);
        let roles = Roles::new(
            mode,
            daemon_uid(),
            new.daemon.clients.clone(),
            new.daemon.admin_group.clone(),
        );
        if let Err(refusal) = self.audit_sync(&AuditEvent::AdminAction {
            action: "config_reloaded".to_owned(),
            target: self.config_path.display().to_string(),
            by: by.to_owned(),
        }) {
            return refusal;
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        *self.roles.write().unwrap_or_else(|p| p.into_inner()) = roles;
        info!(config = %self.config_path.display(), by, "config reloaded");
        Response::Done {
            message: format!("reloaded {}", self.config_path.display()),
        }
    }

    /// The audit log this broker writes.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Appends a control-plane event and syncs it; the caller acknowledges the action only
    /// after this succeeded.
    pub(crate) fn audit_sync(&self, event: &AuditEvent) -> Result<(), Response> {
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

    /// Looks up one of `caller`'s requests, with its handle while the grant is active.
    /// Admins see anyone's request (what `agentd approve` shows before asking), never with
    /// a handle. For a client, someone else's request is answered exactly like an unknown id.
    pub fn get_request(&self, request_id: &str, caller: &Principal) -> Response {
        let state = self.state();
        match state.requests.get(request_id) {
            Some(r) if caller.owns(&r.owner) => {
                Response::AccessRequest(Box::new(views::view_request(&state, r, true)))
            }
            // Admins read requests through `ListRequests` (never a handle); for everyone
            // else, including a same-uid admin in user mode, someone else's request does not
            // exist.
            _ => no_such_request(request_id),
        }
    }

    /// Requests, newest first: pending ones, or all with `all`. Admins see everyone's,
    /// clients their own; nobody gets a handle here.
    pub fn list_requests(&self, all: bool, caller: &Principal) -> Response {
        let state = self.state();
        let requests = state
            .request_order
            .iter()
            .rev()
            .filter_map(|id| state.requests.get(id))
            .filter(|r| all || r.state == RequestState::Pending)
            .filter(|r| caller.is_admin() || caller.owns(&r.owner))
            .map(|r| views::view_request(&state, r, false))
            .collect();
        Response::Requests { requests }
    }

    /// Daemon status: admins see every active grant and pending request, clients their
    /// own; never a token.
    pub fn status(&self, caller: &Principal) -> Response {
        let state = self.state();
        let grants = state
            .grant_order
            .iter()
            .filter_map(|id| state.grants.get(id))
            .filter(|g| g.state == GrantState::Active)
            .filter(|g| caller.is_admin() || caller.owns(&g.owner))
            .map(views::view_grant)
            .collect();
        let pending = state
            .request_order
            .iter()
            .filter_map(|id| state.requests.get(id))
            .filter(|r| r.state == RequestState::Pending)
            .filter(|r| caller.is_admin() || caller.owns(&r.owner))
            .map(|r| views::view_request(&state, r, false))
            .collect();
        Response::Status(Box::new(StatusView {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            audit_dir: self.config().audit_dir().display().to_string(),
            statements_dropped: self
                .statements
                .as_ref()
                .map_or(0, StatementSink::dropped_total),
            grants,
            pending_requests: pending,
            tampered: {
                let tampered = self.tampered.lock().unwrap_or_else(|p| p.into_inner());
                let mut list: Vec<_> = tampered.values().cloned().collect();
                list.sort_by(|a, b| {
                    (&a.resource, &a.permission).cmp(&(&b.resource, &b.permission))
                });
                list
            },
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

/// The uid the daemon runs as (its own user in system mode, the served user in user mode).
fn daemon_uid() -> u32 {
    #[cfg(unix)]
    {
        agentd_proto::socket::current_uid()
    }
    #[cfg(not(unix))]
    {
        0
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

/// Runs [`Broker::forget_old`] every half retention (between 50 ms and 60 s) until the
/// broker is dropped or shuts down.
fn spawn_forgetter(broker: &Arc<Broker>) {
    let every = (broker.config().daemon.retention / 2)
        .clamp(Duration::from_millis(50), Duration::from_secs(60));
    let weak = Arc::downgrade(broker);
    let shutdown = broker.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(broker) = weak.upgrade() else {
                return;
            };
            let (grants, requests) = broker.forget_old();
            if grants + requests > 0 {
                tracing::debug!(
                    grants,
                    requests,
                    "forgot ended grants and decided requests past the retention"
                );
            }
        }
    });
}
