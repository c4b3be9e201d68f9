//! The bench's own HTTP client (hyper HTTP/1.1, one connection at a time) for what a load
//! generator does not measure: SSE time to first event and events per second, and idle
//! keep-alive connections held open for the memory measurement.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret as _, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a request goes and what it carries.
#[derive(Clone)]
pub struct Endpoint {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// TLS to the server (verified against the bench CA as `localhost`), or plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A header the client sends itself: the real key (direct), the grant token (agentd)
    /// or none (nginx injects the key).
    pub header: Option<(&'static str, SecretString)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A rustls client config trusting only `ca`.
///
/// # Errors
/// The certificate is not accepted as a root.
pub fn tls_config(
    ca: &rustls_pki_types::CertificateDer<'static>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One open HTTP/1.1 connection; its driver task ends when this is dropped.
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    endpoint: Endpoint,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn handshake<S>(
    io: S,
) -> anyhow::Result<(SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

impl Connection {
    /// Opens a connection (TCP, TLS when the endpoint has it, HTTP/1.1 handshake).
    ///
    /// # Errors
    /// Connect, TLS or handshake errors.
    pub async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", endpoint.port)).await?;
        tcp.set_nodelay(true)?;
        let (sender, driver) = match &endpoint.tls {
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                handshake(tls).await?
            }
            None => handshake(tcp).await?,
        };
        Ok(Self {
            sender,
            driver,
            endpoint: endpoint.clone(),
        })
    }

    /// Sends `GET path` and returns the response head and body (not yet read).
    ///
    /// # Errors
    /// The request fails or the status is not 200.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let mut req = http::Request::get(path).header(
            http::header::HOST,
            format!("127.0.0.1:{}", self.endpoint.port),
        );
        if let Some((name, value)) = &self.endpoint.header {
            req = req.header(*name, value.expose_secret());
        }
        let req = req.body(Empty::<Bytes>::new())?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        if resp.status() != http::StatusCode::OK {
            bail!("GET {path}: status {}", resp.status());
        }
        Ok(resp.into_body())
    }

    /// `GET path` and the whole body read and dropped; returns the body's length.
    ///
    /// # Errors
    /// As [`Connection::get`], or the body fails.
    pub async fn get_drain(&mut self, path: &str) -> anyhow::Result<u64> {
        let mut body = self.get(path).await?;
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                n += d.len() as u64;
            }
        }
        Ok(n)
    }
}

/// Counts complete SSE events (`\n\n` terminators) across chunk boundaries.
#[derive(Debug, Default)]
pub struct EventCounter {
    last_was_newline: bool,
    /// Events seen.
    pub events: u64,
    /// Bytes seen.
    pub bytes: u64,
}

impl EventCounter {
    /// Feeds the next chunk; returns how many events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> u64 {
        let mut n = 0;
        for &b in chunk {
            if b == b'\n' {
                if self.last_was_newline {
                    n += 1;
                    self.last_was_newline = false;
                    continue;
                }
                self.last_was_newline = true;
            } else {
                self.last_was_newline = false;
            }
        }
        self.events += n;
        self.bytes += chunk.len() as u64;
        n
    }
}

/// Time to first event, ms, of `iterations` sequential `GET /sse?n=2&gap_ms=GAP` on one
/// keep-alive connection: from sending the request until the first complete event has been
/// read (the upstream sends the second event GAP ms after the first, so a proxy that
/// buffers shows it). Each stream is read to its end before the next request.
///
/// # Errors
/// Any request failing, or a stream with fewer than two events.
pub async fn time_to_first_event(
    endpoint: &Endpoint,
    iterations: u32,
    gap_ms: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut conn = Connection::open(endpoint).await?;
    let path = format!("/sse?n=2&gap_ms={gap_ms}");
    let mut out = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let t0 = Instant::now();
        let mut body = conn.get(&path).await?;
        let mut counter = EventCounter::default();
        let mut first = None;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                if counter.push(d) > 0 && first.is_none() {
                    first = Some(t0.elapsed());
                }
            }
        }
        let first = first.context("no event arrived")?;
        if counter.events != 2 {
            bail!("expected 2 events, got {}", counter.events);
        }
        out.push(first.as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// One `GET /sse?n=EVENTS&gap_ms=0` read to its end: (seconds, events counted).
///
/// # Errors
/// The request fails or the stream is short.
pub async fn event_stream(endpoint: &Endpoint, events: u64) -> anyhow::Result<(Duration, u64)> {
    let mut conn = Connection::open(endpoint).await?;
    // Warm the connection (and the proxy's upstream pool) before timing.
    conn.get_drain("/small").await?;
    let t0 = Instant::now();
    let mut body = conn.get(&format!("/sse?n={events}&gap_ms=0")).await?;
    let mut counter = EventCounter::default();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            counter.push(d);
        }
    }
    let took = t0.elapsed();
    if counter.events != events {
        bail!("expected {events} events, got {}", counter.events);
    }
    Ok((took, counter.events))
}

#[cfg(test)]
mod tests {
    use super::EventCounter;

    #[test]
    fn events_are_counted_across_chunk_boundaries() {
        let stream = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n";
        for split in 0..stream.len() {
            let mut c = EventCounter::default();
            c.push(&stream[..split]);
            c.push(&stream[split..]);
            assert_eq!(c.events, 3, "split at {split}");
        }
    }
}
