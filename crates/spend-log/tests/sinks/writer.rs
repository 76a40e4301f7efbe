//! The batching writer: batching, retries, queue-full policies, shutdown.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guardrail_tower_spend_log::{
    DeadLetterEntry, QueueFullPolicy, SinkError, SinkErrorKind, SinkFuture, SpendLogHandle,
    SpendLogSink, SpendLogWriter, SpendRecord, SpendStatus,
};
use tokio::sync::watch;

use crate::common::{eventually, record, temp_dir, written};

/// An in-memory sink, idempotent on `request_id` like the database sinks, that can be made to
/// fail, or to hang until opened.
struct MemSink {
    rows: Mutex<Vec<SpendRecord>>,
    batches: Mutex<Vec<usize>>,
    entered: AtomicUsize,
    fail_next: AtomicUsize,
    fail_forever: AtomicBool,
    /// Every write fails with this kind while set (0: none).
    fail_kind: Mutex<Option<SinkErrorKind>>,
    open: watch::Sender<bool>,
}

impl MemSink {
    fn new() -> Arc<Self> {
        Arc::new(MemSink {
            rows: Mutex::default(),
            batches: Mutex::default(),
            entered: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            fail_forever: AtomicBool::new(false),
            fail_kind: Mutex::new(None),
            open: watch::channel(true).0,
        })
    }

    fn ids(&self) -> Vec<String> {
        self.rows
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request_id.clone())
            .collect()
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl SpendLogSink for MemSink {
    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            if self.fail_forever.load(Ordering::SeqCst)
                || self
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(SinkError::new(
                    SinkErrorKind::Unavailable,
                    "test sink is down",
                ));
            }
            if let Some(kind) = *self.fail_kind.lock().unwrap() {
                return Err(SinkError::new(kind, "test sink refuses"));
            }
            // Like PostgreSQL: a NUL byte or the model `reject-me` fails the whole batch.
            if records.iter().any(|r| {
                r.user.as_deref().is_some_and(|u| u.contains('\0')) || r.model == "reject-me"
            }) {
                return Err(SinkError::new(
                    SinkErrorKind::Rejected,
                    "invalid byte sequence for encoding \"UTF8\": 0x00",
                ));
            }
            let mut rows = self.rows.lock().unwrap();
            for r in records {
                if !rows.iter().any(|x| x.request_id == r.request_id) {
                    rows.push(r.clone());
                }
            }
            self.batches.lock().unwrap().push(records.len());
            Ok(())
        })
    }
}

fn rec(i: usize) -> SpendRecord {
    record(
        &format!("req-{i:05}"),
        "2026-11-21T12:00:00Z",
        SpendStatus::Success,
    )
}

fn fast() -> SpendLogWriter {
    SpendLogWriter::new()
        .linger(Duration::from_millis(2))
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .shutdown_timeout(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_writes_every_record_once() {
    let sink = MemSink::new();
    let handle = fast().max_batch_size(64).spawn(Arc::clone(&sink));
    for i in 0..1000 {
        handle.submit(rec(i));
    }
    handle.shutdown().await.unwrap();

    let ids: BTreeSet<_> = sink.ids().into_iter().collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(sink.ids().len(), 1000);
    let batches = sink.batches.lock().unwrap().clone();
    assert!(
        batches.iter().all(|&n| (1..=64).contains(&n)),
        "{batches:?}"
    );
    assert!(
        batches.len() < 1000,
        "records were batched: {} batches",
        batches.len()
    );
    let stats = handle.stats();
    assert_eq!(
        (stats.queued, stats.written, stats.dropped, stats.pending),
        (1000, 1000, 0, 0)
    );
}

#[tokio::test]
async fn retries_a_failed_batch_until_it_is_written() {
    let sink = MemSink::new();
    sink.fail_next.store(3, Ordering::SeqCst);
    let handle = fast().spawn(Arc::clone(&sink));
    for i in 0..10 {
        handle.submit(rec(i));
    }
    written(&handle, 10).await;
    let stats = handle.stats();
    assert_eq!(stats.failed_writes, 3);
    assert_eq!((stats.written, stats.dropped, stats.pending), (10, 0, 0));
    assert_eq!(sink.ids().len(), 10);
    handle.shutdown().await.unwrap();
}

/// Blocks the writer inside a write of one record, so the queue's room is exactly its capacity.
async fn writer_blocked_on_first_record(policy: QueueFullPolicy) -> (Arc<MemSink>, SpendLogHandle) {
    let sink = MemSink::new();
    sink.set_open(false);
    let handle = fast()
        .capacity(8)
        .max_batch_size(4)
        .linger(Duration::ZERO)
        .queue_full_policy(policy)
        .spawn(Arc::clone(&sink));
    handle.submit(rec(0));
    eventually("the writer to enter the sink", || {
        sink.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    (sink, handle)
}

/// The lines of a dead-letter file.
fn dead_letters(path: &std::path::Path) -> Vec<DeadLetterEntry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn queue_full_with_drop_policy_counts_what_did_not_fit() {
    let (sink, handle) = writer_blocked_on_first_record(QueueFullPolicy::Drop).await;
    for i in 1..=20 {
        handle.submit(rec(i));
    }
    // 8 fit in the queue; 12 did not.
    let stats = handle.stats();
    assert_eq!(
        (
            stats.dropped,
            stats.queued,
            stats.pending,
            stats.queue_depth
        ),
        (12, 21, 9, 8)
    );
    assert_eq!(handle.dropped(), 12);

    sink.set_open(true);
    written(&handle, 9).await;
    handle.shutdown().await.unwrap();
    let expected: Vec<String> = (0..=8).map(|i| rec(i).request_id).collect();
    let mut ids = sink.ids();
    ids.sort();
    assert_eq!(ids, expected);
    let stats = handle.stats();
    assert_eq!((stats.written, stats.dropped, stats.pending), (9, 12, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_sends_what_does_not_fit_to_the_dead_letter_file() {
    let dir = temp_dir("writer-overflow");
    let path = dir.path().join("spend.dead-letter.jsonl");
    let sink = MemSink::new();
    sink.set_open(false);
    let handle = fast()
        .capacity(8)
        .max_batch_size(4)
        .linger(Duration::ZERO)
        .dead_letter_path(&path)
        .spawn(Arc::clone(&sink));
    assert_eq!(handle.dead_letter_path(), Some(path.as_path()));
    handle.submit(rec(0));
    eventually("the writer to enter the sink", || {
        sink.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 1..=20 {
        handle.submit(rec(i));
    }
    // `submit` from a thread without a runtime, while the queue is full.
    let h = handle.clone();
    std::thread::spawn(move || {
        for i in 21..=25 {
            h.submit(rec(i));
        }
    })
    .join()
    .unwrap();
    // Memory stays at the queue: 8 queued, 1 in the write; 17 went to the file.
    eventually("17 dead letters", || handle.stats().dead_lettered == 17).await;
    let stats = handle.stats();
    assert_eq!(
        (
            stats.queued,
            stats.queue_depth,
            stats.pending,
            stats.dead_lettered,
            stats.dropped
        ),
        (26, 8, 9, 17, 0)
    );
    let letters = dead_letters(&path);
    assert_eq!(
        letters
            .iter()
            .map(|l| l.record.request_id.clone())
            .collect::<Vec<_>>(),
        (9..=25).map(|i| rec(i).request_id).collect::<Vec<_>>()
    );
    assert!(letters.iter().all(|l| l.reason == "queue_full"));
    assert_eq!(letters[0].record, rec(9), "written whole");

    sink.set_open(true);
    written(&handle, 9).await;
    handle.shutdown().await.unwrap();
    let ids: BTreeSet<_> = sink.ids().into_iter().collect();
    assert_eq!(ids, (0..=8).map(|i| rec(i).request_id).collect());
    let stats = handle.stats();
    assert_eq!(
        (
            stats.written,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (9, 17, 0, 0)
    );
}

#[tokio::test]
async fn a_rejected_row_is_sanitized_or_dead_lettered_and_the_queue_keeps_flowing() {
    let dir = temp_dir("writer-rejected");
    let path = dir.path().join("dead.jsonl");
    let sink = MemSink::new();
    let handle = fast()
        .max_batch_size(50)
        .linger(Duration::from_millis(50))
        .dead_letter_path(&path)
        .spawn(Arc::clone(&sink));
    let mut nul = rec(3);
    nul.user = Some("bad\0user".into());
    let mut hopeless = rec(7);
    hopeless.model = "reject-me".into();
    for i in 0..20 {
        handle.submit(match i {
            3 => nul.clone(),
            7 => hopeless.clone(),
            _ => rec(i),
        });
    }
    written(&handle, 19).await;
    // Later rows land too.
    for i in 20..30 {
        handle.submit(rec(i));
    }
    written(&handle, 29).await;
    handle.shutdown().await.unwrap();

    let rows = sink.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 29);
    let stored = rows
        .iter()
        .find(|r| r.request_id == nul.request_id)
        .unwrap();
    assert_eq!(stored.user.as_deref(), Some("baduser"));
    assert!(stored.metadata.sanitized);
    assert!(!rows.iter().any(|r| r.request_id == hopeless.request_id));
    let letters = dead_letters(&path);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record, hopeless, "the original, whole");
    assert_eq!(letters[0].reason, "rejected");
    assert!(
        letters[0]
            .error
            .as_deref()
            .unwrap()
            .contains("invalid byte sequence"),
        "{:?}",
        letters[0].error
    );
    let stats = handle.stats();
    assert_eq!(
        (
            stats.queued,
            stats.written,
            stats.sanitized,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (30, 29, 1, 1, 0, 0)
    );
}

#[tokio::test]
async fn an_unclassified_error_is_tried_a_few_times_then_dead_lettered() {
    let dir = temp_dir("writer-other");
    let path = dir.path().join("dead.jsonl");
    let sink = MemSink::new();
    *sink.fail_kind.lock().unwrap() = Some(SinkErrorKind::Database);
    let handle = fast()
        .other_error_attempts(3)
        .dead_letter_path(&path)
        .spawn(Arc::clone(&sink));
    handle.submit(rec(1));
    eventually("a dead letter", || handle.stats().dead_lettered == 1).await;
    let stats = handle.stats();
    // 3 attempts of the batch, then 3 of the row alone (nothing to sanitize).
    assert_eq!((stats.failed_writes, stats.retried), (6, 4));
    *sink.fail_kind.lock().unwrap() = None;
    handle.submit(rec(2));
    written(&handle, 1).await;
    handle.shutdown().await.unwrap();
    assert_eq!(sink.ids(), vec![rec(2).request_id]);
    assert_eq!(dead_letters(&path)[0].record, rec(1));
}

#[tokio::test]
async fn without_a_dead_letter_file_rejected_rows_are_dropped_and_counted() {
    let sink = MemSink::new();
    let handle = fast().without_dead_letter().spawn(Arc::clone(&sink));
    assert_eq!(handle.dead_letter_path(), None);
    let mut hopeless = rec(1);
    hopeless.model = "reject-me".into();
    handle.submit(hopeless);
    handle.submit(rec(2));
    handle.shutdown().await.unwrap();
    let stats = handle.stats();
    assert_eq!(
        (
            stats.written,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (1, 0, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_up_to_the_cap() {
    let sink = MemSink::new();
    sink.fail_next.store(8, Ordering::SeqCst);
    let handle = SpendLogWriter::new()
        .linger(Duration::ZERO)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .spawn(Arc::clone(&sink));
    let started = tokio::time::Instant::now();
    handle.submit(rec(1));
    written(&handle, 1).await;
    // 100 + 200 + 400 * 6 (capped) of backoff in virtual time.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2700) && waited < Duration::from_millis(2800),
        "{waited:?}"
    );
    let stats = handle.stats();
    assert_eq!((stats.failed_writes, stats.retried), (8, 8));
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_flushes_the_queue_without_waiting_for_the_linger() {
    let sink = MemSink::new();
    let handle = fast()
        .linger(Duration::from_secs(30))
        .max_batch_size(10_000)
        .spawn(Arc::clone(&sink));
    for i in 0..500 {
        handle.submit(rec(i));
    }
    let started = Instant::now();
    handle.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sink.ids().len(), 500);
    assert_eq!(handle.stats().pending, 0);
}

#[tokio::test]
async fn shutdown_retries_a_failing_sink_until_it_recovers() {
    let sink = MemSink::new();
    sink.fail_next.store(5, Ordering::SeqCst);
    let handle = fast().spawn(Arc::clone(&sink));
    for i in 0..50 {
        handle.submit(rec(i));
    }
    handle.shutdown().await.unwrap();
    assert_eq!(sink.ids().len(), 50);
    assert!(handle.stats().failed_writes >= 5);
}

#[tokio::test]
async fn shutdown_dead_letters_what_a_dead_sink_never_took() {
    let dir = temp_dir("writer-shutdown");
    let path = dir.path().join("dead.jsonl");
    let sink = MemSink::new();
    sink.fail_forever.store(true, Ordering::SeqCst);
    let handle = fast()
        .shutdown_timeout(Duration::from_millis(200))
        .max_batch_size(4)
        .dead_letter_path(&path)
        .spawn(Arc::clone(&sink));
    for i in 0..10 {
        handle.submit(rec(i));
    }
    let started = Instant::now();
    let err = handle.shutdown().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(190) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(err.unwritten(), 10);
    let msg = err.to_string();
    assert!(
        msg.contains("10 record(s) were not written to the database"),
        "{msg}"
    );
    assert!(msg.contains("test sink is down"), "{msg}");
    let stats = handle.stats();
    assert_eq!(
        (
            stats.written,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (0, 10, 0, 0),
        "flushed to the dead-letter file before shutdown returned"
    );
    assert!(stats.failed_writes > 0);
    let letters = dead_letters(&path);
    assert_eq!(letters.len(), 10);
    assert!(letters.iter().all(|l| l.reason == "shutdown_timeout"));

    // Every clone gets the same answer; records submitted afterwards go to the file too.
    assert_eq!(handle.clone().shutdown().await.unwrap_err(), err);
    assert!(handle.is_closed());
    handle.submit(rec(99));
    eventually("the late record in the file", || {
        handle.stats().dead_lettered == 11
    })
    .await;
    assert_eq!(dead_letters(&path)[10].reason, "shutdown");
    assert!(sink.ids().is_empty());
}

#[tokio::test]
async fn shutdown_deadline_bounds_a_hung_write() {
    let sink = MemSink::new();
    sink.set_open(false);
    let handle = fast()
        .write_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_millis(100))
        .spawn(Arc::clone(&sink));
    for i in 0..3 {
        handle.submit(rec(i));
    }
    eventually("the writer to enter the sink", || {
        sink.entered.load(Ordering::SeqCst) >= 1
    })
    .await;
    let started = Instant::now();
    let err = handle.shutdown().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.unwritten(), 3);
}

#[tokio::test]
async fn a_write_timeout_counts_as_a_failure_and_is_retried() {
    let sink = MemSink::new();
    sink.set_open(false);
    let handle = fast()
        .write_timeout(Duration::from_millis(20))
        .spawn(Arc::clone(&sink));
    handle.submit(rec(1));
    eventually("a timed-out attempt", || handle.stats().failed_writes >= 2).await;
    sink.set_open(true);
    written(&handle, 1).await;
    handle.shutdown().await.unwrap();
    assert_eq!(sink.ids(), vec![rec(1).request_id]);
}

#[tokio::test]
async fn dropping_every_handle_still_writes_what_was_queued() {
    let sink = MemSink::new();
    let handle = fast().spawn(Arc::clone(&sink));
    for i in 0..100 {
        handle.submit(rec(i));
    }
    drop(handle);
    eventually("100 rows", || sink.ids().len() == 100).await;
}

#[tokio::test]
async fn a_dead_letter_path_is_checked_without_creating_anything() {
    let dir = temp_dir("dead-letter-check");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let check = |path: Option<std::path::PathBuf>| {
        let writer = match path {
            Some(path) => fast().dead_letter_path(path),
            None => fast().without_dead_letter(),
        };
        writer.spawn(MemSink::new()).check_dead_letter()
    };
    // Writable: a file that exists, or one whose missing directories the writer creates.
    assert!(check(Some(file.clone())).is_ok());
    assert!(check(Some(dir.path().join("not/yet/dead.jsonl"))).is_ok());
    assert!(check(None).is_ok());
    // Never writable: a directory, or a path under a file.
    let err = check(Some(dir.path().to_owned())).unwrap_err();
    assert_eq!(err.to_string(), "it is a directory");
    assert!(check(Some(file.join("dead.jsonl"))).is_err());
    assert!(check(Some(file.join("deeper/dead.jsonl"))).is_err());
    // Nothing was created by checking.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a-file"]);
}
