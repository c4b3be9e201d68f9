//! The PostgreSQL listener a grant opens on loopback.
//!
//! One TCP listener per grant, on an ephemeral port. Each accepted connection goes through:
//! [`startup`] (SSLRequest/GSSENCRequest → `N`, StartupMessage, 10,000-byte cap,
//! NegotiateProtocolVersion for 3.x > 3.0) → [`auth`] (SCRAM-SHA-256 with the grant token)
//! → [`upstream`] (TLS + login with the real secret) → AuthenticationOk, the server's
//! ParameterStatus messages and BackendKeyData with the backend's pid and our own secret key ([`cancel`]) → [`relay`] (bytes pass
//! through until either side closes or the grant ends). A CancelRequest with one of our keys
//! is forwarded upstream. The relay reads the client through [`guard`], which refuses
//! password changes before they reach the server. Errors go to the client as an ErrorResponse and close only that
//! connection. [`admission`] bounds what unauthenticated clients can cost: simultaneous
//! handshakes per listener, the time startup + authentication may take, and wrong tokens.

pub mod auth;
pub mod cancel;
pub mod capture;
pub mod guard;
pub mod relay;
pub mod scram_client;
pub mod startup;
pub mod upstream;
pub mod wire;

use super::admission;
use crate::audit::{AuditEvent, AuditLog, Durability, StatementSink};
use auth::{AuthError, ScramVerifier};
use bytes::BytesMut;
use startup::{Startup, StartupError, StartupParams};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use upstream::UpstreamTarget;

/// Everything a grant's listener needs, shared by its sessions.
#[derive(Debug)]
pub struct GrantListener {
    /// Grant id; also the user name clients must present.
    pub grant_id: String,
    /// The uid of the grant's owner (the requesting process): the only uid served on the
    /// TCP listener (Linux, [`crate::listener::peer`]) and the Unix socket.
    pub owner_uid: u32,
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
    /// Session numbers handed out so far (the audit log's `session` field).
    pub next_session: AtomicU64,
    /// Our secret key per live session (by upstream pid) → the upstream backend's key, for CancelRequests.
    pub cancels: Arc<cancel::CancelRegistry>,
    /// Where connection open/close records go.
    pub audit: Arc<AuditLog>,
    /// Where captured statements go (`None` when `[audit] statements = false`).
    pub statements: Option<StatementSink>,
    /// Handshake limits and the wrong-token throttle.
    pub admission: admission::Admission,
    /// Every session task of this listener (TCP and Unix); shutdown waits for them so their
    /// connection-close and statement records reach the audit log.
    pub sessions: tokio_util::task::TaskTracker,
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
    let span = tracing::info_span!(parent: None, "listener", grant = %grant.grant_id, %addr);
    tokio::spawn(accept_loop(listener, grant).instrument(span));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, grant: Arc<GrantListener>) {
    loop {
        let Some((stream, peer)) = super::next_accepted(&grant.cut, || listener.accept()).await
        else {
            break;
        };
        let span = tracing::info_span!("session", %peer);
        let Some(slot) = admit(&grant, &peer.to_string()) else {
            grant
                .sessions
                .spawn(refuse_busy(stream, grant.admission.max_handshakes));
            continue;
        };
        let grant = grant.clone();
        grant
            .sessions
            .clone()
            .spawn(serve_connection(stream, peer, grant, slot).instrument(span));
    }
    info!("listener closed; its port is held for clients that still use it");
    let why = super::ended_reason(&grant.cut_reason, &grant.grant_id);
    let message: Arc<str> =
        format!("{why}; this address no longer serves it: request access again for a new handle")
            .into();
    // The grant (its upstream credential) is not kept for the hold.
    drop(grant);
    super::hold_ended_port(listener, move |mut stream| {
        let message = message.clone();
        async move { wire::refuse(&mut stream, "08004", &message).await }
    })
    .await;
}

/// A handshake slot for a new connection from `peer`, or `None` (logged) when the listener
/// already has `max_handshakes` connections authenticating.
fn admit(grant: &GrantListener, peer: &str) -> Option<OwnedSemaphorePermit> {
    let slot = grant.admission.try_admit();
    if slot.is_none() {
        // At most one line per refused connection, and those are cheap: no task waits.
        warn!(
            grant = %grant.grant_id,
            peer,
            limit = grant.admission.max_handshakes,
            "refused connection: too many connections authenticating"
        );
    }
    slot
}

/// Tells a connection over the handshake limit to come back later, and closes it
/// (lingering close, bounded by [`wire::LINGER_TIME`]).
async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, limit: usize) {
    let message = format!(
        "agentd: too many connections are authenticating on this listener (limit {limit}); try again shortly"
    );
    wire::refuse(&mut stream, "53300", &message).await;
}

/// Why a session ended before the relay; split into what the client sees and what is logged.
/// An empty `client_message` means the client was already told (or cannot be).
/// `delay` holds the answer back (the wrong-token throttle).
#[derive(Debug)]
struct Refusal {
    sqlstate: &'static str,
    client_message: String,
    log_message: String,
    delay: Duration,
}

impl Refusal {
    fn new(sqlstate: &'static str, client_message: String, log_message: String) -> Self {
        Self {
            sqlstate,
            client_message,
            log_message,
            delay: Duration::ZERO,
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    grant: Arc<GrantListener>,
    slot: OwnedSemaphorePermit,
) {
    if !peer.ip().is_loopback() {
        warn!("refused non-loopback peer");
        wire::refuse(
            &mut stream,
            "28000",
            "agentd: connections are accepted from this machine (loopback) only",
        )
        .await;
        return;
    }
    if let Err(message) = check_tcp_owner(&stream, peer, &grant) {
        wire::send_fatal(&mut stream, "28000", &message).await;
        return;
    }
    let _ = stream.set_nodelay(true);
    serve_session(stream, &grant, peer.to_string(), slot).await;
}

/// Admits a TCP client only when the socket on its end belongs to the grant's owner uid
/// (Linux: `sock_diag`, see [`crate::listener::peer`]); elsewhere the token is the only
/// check. A refusal is logged with both uids.
///
/// # Errors
/// The message for the client's `FATAL 28000`.
fn check_tcp_owner(
    stream: &TcpStream,
    peer: SocketAddr,
    grant: &GrantListener,
) -> Result<(), String> {
    crate::listener::peer::check_tcp_owner(stream, peer, grant.owner_uid, &grant.grant_id)
}

/// Startup, authentication, upstream login, then the relay, for one client connection of
/// any transport (TCP or Unix socket). `peer` names the client in the audit log; `slot` is
/// its handshake slot, given back when the relay starts.
async fn serve_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    grant: &GrantListener,
    peer: String,
    slot: OwnedSemaphorePermit,
) {
    let outcome = tokio::select! {
        r = handshake(&mut stream, grant) => r,
        _ = grant.cut.cancelled() => Err(Refusal::new(
            "57P01",
            cut_message(grant),
            "grant ended during the handshake".to_owned(),
        )),
    };
    let (upstream, _cancel_registration, params) = match outcome {
        Ok(Some(session)) => session,
        Ok(None) => return,
        Err(refusal) => {
            warn!(reason = %refusal.log_message, "session refused");
            if !refusal.delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(refusal.delay) => {}
                    _ = grant.cut.cancelled() => {}
                }
            }
            if refusal.client_message.is_empty() {
                wire::linger(&mut stream).await;
            } else {
                wire::refuse(&mut stream, refusal.sqlstate, &refusal.client_message).await;
            }
            return;
        }
    };
    drop(slot);
    let session = grant.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    let opened = grant.audit.append(
        &AuditEvent::ConnectionOpen {
            grant_id: grant.grant_id.clone(),
            session,
            peer,
            params: audited_params(&params),
        },
        Durability::Write,
    );
    if let Err(e) = opened {
        tracing::error!(error = %e, "audit log write failed; session refused");
        wire::refuse(
            &mut stream,
            "53100",
            "agentd: the audit log cannot be written, so this session is refused; tell the human to check the daemon's log",
        )
        .await;
        return;
    }
    grant.total_connections.fetch_add(1, Ordering::Relaxed);
    grant.live_connections.fetch_add(1, Ordering::Relaxed);
    info!(session, "session started");
    let mut capture = StatementCapture::new(grant, session);
    let stream = guard::GuardedStream::new(stream, |refused| {
        record_refusal(grant, session, refused);
    });
    let stats = relay::relay(
        stream,
        upstream,
        grant.cut.clone(),
        || cut_message(grant),
        |bytes| capture.observe(bytes),
    )
    .await;
    grant.live_connections.fetch_sub(1, Ordering::Relaxed);
    let (binds, executes) = capture.counts();
    let closed = grant.audit.append(
        &AuditEvent::ConnectionClose {
            grant_id: grant.grant_id.clone(),
            session,
            bytes_up: stats.bytes_up,
            bytes_down: stats.bytes_down,
            end: stats.end.as_str().to_owned(),
            binds,
            executes,
        },
        Durability::Write,
    );
    if let Err(e) = closed {
        tracing::error!(error = %e, "audit log write failed");
    }
    info!(
        session,
        bytes_up = stats.bytes_up,
        bytes_down = stats.bytes_down,
        end = ?stats.end,
        binds,
        executes,
        "session ended"
    );
}

/// The startup parameters a `connection_open` record keeps: every one forwarded upstream
/// (not `user`/`database`, which agentd sets, nor `_pq_.*`), with the values of
/// password-like keys — and of password-like `-c name=value` settings inside `options` —
/// replaced by `[REDACTED]`. Bounded by the 10,000-byte startup packet cap.
fn audited_params(params: &StartupParams) -> std::collections::BTreeMap<String, String> {
    fn secret_like(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        ["password", "passwd", "pwd", "secret", "token"]
            .iter()
            .any(|w| key.contains(w))
    }
    params
        .options
        .iter()
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .map(|(k, v)| {
            let value = if secret_like(k) {
                "[REDACTED]".to_owned()
            } else if k == "options" {
                v.split(' ')
                    .map(|word| match word.split_once('=') {
                        Some((name, _)) if secret_like(name) => format!("{name}=[REDACTED]"),
                        _ => word.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                v.clone()
            };
            (k.clone(), value)
        })
        .collect()
}

/// Records a statement the password-change guard refused (`statement_refused`, written at
/// once: refusals are rare and matter more than statements).
fn record_refusal(grant: &GrantListener, session: u64, refused: guard::Refused) {
    warn!(
        session,
        reason = refused.reason,
        "statement refused by the password-change guard"
    );
    let written = grant.audit.append(
        &AuditEvent::StatementRefused {
            grant_id: grant.grant_id.clone(),
            session,
            kind: refused.kind.to_owned(),
            text: refused.text,
            reason: refused.reason.to_owned(),
        },
        Durability::Write,
    );
    if let Err(e) = written {
        tracing::error!(error = %e, "audit log write failed");
    }
}

/// What a cut client is told: the grant's end reason.
fn cut_message(grant: &GrantListener) -> String {
    grant
        .cut_reason
        .get()
        .cloned()
        .unwrap_or_else(|| format!("agentd: grant {} ended", grant.grant_id))
}

/// The wait a full statement queue imposes on a session under `on_overflow = "block"`.
type AuditBackpressure = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Statement capture for one session: the frontend byte stream goes through a
/// [`capture::StatementTap`]; Query and Parse texts and FunctionCalls go to the audit writer
/// through a bounded channel (when full: the session waits, or drops are counted, per
/// `[audit] on_overflow`); the writer redacts secrets.
struct StatementCapture<'a> {
    tap: Option<capture::StatementTap>,
    sink: Option<&'a StatementSink>,
    grant_id: &'a str,
    session: u64,
}

impl<'a> StatementCapture<'a> {
    fn new(grant: &'a GrantListener, session: u64) -> Self {
        Self {
            tap: Some(capture::StatementTap::new(capture::DEFAULT_MAX_TEXT_BYTES)),
            sink: grant.statements.as_ref(),
            grant_id: &grant.grant_id,
            session,
        }
    }

    /// Feeds client→server bytes to the tap. A stream the tap cannot follow (a bad length)
    /// stops the capture for this session, not the session. With `[audit] on_overflow =
    /// "block"` and a full queue, returns the wait the relay must finish (queueing the
    /// records that did not fit, in order) before it reads the client's next bytes.
    fn observe(&mut self, bytes: &[u8]) -> Option<AuditBackpressure> {
        let tap = self.tap.as_mut()?;
        let (sink, grant_id, session) = (self.sink, self.grant_id, self.session);
        let mut backlog = Vec::new();
        let fed = tap.feed(bytes, &mut |captured| {
            if let Some(sink) = sink {
                let event = statement_event(grant_id, session, captured);
                if !backlog.is_empty() {
                    backlog.push(event); // keep the order behind what is waiting
                } else if let Some(back) = sink.offer(event) {
                    backlog.push(back);
                }
            }
        });
        if let Err(e) = fed {
            warn!(error = %e, "statement capture stopped for this session");
            self.tap = None;
        }
        if backlog.is_empty() {
            return None;
        }
        let sink = sink?.clone();
        Some(Box::pin(async move {
            for event in backlog {
                sink.send(event).await;
            }
        }))
    }

    /// Bind and Execute messages seen.
    fn counts(&self) -> (u64, u64) {
        self.tap
            .as_ref()
            .map_or((0, 0), |t| (t.binds(), t.executes()))
    }
}

fn statement_event(grant_id: &str, session: u64, captured: capture::Captured) -> AuditEvent {
    let (kind, statement, text, truncated, overflow) = match captured {
        capture::Captured::Query {
            text,
            truncated,
            overflow,
        } => ("query", None, text, truncated, overflow),
        capture::Captured::Parse {
            statement,
            text,
            truncated,
            overflow,
        } => ("parse", Some(statement), text, truncated, overflow),
        capture::Captured::FunctionCall {
            oid,
            args,
            arg_bytes,
        } => {
            return AuditEvent::FunctionCall {
                grant_id: grant_id.to_owned(),
                session,
                oid,
                args,
                arg_bytes,
            }
        }
    };
    AuditEvent::Statement {
        grant_id: grant_id.to_owned(),
        session,
        kind: kind.to_owned(),
        statement: statement.filter(|s| !s.is_empty()),
        // Text and tail are redacted by the audit writer (audit::sink), off the relay path.
        text,
        truncated,
        overflow: overflow.map(|o| crate::audit::StatementOverflow {
            tail: o.tail,
            bytes: o.bytes,
            sha256: o.sha256,
        }),
    }
}

/// Binds the grant's Unix socket `dir/.s.PGSQL.<port>` (the name libpq derives from
/// `host=dir port=<port>`) and serves it until the grant is cut; then removes the socket and
/// `dir`. Only peers whose uid is the grant's owner's ([`GrantListener::owner_uid`]) are
/// served, checked at accept time from `SO_PEERCRED`.
///
/// Modes as [`super::bind_grant_socket`] (`shared` in system mode).
///
/// # Errors
/// Creating `dir` or binding failed.
#[cfg(unix)]
pub fn spawn_unix(
    grant: Arc<GrantListener>,
    dir: &std::path::Path,
    port: u16,
    shared: bool,
) -> std::io::Result<std::path::PathBuf> {
    let (listener, path) = super::bind_grant_socket(dir, &format!(".s.PGSQL.{port}"), shared)?;
    let span = tracing::info_span!(parent: None, "unix_listener", grant = %grant.grant_id, path = %path.display());
    let (dir, socket) = (dir.to_path_buf(), path.clone());
    tokio::spawn(
        async move {
            unix_accept_loop(listener, grant).await;
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_file(dir.join(SERVICE_FILE_NAME));
            let _ = std::fs::remove_dir(&dir);
        }
        .instrument(span),
    );
    Ok(path)
}

/// Name of the grant's libpq connection service file in its Unix-socket directory.
pub const SERVICE_FILE_NAME: &str = "pg_service.conf";

/// Writes the grant's libpq connection service file `dir/pg_service.conf` (mode 0600,
/// created new, in the grant's private 0700 directory; removed with it when the grant
/// ends), so that `PGSERVICEFILE=dir/pg_service.conf psql service=GRANT` connects with no
/// token on any command line. Format: libpq's "Connection Service File" (INI: a
/// `[GRANT]` section of `key=value` connection parameters); it points at the grant's Unix
/// socket (`host=dir`). `reader`: in system mode the grant's owner, another uid than the
/// daemon's, who is let read the file through a one-user POSIX ACL
/// ([`crate::fsutil::allow_reader`]); no ACL, no file. Returns the path, or `None` (logged)
/// when it cannot be written, made readable to `reader`, or a value holds a line break.
#[cfg(unix)]
pub fn write_service_file(
    dir: &std::path::Path,
    grant_id: &str,
    port: u16,
    database: &str,
    token: &str,
    reader: Option<u32>,
) -> Option<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let host = dir.to_str()?;
    let values = [grant_id, host, database, token];
    if values.iter().any(|v| v.contains(['\n', '\r'])) {
        warn!("no service file: a connection value holds a line break");
        return None;
    }
    let path = dir.join(SERVICE_FILE_NAME);
    let body = format!(
        "[{grant_id}]\nhost={host}\nport={port}\nuser={grant_id}\npassword={token}\ndbname={database}\nsslmode=disable\n"
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            if let Some(uid) = reader {
                share_with(&f, uid)?;
            }
            f.write_all(body.as_bytes())
        });
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            warn!(error = %e, path = %path.display(), "no service file for this grant");
            None
        }
    }
}

#[cfg(target_os = "linux")]
fn share_with(file: &std::fs::File, uid: u32) -> std::io::Result<()> {
    crate::fsutil::allow_reader(file, uid)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn share_with(_file: &std::fs::File, _uid: u32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "sharing a grant's service file with its owner needs Linux ACLs here",
    ))
}

#[cfg(unix)]
async fn unix_accept_loop(listener: tokio::net::UnixListener, grant: Arc<GrantListener>) {
    let uid = grant.owner_uid;
    loop {
        let Some((mut stream, _)) = super::next_accepted(&grant.cut, || listener.accept()).await
        else {
            break;
        };
        let peer_uid = stream.peer_cred().ok().map(|c| c.uid());
        let Some(slot) = admit(&grant, "unix") else {
            grant
                .sessions
                .spawn(refuse_busy(stream, grant.admission.max_handshakes));
            continue;
        };
        let grant = grant.clone();
        let span = tracing::info_span!("session", peer = "unix", ?peer_uid);
        grant.sessions.clone().spawn(
            async move {
                if peer_uid != Some(uid) {
                    warn!(
                        owner_uid = uid,
                        "refused Unix-socket peer: not the grant owner's uid"
                    );
                    wire::refuse(
                        &mut stream,
                        "28000",
                        "agentd: this socket serves only the OS user that owns the grant",
                    )
                    .await;
                    return;
                }
                serve_session(stream, &grant, "unix".to_owned(), slot).await;
            }
            .instrument(span),
        );
    }
    info!("listener closed");
}

/// Startup and client auth (within `handshake_timeout`), then upstream login and the login
/// tail up to ReadyForQuery (within the upstream `connect_timeout`). `Ok(None)` for a
/// CancelRequest (handled and done).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    grant: &GrantListener,
) -> Result<
    Option<(
        upstream::UpstreamStream,
        cancel::Registration,
        StartupParams,
    )>,
    Refusal,
> {
    let limit = grant.admission.handshake_timeout;
    let params = match tokio::time::timeout(limit, client_phase(stream, grant)).await {
        Ok(Ok(Some(params))) => params,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(refusal)) => return Err(refusal),
        Err(_) => {
            return Err(Refusal::new(
                "08006",
                format!(
                    "agentd: startup and authentication must finish within {}s",
                    limit.as_secs()
                ),
                format!("handshake timed out after {}s", limit.as_secs()),
            ))
        }
    };
    let target = grant.upstream.for_session().await.map_err(|e| {
        Refusal::new(
            "08001",
            format!(
                "agentd: could not renew the login for upstream {}; the agentd log has the reason",
                grant.upstream.resource
            ),
            format!("renewing the command login: {e}"),
        )
    })?;
    let mut upstream = upstream::connect(&target, &params).await.map_err(|e| {
        Refusal::new(
            "08001",
            e.client_message(&grant.upstream.resource),
            format!("upstream {}: {e}", grant.upstream.resource),
        )
    })?;
    let mut ok = BytesMut::new();
    wire::put_authentication(&mut ok, 0, &[]);
    write_client(stream, &ok).await?;
    let limit = grant.upstream.connect_timeout;
    let registration = tokio::time::timeout(limit, finish_login(&mut upstream, stream, grant))
        .await
        .map_err(|_| {
            Refusal::new(
                "08006",
                format!(
                    "agentd: upstream {} did not finish the login within {}s",
                    grant.upstream.resource,
                    limit.as_secs()
                ),
                "upstream login tail timed out".to_owned(),
            )
        })??;
    Ok(Some((upstream, registration, params)))
}

/// Startup (SSLRequest, StartupMessage or CancelRequest), NegotiateProtocolVersion when
/// needed, SCRAM with the grant token and the database check. `Ok(None)` for a
/// CancelRequest.
async fn client_phase<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    grant: &GrantListener,
) -> Result<Option<StartupParams>, Refusal> {
    let params = match startup::read_startup(stream).await {
        Ok(Startup::Session(p)) => p,
        Ok(Startup::Cancel(key)) => {
            handle_cancel(grant, key).await;
            return Ok(None);
        }
        Err(e) => return Err(startup_refusal(e)),
    };
    if params.needs_negotiation() {
        let mut buf = BytesMut::new();
        startup::put_negotiate_protocol_version(&mut buf, &params.protocol_options);
        write_client(stream, &buf).await?;
    }
    authenticate(stream, grant, &params).await?;
    check_database(grant, &params)?;
    Ok(Some(params))
}

async fn write_client<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), Refusal> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| Refusal::new("08006", String::new(), format!("client write: {e}")))
}

/// Largest message accepted between AuthenticationOk and ReadyForQuery, in bytes
/// (ParameterStatus, NoticeResponse, BackendKeyData are small).
const MAX_LOGIN_TAIL_MESSAGE_BYTES: usize = 64 * 1024;

/// Passes the upstream's messages after AuthenticationOk (ParameterStatus, NoticeResponse)
/// to the client up to and including ReadyForQuery, replacing BackendKeyData's secret key with
/// one of our own (the process id stays the backend's) registered for cancellation.
async fn finish_login<S: AsyncWrite + Unpin>(
    upstream: &mut upstream::UpstreamStream,
    client: &mut S,
    grant: &GrantListener,
) -> Result<cancel::Registration, Refusal> {
    let protocol = |what: String| {
        Refusal::new(
            "08P01",
            format!(
                "agentd: upstream {} broke the protocol during login",
                grant.upstream.resource
            ),
            what,
        )
    };
    let mut out = BytesMut::new();
    let mut registration = None;
    loop {
        let msg = wire::read_message(upstream, MAX_LOGIN_TAIL_MESSAGE_BYTES)
            .await
            .map_err(|e| protocol(format!("upstream login tail: {e}")))?;
        match msg.kind {
            b'K' => {
                let key = cancel::BackendKey::from_body(&msg.body)
                    .ok_or_else(|| protocol("malformed BackendKeyData".into()))?;
                let (ours, guard) = grant.cancels.register(key);
                wire::put_message(&mut out, b'K', &ours.to_body());
                registration = Some(guard);
            }
            b'E' => {
                // A post-auth failure (e.g. too many connections): the client sees the
                // server's own ErrorResponse.
                wire::put_message(&mut out, b'E', &msg.body);
                let _ = client.write_all(&out).await;
                return Err(Refusal::new(
                    "08P01",
                    String::new(), // the client already has the server's ErrorResponse
                    format!(
                        "upstream after AuthenticationOk: {}",
                        upstream::refused(&msg.body)
                    ),
                ));
            }
            kind => {
                wire::put_message(&mut out, kind, &msg.body);
                if kind == b'Z' {
                    break;
                }
            }
        }
    }
    write_client(client, &out).await?;
    registration.ok_or_else(|| protocol("no BackendKeyData before ReadyForQuery".into()))
}

/// Forwards a CancelRequest whose key matches one of this grant's sessions; any other is
/// ignored, as PostgreSQL does (the requester learns nothing either way).
async fn handle_cancel(grant: &GrantListener, key: cancel::BackendKey) {
    match grant.cancels.lookup(key) {
        Some(upstream_key) => match cancel::forward(&grant.upstream, upstream_key).await {
            Ok(()) => info!("CancelRequest forwarded upstream"),
            Err(e) => warn!(error = %e, "CancelRequest could not be forwarded"),
        },
        None => info!("CancelRequest with an unknown key ignored"),
    }
}

fn startup_refusal(e: StartupError) -> Refusal {
    let code = match e {
        StartupError::UnsupportedProtocol { .. } => "0A000",
        StartupError::Replication | StartupError::NoUser => "28000",
        _ => "08P01",
    };
    Refusal::new(code, format!("agentd: {e}"), format!("startup: {e}"))
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    grant: &GrantListener,
    params: &StartupParams,
) -> Result<(), Refusal> {
    let failed = || {
        let throttle = grant.admission.record_failure(std::time::Instant::now());
        let mut refusal = Refusal::new(
            "28P01",
            format!(
                "password authentication failed for user \"{}\"",
                params.user
            ),
            format!(
                "wrong grant token for user {:?} ({} failures on this listener within a minute of each other; answer delayed {} ms)",
                params.user,
                throttle.failures,
                throttle.delay.as_millis()
            ),
        );
        refusal.delay = throttle.delay;
        refusal
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
