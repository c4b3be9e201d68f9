//! [`AuditEvent`]: what one audit record says.
//!
//! The enum is serialised internally tagged (`"event":"<snake_case name>"`) and its fields are
//! flattened into the record between `ts` and `prev`, e.g.
//! `{"seq":7,"ts":"…","event":"connection_open","grant_id":"g_…","session":3,"peer":"127.0.0.1:50412","prev":"…","hash":"…"}`.
//! Records are read back as JSON; unknown extra members (`seq`, `ts`, `prev`, `hash`) are
//! ignored when a record is deserialised into an [`AuditEvent`].

use agentd_proto::{AgentInfo, Requester};
use serde::{Deserialize, Serialize};

/// What a statement record keeps of a text longer than the capture limit, besides its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementOverflow {
    /// The text's last bytes (at most half the capture limit; secrets redacted).
    pub tail: String,
    /// The whole text's length, in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole text's bytes as sent (before redaction), lowercase hex.
    pub sha256: String,
}

/// One audit event. Field names are part of the on-disk format: rename nothing, only add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The daemon started (written once the audit log is open).
    DaemonStart {
        /// The daemon's process id.
        pid: u32,
        /// The daemon's version (`CARGO_PKG_VERSION`).
        version: String,
    },
    /// The daemon is stopping cleanly (after all grants ended).
    DaemonStop {
        /// The daemon's process id.
        pid: u32,
    },
    /// At open, the active file ended in a partial line (a crash mid-write, or a failed
    /// write that could not be undone); those bytes were truncated away before this record.
    LogRecovered {
        /// How many bytes of the partial line were discarded.
        discarded_bytes: u64,
    },
    /// An agent (or the CLI) asked for access.
    Request {
        /// The access request id (`r_…`).
        request_id: String,
        /// The resource name from the config.
        resource: String,
        /// The permission name on that resource.
        permission: String,
        /// The duration granted if approved, in seconds (after defaulting and clamping).
        duration_seconds: u64,
        /// Whether the asked-for duration was clamped to the policy's `max_ttl`.
        clamped: bool,
        /// The agent's justification, verbatim.
        justification: String,
        /// Who asked, as the client claims it (agent type, client name; pid/uid stamped by
        /// the daemon from the control socket).
        agent: AgentInfo,
        /// Who asked, as the OS says: user name, uid, pid of the control-socket peer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requester: Option<Requester>,
    },
    /// An access request was decided.
    Decision {
        /// The access request id (`r_…`).
        request_id: String,
        /// `approved`, `denied`, `expired` or `cancelled`.
        decision: String,
        /// Who decided: `policy`, `user`, `timeout`, …
        by: String,
        /// Why, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The policy rule that matched, when the policy decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// A grant became active (its listener is open).
    Grant {
        /// The grant id (`g_…`).
        grant_id: String,
        /// The access request it came from (`r_…`).
        request_id: String,
        /// The resource name.
        resource: String,
        /// The permission name.
        permission: String,
        /// When it expires, in Unix seconds.
        expires_at: u64,
        /// The agent that owns it, as the client claims it.
        agent: AgentInfo,
        /// Who owns it, as the OS says: user name, uid, pid of the requesting process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requester: Option<Requester>,
    },
    /// A grant ended.
    GrantEnded {
        /// The grant id (`g_…`).
        grant_id: String,
        /// `expired`, `revoked` or `released`.
        state: String,
        /// Who ended it: `ttl`, `user`, `agent`, `shutdown`, …
        by: String,
        /// How many sessions were live (and were cut) when it ended.
        live_connections: u32,
    },
    /// A client connected to a grant's listener and authenticated.
    ConnectionOpen {
        /// The grant id.
        grant_id: String,
        /// The session number within the grant's listener.
        session: u64,
        /// The peer: `127.0.0.1:PORT`, or `unix` for the Unix socket.
        peer: String,
        /// The StartupMessage parameters the client sent and agentd forwarded upstream
        /// (`application_name`, `options` such as `-c role=…`, …), except `user` and
        /// `database` (agentd sets those); values of password-like keys are `[REDACTED]`.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        params: std::collections::BTreeMap<String, String>,
    },
    /// A proxied session ended.
    ConnectionClose {
        /// The grant id.
        grant_id: String,
        /// The session number within the grant's listener.
        session: u64,
        /// Bytes client → upstream.
        bytes_up: u64,
        /// Bytes upstream → client.
        bytes_down: u64,
        /// How it ended: `client`, `upstream`, `revoked`, `expired`, `error: …`.
        end: String,
        /// Bind messages seen.
        binds: u64,
        /// Execute messages seen.
        executes: u64,
    },
    /// One HTTP request on an http grant's listener, allowed or refused.
    HttpRequest {
        /// The grant id.
        grant_id: String,
        /// The client connection number within the grant's listener.
        session: u64,
        /// Request method.
        method: String,
        /// The normalised path (or the raw target, bounded, when it could not be normalised).
        path: String,
        /// Query parameters as `key=value`, the values of token-, key-, secret-, password-
        /// and signature-like names replaced by `[REDACTED]`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        query: Vec<String>,
        /// Response status sent to the client (0 when none was sent).
        status: u16,
        /// Request body bytes forwarded upstream.
        bytes_up: u64,
        /// Response body bytes sent to the client.
        bytes_down: u64,
        /// Milliseconds from the request head to the end of the response body.
        duration_ms: u64,
        /// The allow rule that let it through.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// Why it was refused (by agentd, not the upstream).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
        /// How many occurrences of the secret (or an encoded form) the response carried and
        /// agentd replaced with `[REDACTED]`.
        #[serde(default, skip_serializing_if = "is_zero")]
        secret_reflected: u64,
        /// How the exchange ended: `complete`, `client`, `upstream error`, `revoked`, ….
        end: String,
    },
    /// A SQL statement the client sent (simple Query or extended-protocol Parse).
    Statement {
        /// The grant id.
        grant_id: String,
        /// The session number within the grant's listener.
        session: u64,
        /// `query` (simple protocol) or `parse` (extended protocol).
        kind: String,
        /// The prepared statement name of a Parse; absent for Query and for the unnamed
        /// statement.
        #[serde(default, skip_serializing_if = "is_none_or_empty")]
        statement: Option<String>,
        /// The SQL text (secrets redacted, at most the capture limit).
        text: String,
        /// Whether `text` was cut at the capture limit.
        truncated: bool,
        /// For a text longer than the capture limit: its tail, length and SHA-256.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overflow: Option<StatementOverflow>,
    },
    /// A FunctionCall message (the protocol's fast path): which function, never the
    /// argument values.
    FunctionCall {
        /// The grant id.
        grant_id: String,
        /// The session number within the grant's listener.
        session: u64,
        /// The function's OID (`pg_proc.oid`).
        oid: u32,
        /// The argument count.
        args: u16,
        /// Each argument's size in bytes (-1 for NULL), at most the first 100.
        arg_bytes: Vec<i32>,
    },
    /// A dynamic credential: the grant's own PostgreSQL role was created (before the grant
    /// record). Never carries the password.
    RoleCreated {
        /// The grant id the role belongs to.
        grant_id: String,
        /// The resource name.
        resource: String,
        /// The permission name.
        permission: String,
        /// The role, `agentd_g_…`.
        role: String,
        /// Its `VALID UNTIL`, in Unix seconds.
        valid_until: u64,
    },
    /// A grant's dynamic role was ended: its sessions terminated and the revocation
    /// statements run (or the attempt failed; access was already cut at the listener).
    RoleDropped {
        /// The grant id the role belonged to.
        grant_id: String,
        /// The role.
        role: String,
        /// Whether the role is gone.
        dropped: bool,
        /// Upstream sessions of the role that were terminated.
        terminated_sessions: u64,
        /// Why it was not dropped: `SQLSTATE message` (no secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// At daemon start, roles this data directory created for grants that no longer exist
    /// (a crash or kill) were dropped.
    RolesSwept {
        /// The resource name.
        resource: String,
        /// The dynamic permission whose admin login swept.
        permission: String,
        /// Roles dropped.
        dropped: Vec<String>,
        /// Roles that could not be dropped, as `ROLE: SQLSTATE message`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<String>,
        /// Why the sweep could not run at all (admin login failed, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An admin changed the daemon: a secret set or deleted, the config reloaded. Names
    /// only, never a value.
    AdminAction {
        /// `secret_set`, `secret_deleted` or `config_reloaded`.
        action: String,
        /// The secret entry or config path acted on.
        target: String,
        /// Who, from the daemon's view of the peer: `user NAME (uid U pid P)`.
        by: String,
    },
    /// Statement events were lost because the writer fell behind.
    StatementsDropped {
        /// How many statement events were dropped since the previous such record.
        count: u64,
    },
    /// The password-change guard refused a statement before it reached the server
    /// (`listener::postgres::guard`); the client got SQLSTATE 42501 and the session goes on.
    StatementRefused {
        /// The grant id.
        grant_id: String,
        /// The session number within the grant's listener.
        session: u64,
        /// `query` (simple protocol) or `parse` (extended protocol).
        kind: String,
        /// The statement text, password literals redacted (at most 8 KiB; empty when the
        /// statement was too long to hold).
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// After a grant on a fixed login ended, agentd's stored login no longer authenticates
    /// upstream (e.g. a `DO` block changed the role's password). New grants on the
    /// permission are refused until the admin sets the secret again.
    CredentialTampered {
        /// The grant after which the check failed.
        grant_id: String,
        /// The resource name.
        resource: String,
        /// The permission name.
        permission: String,
        /// What the upstream said (`SQLSTATE message`; never a secret).
        error: String,
    },
}

fn is_none_or_empty(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

impl AuditEvent {
    /// The grant this event is about, for `agentd audit --grant ID`: `Some` for `grant`,
    /// `grant_ended`, `connection_open`, `connection_close` and `statement`; `None` otherwise
    /// (requests and decisions precede the grant id).
    pub fn grant_id(&self) -> Option<&str> {
        match self {
            AuditEvent::Grant { grant_id, .. }
            | AuditEvent::GrantEnded { grant_id, .. }
            | AuditEvent::ConnectionOpen { grant_id, .. }
            | AuditEvent::ConnectionClose { grant_id, .. }
            | AuditEvent::Statement { grant_id, .. }
            | AuditEvent::FunctionCall { grant_id, .. }
            | AuditEvent::HttpRequest { grant_id, .. }
            | AuditEvent::RoleCreated { grant_id, .. }
            | AuditEvent::RoleDropped { grant_id, .. }
            | AuditEvent::StatementRefused { grant_id, .. }
            | AuditEvent::CredentialTampered { grant_id, .. } => Some(grant_id),
            _ => None,
        }
    }

    /// The `event` tag, e.g. `"connection_open"`.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::DaemonStart { .. } => "daemon_start",
            AuditEvent::DaemonStop { .. } => "daemon_stop",
            AuditEvent::LogRecovered { .. } => "log_recovered",
            AuditEvent::Request { .. } => "request",
            AuditEvent::Decision { .. } => "decision",
            AuditEvent::Grant { .. } => "grant",
            AuditEvent::GrantEnded { .. } => "grant_ended",
            AuditEvent::ConnectionOpen { .. } => "connection_open",
            AuditEvent::ConnectionClose { .. } => "connection_close",
            AuditEvent::Statement { .. } => "statement",
            AuditEvent::FunctionCall { .. } => "function_call",
            AuditEvent::HttpRequest { .. } => "http_request",
            AuditEvent::StatementsDropped { .. } => "statements_dropped",
            AuditEvent::RoleCreated { .. } => "role_created",
            AuditEvent::RoleDropped { .. } => "role_dropped",
            AuditEvent::RolesSwept { .. } => "roles_swept",
            AuditEvent::AdminAction { .. } => "admin_action",
            AuditEvent::StatementRefused { .. } => "statement_refused",
            AuditEvent::CredentialTampered { .. } => "credential_tampered",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_names_agree() {
        let events = [
            AuditEvent::DaemonStop { pid: 1 },
            AuditEvent::StatementsDropped { count: 2 },
            AuditEvent::GrantEnded {
                grant_id: "g_1".into(),
                state: "revoked".into(),
                by: "user".into(),
                live_connections: 0,
            },
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["event"], e.name());
        }
    }

    #[test]
    fn options_are_skipped() {
        let d = AuditEvent::Decision {
            request_id: "r_1".into(),
            decision: "approved".into(),
            by: "policy".into(),
            reason: None,
            rule: Some("auto".into()),
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(
            s,
            r#"{"event":"decision","request_id":"r_1","decision":"approved","by":"policy","rule":"auto"}"#
        );
        let st = AuditEvent::Statement {
            grant_id: "g".into(),
            session: 1,
            kind: "parse".into(),
            statement: Some(String::new()),
            text: "SELECT 1".into(),
            truncated: false,
            overflow: None,
        };
        let s = serde_json::to_string(&st).unwrap();
        assert!(!s.contains("\"statement\":"), "{s}");
        let back: AuditEvent = serde_json::from_str(&s).unwrap();
        assert_eq!(back.grant_id(), Some("g"));
    }
}
