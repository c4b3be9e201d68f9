//! The broker: access requests, the policy decision, grants with a TTL, their listeners,
//! expiry and revoke. All state is in memory; a restarted daemon starts with no grants
//! (their listeners died with the old process).

mod ids;

use crate::config::{Config, Permission, Resource};
use crate::credentials;
use crate::listener::postgres::{self as pg, auth::ScramVerifier, upstream, GrantListener};
use agentd_proto::{
    AccessRequestSpec, AccessRequestView, AgentInfo, ErrorCode, GrantState, GrantView, Handle,
    PermissionInfo, PolicyDecision, RequestState, ResourceInfo, Response, RevokeTarget, StatusView,
};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Shortest grant, in seconds.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// An access request as the broker keeps it.
#[derive(Debug)]
struct RequestRecord {
    id: String,
    spec: AccessRequestSpec,
    state: RequestState,
    duration: Duration,
    clamped: bool,
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
    listener: Arc<GrantListener>,
}

#[derive(Default)]
struct State {
    requests: HashMap<String, RequestRecord>,
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
}

impl Broker {
    /// A broker over `config` (read from `config_path`, kept for status output). Grants get
    /// a Unix-socket listener under `unix_socket_root` (a private directory) besides TCP.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        unix_socket_root: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config: Arc::new(config),
            config_path,
            unix_socket_root,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            shutdown: CancellationToken::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-update; the maps are still structurally valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured resources for [`agentd_proto::Request::ListResources`].
    pub fn list_resources(&self) -> Response {
        let resources = self
            .config
            .resources
            .iter()
            .map(|(name, r)| ResourceInfo {
                name: name.clone(),
                kind: "postgres".to_owned(),
                description: r.description.clone(),
                database: r.database.clone(),
                permissions: r
                    .permissions
                    .iter()
                    .map(|(pname, p)| PermissionInfo {
                        name: pname.clone(),
                        description: p.description.clone(),
                        policy: p.policy,
                        max_ttl_seconds: p.max_ttl.as_secs(),
                        default_ttl_seconds: p.effective_default_ttl().as_secs(),
                    })
                    .collect(),
            })
            .collect();
        Response::Resources { resources }
    }

    /// Handles an access request: policy decision, and for `auto` a grant with its listener.
    pub async fn request_access(self: &Arc<Self>, spec: AccessRequestSpec) -> Response {
        let Some((resource, permission)) = self.config.permission(&spec.resource, &spec.permission)
        else {
            return self.not_found(&spec.resource, &spec.permission);
        };
        if spec.justification.trim().is_empty() {
            return error(
                ErrorCode::BadRequest,
                "a justification is required: say what you will do with this access".into(),
            );
        }
        let (duration, clamped) = match requested_duration(&spec, permission) {
            Ok(d) => d,
            Err(message) => return error(ErrorCode::BadRequest, message),
        };
        let id = ids::request_id();
        let mut record = RequestRecord {
            id: id.clone(),
            spec: spec.clone(),
            state: RequestState::Pending,
            duration,
            clamped,
            message: None,
            grant_id: None,
        };
        match permission.policy {
            PolicyDecision::Deny => {
                record.state = RequestState::Denied;
                record.message = Some(format!(
                    "policy denies {} on {}; do not retry this request, ask a human if the access is really needed",
                    spec.permission, spec.resource
                ));
            }
            PolicyDecision::Approval => {
                record.message = Some(format!(
                    "this access needs a human's approval; tell the human to run `agentd approve {id}` in a terminal, then check again with get_request"
                ));
            }
            PolicyDecision::Auto => match self.create_grant(&record, resource, permission).await {
                Ok(grant_id) => {
                    record.state = RequestState::Approved;
                    record.grant_id = Some(grant_id);
                }
                Err(message) => return error(ErrorCode::Internal, message),
            },
        }
        info!(request = %id, resource = %spec.resource, permission = %spec.permission,
              agent = %spec.agent.agent_type, state = ?record.state, "access request");
        let mut state = self.state();
        state.requests.insert(id.clone(), record);
        Response::AccessRequest(Box::new(view_request(&state, &id)))
    }

    /// Looks up a request.
    pub fn get_request(&self, request_id: &str) -> Response {
        let state = self.state();
        if !state.requests.contains_key(request_id) {
            return error(
                ErrorCode::NotFound,
                format!("no access request {request_id}; request ids look like r_…"),
            );
        }
        Response::AccessRequest(Box::new(view_request(&state, request_id)))
    }

    /// Daemon status.
    pub fn status(&self) -> Response {
        let state = self.state();
        let grants = state
            .grant_order
            .iter()
            .filter_map(|id| state.grants.get(id))
            .filter(|g| g.state == GrantState::Active)
            .map(view_grant)
            .collect();
        let mut pending: Vec<_> = state
            .requests
            .values()
            .filter(|r| r.state == RequestState::Pending)
            .map(|r| view_request(&state, &r.id))
            .collect();
        pending.sort_by(|a, b| a.id.cmp(&b.id));
        Response::Status(StatusView {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            grants,
            pending_requests: pending,
        })
    }

    /// Revokes one grant or all; cuts their sessions.
    pub fn revoke(&self, target: &RevokeTarget) -> Response {
        let ids: Vec<String> = {
            let state = self.state();
            match target {
                RevokeTarget::All => state
                    .grants
                    .values()
                    .filter(|g| g.state == GrantState::Active)
                    .map(|g| g.id.clone())
                    .collect(),
                RevokeTarget::Grant { grant_id } => match state.grants.get(grant_id) {
                    Some(g) if g.state == GrantState::Active => vec![grant_id.clone()],
                    Some(g) => {
                        return error(
                            ErrorCode::NotFound,
                            format!("grant {grant_id} is already {:?}", g.state).to_lowercase(),
                        )
                    }
                    None => {
                        return error(
                            ErrorCode::NotFound,
                            format!("no grant {grant_id}; `agentd status` lists active grants"),
                        )
                    }
                },
            }
        };
        let grant_ids = ids
            .into_iter()
            .filter(|id| self.end_grant(id, GrantState::Revoked))
            .collect();
        Response::Revoked { grant_ids }
    }

    /// Ends every grant (daemon shutdown).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        let ids: Vec<String> = self.state().grants.keys().cloned().collect();
        for id in ids {
            self.end_grant(&id, GrantState::Revoked);
        }
    }

    /// Moves an active grant to `end` and cuts its listener. False if it was not active.
    fn end_grant(&self, grant_id: &str, end: GrantState) -> bool {
        let mut state = self.state();
        let Some(grant) = state.grants.get_mut(grant_id) else {
            return false;
        };
        if grant.state != GrantState::Active {
            return false;
        }
        grant.state = end;
        let reason = match end {
            GrantState::Expired => {
                format!("terminating connection: agentd grant {grant_id} expired")
            }
            _ => format!("terminating connection: agentd grant {grant_id} was revoked"),
        };
        grant.listener.cut(reason);
        info!(grant = %grant_id, state = ?end, live = grant.listener.live_connections.load(Ordering::Relaxed), "grant ended");
        true
    }

    fn not_found(&self, resource: &str, permission: &str) -> Response {
        let message = match self.config.resources.get(resource) {
            None => format!(
                "no resource {resource:?}; known resources: {}",
                self.config
                    .resources
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(r) => format!(
                "resource {resource} has no permission {permission:?}; its permissions: {}",
                r.permissions.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        error(ErrorCode::NotFound, message)
    }

    /// Fetches the secret, derives the token verifier, opens the listener and records the
    /// grant. Returns the grant id, or an agent-safe error message.
    async fn create_grant(
        self: &Arc<Self>,
        request: &RequestRecord,
        resource: &Resource,
        permission: &Permission,
    ) -> Result<String, String> {
        let grant_id = ids::grant_id();
        let token = ids::token();
        let prepared = {
            let settings = self.config.daemon.clone();
            let source = permission.credential.clone();
            let (res_name, perm_name) = (
                request.spec.resource.clone(),
                request.spec.permission.clone(),
            );
            let token = token.clone();
            tokio::task::spawn_blocking(move || {
                let secret = credentials::fetch_secret(&settings, &source, &res_name, &perm_name)?;
                Ok::<_, credentials::CredentialError>((secret, ScramVerifier::derive(&token)))
            })
            .await
        };
        let (secret, verifier) = match prepared {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                warn!(error = %e, "credential unavailable");
                return Err(format!(
                    "agentd cannot obtain the credential for {}/{}: {e}",
                    request.spec.resource, request.spec.permission
                ));
            }
            Err(e) => return Err(format!("internal error preparing the grant: {e}")),
        };
        let tls = upstream::tls_for(resource)
            .map_err(|e| format!("resource {} TLS settings: {e}", request.spec.resource))?;
        let listener = Arc::new(GrantListener {
            grant_id: grant_id.clone(),
            verifier,
            upstream: upstream::UpstreamTarget {
                resource: request.spec.resource.clone(),
                host: resource.host.clone(),
                port: resource.port,
                database: resource.database.clone(),
                username: permission.username.clone(),
                secret: Arc::new(secret),
                tls,
                connect_timeout: self.config.daemon.connect_timeout,
            },
            cut: self.shutdown.child_token(),
            cut_reason: Default::default(),
            live_connections: Default::default(),
            total_connections: Default::default(),
            cancels: Default::default(),
        });
        let addr = pg::spawn(listener.clone(), self.config.daemon.listen_host)
            .await
            .map_err(|e| format!("cannot open a local listener: {e}"))?;
        let socket_dir = self.open_unix_listener(&listener, &grant_id, addr.port());
        let now = SystemTime::now();
        let grant = GrantRecord {
            id: grant_id.clone(),
            request_id: request.id.clone(),
            resource: request.spec.resource.clone(),
            permission: request.spec.permission.clone(),
            agent: request.spec.agent.clone(),
            state: GrantState::Active,
            created_at: now,
            expires_at: now + request.duration,
            listener_addr: addr,
            socket_dir,
            database: resource.database.clone(),
            token,
            listener,
        };
        {
            let mut state = self.state();
            state.grant_order.push(grant_id.clone());
            state.grants.insert(grant_id.clone(), grant);
        }
        self.schedule_expiry(grant_id.clone(), request.duration);
        info!(grant = %grant_id, %addr, ttl_seconds = request.duration.as_secs(), "grant active");
        Ok(grant_id)
    }

    /// Opens the grant's Unix-socket listener; a failure is logged and the grant keeps its
    /// TCP listener.
    fn open_unix_listener(
        &self,
        listener: &Arc<GrantListener>,
        grant_id: &str,
        port: u16,
    ) -> Option<PathBuf> {
        #[cfg(unix)]
        {
            let dir = self.unix_socket_root.as_ref()?.join(grant_id);
            match pg::spawn_unix(listener.clone(), &dir, port) {
                Ok(_) => Some(dir),
                Err(e) => {
                    warn!(error = %e, dir = %dir.display(), "no Unix-socket listener for this grant");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (listener, grant_id, port);
            None
        }
    }

    fn schedule_expiry(self: &Arc<Self>, grant_id: String, ttl: Duration) {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(broker) = broker.upgrade() {
                broker.end_grant(&grant_id, GrantState::Expired);
            }
        });
    }
}

/// The requested duration, defaulted and clamped to the permission's `max_ttl`.
fn requested_duration(
    spec: &AccessRequestSpec,
    permission: &Permission,
) -> Result<(Duration, bool), String> {
    let wanted = match spec.duration_seconds {
        None => permission.effective_default_ttl(),
        Some(0) => return Err("duration must be at least 1 second".to_owned()),
        Some(s) => Duration::from_secs(s),
    };
    let clamped = wanted > permission.max_ttl;
    Ok((wanted.min(permission.max_ttl).max(MIN_TTL), clamped))
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn view_grant(g: &GrantRecord) -> GrantView {
    let remaining = if g.state == GrantState::Active {
        g.expires_at
            .duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    } else {
        0
    };
    GrantView {
        id: g.id.clone(),
        request_id: g.request_id.clone(),
        resource: g.resource.clone(),
        permission: g.permission.clone(),
        agent: g.agent.clone(),
        state: g.state,
        created_at: unix(g.created_at),
        expires_at: unix(g.expires_at),
        remaining_seconds: remaining,
        listener: g.listener_addr.to_string(),
        connections: g.listener.live_connections.load(Ordering::Relaxed),
        connections_total: g.listener.total_connections.load(Ordering::Relaxed),
    }
}

fn view_request(state: &State, id: &str) -> AccessRequestView {
    // Callers check existence first.
    let r = &state.requests[id];
    let grant = r.grant_id.as_ref().and_then(|g| state.grants.get(g));
    AccessRequestView {
        id: r.id.clone(),
        resource: r.spec.resource.clone(),
        permission: r.spec.permission.clone(),
        state: r.state,
        duration_seconds: r.duration.as_secs(),
        clamped: r.clamped,
        justification: r.spec.justification.clone(),
        agent: r.spec.agent.clone(),
        message: r.message.clone().or_else(|| {
            grant.filter(|g| g.state != GrantState::Active).map(|g| {
                format!(
                    "grant {} is {:?}; request access again if still needed",
                    g.id, g.state
                )
                .to_lowercase()
            })
        }),
        grant: grant.map(view_grant),
        handle: grant
            .filter(|g| g.state == GrantState::Active)
            .map(handle_for),
    }
}

/// Builds the agent-facing handle: DSN, libpq env vars and a psql command.
fn handle_for(g: &GrantRecord) -> Handle {
    let host = g.listener_addr.ip().to_string();
    let port = g.listener_addr.port();
    let token = g.token.expose_secret();
    let dsn = format!(
        "postgresql://{}:{}@{}:{}/{}?sslmode=disable",
        g.id,
        token,
        host,
        port,
        ids::percent_encode(&g.database)
    );
    let env = BTreeMap::from([
        ("PGHOST".to_owned(), host.clone()),
        ("PGPORT".to_owned(), port.to_string()),
        ("PGUSER".to_owned(), g.id.clone()),
        ("PGPASSWORD".to_owned(), token.to_owned()),
        ("PGDATABASE".to_owned(), g.database.clone()),
        ("PGSSLMODE".to_owned(), "disable".to_owned()),
    ]);
    Handle {
        psql: format!("psql \"{dsn}\""),
        dsn,
        env,
        host,
        port,
        socket_dir: g.socket_dir.as_ref().map(|d| d.display().to_string()),
        database: g.database.clone(),
        user: g.id.clone(),
        expires_at: unix(g.expires_at),
    }
}
