//! The client connection task's scheduler: polls the client side and the held upstream
//! connection only when their own waker fired.
//!
//! A request wakes the task several times: the client side hands a request to the
//! upstream connection (waking it), the upstream connection reads the response (waking the
//! client side), and so on. With one waker for both, each of those wakes is a full
//! re-poll of the task by tokio with everything in it. Here each half has a waker of its
//! own that sets a flag; while the task is being polled, a wake only sets the flag and the
//! loop below polls that half again at once, and only a wake that comes while the task is
//! not being polled wakes the task. After [`MAX_ROUNDS`] rounds the task yields to tokio
//! (so the runtime's cooperative budget is renewed and other connections get their turn).

use super::upstream::ConnUpstream;
use super::ConnectionEnd;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Rounds of polling in one poll of the task before it yields to tokio.
const MAX_ROUNDS: usize = 32;

/// What else can end the connection (the grant's cut, the idle timer, a stalled body).
pub(super) type Ends = FuturesUnordered<Pin<Box<dyn Future<Output = ConnectionEnd> + Send>>>;

/// Which half a waker belongs to.
#[derive(Clone, Copy)]
enum Half {
    Client,
    Upstream,
}

/// The two halves' "woken" flags, whether the task is being polled, and its waker.
#[derive(Default)]
struct Flags {
    client: AtomicBool,
    upstream: AtomicBool,
    polling: AtomicBool,
    task: AtomicWaker,
}

struct HalfWaker {
    flags: Arc<Flags>,
    half: Half,
}

impl Wake for HalfWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let flag = match self.half {
            Half::Client => &self.flags.client,
            Half::Upstream => &self.flags.upstream,
        };
        flag.store(true, Ordering::SeqCst);
        // Seen by the poll loop if it is running (it re-checks the flags after it clears
        // `polling`), otherwise the task is woken.
        if !self.flags.polling.load(Ordering::SeqCst) {
            self.flags.task.wake();
        }
    }
}

/// The client side `C` (hyper's server connection) and the upstream connection held by
/// its current request, run as one future; resolves when the client side ends or one of
/// `ends` does.
pub(super) struct Pair<'a, C, A> {
    client: Pin<Box<C>>,
    /// Called at the end of every poll (the connection's audit records).
    after_poll: A,
    upstream: &'a ConnUpstream,
    ends: Ends,
    flags: Arc<Flags>,
    client_waker: Waker,
    upstream_waker: Waker,
}

impl<'a, C, A> Pair<'a, C, A>
where
    C: Future<Output = hyper::Result<()>>,
    A: FnMut() + Unpin,
{
    pub(super) fn new(client: C, upstream: &'a ConnUpstream, ends: Ends, after_poll: A) -> Self {
        let flags = Arc::new(Flags::default());
        // Both halves are polled on the first poll.
        flags.client.store(true, Ordering::SeqCst);
        flags.upstream.store(true, Ordering::SeqCst);
        let waker = |half| {
            Waker::from(Arc::new(HalfWaker {
                flags: flags.clone(),
                half,
            }))
        };
        Self {
            client_waker: waker(Half::Client),
            upstream_waker: waker(Half::Upstream),
            client: Box::pin(client),
            after_poll,
            upstream,
            ends,
            flags,
        }
    }

    /// Polls the woken halves until neither is woken; `Some` when the client side ended.
    fn run_halves(&mut self, cx: &mut Context<'_>) -> Option<hyper::Result<()>> {
        let flags = &*self.flags;
        flags.polling.store(true, Ordering::SeqCst);
        for _ in 0..MAX_ROUNDS {
            if flags.upstream.swap(false, Ordering::SeqCst) {
                let _ = self
                    .upstream
                    .drive(&mut Context::from_waker(&self.upstream_waker));
            }
            if flags.client.swap(false, Ordering::SeqCst) {
                let polled = self
                    .client
                    .as_mut()
                    .poll(&mut Context::from_waker(&self.client_waker));
                if let Poll::Ready(r) = polled {
                    flags.polling.store(false, Ordering::SeqCst);
                    return Some(r);
                }
            }
            if !flags.upstream.load(Ordering::SeqCst) && !flags.client.load(Ordering::SeqCst) {
                flags.polling.store(false, Ordering::SeqCst);
                // A wake between the check and clearing `polling` set a flag without
                // waking the task: look once more.
                if !flags.upstream.load(Ordering::SeqCst) && !flags.client.load(Ordering::SeqCst) {
                    return None;
                }
                flags.polling.store(true, Ordering::SeqCst);
            }
        }
        // Still woken after MAX_ROUNDS: yield to tokio and come back.
        flags.polling.store(false, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        None
    }
}

impl<C, A> Future for Pair<'_, C, A>
where
    C: Future<Output = hyper::Result<()>>,
    A: FnMut() + Unpin,
{
    type Output = ConnectionEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConnectionEnd> {
        let this = self.get_mut();
        this.flags.task.register(cx.waker());
        let client_end = this.run_halves(cx);
        (this.after_poll)();
        if let Some(r) = client_end {
            return Poll::Ready(ConnectionEnd::Client(r));
        }
        match this.ends.poll_next_unpin(cx) {
            Poll::Ready(Some(end)) => Poll::Ready(end),
            _ => Poll::Pending,
        }
    }
}
