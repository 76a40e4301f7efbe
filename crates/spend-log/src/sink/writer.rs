//! The batching writer: [`SpendLogWriter`] (configuration) spawns a background task and returns
//! a [`SpendLogHandle`] (the cheap, cloneable submit side).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{Either, select};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::{SinkError, SinkErrorKind, SpendLogSink};
use crate::record::SpendRecord;

/// What [`SpendLogHandle::submit`] does with a record when the queue is full (the sink is slow
/// or down and the queue has filled up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// Keep the record until there is room (the default): it is held by a small task spawned
    /// on the writer's runtime that waits for room in the queue, so `submit` still returns at
    /// once and works from any thread, with or without a runtime. Nothing is lost, but while the
    /// sink stays down the records waiting for room use memory without bound (they count in
    /// [`SpendLogStats::pending`]). If the writer's runtime has shut down, the record cannot be
    /// kept: it is counted as dropped and logged at error level.
    #[default]
    Wait,
    /// Drop the record: it is counted in [`SpendLogStats::dropped`] and logged at error level
    /// (the first drop at once, then at most one summary per second). Memory stays bounded by
    /// the queue capacity.
    Drop,
}

/// Counters of a [`SpendLogWriter`], from [`SpendLogHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpendLogStats {
    /// Records accepted by [`submit`](SpendLogHandle::submit) (into the queue, or waiting for
    /// room under [`QueueFullPolicy::Wait`]).
    pub queued: u64,
    /// Records the sink has written (acknowledged; a record whose `request_id` was already
    /// stored still counts, since the sink skipped it on purpose).
    pub written: u64,
    /// Records that will never be written: refused by `submit` (queue full under
    /// [`QueueFullPolicy::Drop`], or the writer already shut down), or still unwritten when the
    /// shutdown deadline passed or the writer's runtime stopped. Every drop is logged.
    pub dropped: u64,
    /// Batch writes that failed (each is retried).
    pub failed_writes: u64,
    /// Records accepted but not yet written: in the queue, waiting for room, or in the batch
    /// being written or retried.
    pub pending: u64,
}

/// Configuration of the batching spend-log writer; [`spawn`](SpendLogWriter::spawn) starts it.
///
/// The writer is a background task that owns a [`SpendLogSink`] and a bounded queue. It takes
/// the records that are queued (up to [`max_batch_size`](SpendLogWriter::max_batch_size),
/// waiting at most [`linger`](SpendLogWriter::linger) for a batch to fill) and writes them with
/// one [`write_batch`](SpendLogSink::write_batch) call (one transaction). A failed batch is kept
/// and retried with exponential backoff until it is written: a record is never dropped because
/// the sink failed, and the sinks' `request_id` idempotency makes retries safe. Failures are
/// logged (`warn`, then `error` once an outage lasts several attempts).
///
/// ```
/// use std::time::Duration;
///
/// use guardrail_tower_spend_log::{ChannelSink, QueueFullPolicy, SpendLogWriter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (sink, _records) = ChannelSink::new();
/// let handle = SpendLogWriter::new()
///     .capacity(10_000)
///     .max_batch_size(256)
///     .linger(Duration::from_millis(20))
///     .retry_backoff(Duration::from_millis(50), Duration::from_secs(5))
///     .queue_full_policy(QueueFullPolicy::Drop)
///     .shutdown_timeout(Duration::from_secs(10))
///     .spawn(sink);
/// # handle.shutdown().await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SpendLogWriter {
    capacity: usize,
    max_batch_size: usize,
    linger: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    write_timeout: Duration,
    shutdown_timeout: Duration,
    policy: QueueFullPolicy,
}

impl Default for SpendLogWriter {
    fn default() -> Self {
        SpendLogWriter::new()
    }
}

impl SpendLogWriter {
    /// The defaults: capacity 10,000, batches of up to 256 records, 20 ms linger, retry backoff
    /// from 50 ms doubling to 5 s, 30 s write timeout, 10 s shutdown timeout,
    /// [`QueueFullPolicy::Wait`].
    pub fn new() -> Self {
        SpendLogWriter {
            capacity: 10_000,
            max_batch_size: 256,
            linger: Duration::from_millis(20),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            policy: QueueFullPolicy::Wait,
        }
    }

    /// How many records the queue holds (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// The largest batch written in one transaction (at least 1).
    pub fn max_batch_size(mut self, max: usize) -> Self {
        self.max_batch_size = max.max(1);
        self
    }

    /// How long the writer waits for a batch to fill after its first record arrives (zero:
    /// write whatever is queued at once).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The delay before the first retry of a failed batch, doubling after each failure up to
    /// `max`.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// How long one batch write may take before it counts as failed (and is retried).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long [`shutdown`](SpendLogHandle::shutdown) keeps writing and retrying before it
    /// gives up on the records that are left.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// What [`submit`](SpendLogHandle::submit) does when the queue is full.
    pub fn queue_full_policy(mut self, policy: QueueFullPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the writer task on the current Tokio runtime and returns its handle.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (use [`spawn_on`](SpendLogWriter::spawn_on) there).
    pub fn spawn<S: SpendLogSink>(self, sink: S) -> SpendLogHandle {
        self.spawn_on(sink, &Handle::current())
    }

    /// Starts the writer task on `runtime` and returns its handle.
    pub fn spawn_on<S: SpendLogSink>(self, sink: S, runtime: &Handle) -> SpendLogHandle {
        let (tx, rx) = mpsc::channel(self.capacity);
        let (done_tx, done_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            deadline: Mutex::new(None),
            wake: Notify::new(),
            batch_full: Notify::new(),
            max_batch_size: self.max_batch_size,
            overflow: Mutex::new(Overflow::default()),
            policy: self.policy,
            runtime: runtime.clone(),
            drop_log: DropLog::new(),
        });
        let worker = Worker {
            sink,
            rx,
            batch: Vec::with_capacity(self.max_batch_size),
            shared: Arc::clone(&shared),
            config: self.clone(),
        };
        runtime.spawn(async move {
            let result = worker.run().await;
            let _ = done_tx.send(Some(result));
        });
        SpendLogHandle {
            inner: Arc::new(HandleInner {
                tx,
                shared,
                done: done_rx,
                shutdown_timeout: self.shutdown_timeout,
            }),
        }
    }
}

/// The submit side of a running [`SpendLogWriter`]: cheap to clone, shared by every request.
///
/// When every clone is dropped without [`shutdown`](SpendLogHandle::shutdown), the writer still
/// writes everything that was queued (retrying without a deadline) and then stops.
#[derive(Clone)]
pub struct SpendLogHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    tx: mpsc::Sender<SpendRecord>,
    shared: Arc<Shared>,
    done: watch::Receiver<Option<Result<(), ShutdownError>>>,
    shutdown_timeout: Duration,
}

impl fmt::Debug for SpendLogHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendLogHandle")
            .field("stats", &self.stats())
            .field("policy", &self.inner.shared.policy)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl SpendLogHandle {
    /// Hands a record to the writer. Synchronous and cheap: it never waits, never blocks, needs
    /// no runtime on the calling thread, and can be called from `Drop` or `poll_frame`.
    ///
    /// The record goes into the queue if there is room. If the queue is full, the
    /// [`QueueFullPolicy`] decides: `Wait` keeps it until there is room, `Drop` drops it (counted
    /// and logged). After [`shutdown`](SpendLogHandle::shutdown) has begun, records are dropped
    /// (counted and logged).
    pub fn submit(&self, record: SpendRecord) {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            shared.reject(&record, "the writer is shut down");
            return;
        }
        // Count before sending, so the writer never decrements `pending` below zero.
        shared.queued.fetch_add(1, Ordering::AcqRel);
        shared.pending.fetch_add(1, Ordering::AcqRel);
        match self.inner.tx.try_send(record) {
            Ok(()) => {
                let queued = self.inner.tx.max_capacity() - self.inner.tx.capacity();
                if queued >= shared.max_batch_size {
                    shared.batch_full.notify_one();
                }
            }
            Err(TrySendError::Full(record)) => match shared.policy {
                QueueFullPolicy::Wait => self.wait_for_room(record),
                QueueFullPolicy::Drop => {
                    shared.unaccept();
                    shared.reject(&record, "the queue is full");
                }
            },
            Err(TrySendError::Closed(record)) => {
                shared.unaccept();
                shared.reject(&record, "the writer has stopped");
            }
        }
    }

    fn wait_for_room(&self, record: SpendRecord) {
        let shared = &self.inner.shared;
        shared.waiting.fetch_add(1, Ordering::AcqRel);
        let waiter = Waiter {
            record: Some(record),
            shared: Arc::clone(shared),
        };
        let tx = self.inner.tx.clone();
        // If the runtime is gone the task is dropped unpolled, and `Waiter::drop` accounts for
        // the record.
        shared.runtime.spawn(async move {
            let mut waiter = waiter;
            if let Ok(permit) = tx.reserve().await {
                if let Some(record) = waiter.record.take() {
                    permit.send(record);
                }
            }
        });
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> SpendLogStats {
        let s = &self.inner.shared;
        SpendLogStats {
            queued: s.queued.load(Ordering::Acquire),
            written: s.written.load(Ordering::Acquire),
            dropped: s.dropped.load(Ordering::Acquire),
            failed_writes: s.failed_writes.load(Ordering::Acquire),
            pending: s.pending.load(Ordering::Acquire),
        }
    }

    /// Records dropped so far (see [`SpendLogStats::dropped`]).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Acquire)
    }

    /// Records accepted but not yet written (see [`SpendLogStats::pending`]).
    pub fn pending(&self) -> u64 {
        self.inner.shared.pending.load(Ordering::Acquire)
    }

    /// Whether shutdown has begun (new records are refused).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Stops accepting records and writes everything already accepted (the queue, the records
    /// waiting for room, the batch being retried), retrying failed writes until the configured
    /// [`shutdown_timeout`](SpendLogWriter::shutdown_timeout) has passed.
    ///
    /// Returns `Ok(())` when every accepted record was written. Otherwise the records left are
    /// counted as dropped, logged at error level, and the error says how many
    /// ([`ShutdownError::unwritten`]). Every clone of the handle can call it; all get the same
    /// result. Needs the writer's runtime to be running.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        self.inner
            .shared
            .begin_shutdown(self.inner.shutdown_timeout);
        let mut done = self.inner.done.clone();
        let result = match done.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(|| {
            Err(ShutdownError {
                unwritten: self.pending(),
                reason: "the writer task stopped before finishing (was its runtime shut down?)"
                    .to_owned(),
            })
        })
    }
}

/// [`SpendLogHandle::shutdown`] could not write every accepted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownError {
    unwritten: u64,
    reason: String,
}

impl ShutdownError {
    /// How many accepted records were not written (they are counted in
    /// [`SpendLogStats::dropped`]).
    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spend log shutdown: {} record(s) could not be written: {}",
            self.unwritten, self.reason
        )
    }
}

impl std::error::Error for ShutdownError {}

/// State shared by the handles, the writer task and the tasks waiting for room.
struct Shared {
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
    pending: AtomicU64,
    /// Records held by tasks waiting for room (`QueueFullPolicy::Wait`).
    waiting: AtomicU64,
    /// Shutdown has begun: `submit` refuses records.
    closed: AtomicBool,
    /// When shutdown gives up; `Some` once shutdown has begun.
    deadline: Mutex<Option<Instant>>,
    /// Wakes the writer task when shutdown begins.
    wake: Notify,
    /// Ends the writer's linger: a full batch is queued.
    batch_full: Notify,
    /// The writer's largest batch.
    max_batch_size: usize,
    /// Records whose waiting task found the queue closed; the writer takes them at the end.
    overflow: Mutex<Overflow>,
    policy: QueueFullPolicy,
    runtime: Handle,
    drop_log: DropLog,
}

#[derive(Default)]
struct Overflow {
    records: Vec<SpendRecord>,
    /// The writer has finished: nobody will take records from here any more.
    finished: bool,
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_shutdown(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Release);
        let mut deadline = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        if deadline.is_none() {
            *deadline = Some(Instant::now() + timeout);
        }
        drop(deadline);
        self.wake.notify_one();
    }

    /// Undoes the counting of a record `submit` could not queue after all.
    fn unaccept(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// `submit` refused a record.
    fn reject(&self, record: &SpendRecord, reason: &'static str) {
        let total = self.dropped.fetch_add(1, Ordering::AcqRel) + 1;
        self.drop_log.record(&record.request_id, reason, total);
    }

    /// Accepted records that will never be written.
    fn lose(&self, n: usize, reason: &str) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let total = self.dropped.fetch_add(n, Ordering::AcqRel) + n;
        tracing::error!(
            records = n,
            dropped_total = total,
            reason,
            "spend log: records dropped"
        );
    }

    fn written(&self, n: usize) {
        let n = n as u64;
        self.written.fetch_add(n, Ordering::AcqRel);
        self.pending.fetch_sub(n, Ordering::AcqRel);
    }

    /// A waiting task could not queue its record: hand it to the writer, or count it lost.
    fn overflow(&self, record: SpendRecord) {
        let mut overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        if overflow.finished {
            drop(overflow);
            self.lose(
                1,
                "the writer finished before a record waiting for room could be queued",
            );
        } else {
            overflow.records.push(record);
        }
    }
}

/// Holds a record waiting for room; accounts for it however the wait ends.
struct Waiter {
    record: Option<SpendRecord>,
    shared: Arc<Shared>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.shared.overflow(record);
        }
        // After the record is in the queue or in `overflow`, so the writer never sees
        // `waiting == 0` with a record in flight.
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Rate-limits the error logs for refused records: the first is logged at once, then at most one
/// summary per second (the writer task also reports what was not yet logged).
struct DropLog {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last report, plus one (zero: never).
    last_report: AtomicU64,
    unreported: AtomicU64,
}

impl DropLog {
    fn new() -> Self {
        DropLog {
            start: std::time::Instant::now(),
            last_report: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    fn record(&self, request_id: &str, reason: &'static str, total: u64) {
        self.unreported.fetch_add(1, Ordering::AcqRel);
        self.report(Some(request_id), reason, total, false);
    }

    fn report(&self, request_id: Option<&str>, reason: &'static str, total: u64, force: bool) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last_report.load(Ordering::Acquire);
        let due = force || last == 0 || now.saturating_sub(last) >= 1000;
        if !due
            || self
                .last_report
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let records = self.unreported.swap(0, Ordering::AcqRel);
        if records == 0 {
            return;
        }
        tracing::error!(
            request_id,
            records,
            dropped_total = total,
            reason,
            "spend log: records dropped (further drops are summarized at most once per second)"
        );
    }

    /// Reports drops not logged yet (called by the writer task).
    fn flush(&self, total: u64, force: bool) {
        if self.has_unreported() {
            self.report(None, "queue full or writer shut down", total, force);
        }
    }

    fn has_unreported(&self) -> bool {
        self.unreported.load(Ordering::Acquire) > 0
    }
}

/// The background task.
struct Worker<S> {
    sink: S,
    rx: mpsc::Receiver<SpendRecord>,
    batch: Vec<SpendRecord>,
    shared: Arc<Shared>,
    config: SpendLogWriter,
}

/// Shutdown's deadline passed while records were left; carries the last write error.
struct Abandon(Option<SinkError>);

impl<S: SpendLogSink> Worker<S> {
    async fn run(mut self) -> Result<(), ShutdownError> {
        let result = match self.run_inner().await {
            Ok(()) => Ok(()),
            Err(Abandon(last_error)) => Err(self.abandon(last_error).await),
        };
        self.finish();
        result
    }

    async fn run_inner(&mut self) -> Result<(), Abandon> {
        let max = self.config.max_batch_size;
        // Normal operation: batches from the queue until shutdown begins or every handle is gone.
        loop {
            if self.shared.deadline().is_some() {
                break;
            }
            let received = {
                let recv = std::pin::pin!(self.rx.recv_many(&mut self.batch, max));
                let woken = std::pin::pin!(self.shared.wake.notified());
                // While some refused records are not logged yet, wake up to report them.
                let report_in = if self.shared.drop_log.has_unreported() {
                    Duration::from_secs(1)
                } else {
                    Duration::MAX
                };
                match tokio::time::timeout(report_in, select(recv, woken)).await {
                    Ok(Either::Left((n, _))) => Some(n),
                    Ok(Either::Right(((), _))) => None,
                    Err(_) => {
                        self.shared
                            .drop_log
                            .flush(self.shared.dropped.load(Ordering::Acquire), false);
                        None
                    }
                }
            };
            match received {
                None => continue,
                Some(0) => break,
                Some(_) => {}
            }
            // Linger for the batch to fill: one timer, not one wake-up per record. `submit`
            // cuts it short when a full batch is queued, and shutdown does too.
            let room = max - self.batch.len();
            if !self.config.linger.is_zero() && room > 0 && self.rx.len() < room {
                let linger = std::pin::pin!(tokio::time::sleep(self.config.linger));
                let full = std::pin::pin!(self.shared.batch_full.notified());
                let woken = std::pin::pin!(self.shared.wake.notified());
                select(linger, select(full, woken)).await;
            }
            while self.batch.len() < max {
                match self.rx.try_recv() {
                    Ok(record) => self.batch.push(record),
                    Err(_) => break,
                }
            }
            self.write_with_retry().await?;
        }

        // Draining: write what is queued, without lingering, until nothing is left.
        loop {
            while self.batch.len() < max {
                match self.rx.try_recv() {
                    Ok(record) => self.batch.push(record),
                    Err(_) => break,
                }
            }
            if !self.batch.is_empty() {
                self.write_with_retry().await?;
                continue;
            }
            if self.shared.waiting.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
                break;
            }
            // Records waiting for room are about to be queued.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // Close the queue; a `submit` racing with shutdown may still have queued a record, and a
        // waiting task may have found the queue closed (its record goes to `overflow`).
        self.rx.close();
        loop {
            while self.batch.len() < max {
                match self.rx.try_recv() {
                    Ok(record) => self.batch.push(record),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                match self.take_overflow() {
                    Some(true) => {}
                    Some(false) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            self.write_with_retry().await?;
        }
    }

    /// One write of `self.batch`, bounded by the write timeout and, once shutdown has begun (even
    /// while the write is in flight), by shutdown's deadline.
    async fn attempt(&self) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut write = std::pin::pin!(self.sink.write_batch(&self.batch));
        loop {
            let deadline = self.shared.deadline();
            let mut limit = started + self.config.write_timeout;
            if let Some(d) = deadline {
                limit = limit.min(d);
            }
            let timed = std::pin::pin!(tokio::time::timeout_at(limit, write.as_mut()));
            let woken = std::pin::pin!(self.shared.wake.notified());
            let result = if deadline.is_some() {
                timed.await
            } else {
                match select(timed, woken).await {
                    Either::Left((result, _)) => result,
                    // Shutdown began: recompute the limit with its deadline.
                    Either::Right(((), _)) => continue,
                }
            };
            return result.unwrap_or_else(|_| {
                Err(SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "writing a batch took longer than {:?}",
                        limit.saturating_duration_since(started)
                    ),
                ))
            });
        }
    }

    /// Moves records from `overflow` into the batch: `Some(true)` if it took some, `Some(false)`
    /// if records are still on their way (waiting tasks), `None` when everything is done (and
    /// then marks the writer finished).
    fn take_overflow(&mut self) -> Option<bool> {
        let mut overflow = self
            .shared
            .overflow
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let take = overflow.records.len().min(self.config.max_batch_size);
        self.batch.extend(overflow.records.drain(..take));
        if !self.batch.is_empty() {
            return Some(true);
        }
        if self.shared.waiting.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
            overflow.finished = true;
            return None;
        }
        Some(false)
    }

    /// Writes `self.batch`, retrying with backoff until it succeeds or shutdown's deadline
    /// passes.
    async fn write_with_retry(&mut self) -> Result<(), Abandon> {
        let mut delay = self.config.backoff_initial;
        let mut attempt: u32 = 0;
        let mut last_error = None;
        loop {
            if self.shared.deadline().is_some_and(|d| Instant::now() >= d) {
                return Err(Abandon(last_error));
            }
            let error = match self.attempt().await {
                Ok(()) => {
                    let n = self.batch.len();
                    self.shared.written(n);
                    self.batch.clear();
                    if attempt > 0 {
                        tracing::info!(
                            records = n,
                            failed_attempts = attempt,
                            "spend log: batch written after retrying"
                        );
                    }
                    self.shared
                        .drop_log
                        .flush(self.shared.dropped.load(Ordering::Acquire), false);
                    return Ok(());
                }
                Err(e) => e,
            };
            attempt += 1;
            self.shared.failed_writes.fetch_add(1, Ordering::AcqRel);
            let pending = self.shared.pending.load(Ordering::Acquire);
            if attempt <= 3 {
                tracing::warn!(
                    error = %error, kind = %error.kind(), attempt, records = self.batch.len(), pending,
                    retry_in = ?delay, "spend log: writing a batch failed; will retry"
                );
            } else {
                tracing::error!(
                    error = %error, kind = %error.kind(), attempt, records = self.batch.len(), pending,
                    retry_in = ?delay, "spend log: writing a batch keeps failing; will retry"
                );
            }
            self.shared
                .drop_log
                .flush(self.shared.dropped.load(Ordering::Acquire), false);
            last_error = Some(error);
            let wake_at = Instant::now() + delay;
            match self.shared.deadline() {
                Some(d) => tokio::time::sleep_until(wake_at.min(d)).await,
                // Wake early when shutdown begins, to honour its deadline.
                None => {
                    let _ = tokio::time::timeout_at(wake_at, self.shared.wake.notified()).await;
                }
            }
            delay = delay.saturating_mul(2).min(self.config.backoff_max);
        }
    }

    /// Shutdown's deadline passed: count and report everything left.
    async fn abandon(&mut self, last_error: Option<SinkError>) -> ShutdownError {
        self.rx.close();
        let mut left = std::mem::take(&mut self.batch).len();
        // Tasks waiting for room see the closed queue at once; give them a moment to hand over.
        for _ in 0..100 {
            while self.rx.try_recv().is_ok() {
                left += 1;
            }
            if self.shared.waiting.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        {
            let mut overflow = self
                .shared
                .overflow
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            left += overflow.records.len();
            overflow.records.clear();
            overflow.finished = true;
        }
        let reason = match &last_error {
            Some(e) => format!(
                "the shutdown deadline ({:?}) passed; last error: {e}",
                self.config.shutdown_timeout
            ),
            None => format!(
                "the shutdown deadline ({:?}) passed before they could be written",
                self.config.shutdown_timeout
            ),
        };
        self.shared.lose(left, &reason);
        ShutdownError {
            unwritten: left as u64,
            reason,
        }
    }

    /// Marks the writer finished (late waiting records count themselves as lost).
    fn finish(&mut self) {
        let mut overflow = self
            .shared
            .overflow
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        overflow.finished = true;
        drop(overflow);
        self.shared
            .drop_log
            .flush(self.shared.dropped.load(Ordering::Acquire), true);
    }
}

impl<S> Drop for Worker<S> {
    /// The task was cancelled (its runtime shut down) with records unwritten: count and log them.
    fn drop(&mut self) {
        self.rx.close();
        let mut left = std::mem::take(&mut self.batch).len();
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        let mut overflow = self
            .shared
            .overflow
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        left += overflow.records.len();
        overflow.records.clear();
        overflow.finished = true;
        drop(overflow);
        self.shared.lose(
            left,
            "the spend-log writer task stopped (its runtime shut down) before writing them",
        );
    }
}
