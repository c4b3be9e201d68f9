//! One request through the listener: checks, forwarding, streaming the response back
//! through the secret scanner, and the audit record.

use super::auth::TokenError;
use super::scan::{Scanner, StreamScan};
use super::HttpGrantListener;
use crate::audit::AuditEvent;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the listener answers with.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

use super::upstream::ConnUpstream;
pub use super::upstream::Upstream;

/// The client's request body on its way upstream: counted, capped, cut when the client
/// stalls, aborted on a cut (by the connection's end).
///
/// Body idle timeout: whenever the upstream side asks for more body and the client has
/// nothing to give, a timer of [`super::Limits::body_idle_timeout`] starts; data stops it.
/// When it fires the request fails and the client connection is closed ([`Activity::stall`]).
/// Time the upstream spends not reading does not count against the client.
pub struct RequestBody {
    inner: RequestBodyInner,
    sent: Arc<AtomicU64>,
    limit: u64,
    idle: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    activity: Arc<Activity>,
}

enum RequestBodyInner {
    /// Streamed from the client as it arrives.
    Stream(Incoming),
    /// Already read (and hashed) by the listener; sent in one frame.
    Buffered(Option<Bytes>),
}

impl RequestBody {
    fn new(
        inner: RequestBodyInner,
        sent: Arc<AtomicU64>,
        grant: &HttpGrantListener,
        activity: Arc<Activity>,
    ) -> Self {
        Self {
            inner,
            sent,
            limit: grant.limits.max_body_bytes,
            idle: grant.limits.body_idle_timeout,
            waiting: None,
            activity,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let incoming = match &mut this.inner {
            RequestBodyInner::Buffered(data) => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            RequestBodyInner::Stream(incoming) => incoming,
        };
        match Pin::new(incoming).poll_frame(cx) {
            // Request trailers are dropped (see `headers`): they would bypass the header policy.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => Poll::Ready(None),
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = None;
                if let Some(data) = frame.data_ref() {
                    let n = this.sent.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if n > this.limit {
                        return Poll::Ready(Some(Err("request body over the limit".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.activity.stall();
                    return Poll::Ready(Some(Err(
                        "the client stopped sending the request body".into()
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RequestBodyInner::Stream(i) => i.is_end_stream(),
            RequestBodyInner::Buffered(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestBodyInner::Stream(i) => i.size_hint(),
            RequestBodyInner::Buffered(d) => {
                SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Why a body could not be read whole.
enum BufferError {
    TooLarge,
    Idle,
    Client,
}

/// Reads the whole request body (at most `limit` bytes; each read within `idle`), for
/// hashing.
async fn read_body(
    body: &mut Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, BufferError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BufferError::Idle),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(BufferError::Client),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > limit {
                        return Err(BufferError::TooLarge);
                    }
                    buf.extend_from_slice(data);
                }
            }
        }
    }
}

/// A client connection's requests in flight and when the last one ended, for the idle
/// timeout (hyper closes slow request heads itself, not idle keep-alive connections), and
/// whether a request body stalled. Plain atomics: a request touches no lock and wakes no
/// task here; the idle timer checks them when it fires.
pub struct Activity {
    inflight: AtomicU64,
    /// When the last request ended, in milliseconds after `born`.
    last_end_ms: AtomicU64,
    born: Instant,
    stalled: std::sync::atomic::AtomicBool,
    stall_waker: futures_util::task::AtomicWaker,
    /// `http_request` records of requests that ended, written by
    /// [`Activity::write_records`] once the connection's task has sent what it had to send
    /// (so the audit write is not between the upstream's response and the client).
    records: std::sync::Mutex<Vec<AuditEvent>>,
    grant: Arc<HttpGrantListener>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("inflight", &self.inflight)
            .field("stalled", &self.stalled)
            .finish_non_exhaustive()
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.write_records();
    }
}

impl Activity {
    /// The state of a new client connection of `grant`.
    pub fn new(grant: Arc<HttpGrantListener>) -> Self {
        Self {
            inflight: AtomicU64::new(0),
            last_end_ms: AtomicU64::new(0),
            born: Instant::now(),
            stalled: std::sync::atomic::AtomicBool::new(false),
            stall_waker: futures_util::task::AtomicWaker::new(),
            records: std::sync::Mutex::new(Vec::new()),
            grant,
        }
    }

    /// Keeps a finished request's record for [`Activity::write_records`].
    fn defer_record(&self, event: AuditEvent) {
        match self.records.lock() {
            Ok(mut records) => records.push(event),
            Err(_) => self.grant.record(&event),
        }
    }

    /// Appends the records of the requests that ended since the last call, in order. Called
    /// by the connection's task after each poll and when the connection ends (and on drop).
    pub fn write_records(&self) {
        let records = match self.records.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        for event in &records {
            self.grant.record(event);
        }
    }

    /// A request body stalled past the body idle timeout: the connection is closed.
    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.stall_waker.wake();
    }

    fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    /// Resolves when a request body on this connection stalled ([`RequestBody`]).
    pub async fn stalled(&self) {
        std::future::poll_fn(|cx| {
            if self.is_stalled() {
                return Poll::Ready(());
            }
            self.stall_waker.register(cx.waker());
            if self.is_stalled() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_end_ms.store(ms, Ordering::SeqCst);
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Resolves once no request has been in flight for `timeout` (checked when the timer
    /// fires: at most `timeout` after the last request ended, or every `timeout` while one
    /// is in flight).
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = if self.inflight.load(Ordering::SeqCst) > 0 {
                Instant::now() + timeout
            } else {
                self.born + Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst)) + timeout
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// One request's audit record, written when it is dropped (the end of the response body,
/// or of the request when nothing streams).
struct Exchange {
    grant: Arc<HttpGrantListener>,
    session: u64,
    method: String,
    path: String,
    query: Vec<String>,
    status: u16,
    rule: Option<String>,
    refused: Option<String>,
    started: Instant,
    bytes_up: Arc<AtomicU64>,
    bytes_down: u64,
    reflected: u64,
    end: &'static str,
    activity: Arc<Activity>,
    /// The client connection's upstream hold, once the request went upstream.
    upstream: Option<Arc<ConnUpstream>>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(conn) = self.upstream.take() {
            let reusable = self.end == "complete" && !self.grant.is_cut();
            conn.release(&self.grant.upstream, reusable);
        }
        self.activity.end();
        // (`cut.is_cancelled`, not `is_cut`: a daemon shutdown cancels the token before it
        // sets each grant's reason; this path is taken only when a client left early.)
        if self.end == "client" && self.grant.cut.is_cancelled() {
            // The connection was dropped by the cut before the body finished.
            self.end = "revoked";
        }
        if self.activity.is_stalled() && self.end != "complete" {
            self.end = "client body idle";
        }
        self.activity.defer_record(AuditEvent::HttpRequest {
            grant_id: self.grant.grant_id.clone(),
            session: self.session,
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            query: std::mem::take(&mut self.query),
            status: self.status,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down,
            duration_ms: self.started.elapsed().as_millis() as u64,
            rule: self.rule.take(),
            refused: self.refused.take(),
            secret_reflected: self.reflected,
            end: self.end.to_owned(),
        });
    }
}

/// The upstream's response body on its way to the client: scanned, counted, cut on revoke.
struct ScannedBody {
    inner: Incoming,
    scan: StreamScan,
    exchange: Exchange,
    done: bool,
    /// Occurrences already replaced in the response headers.
    in_headers: u64,
}

impl ScannedBody {
    fn scanner(&self) -> &Scanner {
        &self.exchange.grant.scanner
    }
}

impl Body for ScannedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.exchange.end = "upstream error";
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.exchange.end = "complete";
                    let grant = this.exchange.grant.clone();
                    let tail = this.scan.finish(&grant.scanner);
                    this.exchange.reflected = this.in_headers + this.scan.found as u64;
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    this.exchange.bytes_down += tail.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let grant = this.exchange.grant.clone();
                        let out = this.scan.push(&grant.scanner, data);
                        this.exchange.reflected = this.in_headers + this.scan.found as u64;
                        if out.is_empty() {
                            continue;
                        }
                        this.exchange.bytes_down += out.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    Err(frame) => {
                        // Trailers: scanned like headers.
                        let frame = match frame.into_trailers() {
                            Ok(mut trailers) => {
                                let n = redact_headers(this.scanner(), &mut trailers);
                                this.in_headers += n;
                                this.exchange.reflected += n;
                                Frame::trailers(trailers)
                            }
                            Err(other) => other,
                        };
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
            }
        }
    }
}

/// Replaces occurrences of the secret in header values; returns how many.
fn redact_headers(scanner: &Scanner, headers: &mut HeaderMap) -> u64 {
    let mut total = 0;
    for value in headers.values_mut() {
        if let Some((clean, n)) = scanner.redact(value.as_bytes()) {
            total += n as u64;
            *value = HeaderValue::from_bytes(&clean)
                .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]"));
        }
    }
    total
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Query parameter names whose values the audit log does not keep.
fn sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "password",
        "passwd",
        "signature",
        "sig",
        "auth",
        "credential",
        "code",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn audit_query(pairs: &[String]) -> Vec<String> {
    pairs
        .iter()
        .take(64)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k: String = k.chars().take(128).collect();
            if sensitive_key(&percent_encoding::percent_decode_str(&k).decode_utf8_lossy()) {
                format!("{k}=[REDACTED]")
            } else {
                format!("{k}={}", v.chars().take(256).collect::<String>())
            }
        })
        .collect()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The 502 for an upstream that failed (`message` says how); the record ends as
/// `upstream error`.
fn upstream_failed(exchange: &mut Exchange, message: &str) -> Response<ResponseBody> {
    exchange.end = "upstream error";
    exchange.status = StatusCode::BAD_GATEWAY.as_u16();
    json_response(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({"error": {"type": "agentd_upstream", "message": message, "next_step": "retry later; `agentd status` shows the grant"}}),
    )
}

/// A refusal by agentd: status, `rule` (what refused it), message and the next step.
fn refusal(status: StatusCode, rule: &str, message: &str, next: &str) -> Response<ResponseBody> {
    json_response(
        status,
        serde_json::json!({
            "error": {
                "type": "agentd_refused",
                "rule": rule,
                "message": message,
                "next_step": next,
            }
        }),
    )
}

/// The 401 for a missing or wrong token; after a few wrong tokens a minute the answer is
/// held back (as on the PostgreSQL listener) while the connection keeps its slot.
async fn refuse_token(
    grant: &HttpGrantListener,
    exchange: &mut Exchange,
    msg: &str,
    wrong: bool,
) -> Response<ResponseBody> {
    if wrong {
        let t = grant.admission.record_failure(Instant::now());
        if !t.delay.is_zero() {
            tracing::warn!(
                grant = %grant.grant_id,
                session = exchange.session,
                failures = t.failures,
                delay_ms = t.delay.as_millis() as u64,
                "wrong grant token; answer delayed"
            );
            tokio::select! {
                _ = tokio::time::sleep(t.delay) => {}
                _ = grant.cut.cancelled() => {}
            }
        }
    }
    let placement = crate::config::http::HttpAuth::token_placement(grant.auth.scheme());
    exchange.status = StatusCode::UNAUTHORIZED.as_u16();
    exchange.refused = Some(format!("token: {msg}"));
    refusal(
        StatusCode::UNAUTHORIZED,
        "token",
        msg,
        &format!("send the token from your agentd handle as {placement}; if the grant expired, request access again"),
    )
}

/// The first `max` characters of `s`, copied once (for the audit record's bounded fields).
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
    }
}

/// The length of `uri` as sent on the request line (without building the string).
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + pq
}

/// Serves one request (hyper's service function). Never fails: errors become responses.
pub async fn handle(
    grant: Arc<HttpGrantListener>,
    session: u64,
    activity: Arc<Activity>,
    conn_upstream: Arc<ConnUpstream>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    grant.total_requests.fetch_add(1, Ordering::Relaxed);
    activity.begin();
    let bytes_up = Arc::new(AtomicU64::new(0));
    let raw_path = bounded(req.uri().path(), 512);
    let mut exchange = Exchange {
        grant: grant.clone(),
        session,
        method: bounded(req.method().as_str(), 32),
        path: raw_path,
        query: Vec::new(),
        status: 0,
        rule: None,
        refused: None,
        started: Instant::now(),
        bytes_up: bytes_up.clone(),
        bytes_down: 0,
        reflected: 0,
        end: "refused",
        activity,
        upstream: None,
    };
    let refuse =
        |exchange: &mut Exchange, status: StatusCode, rule: &str, msg: &str, next: &str| {
            exchange.status = status.as_u16();
            exchange.refused = Some(format!("{rule}: {msg}"));
            refusal(status, rule, msg, next)
        };
    let (mut parts, body) = req.into_parts();
    let mut query: Vec<String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();

    // The token first: an unauthenticated client learns nothing about the allow list.
    let signed = match grant.auth.take_token(&mut parts.headers, &mut query) {
        Ok(signed) => signed,
        Err(e) => {
            exchange.query = audit_query(&query);
            let msg = match e {
                TokenError::Missing => "no grant token on the request",
                TokenError::Wrong => "the grant token is wrong",
            };
            return Ok(refuse_token(&grant, &mut exchange, msg, e == TokenError::Wrong).await);
        }
    };
    // aws_sigv4: the payload hash (reading the body when it must be hashed), the client's
    // signature, and the client's signing headers off the request.
    let mut sigv4_payload = None;
    let mut body = body;
    let mut buffered = None;
    if let Some(signer) = grant.auth.sigv4() {
        exchange.query = audit_query(&query);
        let given = parts.headers.get(super::sigv4::CONTENT_SHA256);
        let plan = match super::sigv4::payload_plan(
            given.map(HeaderValue::as_bytes),
            signed.is_some(),
            signer.is_s3(),
        ) {
            Ok(plan) => plan,
            Err(msg) => {
                return Ok(refuse(
                    &mut exchange,
                    StatusCode::BAD_REQUEST,
                    "aws_sigv4",
                    &msg,
                    "sign with x-amz-content-sha256 set to the body's SHA-256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                ))
            }
        };
        let hash = match plan {
            super::sigv4::PayloadPlan::Given(v) => v,
            super::sigv4::PayloadPlan::Unsigned => super::sigv4::UNSIGNED_PAYLOAD.to_owned(),
            super::sigv4::PayloadPlan::Buffer => {
                let slot = tokio::select! {
                    s = grant.buffering.acquire() => s.ok(),
                    _ = grant.cut.cancelled() => None,
                };
                let Some(_slot) = slot else {
                    return Ok(refusal(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "grant",
                        "the grant ended",
                        "request access again if still needed",
                    ));
                };
                let limit = grant.limits.max_buffered_body_bytes;
                match read_body(&mut body, limit, grant.limits.body_idle_timeout).await {
                    Ok(data) => {
                        let hash = super::sigv4::sha256_hex(&data);
                        bytes_up.store(data.len() as u64, Ordering::Relaxed);
                        buffered = Some(data);
                        hash
                    }
                    Err(BufferError::TooLarge) => {
                        return Ok(refuse(
                            &mut exchange,
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "aws_sigv4",
                            &format!("a body agentd must hash to sign it is limited to {limit} bytes"),
                            "send x-amz-content-sha256 with the body's SHA-256 (S3 SDKs do), or a smaller body",
                        ))
                    }
                    Err(BufferError::Idle) => {
                        exchange.activity.stall();
                        return Ok(refuse(
                            &mut exchange,
                            StatusCode::REQUEST_TIMEOUT,
                            "body_idle",
                            "the request body stopped arriving",
                            "send the body without pauses",
                        ));
                    }
                    Err(BufferError::Client) => {
                        return Ok(refuse(
                            &mut exchange,
                            StatusCode::BAD_REQUEST,
                            "body",
                            "the request body could not be read",
                            "send a well-formed body",
                        ))
                    }
                }
            }
        };
        if let Some(sig) = &signed {
            let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let checked = signer.verify(
                sig,
                parts.method.as_str(),
                path_and_query,
                &parts.headers,
                &hash,
                std::time::SystemTime::now(),
            );
            if let Err(e) = checked {
                let wrong = e == super::sigv4::VerifyError::Mismatch;
                return Ok(refuse_token(&grant, &mut exchange, &e.to_string(), wrong).await);
            }
        }
        super::sigv4::Signer::strip_client_signing(&mut parts.headers, &mut query);
        sigv4_payload = Some(hash);
    }
    exchange.query = audit_query(&query);
    let head_bytes: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + uri_len(&parts.uri);
    if head_bytes > grant.limits.max_head_bytes {
        return Ok(refuse(
            &mut exchange,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers",
            &format!(
                "the request head is over {} bytes",
                grant.limits.max_head_bytes
            ),
            "send fewer or smaller headers",
        ));
    }
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Ok(refuse(
            &mut exchange,
            StatusCode::FORBIDDEN,
            "method",
            "CONNECT and TRACE are never proxied",
            "call the API's paths directly on the handle's base_url",
        ));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Ok(refuse(
            &mut exchange,
            StatusCode::FORBIDDEN,
            "target",
            "absolute-form request targets are refused (this is not a forward proxy)",
            "send the path only, with the handle's base_url as the server",
        ));
    }
    if parts.headers.contains_key(header::UPGRADE) {
        return Ok(refuse(
            &mut exchange,
            StatusCode::FORBIDDEN,
            "upgrade",
            "protocol upgrades (WebSocket, h2c) are refused",
            "use plain HTTP requests",
        ));
    }
    let path = match super::path::normalise(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(refuse(
                &mut exchange,
                StatusCode::FORBIDDEN,
                "path",
                &e.to_string(),
                "send the plain path, without encoded separators or dot segments",
            ))
        }
    };
    exchange.path = bounded(&path, 512);
    if let Err(r) = super::headers::request(&parts.method, &mut parts.headers, &query) {
        return Ok(refuse(&mut exchange, r.status, r.rule, &r.message, r.next));
    }
    let method = parts.method.as_str();
    let Some(rule_index) = grant.allow.iter().position(|r| r.allows(method, &path)) else {
        let allowed = &grant.allow_described;
        return Ok(refuse(
            &mut exchange,
            StatusCode::FORBIDDEN,
            "allow_list",
            &format!("{method} {path} is not allowed by this grant's permission"),
            &format!(
                "this grant allows only: {}; do not retry, request a permission that allows it (describe_resource lists them)",
                allowed.join("; ")
            ),
        ));
    };
    exchange.rule = grant.allow_described.get(rule_index).cloned();

    // Forward.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    grant.auth.inject(&mut parts.headers, &mut query);
    let mut target = format!("{}{}", grant.upstream.prefix, path);
    if !query.is_empty() {
        target.push('?');
        target.push_str(&query.join("&"));
    }
    let uri = Uri::builder()
        .scheme("https")
        .authority(grant.upstream.authority.clone())
        .path_and_query(target)
        .build();
    let Ok(uri) = uri else {
        return Ok(refuse(
            &mut exchange,
            StatusCode::FORBIDDEN,
            "target",
            "the request target could not be rebuilt",
            "send a plain path and query",
        ));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    if let (Some(signer), Some(hash)) = (grant.auth.sigv4(), &sigv4_payload) {
        let signed = signer.sign(
            parts.method.as_str(),
            &parts.uri,
            &mut parts.headers,
            hash,
            std::time::SystemTime::now(),
        );
        if let Err(msg) = signed {
            return Ok(refuse(
                &mut exchange,
                StatusCode::BAD_REQUEST,
                "aws_sigv4",
                &msg,
                "send header values as plain text",
            ));
        }
    }
    let body = match buffered {
        Some(data) => RequestBodyInner::Buffered(Some(data)),
        None => RequestBodyInner::Stream(body),
    };
    let body = RequestBody::new(body, bytes_up, &grant, exchange.activity.clone());
    let is_head = parts.method == Method::HEAD;
    let upstream_req = Request::from_parts(parts, body);
    exchange.upstream = Some(conn_upstream.clone());
    // From here the request is the upstream's: if the client connection goes (or the
    // grant's cut closes it) before the response ends, the record says so.
    exchange.end = "client";
    let sent = conn_upstream.send(&grant.upstream, upstream_req).await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(grant = %grant.grant_id, session, error = %e, "upstream request failed");
            return Ok(upstream_failed(
                &mut exchange,
                "the upstream could not be reached or the request failed",
            ));
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    if let Err(r) = super::headers::response(&mut rparts) {
        exchange.end = "refused";
        return Ok(refuse(&mut exchange, r.status, r.rule, &r.message, r.next));
    }
    strip_hop_by_hop(&mut rparts.headers);
    exchange.reflected = redact_headers(&grant.scanner, &mut rparts.headers);
    exchange.status = rparts.status.as_u16();
    exchange.end = "client";
    // A HEAD answer, 204 and 304 have no body to change: their headers, Content-Length
    // included, go out as they came.
    if is_head
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED
    {
        exchange.end = "complete";
        return Ok(Response::from_parts(rparts, empty_body()));
    }
    // A small body of known length is read whole (it is usually in the same read as the
    // head), scanned at once and sent with its (possibly redacted) length, not re-chunked.
    let small = rparts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|n| *n <= SMALL_BODY_BYTES);
    if let Some(length) = small {
        return Ok(send_small_body(&grant, exchange, rparts, rbody, length).await);
    }
    // Otherwise the body streams through the scanner; redaction can change its length, so it
    // goes out chunked.
    rparts.headers.remove(header::CONTENT_LENGTH);
    let in_headers = exchange.reflected;
    let body = ScannedBody {
        inner: rbody,
        scan: StreamScan::default(),
        exchange,
        done: false,
        in_headers,
    };
    Ok(Response::from_parts(rparts, body.boxed_unsync()))
}

/// Largest response body with a `Content-Length` that is read whole before it is sent
/// (bytes); larger ones, and bodies of unknown length, stream.
const SMALL_BODY_BYTES: u64 = 64 * 1024;

fn empty_body() -> ResponseBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads a response body of `length` bytes (at most [`SMALL_BODY_BYTES`]) whole, redacts the
/// secret in it and answers with the result and its length.
async fn send_small_body(
    grant: &HttpGrantListener,
    mut exchange: Exchange,
    mut rparts: http::response::Parts,
    mut rbody: Incoming,
    length: u64,
) -> Response<ResponseBody> {
    let mut buf = bytes::BytesMut::with_capacity(usize::try_from(length).unwrap_or(0));
    loop {
        match rbody.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if (buf.len() + data.len()) as u64 > length {
                        break;
                    }
                    buf.extend_from_slice(data);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(grant = %grant.grant_id, session = exchange.session, error = %e, "upstream response body failed");
                return upstream_failed(&mut exchange, "the upstream's response body failed");
            }
        }
    }
    let body = buf.freeze();
    let (body, found) = match grant.scanner.redact(&body) {
        Some((clean, n)) => (Bytes::from(clean), n as u64),
        None => (body, 0),
    };
    exchange.reflected += found;
    exchange.bytes_down = body.len() as u64;
    exchange.end = "complete";
    rparts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(
        rparts,
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}
