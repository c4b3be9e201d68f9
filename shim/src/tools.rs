//! The MCP tools, in the order an agent uses them: `list_resources`, `describe_resource`,
//! `recommend_access` (discover); `request_access`, `get_request`, `await_approval`
//! (ask); `list_grants`, `run_query` (use); `release_access` (give back). There is
//! deliberately no tool to approve or deny: that needs a human at a terminal.
//!
//! Each result is structured JSON (also given as text for clients that ignore
//! `structuredContent`). Handles carry a local DSN, `PG*` env vars and a `psql` command for
//! a per-grant loopback listener; the token in them works only there and only while the
//! grant lives. Upstream secrets never pass through this process.

use crate::daemon::DaemonLink;
use crate::{http_call, query, recommend};
use agentd_proto::{AccessRequestSpec, AgentInfo, HeldGrant, Request, ResourceInfo, Response};
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::{Peer, RoleServer};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The MCP server.
#[derive(Clone)]
pub struct AgentdTools {
    daemon: Arc<DaemonLink>,
    agent_type: String,
    tool_router: ToolRouter<Self>,
}

/// `list_resources` arguments (all optional filters).
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct ListResourcesArgs {
    /// Only resources of this kind (e.g. "postgres").
    #[serde(default)]
    pub kind: Option<String>,
    /// Only resources whose name or a tag contains this text (case-insensitive).
    #[serde(default)]
    pub name: Option<String>,
    /// Only resources that have a permission with this name.
    #[serde(default)]
    pub permission: Option<String>,
}

/// `describe_resource` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DescribeResourceArgs {
    /// Resource name (e.g. "app-db").
    pub resource: String,
}

/// `recommend_access` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RecommendAccessArgs {
    /// The task in a sentence, e.g. "count last week's orders for the sales report".
    pub task: String,
}

/// `run_query` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunQueryArgs {
    /// One of your active grants (g_…).
    pub grant_id: String,
    /// Exactly one SQL statement.
    pub sql: String,
    /// Most rows to return (default 100, at most 1000).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Most bytes of values to return (default 65536, at most 1048576).
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// `http_request` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct HttpRequestArgs {
    /// One of your active grants on an http resource (g_…).
    pub grant_id: String,
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    pub method: String,
    /// Path and query relative to the API's base URL, e.g. /repos/o/r/issues?state=open.
    pub path: String,
    /// Extra request headers (not Authorization: agentd adds the credential).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Request body (text, e.g. JSON).
    #[serde(default)]
    pub body: Option<String>,
    /// Most response bytes to return (default 65536, at most 1048576).
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

/// `request_access` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RequestAccessArgs {
    /// Resource name, as listed by list_resources (e.g. "app-db").
    pub resource: String,
    /// Permission on that resource, as listed by list_resources (e.g. "read_only").
    pub permission: String,
    /// How long you need access, e.g. "15m", "1h" (default: the permission's default; capped
    /// at its max_ttl).
    #[serde(default)]
    pub duration: Option<String>,
    /// What you will do with the access and why; shown to the human and recorded.
    pub justification: String,
}

/// `get_request` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct GetRequestArgs {
    /// The request id returned by request_access (r_…).
    pub request_id: String,
}

/// `await_approval` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AwaitApprovalArgs {
    /// The request id returned by request_access (r_…).
    pub request_id: String,
    /// How long to wait for the human, in seconds (default 60, at most 600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// `release_access` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReleaseAccessArgs {
    /// The grant id from the approved request (g_…).
    pub grant_id: String,
}

/// Default `await_approval` wait, in seconds.
const DEFAULT_AWAIT_SECONDS: u64 = 60;

#[tool_router]
impl AgentdTools {
    /// A server that talks to `daemon` and labels requests with `agent_type`.
    pub fn new(daemon: Arc<DaemonLink>, agent_type: String) -> Self {
        Self {
            daemon,
            agent_type,
            tool_router: Self::tool_router(),
        }
    }

    /// Lists the databases you may ask for, with their permissions and policies.
    #[tool(
        description = "Step 1. List the databases and APIs you can ask for: kind, description, tags, each permission with its policy for you now (auto = granted at once, approval = a human must approve, deny), default/max duration, and grants you already hold. Optional filters: kind, name (name or tag substring), permission."
    )]
    async fn list_resources(
        &self,
        Parameters(args): Parameters<ListResourcesArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let resources = match self.resources().await {
            Ok(r) => r,
            Err(e) => return Ok(e),
        };
        let contains =
            |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        let listed: Vec<Value> = resources
            .iter()
            .filter(|r| {
                args.kind
                    .as_deref()
                    .is_none_or(|k| r.kind.eq_ignore_ascii_case(k))
            })
            .filter(|r| {
                args.name
                    .as_deref()
                    .is_none_or(|n| contains(&r.name, n) || r.tags.iter().any(|t| contains(t, n)))
            })
            .filter(|r| {
                args.permission
                    .as_deref()
                    .is_none_or(|p| r.permissions.iter().any(|x| x.name == p))
            })
            .map(|r| {
                let perms: Vec<Value> = r
                    .permissions
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "description": p.description,
                            "policy": p.policy_now.unwrap_or(p.policy),
                            "default_ttl_seconds": p.default_ttl_seconds,
                            "max_ttl_seconds": p.max_ttl_now_seconds.unwrap_or(p.max_ttl_seconds),
                            "your_grants": p.your_grants,
                            "http_allows": p.allows,
                        })
                    })
                    .collect();
                json!({"name": r.name, "kind": r.kind, "description": r.description,
                       "tags": r.tags, "permissions": perms})
            })
            .collect();
        let summary = format!(
            "{} of {} resources: {}. Next: describe_resource or recommend_access, then request_access.",
            listed.len(),
            resources.len(),
            listed
                .iter()
                .map(|r| {
                    let perms = r["permissions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| format!("{} [{}]", s(&p["name"]), s(&p["policy"])))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("{} ({perms})", s(&r["name"]))
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(ok(json!({ "resources": listed }), summary))
    }

    /// Everything about one resource.
    #[tool(
        description = "Details of one resource: each permission, what it allows, default and max duration for you, whether a human must approve it now, and the full policy in words."
    )]
    async fn describe_resource(
        &self,
        Parameters(args): Parameters<DescribeResourceArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let resources = match self.resources().await {
            Ok(r) => r,
            Err(e) => return Ok(e),
        };
        let Some(r) = resources.iter().find(|r| r.name == args.resource) else {
            return Ok(tool_error(
                "not_found",
                &format!(
                    "no resource {:?}; known resources: {}. Call list_resources.",
                    args.resource,
                    names(&resources)
                ),
            ));
        };
        let perms: Vec<Value> = r
            .permissions
            .iter()
            .map(|p| {
                let policy = p.policy_now.unwrap_or(p.policy);
                json!({
                    "name": p.name,
                    "allows": p.description,
                    "policy": policy,
                    "approval_needed": policy == agentd_proto::PolicyDecision::Approval,
                    "default_ttl_seconds": p.default_ttl_seconds.min(p.max_ttl_now_seconds.unwrap_or(u64::MAX)),
                    "max_ttl_seconds": p.max_ttl_now_seconds.unwrap_or(p.max_ttl_seconds),
                    "policy_explained": p.policy_explained,
                    "your_grants": p.your_grants,
                    "http_allows": p.allows,
                })
            })
            .collect();
        let summary = format!(
            "{} ({}, database {}): permissions {}.",
            r.name,
            r.kind,
            r.database,
            r.permissions
                .iter()
                .map(
                    |p| format!("{} [{:?}]", p.name, p.policy_now.unwrap_or(p.policy))
                        .to_lowercase()
                )
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(ok(
            json!({"name": r.name, "kind": r.kind, "description": r.description, "tags": r.tags,
                   "database": r.database, "base_url": r.base_url, "permissions": perms}),
            summary,
        ))
    }

    /// Suggests what to ask for.
    #[tool(
        description = "Suggest the least-privileged resource, permission and duration for a task (deterministic rules over names, tags, descriptions and the task's verbs), with the reason. Review it, then request_access."
    )]
    async fn recommend_access(
        &self,
        Parameters(args): Parameters<RecommendAccessArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let resources = match self.resources().await {
            Ok(r) => r,
            Err(e) => return Ok(e),
        };
        Ok(match recommend::recommend(&args.task, &resources) {
            Ok(rec) => {
                let summary = format!(
                    "Recommend {}/{} for {}: {}",
                    rec.resource, rec.permission, rec.duration, rec.reason
                );
                match serde_json::to_value(&rec) {
                    Ok(v) => ok(v, summary),
                    Err(e) => tool_error("internal", &e.to_string()),
                }
            }
            Err(message) => tool_error("no_recommendation", &message),
        })
    }

    /// Asks for access.
    #[tool(
        description = "Step 2. Request temporary access with a real justification (shown to the human, recorded). approved: the result has a handle: connect by setting handle.env (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE) or by running handle.psql as given (it keeps the token off the command line); handle.dsn only for drivers that need a URL, never on a command line. pending: tell the human the exact command in the message (agentd approve r_…), then call await_approval. denied: do not retry."
    )]
    async fn request_access(
        &self,
        Parameters(args): Parameters<RequestAccessArgs>,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let duration_seconds = match args
            .duration
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            None => None,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) => Some(d.as_secs()),
                Err(e) => {
                    return Ok(tool_error(
                        "bad_request",
                        &format!("duration {text:?} is not a duration like \"15m\" or \"1h\": {e}"),
                    ))
                }
            },
        };
        // The MCP client's self-description, cut to the daemon's bound (it is the client's
        // claim, not the agent's request: an over-long name should not refuse the request).
        let client_name = peer.peer_info().map(|info| {
            format!("{} {}", info.client_info.name, info.client_info.version)
                .chars()
                .take(agentd_proto::text::MAX_CLIENT_NAME_CHARS)
                .collect::<String>()
        });
        let spec = AccessRequestSpec {
            resource: args.resource,
            permission: args.permission,
            duration_seconds,
            justification: args.justification,
            agent: AgentInfo {
                agent_type: self.agent_type.clone(),
                client_name,
                pid: None,
                uid: None,
            },
        };
        Ok(self.forward(Request::RequestAccess(spec)).await)
    }

    /// Looks up a request (e.g. after a human approved it).
    #[tool(
        description = "Look up an access request by id: its state (pending, approved, denied, expired, cancelled) and, once approved, the handle."
    )]
    async fn get_request(
        &self,
        Parameters(args): Parameters<GetRequestArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(self
            .forward(Request::GetRequest {
                request_id: args.request_id,
            })
            .await)
    }

    /// Waits for a human's decision on a pending request.
    #[tool(
        description = "Step 3. Wait for the human to approve or deny a pending request (default 60 s). approved: handle included. denied: do not retry. still pending is normal: remind the human of the command and call again."
    )]
    async fn await_approval(
        &self,
        Parameters(args): Parameters<AwaitApprovalArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(self
            .forward(Request::AwaitRequest {
                request_id: args.request_id,
                timeout_seconds: args.timeout_seconds.unwrap_or(DEFAULT_AWAIT_SECONDS),
            })
            .await)
    }

    /// The caller's active grants.
    #[tool(
        description = "Your active grants: id, resource, permission, seconds left, and how to connect (env vars, psql line without the token, DSN for drivers)."
    )]
    async fn list_grants(&self) -> Result<CallToolResult, ErrorData> {
        let grants = match self.held_grants().await {
            Ok(g) => g,
            Err(e) => return Ok(e),
        };
        let listed: Vec<Value> = grants
            .iter()
            .map(|h| {
                json!({
                    "grant_id": h.grant.id,
                    "resource": h.grant.resource,
                    "permission": h.grant.permission,
                    "remaining_seconds": h.grant.remaining_seconds,
                    "expires_at": h.grant.expires_at,
                    "env": h.handle.env,
                    "psql": h.handle.psql,
                    "dsn": h.handle.dsn,
                })
            })
            .collect();
        let summary = if grants.is_empty() {
            "No active grants. Use request_access to get one.".to_owned()
        } else {
            grants
                .iter()
                .map(|h| {
                    format!(
                        "{} {}/{} {}s left",
                        h.grant.id, h.grant.resource, h.grant.permission, h.grant.remaining_seconds
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Ok(ok(json!({ "grants": listed }), summary))
    }

    /// Runs one statement through a grant.
    #[tool(
        description = "Step 4 (if you have no shell). Run ONE SQL statement through one of your active grants; returns text rows, at most max_rows (default 100) / max_bytes (default 64 KiB), with truncated: true when cut. Audited; the grant's permission applies (a refused statement is not to be retried)."
    )]
    async fn run_query(
        &self,
        Parameters(args): Parameters<RunQueryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let held = match self.held_grant(&args.grant_id).await {
            Ok(h) => h,
            Err(e) => return Ok(e),
        };
        let limits = query::QueryLimits::new(args.max_rows, args.max_bytes);
        Ok(match query::run(&held.handle, &args.sql, limits).await {
            Ok(result) => {
                let summary = format!(
                    "{} row(s){}.",
                    result.row_count,
                    if result.truncated {
                        " (truncated: narrow the query or raise max_rows / max_bytes)"
                    } else {
                        ""
                    }
                );
                match serde_json::to_value(&result) {
                    Ok(v) => ok(v, summary),
                    Err(e) => tool_error("internal", &e.to_string()),
                }
            }
            Err(err) => {
                let text = format!(
                    "{}{}: {} Next: {}",
                    err.error,
                    err.sqlstate
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default(),
                    err.message,
                    err.next
                );
                let value = serde_json::to_value(&err).unwrap_or(Value::Null);
                error_result(value, text)
            }
        })
    }

    /// One HTTP call through an http grant.
    #[tool(
        description = "Step 4 for APIs (if you have no shell). One HTTP call through an http grant: agentd adds the credential; returns status, headers, body (max_bytes, default 64 KiB; truncated: true when cut). Only what the permission allows; a refusal is not to be retried."
    )]
    async fn http_request(
        &self,
        Parameters(args): Parameters<HttpRequestArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let held = match self.held_grant(&args.grant_id).await {
            Ok(h) => h,
            Err(e) => return Ok(e),
        };
        Ok(
            match http_call::call(
                &held.handle,
                &args.method,
                &args.path,
                &args.headers,
                args.body,
                args.max_bytes,
            )
            .await
            {
                Ok(result) => {
                    let summary = format!(
                        "HTTP {}{}.",
                        result.status,
                        if result.truncated {
                            " (body truncated: raise max_bytes or narrow the request)"
                        } else {
                            ""
                        }
                    );
                    match serde_json::to_value(&result) {
                        Ok(v) => ok(v, summary),
                        Err(e) => tool_error("internal", &e.to_string()),
                    }
                }
                Err(err) => {
                    let text = format!("{}: {} Next: {}", err.error, err.message, err.next);
                    let value = serde_json::to_value(&err).unwrap_or(Value::Null);
                    error_result(value, text)
                }
            },
        )
    }

    /// Gives a grant back.
    #[tool(
        description = "Step 5. Release a grant as soon as the task is done: its listener closes and the handle stops working."
    )]
    async fn release_access(
        &self,
        Parameters(args): Parameters<ReleaseAccessArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(self
            .forward(Request::Release {
                grant_id: args.grant_id,
            })
            .await)
    }
}

impl AgentdTools {
    /// The resources as the daemon describes them for this agent type.
    async fn resources(&self) -> Result<Vec<ResourceInfo>, CallToolResult> {
        match self
            .call(Request::ListResources {
                agent_type: Some(self.agent_type.clone()),
            })
            .await?
        {
            Response::Resources { resources } => Ok(resources),
            other => Err(unexpected(&other)),
        }
    }

    /// This shim's active grants, with handles.
    async fn held_grants(&self) -> Result<Vec<HeldGrant>, CallToolResult> {
        match self.call(Request::ListGrants).await? {
            Response::Grants { grants } => Ok(grants),
            other => Err(unexpected(&other)),
        }
    }

    /// This shim's active grant `grant_id`; a `not_found` tool error with advice otherwise.
    async fn held_grant(&self, grant_id: &str) -> Result<HeldGrant, CallToolResult> {
        self.held_grants()
            .await?
            .into_iter()
            .find(|h| h.grant.id == grant_id)
            .ok_or_else(|| {
                tool_error(
                    "not_found",
                    &format!(
                        "{grant_id} is not one of your active grants (it may have expired, been revoked or released). Call list_grants, or request_access again."
                    ),
                )
            })
    }

    /// One daemon call; daemon errors and unreachable daemons become tool errors.
    async fn call(&self, request: Request) -> Result<Response, CallToolResult> {
        match self.daemon.call(request).await {
            Ok(Response::Error { code, message }) => Err(tool_error(
                serde_json::to_value(code)
                    .ok()
                    .as_ref()
                    .and_then(Value::as_str)
                    .unwrap_or("error"),
                &message,
            )),
            Ok(response) => Ok(response),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "daemon call failed");
                Err(tool_error("daemon_unavailable", &format!("{e:#}")))
            }
        }
    }

    /// Sends a request to the daemon and turns the reply into a tool result; failures are
    /// tool errors (`isError`) the model can read, not protocol errors.
    async fn forward(&self, request: Request) -> CallToolResult {
        match self.call(request).await {
            Err(e) => e,
            Ok(Response::Revoked { grant_ids }) => {
                let summary = format!(
                    "Released {}; the handle no longer works.",
                    grant_ids.join(", ")
                );
                ok(json!({ "released": grant_ids }), summary)
            }
            Ok(Response::AccessRequest(view)) => {
                let summary = request_summary(&view);
                match serde_json::to_value(&view) {
                    Ok(value) => ok(value, summary),
                    Err(e) => tool_error("internal", &format!("cannot encode the reply: {e}")),
                }
            }
            Ok(other) => unexpected(&other),
        }
    }
}

/// One line on an access request for the text content.
fn request_summary(view: &agentd_proto::AccessRequestView) -> String {
    use agentd_proto::RequestState::*;
    let head = format!(
        "Request {} for {}/{}: {}.",
        view.id,
        view.resource,
        view.permission,
        view.state.as_str()
    );
    match (view.state, &view.grant) {
        (Approved, Some(g)) if view.handle.is_some() => format!(
            "{head} Grant {} for {}s. Connect with handle.psql (no token on the command line) or by setting handle.env (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE) for any libpq tool or driver; never paste handle.dsn into a command line. release_access when done.",
            g.id, g.remaining_seconds
        ),
        _ => match &view.message {
            Some(m) => format!("{head} {m}"),
            None => head,
        },
    }
}

/// A JSON string's text ("" for anything else).
fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn names(resources: &[ResourceInfo]) -> String {
    resources
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unexpected(response: &Response) -> CallToolResult {
    tool_error(
        "internal",
        &format!("unexpected reply from the daemon: {}", kind_of(response)),
    )
}

fn kind_of(response: &Response) -> &'static str {
    match response {
        Response::Pong { .. } => "pong",
        Response::Resources { .. } => "resources",
        Response::AccessRequest(_) => "access_request",
        Response::Status(_) => "status",
        Response::Revoked { .. } => "revoked",
        Response::Grants { .. } => "grants",
        Response::Requests { .. } => "requests",
        Response::Error { .. } => "error",
        Response::Done { .. } => "done",
        Response::Secrets { .. } => "secrets",
        Response::AuditRecords { .. } => "audit_records",
        Response::AuditVerified(_) => "audit_verified",
    }
}

/// A successful result: a one-line summary for the model, then the JSON (also as
/// `structuredContent`).
fn ok(value: Value, summary: String) -> CallToolResult {
    let mut result = CallToolResult::structured(value);
    result.content.insert(0, ContentBlock::text(summary));
    result
}

/// An error result (`isError`) with a structured body and a text that says what to do.
fn error_result(value: Value, text: String) -> CallToolResult {
    let mut result = CallToolResult::structured_error(value);
    result.content = vec![ContentBlock::text(text)];
    result
}

fn tool_error(code: &str, message: &str) -> CallToolResult {
    error_result(
        json!({ "error": code, "message": message }),
        format!("{code}: {message}"),
    )
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentdTools {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "agentd gives you short-lived, audited database access without ever showing you a password. \
             Flow: list_resources / recommend_access -> request_access with a real justification -> if pending, \
             tell the human the command in the message and await_approval -> connect with the handle exactly as \
             given (or run_query) -> release_access when done. Never retry a denied request.",
        );
        info.server_info = Implementation::new("agentd-mcp", env!("CARGO_PKG_VERSION"));
        info
    }
}
