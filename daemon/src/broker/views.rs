//! What the broker shows: grants, requests and handles as protocol views. The token is
//! exposed only here, into the agent's handle.

use super::{ids, GrantRecord, RequestRecord, State};
use agentd_proto::{AccessRequestView, GrantState, GrantView, Handle, HttpHandle, RequestState};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn view_grant(g: &GrantRecord) -> GrantView {
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
        requester: Some(g.owner.requester()),
        state: g.state,
        created_at: unix(g.created_at),
        expires_at: unix(g.expires_at),
        remaining_seconds: remaining,
        listener: g.listener_addr.to_string(),
        connections: g.listener.live_connections(),
        connections_total: g.listener.total_connections(),
    }
}

/// The view of request `r`, with its grant and, when `with_handle` (the caller owns it) and
/// the grant is active, its handle. Views for anyone but the owner never carry a token.
pub(crate) fn view_request(
    state: &State,
    r: &RequestRecord,
    with_handle: bool,
) -> AccessRequestView {
    let grant = r.grant_id.as_ref().and_then(|g| state.grants.get(g));
    let message = match grant {
        Some(g) if g.state != GrantState::Active => Some(format!(
            "grant {} is {}; request access again if still needed",
            g.id,
            g.state.as_str()
        )),
        _ => r.message.clone(),
    };
    AccessRequestView {
        id: r.id.clone(),
        resource: r.spec.resource.clone(),
        permission: r.spec.permission.clone(),
        state: r.state,
        duration_seconds: r.duration.as_secs(),
        clamped: r.clamped,
        justification: r.spec.justification.clone(),
        agent: r.spec.agent.clone(),
        requester: Some(r.owner.requester()),
        created_at: unix(r.created_at),
        pending_until: r
            .pending_until
            .filter(|_| r.state == RequestState::Pending)
            .map(unix),
        decided_by: r.decided_by.clone(),
        message,
        grant: grant.map(view_grant),
        handle: grant
            .filter(|g| with_handle && g.state == GrantState::Active)
            .map(handle_for),
    }
}

/// Builds the agent-facing handle: DSN, libpq env vars and a psql command; for an http
/// grant the base URL, `AGENTD_BASE_URL` / `AGENTD_TOKEN` and where the token goes.
pub(crate) fn handle_for(g: &GrantRecord) -> Handle {
    if let Some(info) = &g.http {
        return http_handle_for(g, info);
    }
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
    let service_file = g.service_file.as_ref().map(|p| p.display().to_string());
    let psql = match &service_file {
        Some(path) => format!("PGSERVICEFILE={} psql service={}", shell_quote(path), g.id),
        None => "psql".to_owned(),
    };
    Handle {
        psql,
        service_file,
        dsn,
        env,
        host,
        port,
        socket_dir: g.socket_dir.as_ref().map(|d| d.display().to_string()),
        database: g.database.clone(),
        user: g.id.clone(),
        expires_at: unix(g.expires_at),
        http: None,
    }
}

fn http_handle_for(g: &GrantRecord, info: &super::HttpGrantInfo) -> Handle {
    let host = g.listener_addr.ip().to_string();
    let port = g.listener_addr.port();
    let token = g.token.expose_secret();
    let base_url = format!("http://{host}:{port}");
    let mut env = BTreeMap::from([
        ("AGENTD_BASE_URL".to_owned(), base_url.clone()),
        ("AGENTD_TOKEN".to_owned(), token.to_owned()),
    ]);
    if let Some(region) = &info.aws_region {
        // What AWS SDKs and the CLI read: they sign with the token as the secret key.
        for (k, v) in [
            ("AWS_ENDPOINT_URL", base_url.as_str()),
            ("AWS_ACCESS_KEY_ID", "agentd"),
            ("AWS_SECRET_ACCESS_KEY", token),
            ("AWS_REGION", region.as_str()),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    Handle {
        dsn: base_url.clone(),
        env,
        psql: String::new(),
        host,
        port,
        socket_dir: g.socket_dir.as_ref().map(|d| d.display().to_string()),
        database: String::new(),
        user: g.id.clone(),
        expires_at: unix(g.expires_at),
        service_file: None,
        http: Some(HttpHandle {
            base_url,
            socket_path: info.socket_path.as_ref().map(|p| p.display().to_string()),
            token: token.to_owned(),
            token_placement: info.token_placement.clone(),
            auth_scheme: info.auth_scheme.to_owned(),
        }),
    }
}

/// `s` in single quotes for a POSIX shell (`'` written as `'\''`).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
