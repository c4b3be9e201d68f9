//! Where HTTP client connections run: one single-threaded tokio runtime per core, each on a
//! thread of its own (`agentd-http-N`), shared by every HTTP grant listener of the daemon.
//!
//! Each accepted connection is handed (as a std socket) to the next runtime in turn and
//! lives there with everything it does: the client side, its upstream connection
//! ([`super::upstream`], driven in the same task), its timers. So a request and its
//! response never wake another thread, which on the daemon's multi-threaded runtime cost
//! 2–3 futex calls and ~4.7 context switches per request at one connection (tokio wakes an
//! idle worker whenever a task becomes ready; BENCHMARKS.md, "HTTP listener"). Accepting,
//! peer checks and grant cuts stay on the daemon's runtime; a cut reaches a connection here
//! through its `CancellationToken`.
//!
//! The number of runtimes is `TOKIO_WORKER_THREADS` when set (as for the daemon's own
//! runtime), else the number of cores. If no runtime can be started, connections run on the
//! caller's runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::Handle;

static SHARDS: OnceLock<Vec<Handle>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's runtime index (0 on threads that are not HTTP runtimes).
    static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn start() -> Vec<Handle> {
    let n = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(64);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "could not start an HTTP connection runtime");
                break;
            }
        };
        let handle = rt.handle().clone();
        let spawned = std::thread::Builder::new()
            .name(format!("agentd-http-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                rt.block_on(std::future::pending::<()>());
            });
        match spawned {
            Ok(_) => handles.push(handle),
            Err(e) => {
                tracing::error!(error = %e, "could not start an HTTP connection thread");
                break;
            }
        }
    }
    handles
}

/// The runtime the next connection goes to (round robin), or `None` when none could be
/// started (then the caller's runtime serves it).
pub fn next() -> Option<&'static Handle> {
    let shards = SHARDS.get_or_init(start);
    if shards.is_empty() {
        return None;
    }
    shards.get(NEXT.fetch_add(1, Ordering::Relaxed) % shards.len())
}

/// How many HTTP runtimes there are (0 when none could be started).
pub fn count() -> usize {
    SHARDS.get_or_init(start).len()
}

/// The index of the HTTP runtime the calling thread runs (`0..count()`), 0 on any other
/// thread.
pub fn current() -> usize {
    INDEX.with(std::cell::Cell::get)
}

/// A tokio socket that can move to another runtime: deregistered here as a std socket,
/// registered again there.
pub trait Handoff: Sized {
    /// The std form (non-blocking).
    type Std: Send + 'static;
    /// Deregisters from this runtime's reactor.
    ///
    /// # Errors
    /// The socket's deregistration error.
    fn into_std(self) -> std::io::Result<Self::Std>;
    /// Registers with the current runtime's reactor (call inside that runtime).
    ///
    /// # Errors
    /// The registration error.
    fn from_std(s: Self::Std) -> std::io::Result<Self>;
}

impl Handoff for tokio::net::TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        tokio::net::TcpStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> std::io::Result<Self> {
        tokio::net::TcpStream::from_std(s)
    }
}

#[cfg(unix)]
impl Handoff for tokio::net::UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        tokio::net::UnixStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> std::io::Result<Self> {
        tokio::net::UnixStream::from_std(s)
    }
}
