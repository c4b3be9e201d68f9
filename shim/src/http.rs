//! The streamable HTTP transport (`agentd-mcp --http 127.0.0.1:PORT`): rmcp's
//! `StreamableHttpService` at `/mcp`, behind a bearer-token check.
//!
//! - Loopback only: a non-loopback bind address is refused at start.
//! - Every request needs `Authorization: Bearer TOKEN` with a token made by
//!   `agentd token create`; the store is re-read on each request, so `agentd token revoke`
//!   takes effect at once. Missing or wrong tokens get `401` with `WWW-Authenticate: Bearer`.
//! - rmcp checks the `Host` header against loopback names (DNS-rebinding protection).
//!
//! All HTTP sessions share this process, so they share its grants (`list_grants`).

use crate::daemon::DaemonLink;
use crate::tools::AgentdTools;
use agentd_proto::mcp_tokens::TokenStore;
use anyhow::{bail, Context as _};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// Serves MCP over streamable HTTP on `addr` until Ctrl-C / SIGTERM.
///
/// # Errors
/// A non-loopback address, no token in `tokens`, an unreadable token store, or a bind
/// failure.
pub async fn serve(
    addr: SocketAddr,
    tokens: PathBuf,
    daemon: Arc<DaemonLink>,
    agent_type: String,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "--http must bind a loopback address (127.0.0.1 or [::1]), not {}: the MCP endpoint hands out database access",
            addr.ip()
        );
    }
    let store = TokenStore::load(&tokens)
        .with_context(|| format!("reading the MCP token store {}", tokens.display()))?;
    if store.tokens.is_empty() {
        bail!(
            "no MCP bearer token in {}; create one with `agentd token create` and give it to your MCP client",
            tokens.display()
        );
    }
    let stop = CancellationToken::new();
    let config = StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    let service = StreamableHttpService::new(
        move || Ok(AgentdTools::new(daemon.clone(), agent_type.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().nest_service(MCP_PATH, service).layer(
        axum::middleware::from_fn_with_state(Arc::new(tokens), require_bearer),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "agentd-mcp serving streamable HTTP");
    // The one line a supervisor or test waits for (stderr; stdout is not used).
    eprintln!("agentd-mcp: listening on http://{local}{MCP_PATH}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::shutdown_signal().await;
            stop.cancel();
        })
        .await?;
    Ok(())
}

/// Lets a request through only with a valid `Authorization: Bearer TOKEN`.
async fn require_bearer(
    State(tokens): State<Arc<PathBuf>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let valid = match presented {
        Some(token) if !token.is_empty() => match TokenStore::load(&tokens) {
            Ok(store) => store.verify(token),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the MCP token store");
                false
            }
        },
        _ => false,
    };
    if valid {
        return next.run(request).await;
    }
    tracing::info!(
        with_token = presented.is_some(),
        "refused an HTTP request without a valid bearer token"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"agentd-mcp\"")],
        "a valid bearer token is required: create one with `agentd token create` and send `Authorization: Bearer <token>`\n",
    )
        .into_response()
}
