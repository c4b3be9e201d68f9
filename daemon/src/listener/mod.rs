//! Local listeners the daemon opens for grants: [`postgres`] (the wire proxy) and [`http`]
//! (credential-injecting HTTP proxy). [`Listener`] is what the broker holds per grant.

pub mod http;
pub mod peer;
pub mod postgres;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause after a failed accept (e.g. out of file descriptors), so a burst of errors cannot
/// spin the accept loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The next connection `accept` yields, or `None` once `cut` fires: the accept step of every
/// listener's loop (TCP and Unix, both kinds). A failed accept is logged and retried after
/// [`ACCEPT_RETRY`].
pub(crate) async fn next_accepted<T, F, Fut>(cut: &CancellationToken, mut accept: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        tokio::select! {
            _ = cut.cancelled() => return None,
            r = accept() => match r {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

/// A grant's listener, of either kind.
#[derive(Debug, Clone)]
pub enum Listener {
    /// PostgreSQL wire proxy.
    Postgres(Arc<postgres::GrantListener>),
    /// HTTP proxy.
    Http(Arc<http::HttpGrantListener>),
}

impl Listener {
    /// Ends the listener and its sessions (in-flight requests) with `reason`.
    pub fn cut(&self, reason: String) {
        match self {
            Listener::Postgres(l) => l.cut(reason),
            Listener::Http(l) => l.cut(reason),
        }
    }

    /// Live client connections.
    pub fn live_connections(&self) -> u32 {
        match self {
            Listener::Postgres(l) => l.live_connections.load(Ordering::Relaxed),
            Listener::Http(l) => l.live_connections.load(Ordering::Relaxed),
        }
    }

    /// Connections so far (authenticated sessions for PostgreSQL, accepted connections for
    /// HTTP).
    pub fn total_connections(&self) -> u64 {
        match self {
            Listener::Postgres(l) => l.total_connections.load(Ordering::Relaxed),
            Listener::Http(l) => l.total_connections.load(Ordering::Relaxed),
        }
    }

    /// The listener's session tasks (shutdown closes and awaits it).
    pub fn sessions(&self) -> &tokio_util::task::TaskTracker {
        match self {
            Listener::Postgres(l) => &l.sessions,
            Listener::Http(l) => &l.sessions,
        }
    }
}
