//! The batching writer: [`SpendLogWriter`] (configuration) spawns a background task and returns
//! a [`SpendLogHandle`] (the cheap, cloneable submit side).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{Either, select};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::dead_letter::{DeadLetter, Reason};
use super::{SinkError, SinkErrorKind, SpendLogSink};
use crate::record::SpendRecord;

/// The least room in the hand-off to the dead-letter thread (it is the queue's capacity when
/// that is larger).
const DEAD_LETTER_HANDOFF_MIN: usize = 4096;

/// What [`SpendLogHandle::submit`] does with a record when the queue is full (the database is
/// slow or down and the queue has filled up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// Write the record to the dead-letter file (the default): nothing is lost and memory stays
    /// bounded by the queue. The file is appended by a thread of its own through a bounded
    /// hand-off (room for the queue's capacity, at least 4,096 records), so `submit` never
    /// waits for the disk; if that hand-off is full too, or no
    /// dead-letter file is configured, the record is dropped (counted and logged).
    #[default]
    DeadLetter,
    /// Drop the record: it is counted in [`SpendLogStats::dropped`] and logged at error level
    /// (the first drop at once, then at most one summary per second).
    Drop,
}

/// Counters of a [`SpendLogWriter`], from [`SpendLogHandle::stats`]: plain atomics, cheap to
/// read as often as a metrics exporter likes.
///
/// Every record handed to [`submit`](SpendLogHandle::submit) ends in exactly one of `written`,
/// `dead_lettered` or `dropped`; until then it counts in `pending`:
/// `queued == written + dead_lettered + dropped + pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpendLogStats {
    /// Records handed to [`submit`](SpendLogHandle::submit).
    pub queued: u64,
    /// Records the sink has written (acknowledged; a record whose `request_id` was already
    /// stored still counts, since the sink skipped it on purpose).
    pub written: u64,
    /// Of `written`, records stored only after [`SpendRecord::sanitized`] fixed what the database
    /// rejected.
    pub sanitized: u64,
    /// Records written whole to the dead-letter file: rejected by the database even sanitized,
    /// refused by a full queue (under [`QueueFullPolicy::DeadLetter`]), submitted after
    /// shutdown, or still unwritten when the shutdown deadline passed.
    pub dead_lettered: u64,
    /// Records that will never be written anywhere: refused by a full queue under
    /// [`QueueFullPolicy::Drop`], or that could not be dead-lettered (no dead-letter file, its
    /// hand-off full, the file unwritable or at its size limit). Every drop is logged.
    pub dropped: u64,
    /// Write attempts that failed and were retried (a batch or a single row).
    pub retried: u64,
    /// Write attempts that failed, retried or not.
    pub failed_writes: u64,
    /// Records submitted but not yet written, dead-lettered or dropped: in the queue, in the
    /// batch being written, or on their way to the dead-letter file.
    pub pending: u64,
    /// Records in the queue now (at most the capacity).
    pub queue_depth: u64,
    /// Records not yet submitted because their request's monitor guardrails are still running
    /// (see [`SpendLogLayer::monitor_grace`](crate::SpendLogLayer::monitor_grace));
    /// [`shutdown`](SpendLogHandle::shutdown) waits for them.
    pub deferred: u64,
}

/// Configuration of the batching spend-log writer; [`spawn`](SpendLogWriter::spawn) starts it.
///
/// The writer is a background task that owns a [`SpendLogSink`] and a bounded queue. It takes
/// the records that are queued (up to [`max_batch_size`](SpendLogWriter::max_batch_size),
/// waiting at most [`linger`](SpendLogWriter::linger) for a batch to fill) and writes them with
/// one [`write_batch`](SpendLogSink::write_batch) call (one transaction). A failed write is
/// handled by what the error says ([`SinkError`]):
///
/// - transient (the database is down, busy, or timed out): the batch is kept and retried with
///   exponential backoff capped at the maximum, until it is written or shutdown's deadline
///   passes. Nothing behind it is lost meanwhile: the queue is bounded, and what does not fit
///   follows the [`QueueFullPolicy`].
/// - permanent (the database rejected a value: a NUL byte, a value too long, a constraint): the
///   batch is written row by row, so the other rows land; a rejected row is
///   [sanitized](SpendRecord::sanitized) and retried once, and if it is still rejected (or
///   there was nothing to sanitize) it is written whole to the dead-letter file with a warning.
///   The queue never jams behind one bad row.
/// - anything else (a schema or permission problem): retried a few times
///   ([`other_error_attempts`](SpendLogWriter::other_error_attempts)), then handled as permanent.
///
/// The sinks' `request_id` idempotency makes every retry safe. Every wait is bounded: one write
/// by [`write_timeout`](SpendLogWriter::write_timeout), a backoff by its maximum, shutdown by
/// [`shutdown_timeout`](SpendLogWriter::shutdown_timeout).
///
/// The dead-letter file ([`dead_letter_path`](SpendLogWriter::dead_letter_path); by default
/// the sink's suggestion, [`SpendLogSink::dead_letter_path`]) holds one JSON object per line:
/// `{"dead_lettered_at": "<RFC 3339>", "reason": "rejected" | "queue_full" | "shutdown" |
/// "shutdown_timeout" | "writer_stopped", "error": "<the last error>" | null, "record": {<the
/// record, as the JSON lines sink writes it>}}`. It is created on the first record and grows up
/// to [`dead_letter_max_bytes`](SpendLogWriter::dead_letter_max_bytes).
///
/// ```
/// use std::time::Duration;
///
/// use guardrail_tower_spend_log::{ChannelSink, QueueFullPolicy, SpendLogWriter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let dir = std::env::temp_dir();
/// let (sink, _records) = ChannelSink::new();
/// let handle = SpendLogWriter::new()
///     .capacity(10_000)
///     .max_batch_size(256)
///     .linger(Duration::from_millis(20))
///     .retry_backoff(Duration::from_millis(50), Duration::from_secs(5))
///     .queue_full_policy(QueueFullPolicy::DeadLetter)
///     .dead_letter_path(dir.join("spend_logs.dead-letter.jsonl"))
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
    other_error_attempts: u32,
    dead_letter: DeadLetterSetting,
    dead_letter_max_bytes: u64,
}

#[derive(Debug, Clone)]
enum DeadLetterSetting {
    /// The sink's suggestion.
    Default,
    Path(PathBuf),
    Off,
}

impl Default for SpendLogWriter {
    fn default() -> Self {
        SpendLogWriter::new()
    }
}

impl SpendLogWriter {
    /// The defaults: capacity 10,000, batches of up to 256 records, 20 ms linger, retry backoff
    /// from 50 ms doubling to 5 s, 30 s write timeout, 10 s shutdown timeout,
    /// [`QueueFullPolicy::DeadLetter`], 3 attempts for unclassified errors, the sink's
    /// dead-letter path, 1 GiB of dead letters at most.
    pub fn new() -> Self {
        SpendLogWriter {
            capacity: 10_000,
            max_batch_size: 256,
            linger: Duration::from_millis(20),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            policy: QueueFullPolicy::DeadLetter,
            other_error_attempts: 3,
            dead_letter: DeadLetterSetting::Default,
            dead_letter_max_bytes: 1 << 30,
        }
    }

    /// How many records the queue holds (at least 1). Memory held while the database is down
    /// is bounded by this many records (about 1 to 2 KiB each) plus one batch.
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
    /// write whatever is queued at once). Also the most a record waits in memory before its
    /// write begins while the database keeps up: the window lost to a crash (`SIGKILL`).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The delay before the first retry of a failed write, doubling after each failure up to
    /// `max`.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// How long one write may take before it counts as failed (transient: it is retried).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long [`shutdown`](SpendLogHandle::shutdown) keeps writing and retrying before it
    /// dead-letters the records that are left.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// What [`submit`](SpendLogHandle::submit) does when the queue is full.
    pub fn queue_full_policy(mut self, policy: QueueFullPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How many times an error that is neither transient nor permanent (a schema or permission
    /// problem) is tried before the batch is handled as rejected (at least 1).
    pub fn other_error_attempts(mut self, attempts: u32) -> Self {
        self.other_error_attempts = attempts.max(1);
        self
    }

    /// The dead-letter file (JSON lines; created on the first record). By default, the sink's
    /// [`dead_letter_path`](SpendLogSink::dead_letter_path).
    pub fn dead_letter_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.dead_letter = DeadLetterSetting::Path(path.into());
        self
    }

    /// No dead-letter file: what would go there is dropped (counted and logged).
    pub fn without_dead_letter(mut self) -> Self {
        self.dead_letter = DeadLetterSetting::Off;
        self
    }

    /// The most bytes the dead-letter file may grow to (default 1 GiB); beyond that, records
    /// that would go there are dropped (counted and logged).
    pub fn dead_letter_max_bytes(mut self, bytes: u64) -> Self {
        self.dead_letter_max_bytes = bytes;
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
        let path = match &self.dead_letter {
            DeadLetterSetting::Default => sink.dead_letter_path(),
            DeadLetterSetting::Path(p) => Some(p.clone()),
            DeadLetterSetting::Off => None,
        };
        let counters = Arc::new(Counters::default());
        let dead_letter = path.map(|path| {
            DeadLetter::start(
                path,
                self.capacity.max(DEAD_LETTER_HANDOFF_MIN),
                self.dead_letter_max_bytes,
                Arc::clone(&counters),
            )
        });
        let shared = Arc::new(Shared {
            counters,
            closed: AtomicBool::new(false),
            deadline: Mutex::new(None),
            deferred: AtomicU64::new(0),
            undeferred: Notify::new(),
            wake: Notify::new(),
            batch_full: Notify::new(),
            max_batch_size: self.max_batch_size,
            policy: self.policy,
            dead_letter,
        });
        let worker = Worker {
            sink,
            rx,
            batch: Vec::with_capacity(self.max_batch_size),
            shared: Arc::clone(&shared),
            config: self.clone(),
            delay: self.backoff_initial,
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
            .field(
                "dead_letter",
                &self.inner.shared.dead_letter.as_ref().map(DeadLetter::path),
            )
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl SpendLogHandle {
    /// Hands a record to the writer. Synchronous and cheap: it never waits, never blocks, needs
    /// no runtime on the calling thread, and can be called from `Drop` or `poll_frame`.
    ///
    /// The record goes into the queue if there is room. If the queue is full, the
    /// [`QueueFullPolicy`] decides (by default: to the dead-letter file). After
    /// [`shutdown`](SpendLogHandle::shutdown) has begun, records go to the dead-letter file
    /// (dropped if there is none).
    pub fn submit(&self, record: SpendRecord) {
        let shared = &self.inner.shared;
        shared.counters.queued.fetch_add(1, Ordering::AcqRel);
        shared.counters.pending.fetch_add(1, Ordering::AcqRel);
        if shared.closed.load(Ordering::Acquire) {
            shared.dead_letter(record, Reason::Shutdown, None);
            return;
        }
        match self.inner.tx.try_send(record) {
            Ok(()) => {
                let queued = self.inner.tx.max_capacity() - self.inner.tx.capacity();
                if queued >= shared.max_batch_size {
                    shared.batch_full.notify_one();
                }
            }
            Err(TrySendError::Full(record)) => match shared.policy {
                QueueFullPolicy::DeadLetter => {
                    shared.dead_letter(record, Reason::QueueFull, None);
                }
                QueueFullPolicy::Drop => shared.drop_record(&record, "the queue is full"),
            },
            Err(TrySendError::Closed(record)) => {
                shared.dead_letter(record, Reason::WriterStopped, None);
            }
        }
    }

    /// A snapshot of the writer's counters.
    pub fn stats(&self) -> SpendLogStats {
        let c = &self.inner.shared.counters;
        SpendLogStats {
            queued: c.queued.load(Ordering::Acquire),
            written: c.written.load(Ordering::Acquire),
            sanitized: c.sanitized.load(Ordering::Acquire),
            dead_lettered: c.dead_lettered.load(Ordering::Acquire),
            dropped: c.dropped.load(Ordering::Acquire),
            retried: c.retried.load(Ordering::Acquire),
            failed_writes: c.failed_writes.load(Ordering::Acquire),
            pending: c.pending.load(Ordering::Acquire),
            queue_depth: (self.inner.tx.max_capacity() - self.inner.tx.capacity()) as u64,
            deferred: self.inner.shared.deferred.load(Ordering::Acquire),
        }
    }

    /// Promises a record that will be submitted later (when its request's detached guardrails
    /// have finished): [`shutdown`](SpendLogHandle::shutdown) first waits for it (within the
    /// shutdown timeout). Submit it with [`Deferred::submit`]; dropping the promise unsubmitted
    /// releases it.
    pub fn defer(&self) -> Deferred {
        self.inner.shared.deferred.fetch_add(1, Ordering::AcqRel);
        Deferred {
            handle: Some(self.clone()),
        }
    }

    /// Records dropped so far (see [`SpendLogStats::dropped`]).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.counters.dropped.load(Ordering::Acquire)
    }

    /// Records submitted but not yet settled (see [`SpendLogStats::pending`]).
    pub fn pending(&self) -> u64 {
        self.inner.shared.counters.pending.load(Ordering::Acquire)
    }

    /// The dead-letter file, if there is one.
    pub fn dead_letter_path(&self) -> Option<&Path> {
        self.inner.shared.dead_letter.as_ref().map(DeadLetter::path)
    }

    /// Checks, without creating anything, that the dead-letter file can be written: the file if
    /// it exists, else its nearest existing ancestor, which must be a directory this process may
    /// write in (the missing ones are created with the first record). The file is only created
    /// when the sink first refuses a record, so a path that cannot be written would otherwise
    /// surface at the first outage, losing its records: call this at start and refuse to run on
    /// an error. `Ok` when there is no dead-letter file.
    ///
    /// ```
    /// use guardrail_tower_spend_log::{ChannelSink, SpendLogWriter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // A path under a file, not a directory: no record could ever be written there.
    /// let file = std::env::temp_dir().join(format!("not-a-dir-{}", std::process::id()));
    /// std::fs::write(&file, b"").unwrap();
    /// let (sink, _records) = ChannelSink::new();
    /// let handle = SpendLogWriter::new()
    ///     .dead_letter_path(file.join("dead.jsonl"))
    ///     .spawn(sink);
    /// assert!(handle.check_dead_letter().is_err());
    /// # std::fs::remove_file(&file).unwrap();
    /// # }
    /// ```
    pub fn check_dead_letter(&self) -> std::io::Result<()> {
        match self.dead_letter_path() {
            Some(path) => can_append_to(path),
            None => Ok(()),
        }
    }

    /// Whether shutdown has begun (new records go to the dead-letter file).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    /// Stops taking records into the queue and writes everything already queued (and the batch
    /// being retried), retrying failed writes until the configured
    /// [`shutdown_timeout`](SpendLogWriter::shutdown_timeout) has passed; then writes what is
    /// left to the dead-letter file and waits until that file is flushed.
    ///
    /// Returns `Ok(())` when every queued record was written to the sink. Otherwise the error
    /// says how many were not ([`ShutdownError::unwritten`]): they are in the dead-letter file
    /// (or, without one, dropped), counted and logged. Every clone of the handle can call it;
    /// all get the same result. Needs the writer's runtime to be running.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        // Records still waiting for their monitor guardrails come first (bounded).
        let shared = &self.inner.shared;
        let deferred = async {
            loop {
                let notified = shared.undeferred.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if shared.deferred.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(self.inner.shutdown_timeout, deferred)
            .await
            .is_err()
        {
            tracing::warn!(
                deferred = shared.deferred.load(Ordering::Acquire),
                "spend log: records still waiting for their monitor guardrails at shutdown"
            );
        }
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

/// A record promised to the writer by [`SpendLogHandle::defer`].
pub struct Deferred {
    handle: Option<SpendLogHandle>,
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred").finish_non_exhaustive()
    }
}

impl Deferred {
    /// Submits the promised record (see [`SpendLogHandle::submit`]).
    pub fn submit(mut self, record: SpendRecord) {
        if let Some(handle) = self.handle.take() {
            handle.submit(record);
            release(&handle);
        }
    }
}

fn release(handle: &SpendLogHandle) {
    let shared = &handle.inner.shared;
    shared.deferred.fetch_sub(1, Ordering::AcqRel);
    shared.undeferred.notify_waiters();
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            release(&handle);
        }
    }
}

/// [`SpendLogHandle::shutdown`] could not write every queued record to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownError {
    unwritten: u64,
    reason: String,
}

impl ShutdownError {
    /// How many queued records were not written to the sink (they are in the dead-letter file,
    /// or counted in [`SpendLogStats::dropped`]).
    pub fn unwritten(&self) -> u64 {
        self.unwritten
    }
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spend log shutdown: {} record(s) were not written to the database: {}",
            self.unwritten, self.reason
        )
    }
}

impl std::error::Error for ShutdownError {}

/// The counters, shared with the dead-letter thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queued: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) sanitized: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) failed_writes: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) drop_log: DropLog,
}

impl Counters {
    /// Records that will never be written anywhere.
    pub(crate) fn lose(&self, request_id: &str, n: u64, reason: &'static str) {
        if n == 0 {
            return;
        }
        self.pending.fetch_sub(n, Ordering::AcqRel);
        let total = self.dropped.fetch_add(n, Ordering::AcqRel) + n;
        self.drop_log.record(request_id, n, reason, total);
    }
}

/// State shared by the handles and the writer task.
struct Shared {
    counters: Arc<Counters>,
    /// Shutdown has begun: `submit` dead-letters records.
    closed: AtomicBool,
    /// When shutdown gives up; `Some` once shutdown has begun.
    deadline: Mutex<Option<Instant>>,
    /// Records promised but not yet submitted ([`SpendLogHandle::defer`]).
    deferred: AtomicU64,
    /// Wakes a shutdown waiting for deferred records.
    undeferred: Notify,
    /// Wakes the writer task when shutdown begins.
    wake: Notify,
    /// Ends the writer's linger: a full batch is queued.
    batch_full: Notify,
    /// The writer's largest batch.
    max_batch_size: usize,
    policy: QueueFullPolicy,
    dead_letter: Option<DeadLetter>,
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

    /// Hands a record to the dead-letter file (dropping it if there is none or its hand-off is
    /// full).
    fn dead_letter(&self, record: SpendRecord, reason: Reason, error: Option<String>) {
        match &self.dead_letter {
            Some(dead_letter) => dead_letter.send(record, reason, error),
            None => self
                .counters
                .lose(&record.request_id, 1, "no dead-letter file is configured"),
        }
    }

    fn drop_record(&self, record: &SpendRecord, reason: &'static str) {
        self.counters.lose(&record.request_id, 1, reason);
    }

    fn written(&self, n: usize) {
        let n = n as u64;
        self.counters.written.fetch_add(n, Ordering::AcqRel);
        self.counters.pending.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Rate-limits the error logs for dropped records: the first is logged at once, then at most
/// one summary per second (the writer task also reports what was not yet logged).
#[derive(Debug)]
pub(crate) struct DropLog {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last report, plus one (zero: never).
    last_report: AtomicU64,
    unreported: AtomicU64,
}

impl Default for DropLog {
    fn default() -> Self {
        DropLog {
            start: std::time::Instant::now(),
            last_report: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }
}

impl DropLog {
    fn record(&self, request_id: &str, n: u64, reason: &'static str, total: u64) {
        self.unreported.fetch_add(n, Ordering::AcqRel);
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
        if self.unreported.load(Ordering::Acquire) > 0 {
            self.report(None, "see earlier errors", total, force);
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
    /// The next backoff delay (reset after every success).
    delay: Duration,
}

/// Why a write gave up on its records.
enum Outcome {
    Written,
    /// The shutdown deadline passed; carries the last error.
    Deadline(Option<SinkError>),
}

/// How one failed attempt is handled.
enum Next {
    Retry,
    /// Treat the records as rejected.
    Reject,
}

impl<S: SpendLogSink> Worker<S> {
    async fn run(mut self) -> Result<(), ShutdownError> {
        let unwritten = self.run_inner().await;
        self.finish().await;
        match unwritten {
            None => Ok(()),
            Some((n, reason)) => Err(ShutdownError {
                unwritten: n,
                reason,
            }),
        }
    }

    /// Writes until shutdown (or every handle is gone); returns what was not written.
    async fn run_inner(&mut self) -> Option<(u64, String)> {
        let max = self.config.max_batch_size;
        loop {
            if self.shared.deadline().is_some() {
                break;
            }
            let received = {
                let recv = std::pin::pin!(self.rx.recv_many(&mut self.batch, max));
                let woken = std::pin::pin!(self.shared.wake.notified());
                // While some dropped records are not logged yet, wake up to report them.
                let report_in = if self.shared.counters.drop_log.has_unreported() {
                    Duration::from_secs(1)
                } else {
                    Duration::MAX
                };
                match tokio::time::timeout(report_in, select(recv, woken)).await {
                    Ok(Either::Left((n, _))) => Some(n),
                    Ok(Either::Right(((), _))) => None,
                    Err(_) => None,
                }
            };
            if self.shared.counters.drop_log.has_unreported() {
                self.flush_drop_log(false);
            }
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
            self.fill_batch();
            if let Outcome::Deadline(error) = self.write_batch().await {
                return Some(self.abandon(error));
            }
        }

        // Draining: close the queue (later submits go to the dead-letter file) and write what
        // is queued, without lingering.
        self.rx.close();
        loop {
            self.fill_batch();
            if self.batch.is_empty() {
                return None;
            }
            if let Outcome::Deadline(error) = self.write_batch().await {
                return Some(self.abandon(error));
            }
        }
    }

    fn fill_batch(&mut self) {
        while self.batch.len() < self.config.max_batch_size {
            match self.rx.try_recv() {
                Ok(record) => self.batch.push(record),
                Err(_) => break,
            }
        }
    }

    fn flush_drop_log(&self, force: bool) {
        let total = self.shared.counters.dropped.load(Ordering::Acquire);
        self.shared.counters.drop_log.flush(total, force);
    }

    /// One write of `records`, bounded by the write timeout and, once shutdown has begun (even
    /// while the write is in flight), by shutdown's deadline.
    async fn attempt(&self, records: &[SpendRecord]) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut write = std::pin::pin!(self.sink.write_batch(records));
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
                        "writing took longer than {:?}",
                        limit.saturating_duration_since(started)
                    ),
                ))
            });
        }
    }

    /// Counts and logs a failed attempt and says what to do next: back off and retry, or treat
    /// the records as rejected.
    async fn failed(
        &mut self,
        error: &SinkError,
        attempt: u32,
        other_errors: &mut u32,
        records: usize,
    ) -> Next {
        let counters = &self.shared.counters;
        counters.failed_writes.fetch_add(1, Ordering::AcqRel);
        let pending = counters.pending.load(Ordering::Acquire);
        if error.is_permanent() {
            tracing::warn!(
                error = %error, kind = %error.kind(), records,
                "spend log: the database rejected a write; writing its records one by one"
            );
            return Next::Reject;
        }
        if !error.is_transient() {
            *other_errors += 1;
            if *other_errors >= self.config.other_error_attempts {
                tracing::error!(
                    error = %error, kind = %error.kind(), attempt, records,
                    "spend log: a write keeps failing with an error that is not transient; \
                     handling its records as rejected"
                );
                return Next::Reject;
            }
        }
        counters.retried.fetch_add(1, Ordering::AcqRel);
        let delay = self.delay;
        if attempt <= 3 {
            tracing::warn!(
                error = %error, kind = %error.kind(), attempt, records, pending,
                retry_in = ?delay, "spend log: a write failed; will retry"
            );
        } else {
            tracing::error!(
                error = %error, kind = %error.kind(), attempt, records, pending,
                retry_in = ?delay, "spend log: writes keep failing; will retry"
            );
        }
        self.flush_drop_log(false);
        let wake_at = Instant::now() + delay;
        match self.shared.deadline() {
            Some(d) => tokio::time::sleep_until(wake_at.min(d)).await,
            // Wake early when shutdown begins, to honour its deadline.
            None => {
                let _ = tokio::time::timeout_at(wake_at, self.shared.wake.notified()).await;
            }
        }
        self.delay = delay.saturating_mul(2).min(self.config.backoff_max);
        Next::Retry
    }

    fn deadline_passed(&self) -> bool {
        self.shared.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Writes `self.batch`; a rejected batch is written row by row. On success the batch is
    /// empty; at the deadline it holds what is left.
    async fn write_batch(&mut self) -> Outcome {
        let mut attempt = 0;
        let mut other_errors = 0;
        let mut last_error = None;
        loop {
            if self.deadline_passed() {
                return Outcome::Deadline(last_error);
            }
            let result = self.attempt(&self.batch).await;
            let error = match result {
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
                    self.delay = self.config.backoff_initial;
                    self.flush_drop_log(false);
                    return Outcome::Written;
                }
                Err(e) => e,
            };
            attempt += 1;
            let n = self.batch.len();
            let next = self.failed(&error, attempt, &mut other_errors, n).await;
            last_error = Some(error);
            if let Next::Reject = next {
                break;
            }
        }
        // Row by row: the rows the database takes land; the others are sanitized or
        // dead-lettered.
        let rows = std::mem::take(&mut self.batch);
        let mut rows = rows.into_iter();
        while let Some(row) = rows.next() {
            if let Outcome::Deadline(error) = self.write_row(row).await {
                // `write_row` put its row back in the batch.
                self.batch.extend(rows);
                return Outcome::Deadline(error);
            }
        }
        Outcome::Written
    }

    /// Writes one row: retried while the errors are transient, sanitized once if rejected, else
    /// dead-lettered whole.
    async fn write_row(&mut self, original: SpendRecord) -> Outcome {
        let mut sanitized: Option<SpendRecord> = None;
        let mut attempt = 0;
        let mut other_errors = 0;
        let mut last_error = None;
        loop {
            if self.deadline_passed() {
                self.batch.push(original);
                return Outcome::Deadline(last_error);
            }
            let row = sanitized.as_ref().unwrap_or(&original);
            let result = self.attempt(std::slice::from_ref(row)).await;
            let error = match result {
                Ok(()) => {
                    self.shared.written(1);
                    if sanitized.is_some() {
                        self.shared
                            .counters
                            .sanitized
                            .fetch_add(1, Ordering::AcqRel);
                        tracing::warn!(
                            request_id = %original.request_id,
                            error = ?last_error.as_ref().map(ToString::to_string),
                            "spend log: the database rejected a record; it was stored sanitized \
                             (metadata.sanitized)"
                        );
                    }
                    self.delay = self.config.backoff_initial;
                    return Outcome::Written;
                }
                Err(e) => e,
            };
            attempt += 1;
            let next = self.failed(&error, attempt, &mut other_errors, 1).await;
            last_error = Some(error);
            if let Next::Retry = next {
                continue;
            }
            if sanitized.is_none() {
                if let Some(clean) = original.sanitized() {
                    sanitized = Some(clean);
                    other_errors = 0;
                    continue;
                }
            }
            let error = last_error.as_ref().map(ToString::to_string);
            tracing::warn!(
                request_id = %original.request_id,
                error = ?error,
                dead_letter = ?self.shared.dead_letter.as_ref().map(DeadLetter::path),
                "spend log: the database rejected a record; it goes to the dead-letter file"
            );
            self.shared.dead_letter(original, Reason::Rejected, error);
            return Outcome::Written;
        }
    }

    /// Shutdown's deadline passed: dead-letter everything left; returns how many and why.
    fn abandon(&mut self, last_error: Option<SinkError>) -> (u64, String) {
        self.rx.close();
        let mut left = std::mem::take(&mut self.batch);
        while let Ok(record) = self.rx.try_recv() {
            left.push(record);
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
        let n = left.len() as u64;
        if n > 0 {
            tracing::error!(
                records = n,
                dead_letter = ?self.shared.dead_letter.as_ref().map(DeadLetter::path),
                reason,
                "spend log: records not written at shutdown go to the dead-letter file"
            );
        }
        let error = last_error.map(|e| e.to_string());
        for record in left {
            self.shared
                .dead_letter(record, Reason::ShutdownTimeout, error.clone());
        }
        (n, reason)
    }

    /// Waits (bounded) until the dead-letter file has everything handed to it, and reports
    /// drops not logged yet.
    async fn finish(&mut self) {
        if let Some(dead_letter) = &self.shared.dead_letter {
            dead_letter.flush(Duration::from_secs(5)).await;
        }
        self.flush_drop_log(true);
    }
}

impl<S> Drop for Worker<S> {
    /// The task ends (normally, or cancelled because its runtime shut down): whatever is still
    /// queued goes to the dead-letter file.
    fn drop(&mut self) {
        self.rx.close();
        let left: Vec<SpendRecord> = std::mem::take(&mut self.batch)
            .into_iter()
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
            .collect();
        if !left.is_empty() {
            tracing::error!(
                records = left.len(),
                "spend log: the writer task stopped (its runtime shut down) before writing \
                 these records; they go to the dead-letter file"
            );
        }
        for record in left {
            self.shared.dead_letter(record, Reason::WriterStopped, None);
        }
    }
}

/// Whether a file can be appended to at `path`, without creating anything: the file itself if
/// it exists, else its nearest existing ancestor, which must be a directory (the dead-letter
/// writer creates the missing ones) that this process may write in.
fn can_append_to(path: &Path) -> std::io::Result<()> {
    use nix::unistd::{AccessFlags, access};
    let mut at = path;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) => {
                if at == path && meta.is_dir() {
                    return Err(std::io::Error::other("it is a directory"));
                }
                if at != path && !meta.is_dir() {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory",
                        at.display()
                    )));
                }
                return access(at, AccessFlags::W_OK).map_err(std::io::Error::from);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && at != Path::new(".") => {
                at = match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(e),
        }
    }
}
