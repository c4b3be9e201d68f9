//! A small local HTTPS upstream for `agentd demo --http` and the tests: a throwaway CA and
//! a `localhost` / `127.0.0.1` certificate (rcgen), HTTP/1.1 and HTTP/2 by ALPN, and every
//! request recorded (method, path, query, version, headers) for the caller to inspect.
//!
//! Routes:
//! - `GET /sse`: `data: first` at once, then waits for [`EchoUpstream::release`], then
//!   `data: second` and the end (streaming order).
//! - `GET /bytes?n=N`: N bytes of `x`, in 64 KiB chunks, generated as they are sent.
//! - `POST|PUT /upload`: counts the body as it streams; answers `{"received": N}`.
//! - `GET /reflect?split=K`: sends the request's `Authorization` (or `x-api-key`) value
//!   back in an `x-reflected` header and in the body, with the body split into two chunks
//!   K bytes into the value (a hostile upstream echoing the credential).
//! - `GET /hang`: the head and one line, then nothing until the client goes away.
//! - `GET /mirror?form=F`: the request's `Authorization` (or `x-api-key`) value sent back
//!   transformed, as the text `form=<value>` (a hostile echo, for the scanner): `hex`,
//!   `b64-K` / `b64url-K` (base64 of K bytes of `x` then the value, K = 0, 1, 2), `pct-all`
//!   (every byte `%xx`), `json-u` (every byte `\u00XX`), `php` (standard base64 with `/`
//!   written `\/`), `upper` (upper-cased).
//! - `GET /reason`: 401 whose HTTP/1.1 reason phrase is `Invalid key ` and the request's
//!   `Authorization` value (an upstream naming the bad key in its status line).
//! - `GET /hidden-gzip`: gzip bytes with `Content-Encoding: gzip` and
//!   `Connection: content-encoding` (HTTP/1.1: a hop-by-hop trick that would remove the
//!   header saying the body is compressed).
//! - `GET /bigheader?n=N`: an empty 200 with an `x-big` header of N bytes.
//! - `GET /cookie`: an empty 200 with two `Set-Cookie` headers (a session the upstream
//!   hands out).
//! - `PUT /s3/…`: an S3-like empty 200 with an `ETag` (boto3 reads a body there as an
//!   error), after recording the body's SHA-256.
//! - anything else: a JSON echo of what was received (headers included: agentd redacts the
//!   credential on the way back), after reading the body (at most 1 MiB kept) and recording
//!   its SHA-256 (for the SigV4 checks).

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// One request as the upstream saw it.
#[derive(Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path as received.
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// The authority the client addressed (`:authority` or `Host`).
    pub authority: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Headers (lower-case names; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Lower-case hex SHA-256 of the body (the echo route only; bodies over 1 MiB are not
    /// hashed).
    pub body_sha256: Option<String>,
    /// Which of the upstream's connections it came on (1 = the first accepted).
    pub connection: u64,
    /// Names of the trailer fields that followed the body (the echo route only).
    pub trailers: Vec<String>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers may carry the injected credential.
        f.debug_struct("Recorded")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("connection", &self.connection)
            .finish()
    }
}

/// A running upstream; it stops when dropped.
pub struct EchoUpstream {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The PEM file of the CA that signed its certificate.
    pub ca_file: PathBuf,
    /// Requests received, in order.
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Lets a waiting `/sse` response continue.
    pub release: Arc<Notify>,
    /// Notified (one permit) when an `/sse` request arrives.
    pub sse_started: Arc<Notify>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    /// Its temporary directory (the CA file); removed when it is dropped.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Starts the upstream on `127.0.0.1:0` (inside a tokio runtime), HTTP/2 or HTTP/1.1 by
    /// ALPN.
    ///
    /// # Errors
    /// Certificate generation, the temp dir or the bind.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// As [`Self::start`], offering only HTTP/1.1 by ALPN.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_http1() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// [`EchoUpstream::start`], offering HTTP/2 by ALPN only when `h2` (without it clients
    /// speak HTTP/1.1, where a response has a reason phrase and hop-by-hop headers).
    ///
    /// # Errors
    /// Certificate generation, the temp dir or the bind.
    pub async fn start_with(h2: bool) -> anyhow::Result<Self> {
        let (ca, cert, key) = crate::pgcluster::localhost_ca_and_cert("agentd throwaway HTTP CA")?;
        let dir = tempfile::Builder::new()
            .prefix("agentd-upstream-")
            .tempdir()?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .context("upstream certificate")?;
        tls.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let sse_started = Arc::new(Notify::new());
        let (reqs, rel) = (requests.clone(), (release.clone(), sse_started.clone()));
        let task = tokio::spawn(async move {
            let mut accepted = 0u64;
            while let Ok((tcp, _)) = listener.accept().await {
                accepted += 1;
                let conn = accepted;
                let (acceptor, reqs, rel) = (acceptor.clone(), reqs.clone(), rel.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (reqs, rel) = (reqs.clone(), rel.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(route(req, reqs, rel, conn).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            port,
            ca_file,
            requests,
            release,
            sse_started,
            _dir: dir,
            task,
        })
    }

    /// Stops accepting connections (the port refuses from now on; open connections stay).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The requests received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn stream(chunks: futures_util::stream::BoxStream<'static, Bytes>) -> Body {
    use futures_util::StreamExt as _;
    BodyExt::boxed_unsync(StreamBody::new(
        chunks.map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    ))
}

/// `value` transformed as `/mirror?form=` names (see the module docs).
fn mirror(form: &str, value: &[u8]) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use base64::Engine as _;
    let shifted = |k: usize| [vec![b'x'; k], value.to_vec()].concat();
    match form {
        "hex" => value.iter().map(|b| format!("{b:02x}")).collect(),
        "pct-all" => value.iter().map(|b| format!("%{b:02x}")).collect(),
        "json-u" => value.iter().map(|b| format!("\\u{b:04X}")).collect(),
        "php" => STANDARD.encode(value).replace('/', "\\/"),
        "upper" => String::from_utf8_lossy(value).to_ascii_uppercase(),
        f => match f.split_once('-') {
            Some(("b64", k)) => STANDARD.encode(shifted(k.parse().unwrap_or(0))),
            Some(("b64url", k)) => URL_SAFE.encode(shifted(k.parse().unwrap_or(0))),
            _ => String::from_utf8_lossy(value).into_owned(),
        },
    }
}

async fn route(
    req: Request<Incoming>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    (release, sse_started): (Arc<Notify>, Arc<Notify>),
    connection: u64,
) -> Response<Body> {
    use futures_util::StreamExt as _;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let echo_route = !matches!(
        req.uri().path(),
        "/sse"
            | "/bytes"
            | "/upload"
            | "/reflect"
            | "/hang"
            | "/mirror"
            | "/cookie"
            | "/bigheader"
            | "/reason"
            | "/hidden-gzip"
    );
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let echo_body = if echo_route { body.take() } else { None };
    let mut trailers = Vec::new();
    let body_sha256 = match echo_body {
        Some(incoming) => match http_body_util::Limited::new(incoming, 1 << 20)
            .collect()
            .await
        {
            Ok(c) => {
                use sha2::Digest as _;
                if let Some(t) = c.trailers() {
                    trailers = t.keys().map(|k| k.as_str().to_owned()).collect();
                }
                let digest = sha2::Sha256::digest(c.to_bytes());
                Some(
                    digest
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                )
            }
            Err(_) => None,
        },
        None => None,
    };
    let req = Request::from_parts(parts, ());
    let recorded = Recorded {
        body_sha256: body_sha256.clone(),
        trailers,
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        authority: req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| headers.get("host").cloned())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: headers.clone(),
        connection,
    };
    if let Ok(mut r) = requests.lock() {
        r.push(recorded.clone());
    }
    let query: BTreeMap<String, String> = recorded
        .query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let number = |k: &str| {
        query
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut resp = match recorded.path.as_str() {
        p if p.starts_with("/s3/") && recorded.method == "PUT" => {
            let mut r = Response::new(full(Bytes::new()));
            r.headers_mut()
                .insert("etag", http::HeaderValue::from_static("\"agentd-echo\""));
            r
        }
        "/sse" => {
            sse_started.notify_one();
            let chunks =
                futures_util::stream::once(async { Bytes::from_static(b"data: first\n\n") })
                    .chain(futures_util::stream::once(async move {
                        release.notified().await;
                        Bytes::from_static(b"data: second\n\n")
                    }))
                    .boxed();
            let mut r = Response::new(stream(chunks));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        "/bytes" => {
            let n = number("n");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((chunk.slice(..take as usize), left - take))
                }
            })
            .boxed();
            Response::new(stream(chunks))
        }
        "/upload" => {
            let Some(mut body) = body.take() else {
                return Response::new(full("no body"));
            };
            let mut received = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(format!("{{\"received\": {received}}}")))
        }
        "/reflect" => {
            let value = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .cloned()
                .unwrap_or_default()
                .into_bytes();
            let k = (number("split") as usize).min(value.len());
            let first = [b"{\"you_sent\": \"".as_slice(), &value[..k]].concat();
            let second = [&value[k..], b"\"}".as_slice()].concat();
            let chunks =
                futures_util::stream::iter([Bytes::from(first), Bytes::from(second)]).boxed();
            let mut r = Response::new(stream(chunks));
            if let Ok(v) = http::HeaderValue::from_bytes(&value) {
                r.headers_mut().insert("x-reflected", v);
            }
            r
        }
        "/mirror" => {
            let value = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .cloned()
                .unwrap_or_default();
            let form = query.get("form").map(String::as_str).unwrap_or_default();
            Response::new(full(format!("form={}\n", mirror(form, value.as_bytes()))))
        }
        "/reason" => {
            let value = headers.get("authorization").cloned().unwrap_or_default();
            let mut r = Response::new(full("bad key"));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            if let Ok(phrase) =
                hyper::ext::ReasonPhrase::try_from(format!("Invalid key {value}").into_bytes())
            {
                r.extensions_mut().insert(phrase);
            }
            r
        }
        "/hidden-gzip" => {
            // gzip of "data" (RFC 1952), fixed bytes.
            const GZ: &[u8] = &[
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x4b, 0x49, 0x2c, 0x49,
                0x04, 0x00, 0x63, 0xf3, 0xf3, 0xad, 0x04, 0x00, 0x00, 0x00,
            ];
            let mut r = Response::new(full(GZ));
            r.headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            r.headers_mut().insert(
                "connection",
                http::HeaderValue::from_static("content-encoding"),
            );
            r
        }
        "/bigheader" => {
            let mut r = Response::new(full(Bytes::new()));
            let big = "b".repeat(number("n") as usize);
            if let Ok(v) = http::HeaderValue::from_str(&big) {
                r.headers_mut().insert("x-big", v);
            }
            r
        }
        "/cookie" => {
            let mut r = Response::new(full(Bytes::new()));
            for c in ["session=s3ss10n; HttpOnly; Secure", "csrf=abc; Path=/"] {
                r.headers_mut()
                    .append("set-cookie", http::HeaderValue::from_static(c));
            }
            r
        }
        "/hang" => {
            let chunks = futures_util::stream::once(async { Bytes::from_static(b"started\n") })
                .chain(futures_util::stream::pending())
                .boxed();
            Response::new(stream(chunks))
        }
        _ => {
            let json = serde_json::json!({
                "method": recorded.method,
                "path": recorded.path,
                "query": recorded.query,
                "version": recorded.version,
                "headers": headers,
            });
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    if recorded.path == "/compressed" {
        resp.headers_mut()
            .insert("content-encoding", http::HeaderValue::from_static("gzip"));
    }
    if recorded.path.ends_with("/close") {
        // HTTP/1.1: the upstream closes this connection after the response.
        resp.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
    }
    resp
}
