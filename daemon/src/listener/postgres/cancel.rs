//! Query cancellation: each session gets a BackendKeyData of our own; a CancelRequest that
//! carries it is forwarded upstream with the real backend's key.
//!
//! Source: PostgreSQL docs, "Frontend/Backend Protocol" → "Canceling Requests in Progress"
//! and "Message Formats" (BackendKeyData, CancelRequest). The client never learns the
//! upstream backend's process id or secret key; the key we hand out is random per session
//! and compared in constant time.

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

/// The sessions of one grant that can be cancelled: our key → the upstream backend's key.
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
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    process_id: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.process_id);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, BackendKey)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session whose upstream backend is `upstream`, returning the key to give
    /// the client (random, unique within this grant) and a guard that unregisters it.
    pub fn register(self: &Arc<Self>, upstream: BackendKey) -> (BackendKey, Registration) {
        let mut rng = rand::thread_rng();
        let mut sessions = self.lock();
        let ours = loop {
            let candidate = BackendKey {
                process_id: rng.gen_range(1..i32::MAX),
                secret_key: rng.gen(),
            };
            if !sessions.contains_key(&candidate.process_id) {
                break candidate;
            }
        };
        sessions.insert(ours.process_id, (ours.secret_key, upstream));
        (
            ours,
            Registration {
                registry: self.clone(),
                process_id: ours.process_id,
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
        assert_ne!(ours.process_id, upstream.process_id);
        assert_eq!(registry.lookup(ours), Some(upstream));
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
