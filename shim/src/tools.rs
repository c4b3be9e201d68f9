//! The MCP tools: `list_resources`, `request_access`, `get_request`, `await_approval`,
//! `release_access`. There is deliberately no tool to approve or deny: that needs a human
//! at a terminal.
//!
//! Each result is structured JSON (also given as text for clients that ignore
//! `structuredContent`). Handles carry a local DSN, `PG*` env vars and a `psql` command for
//! a per-grant loopback listener; the token in them works only there and only while the
//! grant lives. Upstream secrets never pass through this process.

use crate::daemon::DaemonLink;
use agentd_proto::{AccessRequestSpec, AgentInfo, Request, Response};
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::{Peer, RoleServer};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The MCP server.
#[derive(Clone)]
pub struct AgentdTools {
    daemon: Arc<DaemonLink>,
    agent_type: String,
    tool_router: ToolRouter<Self>,
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
    pub fn new(daemon: DaemonLink, agent_type: String) -> Self {
        Self {
            daemon: Arc::new(daemon),
            agent_type,
            tool_router: Self::tool_router(),
        }
    }

    /// Lists the databases you may ask for, with their permissions and policies.
    #[tool(
        description = "List the resources (databases) agentd can give you access to, with each permission, its policy (auto: granted at once; approval: a human must approve; deny) and its maximum duration."
    )]
    async fn list_resources(&self) -> Result<CallToolResult, ErrorData> {
        Ok(self.forward(Request::ListResources).await)
    }

    /// Asks for access.
    #[tool(
        description = "Request temporary access to a resource, with a real justification (shown to the human and recorded). If approved, the result holds a handle: a local postgresql:// DSN, PG* environment variables and a ready psql command; use it as given, it expires with the grant. If the state is pending, tell the human the exact command in the message (agentd approve r_…), then call await_approval. If denied, do not retry."
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
        let client_name = peer
            .peer_info()
            .map(|info| format!("{} {}", info.client_info.name, info.client_info.version));
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
        description = "Wait until a human approves or denies a pending access request, or until the timeout (default 60 s). Returns the request: approved (with the handle), denied (do not retry), expired, or still pending (a normal result: remind the human and call again)."
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

    /// Gives a grant back.
    #[tool(
        description = "Release a grant when you are done with it: its listener closes and the handle stops working. Do this as soon as the task is finished."
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
    /// Sends a request to the daemon and turns the reply into a tool result; failures are
    /// tool errors (`isError`) the model can read, not protocol errors.
    async fn forward(&self, request: Request) -> CallToolResult {
        match self.daemon.call(request).await {
            Ok(Response::Error { code, message }) => {
                tool_error(&format!("{code:?}").to_lowercase(), &message)
            }
            Ok(Response::Resources { resources }) => {
                CallToolResult::structured(json!({ "resources": resources }))
            }
            Ok(Response::Revoked { grant_ids }) => {
                CallToolResult::structured(json!({ "released": grant_ids }))
            }
            Ok(Response::AccessRequest(view)) => match serde_json::to_value(&view) {
                Ok(value) => CallToolResult::structured(value),
                Err(e) => tool_error("internal", &format!("cannot encode the reply: {e}")),
            },
            Ok(other) => tool_error(
                "internal",
                &format!("unexpected reply from the daemon: {}", kind_of(&other)),
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "daemon call failed");
                tool_error("daemon_unavailable", &format!("{e:#}"))
            }
        }
    }
}

fn kind_of(response: &Response) -> &'static str {
    match response {
        Response::Pong { .. } => "pong",
        Response::Resources { .. } => "resources",
        Response::AccessRequest(_) => "access_request",
        Response::Status(_) => "status",
        Response::Revoked { .. } => "revoked",
        Response::Requests { .. } => "requests",
        Response::Error { .. } => "error",
    }
}

fn tool_error(code: &str, message: &str) -> CallToolResult {
    CallToolResult::structured_error(json!({ "error": code, "message": message }))
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AgentdTools {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "agentd gives you short-lived, audited database access without ever showing you a password. \
             Call list_resources, then request_access with a clear justification. If it is pending, tell the \
             human the command in the message and call await_approval. Connect with the returned handle \
             (DSN, PG* env vars or the psql command) exactly as given, and release_access when done. \
             Never retry a denied request.",
        );
        info.server_info = Implementation::new("agentd-mcp", env!("CARGO_PKG_VERSION"));
        info
    }
}
