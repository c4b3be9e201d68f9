//! The relay: after both sides are authenticated, bytes pass through untouched in both
//! directions. The server→client direction tracks message boundaries (type byte + Int32
//! length) without buffering messages, so that when the grant ends we can inject a FATAL
//! ErrorResponse at a boundary instead of cutting a message in half.
//!
//! Memory: a session holds a relay buffer only while a chunk is in flight (read, being
//! written). Every read is polled with a buffer taken from a process-wide pool and put back
//! when the read is still pending, so an idle session (the usual state of a pooled
//! connection) holds no relay buffer at all.

use super::wire;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Relay buffer size, in bytes: one read takes at most this much.
pub const RELAY_BUFFER_BYTES: usize = 32 * 1024;

/// Free relay buffers the pool keeps for reuse; more are freed.
const POOL_KEEP: usize = 256;

/// Relay buffers not in use, shared by every session of the process.
static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn take_buffer() -> Box<[u8]> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| vec![0u8; RELAY_BUFFER_BYTES].into_boxed_slice())
}

fn give_buffer(buf: Box<[u8]>) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_KEEP {
        pool.push(buf);
    }
}

/// Bytes read by [`read_chunk`]; the buffer goes back to the pool on drop.
struct Chunk {
    buf: Option<Box<[u8]>>,
    len: usize,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[][..], |b| &b[..self.len])
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buffer(buf);
        }
    }
}

/// Reads once into a pooled buffer; while the read is pending no buffer is held. A
/// zero-length chunk means EOF.
async fn read_chunk<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Chunk> {
    poll_fn(|cx| {
        let mut buf = take_buffer();
        let mut read_buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut *rd).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let len = read_buf.filled().len();
                Poll::Ready(Ok(Chunk {
                    buf: Some(buf),
                    len,
                }))
            }
            Poll::Ready(Err(e)) => {
                give_buffer(buf);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                give_buffer(buf);
                Poll::Pending
            }
        }
    })
    .await
}

/// How a relayed session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client closed (or sent Terminate and closed).
    ClientClosed,
    /// The upstream closed (e.g. `pg_terminate_backend`, server shutdown).
    UpstreamClosed,
    /// The grant ended; the client was told with a FATAL ErrorResponse when possible.
    Cut,
    /// A socket error on either side.
    Error,
}

impl RelayEnd {
    /// `client_closed`, `upstream_closed`, `cut` or `error` (the audit log's `end` field).
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::ClientClosed => "client_closed",
            RelayEnd::UpstreamClosed => "upstream_closed",
            RelayEnd::Cut => "cut",
            RelayEnd::Error => "error",
        }
    }
}

/// Bytes relayed and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Client → upstream bytes.
    pub bytes_up: u64,
    /// Upstream → client bytes.
    pub bytes_down: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// Tracks PostgreSQL message boundaries in a byte stream without buffering bodies.
#[derive(Debug, Default)]
pub struct BoundaryTracker {
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
}

impl BoundaryTracker {
    /// Consumes `bytes`.
    ///
    /// # Errors
    /// `InvalidData` when a message length is below 4 (a broken stream).
    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(bytes.len() as u64);
                self.remaining -= take;
                bytes = &bytes[take as usize..];
                continue;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                let len = i32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if len < 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message length below 4",
                    ));
                }
                self.remaining = len as u64 - 4;
                self.header_len = 0;
            }
        }
        Ok(())
    }

    /// True when the bytes seen so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }
}

/// Relays until either side closes or `cut` fires; on `cut`, sends `cut_message` as a FATAL
/// ErrorResponse (SQLSTATE 57P01) to the client if the server→client stream is at a message
/// boundary, then closes both (the client with a lingering close, [`wire::linger`]).
/// `observe_up` sees every client→server chunk after it was
/// forwarded (statement capture); it must not block, but may return a future (audit
/// backpressure) that the relay awaits before it reads the client's next bytes.
pub async fn relay<C, U, M, O, F>(
    client: C,
    upstream: U,
    cut: CancellationToken,
    cut_message: M,
    observe_up: O,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    M: FnOnce() -> String,
    O: FnMut(&[u8]) -> Option<F>,
    F: std::future::Future<Output = ()>,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let mut bytes_up = 0u64;
    let mut bytes_down = 0u64;
    let mut tracker = BoundaryTracker::default();

    let up = copy_up(&mut client_rd, &mut up_wr, &mut bytes_up, observe_up);
    let down = copy_down(
        &mut up_rd,
        &mut client_wr,
        &mut bytes_down,
        &mut tracker,
        &cut,
    );
    let end = tokio::select! {
        r = up => r,
        r = down => r,
    };
    if end == RelayEnd::Cut && tracker.at_boundary() {
        // Bounded: a client that stopped reading cannot delay the cut.
        let _ = tokio::time::timeout(
            wire::LINGER_TIME,
            wire::send_fatal(&mut client_wr, "57P01", &cut_message()),
        )
        .await;
    }
    let _ = up_wr.shutdown().await;
    drop((up_rd, up_wr));
    let _ = client_wr.shutdown().await;
    if matches!(end, RelayEnd::Cut | RelayEnd::UpstreamClosed) {
        // Lingering close: the client may still be sending; draining its input lets it
        // read the FATAL (ours, or the server's after pg_terminate_backend) before the close.
        wire::drain(&mut client_rd).await;
    }
    RelayStats {
        bytes_up,
        bytes_down,
        end,
    }
}

async fn copy_up<R, W, O, F>(rd: &mut R, wr: &mut W, count: &mut u64, mut observe: O) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: FnMut(&[u8]) -> Option<F>,
    F: std::future::Future<Output = ()>,
{
    loop {
        let chunk = match read_chunk(rd).await {
            Ok(c) if c.len == 0 => return RelayEnd::ClientClosed,
            Ok(c) => c,
            Err(_) => return RelayEnd::Error,
        };
        let bytes = chunk.bytes();
        if wr.write_all(bytes).await.is_err() || wr.flush().await.is_err() {
            return RelayEnd::UpstreamClosed;
        }
        *count += bytes.len() as u64;
        let wait = observe(bytes);
        drop(chunk); // no relay buffer held while waiting
        if let Some(wait) = wait {
            wait.await;
        }
    }
}

async fn copy_down<R, W>(
    rd: &mut R,
    wr: &mut W,
    count: &mut u64,
    tracker: &mut BoundaryTracker,
    cut: &CancellationToken,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let chunk = tokio::select! {
            biased;
            _ = cut.cancelled() => return RelayEnd::Cut,
            r = read_chunk(rd) => match r {
                Ok(c) if c.len == 0 => return RelayEnd::UpstreamClosed,
                Ok(c) => c,
                Err(_) => return RelayEnd::Error,
            },
        };
        let bytes = chunk.bytes();
        if tracker.feed(bytes).is_err() {
            return RelayEnd::Error;
        }
        if wr.write_all(bytes).await.is_err() || wr.flush().await.is_err() {
            return RelayEnd::ClientClosed;
        }
        *count += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_boundaries_across_chunks() {
        let mut msgs = Vec::new();
        for (kind, body) in [
            (b'Z', &b"I"[..]),
            (b'D', &[7u8; 100][..]),
            (b'C', &b"SELECT 1\0"[..]),
        ] {
            msgs.push(kind);
            msgs.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            msgs.extend_from_slice(body);
        }
        for chunk in 1..20 {
            let mut t = BoundaryTracker::default();
            for part in msgs.chunks(chunk) {
                t.feed(part).unwrap();
            }
            assert!(t.at_boundary(), "chunk size {chunk}");
        }
        let mut t = BoundaryTracker::default();
        t.feed(&msgs[..8]).unwrap();
        assert!(!t.at_boundary());
        let mut t = BoundaryTracker::default();
        assert!(t.feed(&[b'Z', 0, 0, 0, 3]).is_err());
    }
}
