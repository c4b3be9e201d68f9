//! Request and response types of the control protocol, version [`PROTOCOL_VERSION`].
//!
//! Every frame carries an [`Envelope`] whose `version` must equal [`PROTOCOL_VERSION`];
//! the daemon answers a mismatch with [`ErrorCode::UnsupportedVersion`]. Field names are
//! snake_case JSON; enums are internally tagged by `"op"` (requests) or `"kind"` (responses).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The control protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// One frame on the control socket: a version and a body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    /// Protocol version of the sender; must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The request or response.
    pub body: T,
}

impl<T> Envelope<T> {
    /// Wraps `body` with the current [`PROTOCOL_VERSION`].
    pub fn new(body: T) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

/// Who is asking: filled in by the shim or CLI, completed by the daemon with the peer's
/// pid and uid taken from the socket.
///
/// `agent_type` and `client_name` are **claimed**: the client says them about itself and
/// the daemon cannot check them (a shell agent can start `agentd-mcp --agent-type cli`).
/// Every human-facing output labels them "claimed" and renders them with
/// [`crate::text::terminal_safe`]; the daemon bounds their length
/// ([`crate::text::MAX_AGENT_TYPE_CHARS`], [`crate::text::MAX_CLIENT_NAME_CHARS`]). What the
/// OS says about the requester is in [`Requester`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentInfo {
    /// Agent type, e.g. `claude-code`, `cursor`, `cli` (claimed).
    pub agent_type: String,
    /// MCP `clientInfo.name` (and version) when known (claimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Peer process id, taken by the daemon from the control socket (clients' values are
    /// overwritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Peer user id, taken by the daemon from the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// The requester of an access request (and owner of its grant) as the daemon's OS checks
/// found it: the control-socket peer's uid and pid (`SO_PEERCRED`) and the user name of
/// that uid in the password database. Never taken from a client's fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Requester {
    /// OS user name of `uid` (`uid N` when the password database has none).
    pub user: String,
    /// Effective uid of the requesting process.
    pub uid: u32,
    /// Process id of the requesting process (the shim or CLI instance).
    pub pid: u32,
}

impl std::fmt::Display for Requester {
    /// `alice (uid 1000) pid 4242`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}) pid {}", self.user, self.uid, self.pid)
    }
}

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// The configured resources and their permissions; answered with [`Response::Resources`].
    /// With `agent_type`, each permission also says what the policy decides for that agent
    /// type right now, and which of the caller's (same peer process) grants are active on it.
    ListResources {
        /// The asking agent's type (e.g. `claude-code`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_type: Option<String>,
    },
    /// The caller's own active grants (those requested from the same peer process), with
    /// their handles; answered with [`Response::Grants`].
    ListGrants,
    /// Ask for access; answered with [`Response::AccessRequest`].
    RequestAccess(AccessRequestSpec),
    /// Look up an access request by id; answered with [`Response::AccessRequest`].
    GetRequest {
        /// The request id (`r_…`).
        request_id: String,
    },
    /// Wait until a pending request is decided, or `timeout_seconds` pass (a long poll);
    /// answered with [`Response::AccessRequest`], whose state is still `pending` on timeout.
    AwaitRequest {
        /// The request id (`r_…`).
        request_id: String,
        /// Longest wait in seconds; the daemon caps it at [`MAX_AWAIT_SECONDS`].
        timeout_seconds: u64,
    },
    /// Withdraw one's own pending request; answered with [`Response::AccessRequest`].
    CancelRequest {
        /// The request id (`r_…`).
        request_id: String,
    },
    /// Give a grant back before it expires (the agent's own verb); answered with
    /// [`Response::Revoked`] listing the released grant.
    Release {
        /// The grant id (`g_…`).
        grant_id: String,
    },
    /// Daemon status and grants; answered with [`Response::Status`].
    Status,
    /// Access requests, newest first; answered with [`Response::Requests`].
    ListRequests {
        /// Include decided requests, not only pending ones.
        #[serde(default)]
        all: bool,
    },
    /// A human approves a pending request. Accepted only from a peer process with a
    /// controlling terminal (user presence); answered with [`Response::AccessRequest`].
    Approve {
        /// The request id (`r_…`).
        request_id: String,
        /// Grant duration in seconds instead of the requested one (still capped by policy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_seconds: Option<u64>,
        /// Ignored by the daemon (see [`Presence`]).
        #[serde(default)]
        presence: Presence,
    },
    /// A human denies a pending request. Same presence rule as [`Request::Approve`];
    /// answered with [`Response::AccessRequest`].
    Deny {
        /// The request id (`r_…`).
        request_id: String,
        /// Why; shown to the agent and recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Ignored by the daemon (see [`Presence`]).
        #[serde(default)]
        presence: Presence,
    },
    /// Revoke grants; answered with [`Response::Revoked`].
    Revoke {
        /// Which grants.
        target: RevokeTarget,
    },
    /// Admin: store (or replace) the secret of `resource`/`permission` in the daemon's
    /// store (system mode) or keychain (user mode); answered with [`Response::Done`].
    SetSecret {
        /// Resource name.
        resource: String,
        /// Permission name.
        permission: String,
        /// The secret; zeroized on drop, `Debug` prints `[REDACTED]`.
        value: SecretValue,
    },
    /// Admin: delete the secret of `resource`/`permission`; answered with [`Response::Done`].
    DeleteSecret {
        /// Resource name.
        resource: String,
        /// Permission name.
        permission: String,
    },
    /// Admin: the secret entries the config uses and whether each is stored (never values);
    /// answered with [`Response::Secrets`].
    ListSecrets,
    /// Admin: audit records after `after_seq`, at most `limit` (capped at
    /// [`MAX_AUDIT_PAGE`]) and at most [`MAX_AUDIT_PAGE_BYTES`] of record text; answered with
    /// [`Response::AuditRecords`]. Lets admins read a log clients cannot reach.
    ReadAudit {
        /// Records with `seq > after_seq` (0: from the start).
        #[serde(default)]
        after_seq: u64,
        /// Most records wanted.
        limit: u32,
    },
    /// Admin: verify the audit chain with the daemon's key; answered with
    /// [`Response::AuditVerified`].
    VerifyAudit,
    /// Admin: re-read the config file (as SIGHUP does); answered with [`Response::Done`].
    ReloadConfig,
}

/// Most records one [`Request::ReadAudit`] returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// Most bytes of record text one [`Request::ReadAudit`] returns (well under the 1 MiB frame
/// cap).
pub const MAX_AUDIT_PAGE_BYTES: usize = 512 * 1024;

/// A secret value on the control socket ([`Request::SetSecret`] only): zeroized on drop;
/// `Debug` prints `[REDACTED]`. Serialised as a plain JSON string.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(zeroize::Zeroizing<String>);

impl SecretValue {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }
    /// The secret text, for the one place that stores it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Longest [`Request::AwaitRequest`] wait the daemon honours, in seconds.
pub const MAX_AWAIT_SECONDS: u64 = 600;

/// What the CLI says about the human who confirmed a decision. **Ignored by the daemon**
/// and kept only so older CLIs still parse: the daemon builds `decided_by` from its own view
/// of the peer (the uid's user name, the pid, the controlling terminal it reads from
/// `/proc/PID/stat`), never from these fields. New clients send it empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Presence {
    /// Ignored (was: the terminal the CLI saw).
    #[serde(default)]
    pub tty: String,
    /// Ignored (was: `$USER` as the CLI saw it).
    #[serde(default)]
    pub user: String,
}

impl Request {
    /// True for the verbs an agent may use (everything the MCP shim sends). Approve and deny
    /// are human verbs and need user presence.
    pub fn is_agent_verb(&self) -> bool {
        !matches!(self, Request::Approve { .. } | Request::Deny { .. })
    }

    /// True for the verbs only an admin may send: approve, deny, revoke, the secret verbs,
    /// reading or verifying the audit log, reloading the config.
    pub fn is_admin_verb(&self) -> bool {
        matches!(
            self,
            Request::Approve { .. }
                | Request::Deny { .. }
                | Request::Revoke { .. }
                | Request::SetSecret { .. }
                | Request::DeleteSecret { .. }
                | Request::ListSecrets
                | Request::ReadAudit { .. }
                | Request::VerifyAudit
                | Request::ReloadConfig
        )
    }

    /// True for the verbs that need a human at a terminal (approve, deny).
    pub fn needs_presence(&self) -> bool {
        matches!(self, Request::Approve { .. } | Request::Deny { .. })
    }
}

/// An access request as sent by an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessRequestSpec {
    /// Resource name from the config, e.g. `prod-db`.
    pub resource: String,
    /// Permission name on that resource, e.g. `read_only`.
    pub permission: String,
    /// Requested duration in seconds; `None` means the permission's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// Why the agent needs it; shown to approvers and recorded.
    pub justification: String,
    /// Who is asking.
    #[serde(default)]
    pub agent: AgentInfo,
}

/// Which grants a [`Request::Revoke`] ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum RevokeTarget {
    /// One grant by id (`g_…`).
    Grant {
        /// The grant id.
        grant_id: String,
    },
    /// Every active grant on one resource.
    Resource {
        /// The resource name.
        resource: String,
    },
    /// Every active grant held by one agent type (e.g. `cursor`).
    Agent {
        /// The agent type, as shown by `agentd status`.
        agent_type: String,
    },
    /// Every active grant.
    All,
}

/// A response from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// Daemon version (`CARGO_PKG_VERSION`).
        daemon_version: String,
        /// Daemon process id.
        pid: u32,
    },
    /// Answer to [`Request::ListResources`].
    Resources {
        /// The configured resources, sorted by name.
        resources: Vec<ResourceInfo>,
    },
    /// Answer to [`Request::RequestAccess`] and [`Request::GetRequest`].
    AccessRequest(Box<AccessRequestView>),
    /// Answer to [`Request::Status`].
    Status(Box<StatusView>),
    /// Answer to [`Request::Revoke`] and [`Request::Release`].
    Revoked {
        /// Ids of the grants that were active and are now revoked (or released).
        grant_ids: Vec<String>,
    },
    /// Answer to [`Request::ListGrants`].
    Grants {
        /// The caller's active grants, oldest first.
        grants: Vec<HeldGrant>,
    },
    /// Answer to [`Request::ListRequests`].
    Requests {
        /// The requests, newest first.
        requests: Vec<AccessRequestView>,
    },
    /// Answer to the admin verbs that only succeed or fail.
    Done {
        /// What was done, in words.
        message: String,
    },
    /// Answer to [`Request::ListSecrets`].
    Secrets {
        /// Where secrets live: `daemon store DIR` or `keychain service NAME`.
        store: String,
        /// The entries the config uses.
        entries: Vec<SecretEntry>,
    },
    /// Answer to [`Request::ReadAudit`].
    AuditRecords {
        /// Record lines as written (JSON, no trailing newline), in order.
        records: Vec<String>,
        /// True when more records follow the last one returned.
        more: bool,
    },
    /// Answer to [`Request::VerifyAudit`].
    AuditVerified(AuditVerifyView),
    /// The request failed; `message` is safe to show to an agent.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason with what to do next.
        message: String,
    },
}

/// One secret entry in [`Response::Secrets`]: names and state, never a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretEntry {
    /// Entry name (`RESOURCE/PERMISSION`, or the permission's `entry`).
    pub entry: String,
    /// `secret` (the login's password) or `admin` (a dynamic source's admin password).
    pub kind: String,
    /// The permissions that use it (`resource/permission`).
    pub used_by: Vec<String>,
    /// `present`, `missing` or `error`.
    pub state: String,
    /// The store's error, when `state` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of verifying the audit chain ([`Request::VerifyAudit`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditVerifyView {
    /// True when the chain verifies.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Files read.
    pub files: u64,
    /// The first record whose hash is an HMAC with the daemon's key; `None`: not keyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed_from: Option<u64>,
    /// Each problem found, in words (file, line, what).
    pub problems: Vec<String>,
}

/// Machine-readable error reasons.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The envelope's version is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The frame was not a valid request.
    BadRequest,
    /// No such resource, permission, request or grant.
    NotFound,
    /// The policy refuses this request.
    Denied,
    /// The request is not in a state that allows this (e.g. approving a decided request).
    Conflict,
    /// A human verb sent without user presence (no controlling terminal).
    PresenceRequired,
    /// The audit log cannot be written; the daemon refuses to grant unaudited access.
    AuditUnavailable,
    /// The caller's OS user already has as many pending requests or active grants as the
    /// daemon allows (`[daemon] max_pending_per_user`, `max_grants_per_user`).
    LimitReached,
    /// Something failed inside the daemon; details are in its log.
    Internal,
}

/// A configured resource as shown to clients (no host secrets, no credentials).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceInfo {
    /// Resource name.
    pub name: String,
    /// Resource kind: `postgres` or `http`.
    pub kind: String,
    /// Free-text description from the config.
    #[serde(default)]
    pub description: String,
    /// Free-form labels from the config (`tags = [...]`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Database name on the upstream server (empty for `http`).
    pub database: String,
    /// `http`: the upstream's base URL (the agent calls the grant's local base URL instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Permissions on this resource.
    pub permissions: Vec<PermissionInfo>,
}

/// A permission as shown to clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PermissionInfo {
    /// Permission name.
    pub name: String,
    /// Free-text description from the config.
    #[serde(default)]
    pub description: String,
    /// `auto`, `approval` or `deny`.
    pub policy: PolicyDecision,
    /// Longest grant the policy allows, in seconds.
    pub max_ttl_seconds: u64,
    /// Duration used when the request names none, in seconds.
    pub default_ttl_seconds: u64,
    /// What the policy decides for the asking agent type at this moment (rules with agent
    /// types and time windows included); absent when no agent type was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_now: Option<PolicyDecision>,
    /// The longest grant the asking agent type can get at this moment, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_now_seconds: Option<u64>,
    /// The whole policy in plain English, one line per rule then the fallback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_explained: Vec<String>,
    /// Ids of the caller's active grants on this permission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub your_grants: Vec<String>,
    /// `http`: what the permission allows, one rule a line (`GET, HEAD /repos/*/*/issues/**`);
    /// everything else is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allows: Vec<String>,
}

/// One of the caller's grants with its handle (see [`Request::ListGrants`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeldGrant {
    /// The grant.
    pub grant: GrantView,
    /// How to connect while it is active.
    pub handle: Handle,
}

/// What the policy says about a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDecision {
    /// Approved at once.
    Auto,
    /// Needs a human's approval.
    Approval,
    /// Refused.
    Deny,
}

/// State of an access request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for a human.
    Pending,
    /// Approved; a grant exists.
    Approved,
    /// Refused by policy or a human.
    Denied,
    /// Not decided in time.
    Expired,
    /// Withdrawn.
    Cancelled,
}

impl RequestState {
    /// The state's name as serialized: `pending`, `approved`, `denied`, `expired`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }
}

impl GrantState {
    /// The state's name as serialized: `active`, `expired`, `revoked`, `released`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
            GrantState::Released => "released",
        }
    }
}

/// State of a grant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Usable.
    Active,
    /// Its TTL ran out.
    Expired,
    /// Ended by a human.
    Revoked,
    /// Given back by the agent.
    Released,
}

/// An access request as the daemon sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessRequestView {
    /// Request id (`r_…`).
    pub id: String,
    /// Resource name.
    pub resource: String,
    /// Permission name.
    pub permission: String,
    /// Current state.
    pub state: RequestState,
    /// Granted (or to-be-granted) duration in seconds, after clamping to `max_ttl`.
    pub duration_seconds: u64,
    /// True when the requested duration was cut down to the policy's `max_ttl`.
    #[serde(default)]
    pub clamped: bool,
    /// The justification given, verbatim (at most
    /// [`crate::text::MAX_JUSTIFICATION_CHARS`] characters; render it with
    /// [`crate::text::terminal_safe`] before showing it to a human).
    pub justification: String,
    /// Who asked, as the client claims it.
    pub agent: AgentInfo,
    /// Who asked, as the OS says (absent only in views from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    /// When the request was made, seconds since the Unix epoch.
    #[serde(default)]
    pub created_at: u64,
    /// For a pending request: when it expires undecided, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<u64>,
    /// Who decided: `policy`, `policy rule N`, `user NAME (uid U) on TTY`, `timeout`, `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Why it was denied, or what the human must do for a pending request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The grant, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
    /// How to connect, once approved and while the grant is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<Handle>,
}

/// A grant as shown by `agentd status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrantView {
    /// Grant id (`g_…`).
    pub id: String,
    /// Request id that produced it.
    pub request_id: String,
    /// Resource name.
    pub resource: String,
    /// Permission name.
    pub permission: String,
    /// Who holds it, as the client claims it.
    pub agent: AgentInfo,
    /// Who holds it, as the OS says (absent only in views from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    /// Current state.
    pub state: GrantState,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Expiry time, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Seconds until expiry (0 once ended).
    pub remaining_seconds: u64,
    /// Local listener address, `127.0.0.1:PORT`.
    pub listener: String,
    /// Live proxied connections right now.
    pub connections: u32,
    /// Connections accepted so far (authenticated).
    pub connections_total: u64,
}

/// What an agent receives to connect: never the upstream secret, only a grant-scoped token
/// for a loopback listener.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Handle {
    /// `postgresql://USER:TOKEN@127.0.0.1:PORT/DB?sslmode=disable`, for drivers that need a
    /// URL. Prefer [`Handle::env`]: a DSN on a command line exposes the token.
    pub dsn: String,
    /// libpq environment variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGSSLMODE`).
    pub env: BTreeMap<String, String>,
    /// A ready-to-run `psql` command line **without the token** (command lines are visible
    /// to every local user in `/proc/*/cmdline`): `PGSERVICEFILE='…' psql service=GRANT`
    /// when [`Handle::service_file`] exists, else `psql` to run with [`Handle::env`] set.
    pub psql: String,
    /// The grant's libpq connection service file (mode 0600 in a private per-grant
    /// directory, removed when the grant ends), holding host, port, user, token and
    /// database; absent where Unix sockets are not available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_file: Option<String>,
    /// Listener host (always loopback).
    pub host: String,
    /// Listener TCP port.
    pub port: u16,
    /// Directory of the grant's Unix-socket listener (libpq `host=DIR port=PORT`, i.e. the
    /// socket `DIR/.s.PGSQL.PORT`); absent where Unix sockets are not available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<String>,
    /// Database name to connect to.
    pub database: String,
    /// User name to present to the listener (the grant id).
    pub user: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// For a grant on an `http` resource: the base URL, socket and token placement. For
    /// those grants `dsn` is the base URL, `env` holds `AGENTD_BASE_URL` / `AGENTD_TOKEN`
    /// (and for `aws_sigv4` `AWS_ENDPOINT_URL` / `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` = the token / `AWS_REGION`), and `psql` and `database` are
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHandle>,
}

/// The HTTP part of a handle.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpHandle {
    /// `http://127.0.0.1:PORT`: use it as the SDK's base URL.
    pub base_url: String,
    /// The grant's Unix socket (`curl --unix-socket PATH http://localhost/…`), where
    /// available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// The grant token: send it where the API key would go (see `token_placement`).
    pub token: String,
    /// Where the token goes, e.g. "header `Authorization: Bearer <token>`".
    pub token_placement: String,
    /// The resource's auth scheme: `bearer`, `header`, `basic` or `query`.
    pub auth_scheme: String,
}

impl std::fmt::Debug for HttpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandle")
            .field("base_url", &self.base_url)
            .field("socket_path", &self.socket_path)
            .field("token", &"[REDACTED]")
            .field("token_placement", &self.token_placement)
            .finish()
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .field("service_file", &self.service_file)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Daemon status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    /// Daemon version.
    pub daemon_version: String,
    /// Daemon process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Config file in use.
    pub config_path: String,
    /// Directory of the audit log (`agentd audit` reads it).
    #[serde(default)]
    pub audit_dir: String,
    /// Statement audit events dropped since the daemon started because the audit writer
    /// fell behind (each drop is also recorded as a `statements_dropped` record).
    #[serde(default)]
    pub statements_dropped: u64,
    /// Active grants, oldest first.
    pub grants: Vec<GrantView>,
    /// Pending access requests.
    pub pending_requests: Vec<AccessRequestView>,
    /// Permissions whose stored login stopped authenticating after a grant (e.g. the role's
    /// password was changed from inside it); new grants on them are refused until the admin
    /// sets the secret again.
    #[serde(default)]
    pub tampered: Vec<TamperedView>,
}

/// A permission whose stored login no longer authenticates upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TamperedView {
    /// The resource name.
    pub resource: String,
    /// The permission name.
    pub permission: String,
    /// The grant after which the login check failed.
    pub grant_id: String,
    /// What the upstream said (`SQLSTATE message`).
    pub error: String,
    /// When it was found, in Unix seconds.
    pub since: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_resources_without_agent_type_still_parses() {
        let old: Request = serde_json::from_str(r#"{"op":"list_resources"}"#).unwrap();
        assert_eq!(old, Request::ListResources { agent_type: None });
        let new = serde_json::to_string(&Request::ListResources {
            agent_type: Some("cursor".into()),
        })
        .unwrap();
        assert_eq!(new, r#"{"op":"list_resources","agent_type":"cursor"}"#);
        let grants: Request = serde_json::from_str(r#"{"op":"list_grants"}"#).unwrap();
        assert_eq!(grants, Request::ListGrants);
    }
}
