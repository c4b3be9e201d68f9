//! The upstream of the HTTP benchmark: a small HTTPS API server in the bench process
//! (hyper HTTP/1.1, rustls with a throwaway CA and a `localhost` / `127.0.0.1` certificate).
//! ALPN offers only `http/1.1`, so agentd (which would take HTTP/2 when offered) and nginx
//! (HTTP/1.1 upstream only) speak the same protocol to it.
//!
//! Every request must carry `x-api-key: <secret>` (what both proxies inject); anything else
//! gets 401, which the load generator counts as an error. Routes:
//! - `GET /small`: a [`SMALL_BODY`]-byte JSON body with `Content-Length`.
//! - `GET /1mb`: [`LARGE_BODY`] bytes with `Content-Length`, from one shared buffer.
//! - `GET /sse?n=N&gap_ms=G`: `text/event-stream`, N events of [`EVENT_BYTES`] bytes each
//!   (`id: …\ndata: {…}\n\n`), the first at once, each next one G ms later (G = 0: as fast
//!   as the connection takes them); chunked.

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret as _, SecretString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Size of the `/small` body, bytes.
pub const SMALL_BODY: usize = 128;
/// Size of the `/1mb` body, bytes (1 MiB).
pub const LARGE_BODY: usize = 1 << 20;
/// Size of one `/sse` event on the wire, bytes (`id:` line, `data:` line, blank line).
pub const EVENT_BYTES: usize = 96;
/// The header both proxies inject and the upstream checks.
pub const API_KEY_HEADER: &str = "x-api-key";

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A running upstream; it stops when dropped.
pub struct Upstream {
    /// Its TCP port on 127.0.0.1 (HTTPS).
    pub port: u16,
    /// PEM file of the CA that signed its certificate.
    pub ca_file: PathBuf,
    /// The CA certificate, DER (for the bench's own TLS client).
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    /// Requests answered 401 (missing or wrong `x-api-key`).
    pub unauthorized: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    key: SecretString,
    small: Bytes,
    large: Bytes,
    unauthorized: Arc<AtomicU64>,
}

impl Upstream {
    /// Generates the CA and certificate, binds `127.0.0.1:0` and serves until dropped.
    ///
    /// # Errors
    /// Certificate generation, the temp dir, TLS setup or the bind.
    pub async fn start(key: &SecretString) -> anyhow::Result<Self> {
        let (ca, cert, leaf_key) =
            agentd::pgcluster::localhost_ca_and_cert("agentd-bench throwaway CA")?;

        let dir = tempfile::Builder::new()
            .prefix("agentd-bench-upstream-")
            .tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            // nginx's master (root) reads the CA file; nothing secret is here.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .context("upstream certificate")?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let unauthorized = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            key: key.clone(),
            small: Bytes::from(small_body()),
            large: Bytes::from(vec![b'x'; LARGE_BODY]),
            unauthorized: unauthorized.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(route(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            port,
            ca_file,
            ca_der: ca.der().clone(),
            unauthorized,
            _dir: dir,
            task,
        })
    }
}

fn small_body() -> Vec<u8> {
    let head = br#"{"id":"bench","object":"small","data":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    body.resize(SMALL_BODY - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

/// One SSE event of exactly [`EVENT_BYTES`] bytes.
fn event(seq: u64) -> Bytes {
    let mut e = format!("id: {seq}\ndata: {{\"seq\":{seq},\"text\":\"");
    let tail = "\"}\n\n";
    while e.len() + tail.len() < EVENT_BYTES {
        e.push('y');
    }
    e.push_str(tail);
    Bytes::from(e)
}

fn full(b: Bytes) -> Body {
    Full::new(b).boxed_unsync()
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let authorised = req
        .headers()
        .get(API_KEY_HEADER)
        .is_some_and(|v| v.as_bytes() == shared.key.expose_secret().as_bytes());
    if !authorised {
        shared.unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(full(Bytes::from_static(b"{\"error\":\"bad key\"}")));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    match req.uri().path() {
        "/small" => {
            let mut r = Response::new(full(shared.small.clone()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/1mb" => Response::new(full(shared.large.clone())),
        "/sse" => {
            let n = query_number(&req, "n");
            let gap = Duration::from_millis(query_number(&req, "gap_ms"));
            let events = futures_util::stream::unfold(0u64, move |seq| async move {
                if seq >= n {
                    return None;
                }
                if seq > 0 && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(event(seq))),
                    seq + 1,
                ))
            });
            let mut r = Response::new(StreamBody::new(events).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            r
        }
        _ => {
            let mut r = Response::new(full(Bytes::from_static(b"{\"error\":\"no route\"}")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_have_the_documented_sizes() {
        assert_eq!(super::small_body().len(), super::SMALL_BODY);
        assert_eq!(super::event(0).len(), super::EVENT_BYTES);
        assert_eq!(super::event(123_456).len(), super::EVENT_BYTES);
    }
}
