//! The grant's upstream, its pool of idle upstream connections, and the connection a
//! client connection's request holds.
//!
//! A request checks an upstream connection (HTTPS; HTTP/1.1 or HTTP/2 by ALPN) out of the
//! grant's [`Pool`] for the HTTP runtime it runs on, or opens one, holds it until its
//! response has ended and gives it back. The held connection's future is polled by the
//! client connection's own task ([`Driver`], [`ConnUpstream::drive`], `local.rs`) rather
//! than by a task of its own (hyper-util's pooled client, used before), so a request and
//! its response cross no task boundary and, on the per-core runtimes of
//! [`super::shards`], no thread boundary. Idle client connections hold no upstream
//! connection (an earlier version kept one per client connection: 46.8 KiB per idle client
//! connection against 22 KiB now; BENCHMARKS.md). A pooled connection the upstream closed
//! is found out when it is checked out: hyper hands back the unsent request, which goes
//! once more on a new connection.

use super::proxy::{BoxError, RequestBody};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The upstream of a grant: where `base_url` points and how to reach it.
pub struct Upstream {
    /// `host[:port]` of the base URL.
    pub(super) authority: Authority,
    /// The base URL's path without a trailing `/` (prepended to every forwarded path).
    pub(super) prefix: String,
    /// The host to connect to (IPv6 without brackets).
    host: String,
    /// The port to connect to (443 unless the base URL names one).
    port: u16,
    /// The name the upstream's certificate must carry.
    server_name: ServerName<'static>,
    /// rustls with the resource's roots, ALPN `h2` and `http/1.1`.
    tls: TlsConnector,
    /// Bounds TCP connect + TLS handshake.
    connect_timeout: Duration,
    /// `Host` for HTTP/1.1: the base URL's host, and its port unless it is 443.
    host_header: HeaderValue,
    /// Idle upstream connections, per HTTP runtime.
    pool: Pool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Upstream {
    /// The upstream of `resource` (`base_url`, `ca_file`); connections are made by each
    /// client connection's [`ConnUpstream`] with `connect_timeout` (TCP + TLS).
    ///
    /// # Errors
    /// Agent-safe text: a `base_url` without a host, a bad host name, TLS setup.
    pub fn new(
        resource: &crate::config::Resource,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let base: Uri = resource
            .base_url
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("base_url: {e}"))?;
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| "base_url has no host".to_owned())?;
        let prefix = base.path().trim_end_matches('/').to_owned();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(crate::listener::postgres::upstream::root_store(resource)?)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("base_url host is not a valid TLS server name: {e}"))?;
        let port = authority.port_u16().unwrap_or(443);
        let host_header = if port == 443 {
            HeaderValue::from_str(authority.host())
        } else {
            HeaderValue::from_str(&format!("{}:{port}", authority.host()))
        }
        .map_err(|e| format!("base_url host: {e}"))?;
        Ok(Self {
            authority,
            prefix,
            host,
            port,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            host_header,
            pool: Pool::new(),
        })
    }

    /// Closes every idle upstream connection (the grant ended).
    pub fn close_idle(&self) {
        self.pool.clear();
    }

    /// A TLS connection to the upstream, within the connect timeout.
    async fn connect_tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            // Best effort, as hyper-util's connector did.
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            Ok::<_, BoxError>(self.tls.connect(self.server_name.clone(), tcp).await?)
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| BoxError::from("connecting to the upstream timed out"))?
    }
}

/// Drives one upstream connection (reads responses, writes requests); polled by the client
/// connection's task until the connection closes.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How a request goes out on an upstream connection.
enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>> {
        match self {
            Self::H1(s) => s.try_send_request(req).await,
            Self::H2(s) => s.try_send_request(req).await,
        }
    }
}

/// An upstream connection with no request on it, in a [`Pool`]: not polled until a
/// client connection checks it out.
struct Idle {
    sender: Sender,
    driver: Driver,
    since: Instant,
}

/// The grant's idle upstream connections, one list per HTTP runtime ([`super::shards`]):
/// a connection is only ever driven on the runtime whose reactor it is registered with.
/// Last in, first out; at most [`Pool::MAX_IDLE`] per runtime; one idle longer than
/// [`Pool::IDLE_TIMEOUT`] is dropped when its list is next used. A connection the upstream
/// closed while idle is found out on checkout (hyper returns the unsent request, which goes
/// out on a new connection).
struct Pool {
    slots: Vec<Mutex<Vec<Idle>>>,
}

impl Pool {
    /// Most idle connections kept per runtime.
    const MAX_IDLE: usize = 64;
    /// An idle connection older than this (seconds) is closed rather than reused.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    fn new() -> Self {
        Self {
            slots: (0..super::shards::count().max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    fn slot(&self) -> Option<&Mutex<Vec<Idle>>> {
        self.slots
            .get(super::shards::current() % self.slots.len().max(1))
    }

    fn take(&self) -> Option<(Sender, Driver)> {
        let mut idle = self.slot()?.lock().ok()?;
        let conn = idle.pop()?;
        if conn.since.elapsed() < Self::IDLE_TIMEOUT {
            return Some((conn.sender, conn.driver));
        }
        // The newest is too old, so are the rest.
        idle.clear();
        None
    }

    fn put(&self, sender: Sender, driver: Driver) {
        let Some(Ok(mut idle)) = self.slot().map(Mutex::lock) else {
            return;
        };
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < Self::IDLE_TIMEOUT);
        if idle.len() < Self::MAX_IDLE {
            idle.push(Idle {
                sender,
                driver,
                since: now,
            });
        }
    }

    fn clear(&self) {
        for slot in &self.slots {
            if let Ok(mut idle) = slot.lock() {
                idle.clear();
            }
        }
    }
}

/// The upstream connection a client connection holds while a request of its is in flight
/// (checked out of the grant's [`Pool`], or opened), and the waker of the client
/// connection's task, which drives it ([`ConnUpstream::drive`]).
#[derive(Default)]
struct Held {
    sender: Option<Sender>,
    driver: Option<Driver>,
    waker: Option<Waker>,
}

/// One client connection's hold on an upstream connection. A request checks one out of
/// the grant's pool (or opens one) and [`ConnUpstream::release`] gives it back when the
/// response has ended, so idle client connections hold none and upstream connections are
/// shared by the client connections of a runtime.
#[derive(Default)]
pub struct ConnUpstream {
    held: Mutex<Held>,
}

impl ConnUpstream {
    /// Polls the held upstream connection (reads responses, writes requests); pending
    /// while none is held. The client connection's task selects on this with its client
    /// side, so both run in one task.
    pub fn drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let Ok(mut held) = self.held.lock() else {
            return Poll::Pending;
        };
        match held.driver.as_mut() {
            Some(driver) => {
                if driver.as_mut().poll(cx).is_ready() {
                    // The connection ended: the next request opens or checks out another.
                    held.driver = None;
                    held.sender = None;
                }
            }
            None => {
                if !held.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    held.waker = Some(cx.waker().clone());
                }
            }
        }
        Poll::Pending
    }

    /// Ends this client connection's hold on its upstream connection when a request
    /// ends: with `reusable` (the response was read to its end) it goes back to the grant's
    /// pool, otherwise it is closed.
    pub fn release(&self, upstream: &Upstream, reusable: bool) {
        let taken = self
            .held
            .lock()
            .ok()
            .and_then(|mut h| Some((h.sender.take()?, h.driver.take()?)));
        if let Some((sender, driver)) = taken {
            if reusable {
                upstream.pool.put(sender, driver);
            }
        }
    }

    /// Makes `sender`/`driver` the held connection and wakes the task that drives it.
    fn hold(&self, sender: Option<Sender>, driver: Option<Driver>) {
        if let Ok(mut held) = self.held.lock() {
            held.sender = sender;
            if driver.is_some() {
                held.driver = driver;
            }
            if let Some(w) = held.waker.take() {
                w.wake();
            }
        }
    }

    /// Sends `req` (absolute URI: `https://authority/path?query`, no `Host`) upstream on
    /// a connection checked out of the grant's pool, or a new one. HTTP/1.1 gets the
    /// origin-form target and `Host` from the base URL; HTTP/2 the absolute URI
    /// (`:authority`). The connection stays held until [`ConnUpstream::release`].
    ///
    /// # Errors
    /// Connecting (TCP, TLS, timeout) or the request failing on the connection (hyper's
    /// error); neither carries request headers.
    pub async fn send(
        &self,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let held = self.held.lock().ok().and_then(|mut h| h.sender.take());
        let (mut sender, mut reused) = match held {
            Some(s) => (s, true),
            None => match upstream.pool.take() {
                Some((sender, driver)) => {
                    self.hold(None, Some(driver));
                    (sender, true)
                }
                None => (self.connect(upstream).await?, false),
            },
        };
        loop {
            if sender.ready().await.is_err() {
                if !reused {
                    return Err("the new upstream connection closed at once".into());
                }
                sender = self.connect(upstream).await?;
                reused = false;
                continue;
            }
            shape(&mut req, &sender, upstream);
            match sender.send(req).await {
                Ok(resp) => {
                    self.hold(Some(sender), None);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection had closed. Once more on a new one.
                    Some(r) if reused => {
                        req = r;
                        sender = self.connect(upstream).await?;
                        reused = false;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Opens an upstream connection; its driver becomes the held one (the previous one,
    /// if any, is dropped: it had closed).
    async fn connect(&self, upstream: &Upstream) -> Result<Sender, BoxError> {
        let tls = upstream.connect_tls().await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let (sender, driver): (Sender, Driver) = if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            (
                Sender::H2(sender),
                Box::pin(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                }),
            )
        } else {
            let (sender, conn) = http1::Builder::new().handshake(io).await?;
            (
                Sender::H1(sender),
                Box::pin(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                    }
                }),
            )
        };
        self.hold(None, Some(driver));
        Ok(sender)
    }
}

/// Puts `req`'s target and `Host` in the form the connection's protocol wants.
fn shape(req: &mut Request<RequestBody>, sender: &Sender, upstream: &Upstream) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match sender {
        Sender::H1(_) => {
            *req.uri_mut() = Uri::from(pq);
            req.headers_mut()
                .insert(header::HOST, upstream.host_header.clone());
        }
        Sender::H2(_) => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTPS);
            parts.authority = Some(upstream.authority.clone());
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            req.headers_mut().remove(header::HOST);
        }
    }
}
