//! The batching writer: batching, retries, queue-full policies, shutdown.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guardrail_tower_spend_log::{
    QueueFullPolicy, SinkError, SinkErrorKind, SinkFuture, SpendLogHandle, SpendLogSink,
    SpendLogWriter, SpendRecord, SpendStatus,
};
use tokio::sync::watch;

use crate::common::{eventually, record, written};

/// An in-memory sink, idempotent on `request_id` like the database sinks, that can be made to
/// fail, or to hang until opened.
struct MemSink {
    rows: Mutex<Vec<SpendRecord>>,
    batches: Mutex<Vec<usize>>,
    entered: AtomicUsize,
    fail_next: AtomicUsize,
    fail_forever: AtomicBool,
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

#[tokio::test]
async fn queue_full_with_drop_policy_counts_what_did_not_fit() {
    let (sink, handle) = writer_blocked_on_first_record(QueueFullPolicy::Drop).await;
    for i in 1..=20 {
        handle.submit(rec(i));
    }
    // 8 fit in the queue; 12 did not.
    let stats = handle.stats();
    assert_eq!((stats.dropped, stats.queued, stats.pending), (12, 9, 9));
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
async fn queue_full_with_wait_policy_writes_everything() {
    let (sink, handle) = writer_blocked_on_first_record(QueueFullPolicy::Wait).await;
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
    let stats = handle.stats();
    assert_eq!(
        (stats.dropped, stats.queued, stats.pending, stats.written),
        (0, 26, 26, 0)
    );

    sink.set_open(true);
    written(&handle, 26).await;
    handle.shutdown().await.unwrap();
    let ids: BTreeSet<_> = sink.ids().into_iter().collect();
    assert_eq!(ids, (0..=25).map(|i| rec(i).request_id).collect());
    assert_eq!(sink.ids().len(), 26);
    assert_eq!(handle.stats().dropped, 0);
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
async fn shutdown_reports_what_a_dead_sink_never_took() {
    let sink = MemSink::new();
    sink.fail_forever.store(true, Ordering::SeqCst);
    let handle = fast()
        .shutdown_timeout(Duration::from_millis(200))
        .max_batch_size(4)
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
    assert!(msg.contains("10 record(s) could not be written"), "{msg}");
    assert!(msg.contains("test sink is down"), "{msg}");
    let stats = handle.stats();
    assert_eq!((stats.written, stats.dropped, stats.pending), (0, 10, 0));
    assert!(stats.failed_writes > 0);

    // Every clone gets the same answer; records submitted afterwards are refused and counted.
    assert_eq!(handle.clone().shutdown().await.unwrap_err(), err);
    assert!(handle.is_closed());
    handle.submit(rec(99));
    assert_eq!(handle.stats().dropped, 11);
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
