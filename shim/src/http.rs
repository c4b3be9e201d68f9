//! The streamable HTTP transport (`agentd-mcp --http 127.0.0.1:PORT`): rmcp's
//! `StreamableHttpService` at `/mcp`, behind a bearer-token check.
//!
//! - Loopback only: a non-loopback bind address is refused at start.
//! - Every request needs `Authorization: Bearer TOKEN` with a token made by
//!   `agentd token create`; the store is re-read on each request, so `agentd token revoke`
//!   takes effect at once. Missing or wrong tokens get `401` with `WWW-Authenticate: Bearer`.
//! - DNS-rebinding protection, as the MCP Streamable HTTP transport requires of local
//!   servers, checked before the token: `Host` must be the bound `IP:PORT` or
//!   `localhost:PORT`, and `Origin`, when sent, must be a loopback origin (`http(s)://`
//!   `localhost`, `127.0.0.1` or `[::1]`, any port); anything else gets `403` (a page
//!   from a rebound domain carries its own name in both, even with a stolen token).
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
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    let hosts = Arc::new(allowed_hosts(local));
    // The last layer runs first: Origin/Host before the bearer token.
    let app = axum::Router::new()
        .nest_service(MCP_PATH, service)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(tokens),
            require_bearer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            hosts,
            require_local_origin,
        ));
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

/// The `Host` values served for a listener bound at `local`: `IP:PORT` as bound and
/// `localhost:PORT` (lowercase).
fn allowed_hosts(local: SocketAddr) -> Vec<String> {
    vec![local.to_string(), format!("localhost:{}", local.port())]
}

/// True for an `Origin` that names this machine: `http://` or `https://`, then
/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port, nothing else. `null` and
/// anything unparsable are not.
fn is_loopback_origin(origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) if tail.is_empty() || tail.starts_with(':') => {
                return addr == "::1" && port_ok(tail);
            }
            _ => return false,
        }
    } else {
        rest
    };
    let (name, tail) = match host.find(':') {
        Some(i) => (&host[..i], &host[i..]),
        None => (host, ""),
    };
    matches!(name, "localhost" | "127.0.0.1") && port_ok(tail)
}

/// `""` or `:DIGITS`.
fn port_ok(tail: &str) -> bool {
    tail.is_empty()
        || tail
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuses (403) requests whose `Host` is not one of `hosts` or whose `Origin`, when
/// present, is not a loopback origin ([`is_loopback_origin`]).
async fn require_local_origin(
    State(hosts): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let host_ok = host.as_ref().is_some_and(|h| hosts.contains(h));
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("?"));
    let origin_ok = origin.is_none_or(is_loopback_origin);
    if host_ok && origin_ok {
        return next.run(request).await;
    }
    tracing::warn!(
        host = %agentd_proto::text::terminal_safe(host.as_deref().unwrap_or("-"), 200),
        origin = %agentd_proto::text::terminal_safe(origin.unwrap_or("-"), 200),
        "refused an HTTP request from a non-local Host or Origin (DNS rebinding?)"
    );
    (
        StatusCode::FORBIDDEN,
        "agentd-mcp serves only this machine: the Host must be the address it listens on and the Origin, if any, a loopback origin\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_only() {
        for ok in [
            "http://localhost",
            "http://localhost:8765",
            "https://127.0.0.1:3000",
            "http://[::1]:9",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(is_loopback_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io:80",
            "http://localhost:80/x",
            "file://localhost",
            "http://[::2]:1",
            "http://localhost:",
            "",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
        let hosts = allowed_hosts("127.0.0.1:8765".parse().unwrap());
        assert_eq!(hosts, ["127.0.0.1:8765", "localhost:8765"]);
    }
}
