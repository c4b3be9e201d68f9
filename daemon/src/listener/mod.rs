//! Local listeners the daemon opens for grants: [`postgres`] (the wire proxy) and [`http`]
//! (credential-injecting HTTP proxy). [`Listener`] is what the broker holds per grant;
//! [`admission`] (the wrong-token throttle, and for PostgreSQL the handshake slots),
//! [`peer`] (the TCP owner check), [`next_accepted`] and [`bind_grant_socket`] are shared by
//! both kinds.

pub mod admission;
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

/// How long a grant's TCP listener keeps its port after the grant ended: 10 minutes.
pub(crate) const ENDED_PORT_HOLD: Duration = Duration::from_secs(600);
/// Most ended TCP listeners holding their port at once, daemon-wide (a descriptor each).
const MAX_ENDED_HOLDS: usize = 256;
/// Refusals being sent at once by one held port; connections beyond are closed at once.
const ENDED_REFUSALS: usize = 8;
static ENDED_HOLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Why grant `grant_id` ended, for the refusals of its held port: the cut's reason without
/// the "terminating connection: " a live session is told (e.g. "agentd grant g_… was
/// revoked").
pub(crate) fn ended_reason(cut_reason: &std::sync::OnceLock<String>, grant_id: &str) -> String {
    cut_reason.get().map_or_else(
        || format!("agentd grant {grant_id} ended"),
        |r| r.trim_start_matches("terminating connection: ").to_owned(),
    )
}

/// Keeps an ended grant's TCP port bound for [`ENDED_PORT_HOLD`] and answers every
/// connection with `refuse` (the kind's "this grant ended, request access again").
///
/// Without it the port is free the moment a grant ends, and any local user can bind it and
/// receive what the grant's clients keep sending to the handle's address: the (dead) token,
/// SQL, request bodies, and answer with made-up rows. The loopback ports are ephemeral, so
/// a held port costs nobody else a thing. Past [`MAX_ENDED_HOLDS`] held ports the port is
/// released at once (logged).
pub(crate) async fn hold_ended_port<F, Fut>(listener: tokio::net::TcpListener, refuse: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if ENDED_HOLDS.fetch_add(1, Ordering::Relaxed) >= MAX_ENDED_HOLDS {
        ENDED_HOLDS.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(
            limit = MAX_ENDED_HOLDS,
            "too many ended listeners hold their port: this one is released now"
        );
        return;
    }
    let refusing = Arc::new(tokio::sync::Semaphore::new(ENDED_REFUSALS));
    let hold = tokio::time::sleep(ENDED_PORT_HOLD);
    tokio::pin!(hold);
    loop {
        tokio::select! {
            () = &mut hold => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if let Ok(permit) = refusing.clone().try_acquire_owned() {
                        let refusal = refuse(stream);
                        tokio::spawn(async move {
                            refusal.await;
                            drop(permit);
                        });
                    }
                }
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
        }
    }
    ENDED_HOLDS.fetch_sub(1, Ordering::Relaxed);
    tracing::info!("ended listener released its port");
}

/// Binds a grant's Unix socket `dir/name`, the one place both listener kinds get it, and
/// returns the listener and the socket's path. The connection's peer uid must still be
/// checked at accept time (`SO_PEERCRED`) against the grant owner's.
///
/// Modes: `shared = false` (user mode, owner = the daemon's uid): the socket 0600 in a 0700
/// `dir`. `shared = true` (system mode: the owner is another user and the daemon cannot
/// chown): 0666 in a 0711 `dir` under the 0711 grant socket root, so the owner can connect
/// by path without listing; the accept-time uid check keeps every other uid out.
///
/// # Errors
/// Creating `dir`, binding or setting a mode failed.
#[cfg(unix)]
pub(crate) fn bind_grant_socket(
    dir: &std::path::Path,
    name: &str,
    shared: bool,
) -> std::io::Result<(tokio::net::UnixListener, std::path::PathBuf)> {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir_mode, socket_mode) = if shared {
        (0o711, 0o666)
    } else {
        (0o700, 0o600)
    };
    crate::fsutil::create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(socket_mode))?;
    Ok((listener, path))
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
