//! The HTTP listener a grant on a `kind = "http"` resource opens on loopback (and a Unix
//! socket in the grant's private directory).
//!
//! Each request ([`proxy`]): the grant token is checked in constant time where the client
//! would send the real credential ([`auth`]), then removed; absolute-form targets, CONNECT
//! and upgrades are refused; the path is normalised ([`path`]); the header policy
//! ([`headers`]) refuses method and path overrides and drops forwarding headers; the path
//! is matched against the permission's allow list (deny by default); the real credential
//! is injected, `Host` set from the base URL, `Accept-Encoding: identity` asked for, and the
//! request forwarded over a keep-alive upstream connection checked out of the grant's
//! per-runtime pool for the request ([`upstream`]: HTTP/1.1 or HTTP/2 by ALPN, driven in
//! the client connection's task, [`local`]). Response headers (without `Set-Cookie`,
//! [`headers`]) and body stream back through [`scan`], which replaces any occurrence of the
//! secret (or an encoded form) with `[REDACTED]`. One `http_request` audit record is written
//! per request. Refusals get 403 (401 for a missing or wrong token) with a JSON body naming
//! the rule and the next step.
//!
//! Compression: the proxy asks the upstream for `identity`. A response that arrives
//! compressed anyway is refused (502): scanning it would need decompress + recompress on
//! the hot path, and passing it unscanned would let an encoded secret through.

pub mod auth;
pub mod headers;
mod local;
pub mod path;
pub mod proxy;
pub mod scan;
pub mod shards;
pub mod sigv4;
pub mod upstream;

use crate::audit::{AuditEvent, AuditLog, Durability};
use crate::config::http::AllowRule;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// hyper's limit on request headers when none is set (`http1::Builder::max_headers`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Limits on what one client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line + headers), bytes (hyper's read buffer).
    pub max_head_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// Most simultaneous client connections per listener.
    pub max_connections: u32,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request whose body stops arriving for this long (while the listener waits for
    /// it) fails and its connection is closed (`[daemon] http_body_idle_timeout`).
    pub body_idle_timeout: Duration,
    /// Largest body the listener reads whole to hash it for SigV4 signing (see
    /// [`sigv4`]); larger ones get 413.
    pub max_buffered_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 1 << 30,
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_buffered_body_bytes: 16 << 20,
        }
    }
}

/// Everything a grant's HTTP listener needs, shared by its connections.
#[derive(Debug)]
pub struct HttpGrantListener {
    /// Grant id.
    pub grant_id: String,
    /// The uid of the grant's owner: the only uid served on the TCP listener (Linux,
    /// [`crate::listener::peer`]) and the Unix socket.
    pub owner_uid: u32,
    /// How the client presents the token and how the secret is injected.
    pub auth: auth::Injector,
    /// The permission's allow list.
    pub allow: Vec<AllowRule>,
    /// Each rule of `allow` as [`AllowRule::describe`] words it (the audit record's `rule`),
    /// made once for the grant.
    pub allow_described: Vec<String>,
    /// The upstream (each client connection opens its own connection to it).
    pub upstream: proxy::Upstream,
    /// The secret's forms, for response scanning.
    pub scanner: scan::Scanner,
    /// Client limits.
    pub limits: Limits,
    /// The wrong-token throttle (shared with the PostgreSQL listener; its handshake slots
    /// are unused here: hyper's header timeout and `max_connections` bound the head).
    pub admission: crate::listener::admission::Admission,
    /// Bodies being read whole for SigV4 hashing at once (at most [`sigv4::MAX_BUFFERING`]).
    pub buffering: tokio::sync::Semaphore,
    /// Fires when the grant ends: closes the listener and aborts in-flight requests.
    pub cut: CancellationToken,
    /// Why the grant ended.
    pub cut_reason: OnceLock<String>,
    /// Live client connections.
    pub live_connections: AtomicU32,
    /// Client connections so far.
    pub total_connections: AtomicU64,
    /// Requests so far.
    pub total_requests: AtomicU64,
    /// Where `http_request` records go.
    pub audit: Arc<AuditLog>,
    /// Every connection task; shutdown waits for them.
    pub sessions: tokio_util::task::TaskTracker,
}

impl HttpGrantListener {
    /// Ends the listener and every in-flight request with `reason`.
    pub fn cut(&self, reason: String) {
        let _ = self.cut_reason.set(reason);
        self.cut.cancel();
        self.upstream.close_idle();
    }

    /// Whether the grant ended ([`Self::cut`] sets the reason first; one atomic load).
    pub fn is_cut(&self) -> bool {
        self.cut_reason.get().is_some()
    }

    /// Appends an `http_request` record (one write, no fsync, like connection records).
    pub(crate) fn record(&self, event: &AuditEvent) {
        if let Err(e) = self.audit.append(event, Durability::Write) {
            tracing::error!(error = %e, "audit log write failed for an http request");
        }
    }
}

/// Binds `host:0` and serves the grant until it is cut. Returns the bound address.
///
/// # Errors
/// The bind error.
pub async fn spawn(grant: Arc<HttpGrantListener>, host: IpAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((host, 0)).await?;
    let addr = listener.local_addr()?;
    let span = tracing::info_span!(parent: None, "http_listener", grant = %grant.grant_id, %addr);
    tokio::spawn(accept_loop(listener, grant).instrument(span));
    Ok(addr)
}

/// Whether the peer of an accepted TCP connection may use this grant's listener: a
/// loopback peer whose socket belongs to the grant owner's uid (Linux `sock_diag`).
fn admit_peer(stream: &TcpStream, peer: &SocketAddr, grant: &HttpGrantListener) -> bool {
    peer.ip().is_loopback()
        && crate::listener::peer::check_tcp_owner(stream, *peer, grant.owner_uid, &grant.grant_id)
            .is_ok()
}

async fn accept_loop(listener: TcpListener, grant: Arc<HttpGrantListener>) {
    loop {
        let Some((stream, peer)) = super::next_accepted(&grant.cut, || listener.accept()).await
        else {
            break;
        };
        if !admit_peer(&stream, &peer, &grant) {
            warn!(%peer, "refused peer");
            refuse_peer(&grant, stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        spawn_connection(&grant, stream, peer.to_string());
    }
    info!("listener closed; its port is held for clients that still use it");
    let body = ended_body(&grant);
    // The grant (its credential, scanner, pool) is not kept for the hold.
    drop(grant);
    super::hold_ended_port(listener, move |stream| {
        answer_and_close(stream, "410 Gone", body.clone())
    })
    .await;
}

/// The JSON an ended grant's held port answers with ([`super::hold_ended_port`]).
fn ended_body(grant: &HttpGrantListener) -> Arc<str> {
    let why = super::ended_reason(&grant.cut_reason, &grant.grant_id);
    let body = serde_json::json!({
        "error": {
            "type": "agentd_refused",
            "rule": "grant",
            "message": format!("{why}; this address no longer serves it"),
            "next_step": "request access again for a new handle",
        }
    });
    body.to_string().into()
}

/// Writes one HTTP response (`status`, a JSON `body`, `Connection: close`) without reading
/// the request, then closes with a lingering close (so the client reads the answer, not a
/// reset); at most 1 s for the write.
async fn answer_and_close<S>(mut stream: S, status: &'static str, body: Arc<str>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    crate::listener::postgres::wire::linger(&mut stream).await;
}

/// Answers a peer this listener does not serve (another uid) with a 403 JSON refusal and a
/// lingering close, without reading its request.
fn refuse_peer<S>(grant: &HttpGrantListener, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    const BODY: &str = r#"{"error":{"type":"agentd_refused","rule":"peer","message":"this listener serves only the OS user that owns the grant","next_step":"use a grant of your own: request access as this OS user"}}"#;
    grant
        .sessions
        .spawn(answer_and_close(stream, "403 Forbidden", Arc::from(BODY)));
}

fn spawn_connection<S>(grant: &Arc<HttpGrantListener>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + shards::Handoff + 'static,
{
    let live = grant.live_connections.fetch_add(1, Ordering::Relaxed);
    if live >= grant.limits.max_connections {
        grant.live_connections.fetch_sub(1, Ordering::Relaxed);
        warn!(%peer, limit = grant.limits.max_connections, "refused connection: too many");
        return;
    }
    let session = grant.total_connections.fetch_add(1, Ordering::Relaxed) + 1;
    // Entered only for the connection's own events, not on every poll of its task (the
    // span's enter and exit were ~1 % of the CPU per request).
    let span =
        tracing::info_span!(parent: tracing::Span::current(), "http_session", %peer, session);
    let grant = grant.clone();
    let sessions = grant.sessions.clone();
    // The connection moves to one of the HTTP runtimes ([`shards`]) as a std socket.
    let Some(shard) = shards::next() else {
        sessions.spawn(serve_connection(stream, grant, session, span));
        return;
    };
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            grant.live_connections.fetch_sub(1, Ordering::Relaxed);
            warn!(%peer, error = %e, "connection could not be handed to an HTTP runtime");
            return;
        }
    };
    let task = async move {
        match S::from_std(std) {
            Ok(stream) => serve_connection(stream, grant, session, span).await,
            Err(e) => {
                grant.live_connections.fetch_sub(1, Ordering::Relaxed);
                span.in_scope(|| {
                    warn!(error = %e, "connection could not be registered on an HTTP runtime");
                });
            }
        }
    };
    shard.spawn(sessions.track_future(task));
}

/// Why a client connection's task ended.
enum ConnectionEnd {
    /// The client side finished (the client closed, or hyper ended it with an error).
    Client(hyper::Result<()>),
    /// The grant was cut: dropping the connection closes the socket and aborts any
    /// request in flight.
    Cut,
    /// No request for the idle timeout.
    Idle,
    /// A request body stalled.
    Stalled,
}

async fn serve_connection<S>(
    stream: S,
    grant: Arc<HttpGrantListener>,
    session: u64,
    span: tracing::Span,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(proxy::Activity::new(grant.clone()));
    let conn_upstream = Arc::new(upstream::ConnUpstream::default());
    let service = {
        let (grant, activity, conn_upstream) =
            (grant.clone(), activity.clone(), conn_upstream.clone());
        hyper::service::service_fn(move |req| {
            proxy::handle(
                grant.clone(),
                session,
                activity.clone(),
                conn_upstream.clone(),
                req,
            )
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(grant.limits.header_timeout)
        .max_buf_size(grant.limits.max_head_bytes)
        .keep_alive(true);
    // hyper's own default is 100 and uses a fixed array; an explicit limit makes it fill a
    // vector of that many slots for every request head it parses.
    if grant.limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(grant.limits.max_headers);
    }
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    // What ends a connection other than its client, each polled only when its own waker
    // fires (FuturesUnordered), not on every request.
    let ends = local::Ends::new();
    let cut = grant.cut.clone();
    ends.push(Box::pin(async move {
        cut.cancelled_owned().await;
        ConnectionEnd::Cut
    }));
    let (a, idle_timeout) = (activity.clone(), grant.limits.idle_timeout);
    ends.push(Box::pin(async move {
        a.idle(idle_timeout).await;
        ConnectionEnd::Idle
    }));
    let a = activity.clone();
    ends.push(Box::pin(async move {
        a.stalled().await;
        ConnectionEnd::Stalled
    }));
    // The client side and the upstream connection a request of it holds run in this one
    // task (see [`upstream`]), each polled when its own waker fired ([`local::Pair`]).
    let end = local::Pair::new(conn, &conn_upstream, ends, || activity.write_records()).await;
    // Records of requests the connection's end cut short.
    activity.write_records();
    span.in_scope(|| match end {
        ConnectionEnd::Client(Ok(())) | ConnectionEnd::Cut => {}
        ConnectionEnd::Client(Err(e)) => info!(error = %e, "client connection ended with an error"),
        ConnectionEnd::Idle => info!("idle keep-alive connection closed"),
        ConnectionEnd::Stalled => info!("request body stalled; connection closed"),
    });
    grant.live_connections.fetch_sub(1, Ordering::Relaxed);
}

/// Opens `DIR/http.sock` for the grant (modes as [`super::bind_grant_socket`]: 0600 in a
/// 0700 directory, or with `shared` in system mode 0666 in 0711); peers must have the grant
/// owner's uid (`SO_PEERCRED`, checked at accept). Returns the socket path.
///
/// # Errors
/// Creating the directory or binding the socket.
#[cfg(unix)]
pub fn spawn_unix(
    grant: Arc<HttpGrantListener>,
    dir: &std::path::Path,
    shared: bool,
) -> std::io::Result<std::path::PathBuf> {
    let (listener, path) = super::bind_grant_socket(dir, "http.sock", shared)?;
    let span = tracing::info_span!(parent: None, "http_unix_listener", grant = %grant.grant_id);
    let (dir, socket) = (dir.to_path_buf(), path.clone());
    tokio::spawn(
        async move {
            let uid = grant.owner_uid;
            loop {
                let Some((stream, _)) =
                    super::next_accepted(&grant.cut, || listener.accept()).await
                else {
                    break;
                };
                if stream.peer_cred().ok().map(|c| c.uid()) != Some(uid) {
                    warn!(
                        owner_uid = uid,
                        "refused Unix-socket peer: not the grant owner's uid"
                    );
                    refuse_peer(&grant, stream);
                    continue;
                }
                spawn_connection(&grant, stream, "unix".to_owned());
            }
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_dir(&dir);
        }
        .instrument(span),
    );
    Ok(path)
}
