//! `http_request`: one HTTP call through one of the caller's http grants, for clients
//! without a shell. Like `run_query`, the shim is an ordinary client of the grant's
//! loopback listener: it sends the grant token (`Authorization: Bearer`), the daemon checks
//! the allow list, injects the credential, audits the call and redacts the secret from the
//! response. The shim never sees an upstream secret.

use agentd_proto::Handle;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default response body limit, 64 KiB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// Hard cap, 1 MiB.
pub const MAX_BYTES_CAP: usize = 1024 * 1024;
/// Longest a call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A call's result.
#[derive(Debug, Clone, Serialize)]
pub struct HttpResult {
    /// Response status.
    pub status: u16,
    /// Response headers (lower-case names; repeated ones joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced), at most `max_bytes`.
    pub body: String,
    /// True when the body was longer than `max_bytes`.
    pub truncated: bool,
}

/// Why a call failed or was refused.
#[derive(Debug, Clone, Serialize)]
pub struct HttpCallError {
    /// `refused` (agentd's allow list or token check), `bad_request` (arguments),
    /// `connection`, `timeout`.
    pub error: &'static str,
    /// What happened.
    pub message: String,
    /// What to do next.
    pub next: String,
}

fn fail(error: &'static str, message: impl Into<String>, next: &str) -> HttpCallError {
    HttpCallError {
        error,
        message: message.into(),
        next: next.to_owned(),
    }
}

/// Sends `method path` with `headers` and `body` through the grant's listener.
///
/// # Errors
/// [`HttpCallError`]; an agentd refusal (JSON `agentd_refused`) is `refused`.
pub async fn call(
    handle: &Handle,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Option<String>,
    max_bytes: Option<usize>,
) -> Result<HttpResult, HttpCallError> {
    let Some(http) = &handle.http else {
        return Err(fail(
            "bad_request",
            "this grant is not on an http resource",
            "use run_query for database grants",
        ));
    };
    if !path.starts_with('/') {
        return Err(fail(
            "bad_request",
            "path must start with '/'",
            "pass the path (and query) relative to the API's base URL",
        ));
    }
    let max = max_bytes
        .unwrap_or(DEFAULT_MAX_BYTES)
        .clamp(1, MAX_BYTES_CAP);
    let mut req = hyper::Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(path)
        .header("host", format!("{}:{}", handle.host, handle.port))
        .header("authorization", format!("Bearer {}", http.token));
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("host") {
            continue;
        }
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| {
            fail(
                "bad_request",
                e.to_string(),
                "check method, path and headers",
            )
        })?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((handle.host.as_str(), handle.port))
            .await
            .map_err(|e| {
                fail(
                    "connection",
                    e.to_string(),
                    "the grant may have ended; call list_grants",
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| fail("connection", e.to_string(), "retry once; then list_grants"))?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| {
            fail(
                "connection",
                e.to_string(),
                "the grant may have ended; call list_grants",
            )
        })?;
        let status = resp.status().as_u16();
        let mut headers = BTreeMap::new();
        for (k, v) in resp.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(k.as_str().to_owned())
                .and_modify(|e: &mut String| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail("connection", e.to_string(), "retry once"))?;
            if let Some(data) = frame.data_ref() {
                let room = max - buf.len();
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(HttpResult {
            status,
            headers,
            body: String::from_utf8_lossy(&buf).into_owned(),
            truncated,
        })
    };
    let result = tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| fail("timeout", "no complete answer within 60 s", "retry later"))??;
    if matches!(result.status, 401 | 403 | 431) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&result.body) {
            if v["error"]["type"] == "agentd_refused" {
                return Err(fail(
                    "refused",
                    format!(
                        "agentd refused it ({}): {}",
                        v["error"]["rule"].as_str().unwrap_or_default(),
                        v["error"]["message"].as_str().unwrap_or_default()
                    ),
                    v["error"]["next_step"].as_str().unwrap_or("do not retry"),
                ));
            }
        }
    }
    Ok(result)
}
