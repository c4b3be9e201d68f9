//! The statement channel: sessions hand statement events to [`StatementSink::record`],
//! which never blocks or awaits; one writer task drains them into the [`AuditLog`] in
//! batches.
//!
//! The relay only queues what it captured: the writer redacts `PASSWORD '…'` literals
//! ([`redact_secrets`]) in [`AuditEvent::Statement`] texts before they are written, and it
//! gathers for up to [`BATCH_DELAY`] after the first event of a batch, so a busy session
//! costs one writer wake-up and one blocking-pool hop per batch rather than per statement.
//!
//! When the writer falls behind and the bounded channel is full, `[audit] on_overflow`
//! decides. `block` (the default): [`StatementSink::offer`] hands the event back and the
//! session awaits [`StatementSink::send`] before it reads its client's next bytes, so a
//! flood slows to the writer's pace and nothing is lost. `drop`: events are dropped and
//! counted; the writer then writes an [`AuditEvent::StatementsDropped`] record with the count
//! before its next batch, so the log says how much it is missing. Control-plane events do not
//! go through here: they are appended synchronously with [`Durability::Sync`].

use super::Durability;
use super::{redact_secrets, AuditEvent, AuditLog};
use crate::config::OnOverflow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Default channel capacity, in events.
pub const DEFAULT_CAPACITY: usize = 8192;

/// Most events the writer takes per batch (one lock and one `write(2)` per batch).
pub const MAX_BATCH: usize = 256;

/// How long the writer waits after the first event of a batch for more to arrive (unless
/// a full batch is already queued). Statement records reach the file at most this much later.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

/// Minimum time between two "dropping statement events" warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Counters {
    /// Drops not yet reported in the log; the writer swaps it to 0.
    pending: AtomicU64,
    /// All drops since the sink was made.
    total: AtomicU64,
    /// Milliseconds after `epoch` of the last warning, plus one (0 = never warned).
    last_warn: AtomicU64,
    epoch: Instant,
    /// Events accepted into the channel so far.
    accepted: AtomicU64,
}

/// The sending side of the statement channel. Cheap to clone (one per session).
#[derive(Debug, Clone)]
pub struct StatementSink {
    tx: mpsc::Sender<AuditEvent>,
    on_overflow: OnOverflow,
    counters: Arc<Counters>,
    /// Events the writer has taken off the channel and handed to the log (written, or
    /// reported as failed).
    processed: watch::Receiver<u64>,
}

impl StatementSink {
    /// What this sink does when the queue is full.
    pub fn on_overflow(&self) -> OnOverflow {
        self.on_overflow
    }

    /// Queues `event` without waiting if there is room. When the queue is full, with
    /// `on_overflow = "block"` the event is handed back: the caller must
    /// [`StatementSink::send`] it (and everything after it, in order) before going on; with
    /// `drop` it is dropped and counted as by [`StatementSink::record`].
    pub fn offer(&self, event: AuditEvent) -> Option<AuditEvent> {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(mpsc::error::TrySendError::Full(event))
                if self.on_overflow == OnOverflow::Block =>
            {
                Some(event)
            }
            Err(_) => {
                self.count_drop();
                None
            }
        }
    }

    /// Queues `event`, waiting for room (backpressure). Counted as dropped only when the
    /// writer is gone.
    pub async fn send(&self, event: AuditEvent) {
        if self.tx.send(event).await.is_ok() {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.count_drop();
        }
    }

    /// Queue `event` for the writer without blocking. When the channel is full (or the
    /// writer is gone) the event is dropped and counted; a warning is logged at most once
    /// a second.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_ok() {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.count_drop();
    }

    fn count_drop(&self) {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        let total = self.counters.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.counters.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.counters.last_warn.load(Ordering::Relaxed);
        let interval = WARN_INTERVAL.as_millis() as u64;
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .counters
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = total,
                "audit writer is behind: dropping statement events (the log records how many)"
            );
        }
    }

    /// How many events this sink (and its clones) have dropped since it was made.
    pub fn dropped_total(&self) -> u64 {
        self.counters.total.load(Ordering::Relaxed)
    }

    /// Waits until the writer has handled every event accepted before this call (written to
    /// the log, or logged as a failed write). Returns at once when the writer is gone.
    /// Shutdown calls this, bounded by a timeout, before recording the daemon's stop.
    pub async fn flush(&self) {
        if self.counters.pending.load(Ordering::Relaxed) > 0 {
            // Drops after the writer's last batch are written with its next one: give it
            // one (a marker it does not write) so the count reaches the log.
            self.send(AuditEvent::StatementsDropped { count: 0 }).await;
        }
        let target = self.counters.accepted.load(Ordering::Relaxed);
        let mut processed = self.processed.clone();
        let _ = processed.wait_for(|&n| n >= target).await;
    }
}

/// Start the writer task on the current tokio runtime and return the sink that feeds it,
/// with a channel of `capacity` events (at least 1; [`DEFAULT_CAPACITY`] is a good value)
/// and the `on_overflow` behaviour for a full channel.
///
/// The task ends when every clone of the sink has been dropped, after writing what is
/// queued. Write errors are logged with `tracing::error!` and the batch is lost (the next
/// batch is tried normally). Panics if called outside a tokio runtime.
pub fn spawn_writer(log: Arc<AuditLog>, capacity: usize, on_overflow: OnOverflow) -> StatementSink {
    let (mut sink, _) = spawn_writer_with_handle(log, capacity);
    sink.on_overflow = on_overflow;
    sink
}

/// As [`spawn_writer`] with `on_overflow = "drop"`, also returning the task's handle so
/// shutdown can drop the sinks and await the last batch.
pub fn spawn_writer_with_handle(
    log: Arc<AuditLog>,
    capacity: usize,
) -> (StatementSink, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let counters = Arc::new(Counters {
        pending: AtomicU64::new(0),
        total: AtomicU64::new(0),
        last_warn: AtomicU64::new(0),
        epoch: Instant::now(),
        accepted: AtomicU64::new(0),
    });
    let (processed_tx, processed) = watch::channel(0);
    let handle = tokio::spawn(writer(log, rx, Arc::clone(&counters), processed_tx));
    (
        StatementSink {
            tx,
            on_overflow: OnOverflow::Drop,
            counters,
            processed,
        },
        handle,
    )
}

/// The marker [`StatementSink::flush`] sends so pending drop counts get written.
fn is_flush_marker(event: &AuditEvent) -> bool {
    matches!(event, AuditEvent::StatementsDropped { count: 0 })
}

/// `event` with secrets redacted from a statement's text.
fn redacted(mut event: AuditEvent) -> AuditEvent {
    if let AuditEvent::Statement { text, overflow, .. } = &mut event {
        if let std::borrow::Cow::Owned(clean) = redact_secrets(text) {
            *text = clean;
        }
        if let Some(o) = overflow {
            if let std::borrow::Cow::Owned(clean) = redact_secrets(&o.tail) {
                o.tail = clean;
            }
        }
    }
    event
}

async fn writer(
    log: Arc<AuditLog>,
    mut rx: mpsc::Receiver<AuditEvent>,
    counters: Arc<Counters>,
    processed: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH + 1);
    loop {
        let first = rx.recv().await;
        let done = first.is_none();
        let dropped = counters.pending.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            batch.push(AuditEvent::StatementsDropped { count: dropped });
        }
        let mut taken = 0u64;
        if let Some(event) = first {
            if rx.len() + 1 < MAX_BATCH {
                tokio::time::sleep(BATCH_DELAY).await;
            }
            if !is_flush_marker(&event) {
                batch.push(redacted(event));
            }
            taken += 1;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(event) => {
                        if !is_flush_marker(&event) {
                            batch.push(redacted(event));
                        }
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let events = std::mem::take(&mut batch);
            let log = Arc::clone(&log);
            let written = tokio::task::spawn_blocking(move || {
                let result = log.append_batch(&events, Durability::Write);
                (result, events)
            })
            .await;
            match written {
                Ok((Ok(_), mut events)) => {
                    events.clear();
                    batch = events; // reuse the allocation
                }
                Ok((Err(e), _)) => {
                    tracing::error!(error = %e, "audit log: could not write statement events")
                }
                Err(e) => tracing::error!(error = %e, "audit log: statement writer failed"),
            }
        }
        processed.send_modify(|n| *n += taken);
        if done {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{no_fsync, stmt};
    use crate::audit::{read_records, verify};

    /// `on_overflow = "block"`: a full queue hands the event back; sending it waits for the
    /// writer; nothing is dropped and the order is kept.
    #[tokio::test]
    async fn block_hands_back_and_waits_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap());
        let sink = spawn_writer(Arc::clone(&log), 2, OnOverflow::Block);
        let mut waiting = Vec::new();
        for i in 0..10 {
            if !waiting.is_empty() {
                waiting.push(stmt(i));
            } else if let Some(back) = sink.offer(stmt(i)) {
                waiting.push(back);
            }
        }
        assert_eq!(waiting.len(), 8, "the queue holds 2");
        for event in waiting {
            sink.send(event).await; // current-thread runtime: the writer runs meanwhile
        }
        assert_eq!(sink.dropped_total(), 0);
        sink.flush().await;
        let records = read_records(dir.path()).unwrap();
        let events: Vec<_> = records.iter().map(|r| r.event().unwrap()).collect();
        assert_eq!(events, (0..10).map(stmt).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn drops_are_counted_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap());
        // Current-thread runtime: the writer cannot run until we await.
        let (sink, handle) = spawn_writer_with_handle(Arc::clone(&log), 2);
        let clone = sink.clone();
        for i in 0..10 {
            clone.record(stmt(i));
        }
        assert_eq!(sink.dropped_total(), 8);
        drop(clone);
        drop(sink);
        handle.await.unwrap();
        let records = read_records(dir.path()).unwrap();
        let events: Vec<_> = records.iter().map(|r| r.event().unwrap()).collect();
        assert_eq!(events[0], AuditEvent::StatementsDropped { count: 8 });
        assert_eq!(events[1], stmt(0));
        assert_eq!(events[2], stmt(1));
        assert_eq!(events.len(), 3);
        assert!(verify(dir.path()).unwrap().ok());
    }

    #[tokio::test]
    async fn flush_writes_drops_counted_after_the_last_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap());
        let (sink, _handle) = spawn_writer_with_handle(Arc::clone(&log), 1);
        sink.record(stmt(0));
        sink.record(stmt(1)); // dropped: the queue holds one
        sink.flush().await;
        let events: Vec<_> = read_records(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.event().unwrap())
            .collect();
        // The writer is still running (the sink is alive): flush alone got the count out,
        // and its marker is not written.
        assert_eq!(
            events,
            vec![AuditEvent::StatementsDropped { count: 1 }, stmt(0)]
        );
    }

    #[tokio::test]
    async fn drops_after_the_last_batch_are_recorded_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap());
        let (sink, handle) = spawn_writer_with_handle(Arc::clone(&log), 1);
        sink.record(stmt(0));
        tokio::task::yield_now().await; // the writer takes stmt(0) and starts writing
        sink.record(stmt(1));
        sink.record(stmt(2)); // may or may not fit, depending on the writer's progress
        let dropped = sink.dropped_total();
        drop(sink);
        handle.await.unwrap();
        let events: Vec<_> = read_records(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.event().unwrap())
            .collect();
        let recorded: u64 = events
            .iter()
            .map(|e| match e {
                AuditEvent::StatementsDropped { count } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(recorded, dropped);
        let statements = events
            .iter()
            .filter(|e| matches!(e, AuditEvent::Statement { .. }))
            .count() as u64;
        assert_eq!(statements + dropped, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_waits_for_every_accepted_event_while_sinks_live() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap());
        let (sink, _handle) = spawn_writer_with_handle(Arc::clone(&log), DEFAULT_CAPACITY);
        for i in 0..1000 {
            sink.record(stmt(i));
        }
        sink.flush().await;
        assert_eq!(sink.dropped_total(), 0);
        assert_eq!(read_records(dir.path()).unwrap().len(), 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_sessions_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(8192)).unwrap());
        let (sink, handle) = spawn_writer_with_handle(Arc::clone(&log), DEFAULT_CAPACITY);
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    for i in 0..100 {
                        sink.record(stmt(t * 1000 + i));
                        if i % 10 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(sink.dropped_total(), 0);
        drop(sink);
        handle.await.unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 800);
    }
}
