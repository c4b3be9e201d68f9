//! The PostgreSQL listener a grant opens on loopback.
//!
//! One TCP listener per grant, on an ephemeral port. Each accepted connection goes through:
//! [`startup`] (SSLRequest/GSSENCRequest → `N`, StartupMessage, 10,000-byte cap) →
//! [`auth`] (SCRAM-SHA-256 with the grant token) → [`upstream`] (TLS + login with the real
//! secret) → AuthenticationOk → [`relay`] (bytes pass through until either side closes or
//! the grant ends). Errors go to the client as an ErrorResponse and close only that
//! connection.

pub mod auth;
pub mod relay;
pub mod startup;
pub mod upstream;
pub mod wire;

use auth::{AuthError, ScramVerifier};
use bytes::BytesMut;
use startup::{Startup, StartupError, StartupParams};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use upstream::UpstreamTarget;

/// Time a client has to finish startup and authentication, in seconds.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a grant's listener needs, shared by its sessions.
#[derive(Debug)]
pub struct GrantListener {
    /// Grant id; also the user name clients must present.
    pub grant_id: String,
    /// Verifier for the grant token.
    pub verifier: ScramVerifier,
    /// Where and how to log in upstream.
    pub upstream: UpstreamTarget,
    /// Fires when the grant ends: closes the listener and cuts every session.
    pub cut: CancellationToken,
    /// Why the grant ended, told to clients when they are cut.
    pub cut_reason: OnceLock<String>,
    /// Live relayed sessions.
    pub live_connections: AtomicU32,
    /// Authenticated sessions so far.
    pub total_connections: AtomicU64,
}

impl GrantListener {
    /// Ends the grant's listener and sessions with `reason` (shown to cut clients).
    pub fn cut(&self, reason: String) {
        let _ = self.cut_reason.set(reason);
        self.cut.cancel();
    }
}

/// Binds `host:0` and serves the grant until it is cut. Returns the bound address.
///
/// # Errors
/// The bind error.
pub async fn spawn(grant: Arc<GrantListener>, host: IpAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((host, 0)).await?;
    let addr = listener.local_addr()?;
    let span = tracing::info_span!("listener", grant = %grant.grant_id, %addr);
    tokio::spawn(accept_loop(listener, grant).instrument(span));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, grant: Arc<GrantListener>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = grant.cut.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let grant = grant.clone();
        let span = tracing::info_span!("session", %peer);
        tokio::spawn(serve_connection(stream, peer, grant).instrument(span));
    }
    info!("listener closed");
}

/// Why a session ended before the relay; split into what the client sees and what is logged.
#[derive(Debug)]
struct Refusal {
    sqlstate: &'static str,
    client_message: String,
    log_message: String,
}

impl Refusal {
    fn new(sqlstate: &'static str, client_message: String, log_message: String) -> Self {
        Self {
            sqlstate,
            client_message,
            log_message,
        }
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, grant: Arc<GrantListener>) {
    if !peer.ip().is_loopback() {
        warn!("refused non-loopback peer");
        wire::send_fatal(
            &mut stream,
            "28000",
            "agentd: connections are accepted from this machine (loopback) only",
        )
        .await;
        return;
    }
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(AUTH_TIMEOUT, handshake(&mut stream, &grant));
    let upstream = match handshake.await {
        Ok(Ok(Some(upstream))) => upstream,
        Ok(Ok(None)) => return,
        Ok(Err(refusal)) => {
            warn!(reason = %refusal.log_message, "session refused");
            wire::send_fatal(&mut stream, refusal.sqlstate, &refusal.client_message).await;
            return;
        }
        Err(_) => {
            warn!("startup/authentication timed out");
            wire::send_fatal(&mut stream, "08006", "agentd: authentication timed out").await;
            return;
        }
    };
    grant.total_connections.fetch_add(1, Ordering::Relaxed);
    grant.live_connections.fetch_add(1, Ordering::Relaxed);
    info!("session started");
    let stats = relay::relay(stream, upstream, grant.cut.clone(), || {
        grant
            .cut_reason
            .get()
            .cloned()
            .unwrap_or_else(|| format!("agentd: grant {} ended", grant.grant_id))
    })
    .await;
    grant.live_connections.fetch_sub(1, Ordering::Relaxed);
    info!(
        bytes_up = stats.bytes_up,
        bytes_down = stats.bytes_down,
        end = ?stats.end,
        "session ended"
    );
}

/// Startup, client auth, upstream login. `Ok(None)` for a CancelRequest (handled and done).
async fn handshake(
    stream: &mut TcpStream,
    grant: &GrantListener,
) -> Result<Option<upstream::UpstreamStream>, Refusal> {
    let params = match startup::read_startup(stream).await {
        Ok(Startup::Session(p)) => p,
        Ok(Startup::Cancel { .. }) => {
            debug!("CancelRequest ignored (no session matches)");
            return Ok(None);
        }
        Err(e) => return Err(startup_refusal(e)),
    };
    authenticate(stream, grant, &params).await?;
    check_database(grant, &params)?;
    let upstream = upstream::connect(&grant.upstream, &params)
        .await
        .map_err(|e| {
            Refusal::new(
                "08001",
                e.client_message(&grant.upstream.resource),
                format!("upstream {}: {e}", grant.upstream.resource),
            )
        })?;
    let mut ok = BytesMut::new();
    wire::put_authentication(&mut ok, 0, &[]);
    stream
        .write_all(&ok)
        .await
        .map_err(|e| Refusal::new("08006", String::new(), format!("client write: {e}")))?;
    Ok(Some(upstream))
}

fn startup_refusal(e: StartupError) -> Refusal {
    let code = match e {
        StartupError::UnsupportedProtocol { .. } => "0A000",
        StartupError::Replication | StartupError::NoUser => "28000",
        _ => "08P01",
    };
    Refusal::new(code, format!("agentd: {e}"), format!("startup: {e}"))
}

async fn authenticate(
    stream: &mut TcpStream,
    grant: &GrantListener,
    params: &StartupParams,
) -> Result<(), Refusal> {
    let failed = || {
        Refusal::new(
            "28P01",
            format!(
                "password authentication failed for user \"{}\"",
                params.user
            ),
            format!("client authentication failed for user {:?}", params.user),
        )
    };
    match auth::authenticate_client(stream, &grant.verifier).await {
        Ok(()) if params.user == grant.grant_id => Ok(()),
        Ok(()) => Err(failed()),
        Err(AuthError::WrongToken) => Err(failed()),
        Err(e) => Err(Refusal::new(
            "08P01",
            format!("agentd: {e}"),
            format!("client auth: {e}"),
        )),
    }
}

fn check_database(grant: &GrantListener, params: &StartupParams) -> Result<(), Refusal> {
    let wanted = &grant.upstream.database;
    match params.database.as_deref() {
        None | Some("") => Ok(()),
        Some(db) if db == wanted || db == params.user => Ok(()),
        Some(db) => Err(Refusal::new(
            "3D000",
            format!(
                "agentd: grant {} covers database \"{wanted}\" only, not \"{db}\"",
                grant.grant_id
            ),
            format!("client asked for database {db:?}"),
        )),
    }
}
