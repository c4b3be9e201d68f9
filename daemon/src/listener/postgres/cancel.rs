//! Query cancellation: each session's BackendKeyData carries the upstream backend's real
//! process id and a secret key of our own; a CancelRequest that carries both is forwarded
//! upstream with the real backend's key.
//!
//! Source: PostgreSQL docs, "Frontend/Backend Protocol" → "Canceling Requests in Progress"
//! and "Message Formats" (BackendKeyData, CancelRequest). The process id is not a secret
//! (`pg_backend_pid()`, NotificationResponse and `pg_stat_activity` show it), and drivers
//! rely on it matching (`pg_terminate_backend(conn.info.backend_pid)`, "ignore my own
//! NOTIFY"), so it passes through. The secret key is what authorizes a cancel: the client
//! never learns the upstream's; ours is random per session and compared in constant time.

use super::upstream::{self, UpstreamTarget};
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq as _;
use tokio::io::AsyncWriteExt as _;

/// CancelRequest code (`80877102`).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// A BackendKeyData pair (protocol 3.0: two Int32s).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    /// ProcessID.
    pub process_id: i32,
    /// SecretKey.
    pub secret_key: i32,
}

impl std::fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKey")
            .field("process_id", &self.process_id)
            .field("secret_key", &"[REDACTED]")
            .finish()
    }
}

impl BackendKey {
    /// Parses a BackendKeyData body (8 bytes).
    pub fn from_body(body: &[u8]) -> Option<Self> {
        let pid: [u8; 4] = body.get(..4)?.try_into().ok()?;
        let key: [u8; 4] = body.get(4..8)?.try_into().ok()?;
        (body.len() == 8).then_some(Self {
            process_id: i32::from_be_bytes(pid),
            secret_key: i32::from_be_bytes(key),
        })
    }

    /// The BackendKeyData body (8 bytes).
    pub fn to_body(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.process_id.to_be_bytes());
        out[4..].copy_from_slice(&self.secret_key.to_be_bytes());
        out
    }

    /// The whole CancelRequest packet for this key (16 bytes).
    pub fn cancel_request(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&16i32.to_be_bytes());
        out[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out[8..].copy_from_slice(&self.to_body());
        out
    }
}

/// The sessions of one grant that can be cancelled, by the upstream backend's process id
/// (unique among one server's live backends): our secret key and the upstream backend's key.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, (i32, BackendKey)>>,
}

impl std::fmt::Debug for CancelRegistry {
    /// Shows only how many sessions are registered, never a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelRegistry")
            .field("sessions", &self.len())
            .finish()
    }
}

/// Removes its session from the registry when dropped (the session ended).
pub struct Registration {
    registry: Arc<CancelRegistry>,
    ours: BackendKey,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.ours)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.registry.lock();
        // Only our own entry: a later session on a reused process id has another key.
        if sessions
            .get(&self.ours.process_id)
            .is_some_and(|(secret, _)| *secret == self.ours.secret_key)
        {
            sessions.remove(&self.ours.process_id);
        }
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, BackendKey)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session whose upstream backend is `upstream`, returning the key to give
    /// the client (the upstream's process id, a random secret key of ours) and a guard that
    /// unregisters it. A stale entry for the same process id (its backend is gone, its
    /// session not yet dropped) is replaced.
    pub fn register(self: &Arc<Self>, upstream: BackendKey) -> (BackendKey, Registration) {
        let ours = BackendKey {
            process_id: upstream.process_id,
            secret_key: rand::thread_rng().gen(),
        };
        self.lock()
            .insert(ours.process_id, (ours.secret_key, upstream));
        (
            ours,
            Registration {
                registry: self.clone(),
                ours,
            },
        )
    }

    /// The upstream key for a CancelRequest carrying `key`, if it matches a live session
    /// (secret compared in constant time).
    pub fn lookup(&self, key: BackendKey) -> Option<BackendKey> {
        let sessions = self.lock();
        let (secret, upstream) = sessions.get(&key.process_id)?;
        let equal: bool = secret
            .to_be_bytes()
            .ct_eq(&key.secret_key.to_be_bytes())
            .into();
        equal.then_some(*upstream)
    }

    /// Live registered sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends a CancelRequest for `upstream_key` to the upstream server (over TLS when the
/// resource requires it), the way libpq does: connect, send, close.
///
/// # Errors
/// Connecting or writing failed.
pub async fn forward(
    target: &UpstreamTarget,
    upstream_key: BackendKey,
) -> Result<(), upstream::UpstreamError> {
    let mut stream = tokio::time::timeout(target.connect_timeout, upstream::open(target))
        .await
        .map_err(|_| upstream::UpstreamError::Timeout(target.connect_timeout))??;
    stream
        .write_all(&upstream_key.cancel_request())
        .await
        .map_err(super::wire::WireError::Io)?;
    stream.flush().await.map_err(super::wire::WireError::Io)?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secret_does_not_match_and_guard_unregisters() {
        let registry = Arc::new(CancelRegistry::default());
        let upstream = BackendKey {
            process_id: 4242,
            secret_key: 7,
        };
        let (ours, guard) = registry.register(upstream);
        assert_eq!(ours.process_id, upstream.process_id);
        assert_eq!(registry.lookup(ours), Some(upstream));
        assert_eq!(
            registry.lookup(upstream),
            None,
            "only our secret key cancels"
        );
        let wrong = BackendKey {
            secret_key: ours.secret_key.wrapping_add(1),
            ..ours
        };
        assert_eq!(registry.lookup(wrong), None);
        drop(guard);
        assert_eq!(registry.lookup(ours), None);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_stale_guard_does_not_unregister_a_reused_process_id() {
        let registry = Arc::new(CancelRegistry::default());
        let upstream = BackendKey {
            process_id: 4242,
            secret_key: 7,
        };
        let (_, stale) = registry.register(upstream);
        let (fresh, _live) = registry.register(BackendKey {
            secret_key: 8,
            ..upstream
        });
        drop(stale);
        assert!(registry.lookup(fresh).is_some());
    }

    #[test]
    fn cancel_request_layout() {
        let key = BackendKey {
            process_id: 1,
            secret_key: 2,
        };
        assert_eq!(
            key.cancel_request(),
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2]
        );
        assert_eq!(BackendKey::from_body(&key.to_body()), Some(key));
        assert!(format!("{key:?}").contains("[REDACTED]"));
    }
}
