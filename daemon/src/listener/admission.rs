//! Admission control for a grant listener: bounds on connections that have not yet
//! authenticated, and a throttle on wrong grant tokens. Both listener kinds use the
//! throttle ([`Admission::record_failure`]); the handshake slots are the PostgreSQL
//! listener's (HTTP bounds unauthenticated heads with hyper's header timeout and its
//! connection cap).
//!
//! - At most `max_handshakes` connections per listener may be in startup, authentication or
//!   upstream login at once ([`Admission::try_admit`]); further connections are refused at
//!   once with `FATAL 53300`, so connections that never authenticate cost a bounded amount of
//!   memory and tasks however many arrive.
//! - Startup plus SCRAM must finish within `handshake_timeout` (slow-loris defence; see
//!   `[daemon] handshake_timeout`).
//! - Wrong tokens: the first [`FREE_FAILURES`] failures in a [`FAILURE_WINDOW`] are answered
//!   at once; after that each failure's answer is delayed (100 ms doubling per failure, up to
//!   [`MAX_FAILURE_DELAY`]) while the connection keeps its handshake slot. A guesser is thus
//!   held to about `max_handshakes / MAX_FAILURE_DELAY` attempts a second per listener (the
//!   192-bit token makes guessing hopeless anyway; the throttle keeps the CPU and the log
//!   quiet). Each throttled failure is logged with the count and delay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Wrong-token failures answered without delay within one [`FAILURE_WINDOW`].
pub const FREE_FAILURES: u32 = 3;

/// A failure-free interval after which the failure count starts again from zero.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Longest delay before a wrong token is answered.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(2);

/// The first throttled delay; doubles with each further failure.
const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(100);

/// A listener's admission limits and wrong-token throttle. Shared by its sessions.
#[derive(Debug)]
pub struct Admission {
    /// Time a client has for startup and authentication.
    pub handshake_timeout: Duration,
    /// Most simultaneous handshakes.
    pub max_handshakes: usize,
    slots: Arc<Semaphore>,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

/// What [`Admission::record_failure`] decided for one wrong token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Failures in the current window, this one included.
    pub failures: u32,
    /// How long to wait before answering (zero for the first [`FREE_FAILURES`]).
    pub delay: Duration,
}

impl Admission {
    /// Limits for one listener: `handshake_timeout` (seconds granularity is fine) and at most
    /// `max_handshakes` (at least 1) simultaneous handshakes.
    pub fn new(handshake_timeout: Duration, max_handshakes: usize) -> Self {
        let max_handshakes = max_handshakes.max(1);
        Self {
            handshake_timeout,
            max_handshakes,
            slots: Arc::new(Semaphore::new(max_handshakes)),
            failures: Mutex::default(),
        }
    }

    /// A handshake slot, or `None` when `max_handshakes` connections are already
    /// handshaking. The slot is freed when the permit is dropped (at the start of the relay
    /// or when the connection ends).
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Handshakes in progress now.
    pub fn handshaking(&self) -> usize {
        self.max_handshakes - self.slots.available_permits()
    }

    /// Records one wrong token at `now` and says how long to delay its answer.
    pub fn record_failure(&self, now: Instant) -> Throttle {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.last
            .is_some_and(|last| now.duration_since(last) > FAILURE_WINDOW)
        {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = Some(now);
        Throttle {
            failures: f.count,
            delay: failure_delay(f.count),
        }
    }
}

/// Delay before answering the `n`th failure of a window.
fn failure_delay(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (n - FREE_FAILURES - 1).min(16);
    FIRST_FAILURE_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_freed_on_drop() {
        let a = Admission::new(Duration::from_secs(1), 2);
        let p1 = a.try_admit().unwrap();
        let _p2 = a.try_admit().unwrap();
        assert!(a.try_admit().is_none());
        assert_eq!(a.handshaking(), 2);
        drop(p1);
        assert!(a.try_admit().is_some());
        assert_eq!(Admission::new(Duration::from_secs(1), 0).max_handshakes, 1);
    }

    #[test]
    fn failures_are_free_then_delayed_then_capped_and_forgotten() {
        let a = Admission::new(Duration::from_secs(1), 1);
        let t0 = Instant::now();
        let delays: Vec<_> = (0..10)
            .map(|_| a.record_failure(t0).delay.as_millis())
            .collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1600, 2000, 2000]);
        let later = a.record_failure(t0 + FAILURE_WINDOW + Duration::from_secs(1));
        assert_eq!(
            later,
            Throttle {
                failures: 1,
                delay: Duration::ZERO
            }
        );
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
    }
}
