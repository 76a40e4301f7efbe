//! The dead-letter file: records the database would not take (or that did not fit in the
//! queue), written whole as JSON lines by a thread of its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use super::writer::Counters;
use crate::record::{SpendRecord, rfc3339};

/// Why a record went to the dead-letter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The database rejected it, sanitized or not.
    Rejected,
    /// The queue was full.
    QueueFull,
    /// It was submitted after shutdown began.
    Shutdown,
    /// Shutdown's deadline passed before it was written.
    ShutdownTimeout,
    /// The writer task had stopped.
    WriterStopped,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::QueueFull => "queue_full",
            Reason::Shutdown => "shutdown",
            Reason::ShutdownTimeout => "shutdown_timeout",
            Reason::WriterStopped => "writer_stopped",
        }
    }
}

/// One line of a dead-letter file: the record, whole, and why it is there.
///
/// ```
/// # use guardrail_tower_spend_log::DeadLetterEntry;
/// let line = r#"{"dead_lettered_at":"2026-11-21T12:00:00.000Z","reason":"rejected","error":"invalid byte sequence","record":{"request_id":"0198a8a0-0000-7000-8000-000000000000","client_request_id":null,"call_type":"acompletion","status":"success","model":"gpt-4o","api_base":null,"user":null,"api_key":null,"spend":0.0,"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"startTime":"2026-11-21T12:00:00.000Z","endTime":"2026-11-21T12:00:01.000Z","completionStartTime":null,"metadata":{"http_status":200}}}"#;
/// let entry: DeadLetterEntry = serde_json::from_str(line).unwrap();
/// assert_eq!(entry.reason, "rejected");
/// assert_eq!(entry.record.total_tokens, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetterEntry {
    /// When the writer gave up on it.
    #[serde(with = "rfc3339")]
    pub dead_lettered_at: SystemTime,
    /// `rejected` (the database refused it, sanitized too), `queue_full`, `shutdown` (submitted
    /// after shutdown began), `shutdown_timeout` (not written by shutdown's deadline) or
    /// `writer_stopped`.
    pub reason: String,
    /// The last error from the database, if any.
    pub error: Option<String>,
    /// The record, as it was submitted.
    pub record: SpendRecord,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(with = "rfc3339")]
    dead_lettered_at: SystemTime,
    reason: &'static str,
    error: Option<&'a str>,
    record: &'a SpendRecord,
}

enum Msg {
    Letter {
        // Boxed: a record is large, and most messages in flight are letters anyway.
        record: Box<SpendRecord>,
        reason: Reason,
        error: Option<String>,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The submit side of the dead-letter thread. The thread ends when this is dropped.
pub(crate) struct DeadLetter {
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
    counters: Arc<Counters>,
}

impl DeadLetter {
    /// Starts the thread; the file is created on the first record. At most `capacity` records
    /// wait for the thread at once.
    pub(crate) fn start(
        path: PathBuf,
        capacity: usize,
        max_bytes: u64,
        counters: Arc<Counters>,
    ) -> DeadLetter {
        // tokio's bounded channel allocates its slots as records arrive; std's `sync_channel`
        // allocates room for every record up front (480 KB for the default capacity, in every
        // gateway, to hold nothing in the usual case).
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let thread = Thread {
            path: path.clone(),
            file: None,
            len: 0,
            max_bytes,
            counters: Arc::clone(&counters),
            last_log: None,
            unlogged: 0,
        };
        if let Err(e) = std::thread::Builder::new()
            .name("spend-log-dead-letter".into())
            .spawn(move || thread.run(rx))
        {
            tracing::error!(error = %e, "spend log: cannot start the dead-letter thread");
        }
        DeadLetter { tx, path, counters }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Hands a record over without waiting; drops it (counted, logged) if the hand-off is full.
    pub(crate) fn send(&self, record: SpendRecord, reason: Reason, error: Option<String>) {
        let msg = Msg::Letter {
            record: Box::new(record),
            reason,
            error,
        };
        let (record, why) = match self.tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(Msg::Letter { record, .. })) => (
                record,
                "the dead-letter file is not keeping up (its hand-off is full)",
            ),
            Err(TrySendError::Closed(Msg::Letter { record, .. })) => {
                (record, "the dead-letter thread has stopped")
            }
            Err(_) => return,
        };
        self.counters.lose(&record.request_id, 1, why);
    }

    /// Waits (at most `bound`) until everything handed over so far is in the file.
    pub(crate) async fn flush(&self, bound: Duration) {
        let (ack, done) = tokio::sync::oneshot::channel();
        // Waits for room in the hand-off, then for the thread's answer, within `bound`.
        let _ = tokio::time::timeout(bound, async {
            if self.tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        })
        .await;
    }
}

struct Thread {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    max_bytes: u64,
    counters: Arc<Counters>,
    last_log: Option<std::time::Instant>,
    unlogged: u64,
}

impl Thread {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut buf = Vec::new();
        let mut letters: Vec<(String, Reason)> = Vec::new();
        let mut acks = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            // Take what is waiting too: one write per burst.
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Letter {
                        record,
                        reason,
                        error,
                    } => {
                        let line = Line {
                            dead_lettered_at: SystemTime::now(),
                            reason: reason.as_str(),
                            error: error.as_deref(),
                            record: &record,
                        };
                        let start = buf.len();
                        if serde_json::to_writer(&mut buf, &line).is_ok() {
                            buf.push(b'\n');
                            letters.push((record.request_id, reason));
                        } else {
                            buf.truncate(start);
                            self.counters.lose(
                                &record.request_id,
                                1,
                                "the record could not be serialized for the dead-letter file",
                            );
                        }
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
                if letters.len() < 1024 {
                    match rx.try_recv() {
                        Ok(msg) => next = Some(msg),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                    }
                }
            }
            if !letters.is_empty() {
                self.write(&buf, &letters);
            }
            buf.clear();
            letters.clear();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    fn write(&mut self, buf: &[u8], letters: &[(String, Reason)]) {
        let n = letters.len() as u64;
        let first_id = letters.first().map_or("", |(id, _)| id.as_str());
        if self.len + buf.len() as u64 > self.max_bytes {
            tracing::error!(
                path = %self.path.display(),
                max_bytes = self.max_bytes,
                "spend log: the dead-letter file is full"
            );
            self.counters
                .lose(first_id, n, "the dead-letter file reached its size limit");
            return;
        }
        if let Err(e) = self.append(buf) {
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                records = n,
                "spend log: cannot write the dead-letter file"
            );
            self.file = None;
            self.counters
                .lose(first_id, n, "the dead-letter file could not be written");
            return;
        }
        self.counters.dead_lettered.fetch_add(n, Ordering::AcqRel);
        self.counters.pending.fetch_sub(n, Ordering::AcqRel);
        self.unlogged += n;
        let due = self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            let (_, reason) = letters[letters.len() - 1];
            tracing::warn!(
                path = %self.path.display(),
                records = self.unlogged,
                last_reason = reason.as_str(),
                request_id = first_id,
                dead_lettered_total = self.counters.dead_lettered.load(Ordering::Acquire),
                "spend log: records written to the dead-letter file (summarized at most once \
                 per second)"
            );
            self.last_log = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        // One write per burst: whole lines, appended atomically enough for a log that two
        // processes may share.
        file.write_all(buf)?;
        file.flush()?;
        self.len += buf.len() as u64;
        Ok(())
    }
}
