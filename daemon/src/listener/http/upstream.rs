//! The grant's upstream, and the upstream connection each client connection uses.
//!
//! Each client connection gets its own upstream connection (HTTPS; HTTP/1.1 or HTTP/2 by
//! ALPN), opened on its first request, kept while the client connection lives (keep-alive)
//! and opened again when the upstream closes it. The upstream connection's future is
//! polled by the client connection's own task ([`Driver`], see `serve_connection` in
//! [`super`]) instead of a task of its own (hyper-util's pooled client, used before), so a
//! request and its response cross no task boundary and, on the per-core runtimes of
//! [`super::shards`], no thread boundary (the wake-ups measured before came mostly from the
//! multi-threaded scheduler; this alone did not remove them, see BENCHMARKS.md). The cost:
//! an idle client connection keeps its upstream connection (more memory per idle
//! connection than a shared pool; BENCHMARKS.md). A kept connection found closed when a
//! request is about to go out is replaced, and the request sent once more if hyper reports
//! it was not sent.

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
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
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
        })
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

/// One client connection's upstream connection (none until its first request).
pub struct ConnUpstream {
    sender: Mutex<Option<Sender>>,
    drivers: mpsc::UnboundedSender<Driver>,
}

impl ConnUpstream {
    /// A client connection's upstream slot, and where the [`Driver`] of each upstream
    /// connection it opens arrives (the client connection's task polls them).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Driver>) {
        let (drivers, rx) = mpsc::unbounded_channel();
        (
            Self {
                sender: Mutex::new(None),
                drivers,
            },
            rx,
        )
    }

    /// Sends `req` (absolute URI: `https://authority/path?query`, no `Host`) upstream on
    /// this client connection's upstream connection, opening one if there is none or it
    /// closed. HTTP/1.1 gets the origin-form target and `Host` from the base URL; HTTP/2
    /// the absolute URI (`:authority`).
    ///
    /// # Errors
    /// Connecting (TCP, TLS, timeout) or the request failing on the connection (hyper's
    /// error); neither carries request headers.
    pub async fn send(
        &self,
        upstream: &Upstream,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let cached = self.sender.lock().ok().and_then(|mut s| s.take());
        let mut reused = cached.is_some();
        let mut sender = match cached {
            Some(s) => s,
            None => self.connect(upstream).await?,
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
                    if let Ok(mut slot) = self.sender.lock() {
                        *slot = Some(sender);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the kept connection had closed. Once more on a new one.
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

    /// Opens an upstream connection and hands its driver to the client connection's task.
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
        self.drivers
            .send(driver)
            .map_err(|_| BoxError::from("the client connection ended"))?;
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
