//! Where spend-log records go: the [`SpendLogSink`] trait, its implementations, the batching
//! [`SpendLogWriter`] in front of them, and the [`SpendLogStore`] query API.
//!
//! Sinks:
//!
//! - [`SqliteSink`] (feature `sqlite`, on by default): an embedded SQLite file, the default for a
//!   single gateway.
//! - [`PostgresSink`] (feature `postgres`): production and multi-replica deployments.
//! - [`JsonlSink`]: one JSON object per line, appended to a file.
//! - [`ChannelSink`]: records sent to an in-process channel, for tests and embedding.
//!
//! Records do not go to a sink directly from the request path: [`SpendLogWriter::spawn`] starts a
//! background task that owns the sink and returns a cheap, cloneable [`SpendLogHandle`] whose
//! synchronous [`submit`](SpendLogHandle::submit) puts a record in a bounded queue. The task
//! writes batches in one transaction each, retries transient failures with capped exponential
//! backoff, writes a batch the database rejects row by row (sanitizing, then dead-lettering the
//! rows it still refuses, so one bad row never jams the queue), and
//! [`shutdown`](SpendLogHandle::shutdown) flushes what is queued.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//!
//! use guardrail_tower_spend_log::{
//!     ChannelSink, SpendLogWriter, SpendMetadata, SpendRecord, SpendStatus,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (sink, mut records) = ChannelSink::new();
//! let handle = SpendLogWriter::new().capacity(10_000).spawn(sink);
//!
//! // From the request path (synchronous, never blocks):
//! handle.submit(SpendRecord {
//!     request_id: "0198a8a0-0000-7000-8000-000000000001".into(),
//!     client_request_id: Some("req-1".into()),
//!     call_type: "acompletion".into(),
//!     status: SpendStatus::Success,
//!     model: "gpt-4o".into(),
//!     api_base: None,
//!     user: None,
//!     api_key: None,
//!     spend: 0.0,
//!     prompt_tokens: 10,
//!     completion_tokens: 5,
//!     total_tokens: 15,
//!     start_time: SystemTime::now(),
//!     end_time: SystemTime::now(),
//!     completion_start_time: None,
//!     metadata: SpendMetadata {
//!         http_status: 200,
//!         ..SpendMetadata::default()
//!     },
//! });
//!
//! // When the server stops:
//! handle.shutdown().await.expect("every record written");
//! assert_eq!(
//!     records.recv().await.unwrap().client_request_id.as_deref(),
//!     Some("req-1")
//! );
//! assert_eq!(handle.stats().written, 1);
//! # }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::record::SpendRecord;

mod channel;
mod dead_letter;
mod error;
mod filter;
#[cfg(feature = "jsonl")]
mod jsonl;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;

pub use channel::ChannelSink;
pub use dead_letter::DeadLetterEntry;
pub use error::{SinkError, SinkErrorKind};
pub use filter::{
    BlockSummaryRow, DEFAULT_QUERY_LIMIT, FilterError, MAX_QUERY_LIMIT, SpendLogFilter,
    SpendLogQuery,
};
#[cfg(feature = "jsonl")]
pub use jsonl::JsonlSink;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSink, PostgresSinkBuilder};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteSink, SqliteSinkBuilder};
pub use writer::{
    Deferred, QueueFullPolicy, ShutdownError, SpendLogHandle, SpendLogStats, SpendLogWriter,
};

/// The boxed future returned by [`SpendLogSink`] and [`SpendLogStore`] methods.
pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// A destination for spend-log records.
///
/// Object safe (`Arc<dyn SpendLogSink>` works); implemented for `Arc<S>` and `Box<S>` so one sink
/// can be shared by a [`SpendLogWriter`] and a [`SpendLogStore`] user.
///
/// # Contract
///
/// - [`write_batch`](SpendLogSink::write_batch) writes the whole batch or nothing: one
///   transaction (SQLite, PostgreSQL), one append that is rolled back on failure (JSON lines).
/// - Writes are idempotent on `request_id`: a record whose `request_id` is already stored is
///   skipped, so a batch that is retried after an ambiguous failure (a timeout, a connection
///   lost during commit) is never duplicated. (The JSON lines sink can only promise this for
///   retried batches; see [`JsonlSink`]. The channel sink delivers what it is given.)
/// - An error means the batch may not have been written; its [kind](SinkError::kind) tells
///   the [`SpendLogWriter`] whether to retry it (transient) or write its rows one by one
///   (permanent: the database rejected a value).
pub trait SpendLogSink: Send + Sync + 'static {
    /// Writes `records` in one transaction.
    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()>;

    /// Where the [`SpendLogWriter`] puts records this sink will not take, unless it is told
    /// otherwise ([`SpendLogWriter::dead_letter_path`]): beside the database file for SQLite
    /// and JSON lines (`<file>.dead-letter.jsonl`), `spend_logs.dead-letter.jsonl` in the
    /// working directory for PostgreSQL. `None` (the default): no dead-letter file.
    fn dead_letter_path(&self) -> Option<PathBuf> {
        None
    }
}

impl<S: SpendLogSink + ?Sized> SpendLogSink for Arc<S> {
    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        (**self).write_batch(records)
    }

    fn dead_letter_path(&self) -> Option<PathBuf> {
        (**self).dead_letter_path()
    }
}

impl<S: SpendLogSink + ?Sized> SpendLogSink for Box<S> {
    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        (**self).write_batch(records)
    }

    fn dead_letter_path(&self) -> Option<PathBuf> {
        (**self).dead_letter_path()
    }
}

/// The columns of the spend-log table with an index of their own besides `"startTime"`, as
/// (index name suffix, quoted column), for the SQLite and PostgreSQL sinks alike. Each is only
/// ever looked up by equality, so its index is partial (`WHERE column IS NOT NULL`): a row
/// without the value (no `x-request-id`, no key, no user) costs no index entry, and
/// `column = ?` still uses it. (The `status` index of earlier versions is dropped: two values,
/// no query faster with it, and every insert paid for it.)
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const PARTIAL_INDEXES: [(&str, &str); 3] = [
    ("client_request_id", "client_request_id"),
    ("api_key", "api_key"),
    ("user", "\"user\""),
];

/// `<file>.dead-letter.jsonl` beside `file`.
#[cfg(any(feature = "sqlite", feature = "jsonl"))]
fn beside(file: &std::path::Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".dead-letter.jsonl");
    file.with_file_name(name)
}

/// Reads spend-log records back: backs a `GET /spend/logs` endpoint and block dashboards.
///
/// Implemented by [`SqliteSink`], [`PostgresSink`] and [`JsonlSink`] (and by `Arc`/`Box` of
/// any implementation).
pub trait SpendLogStore: Send + Sync + 'static {
    /// The records matching `filter`, newest first (see [`SpendLogFilter`]).
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>>;

    /// Guardrail blocks per UTC day and guardrail name, for records whose `startTime` is in
    /// `start..end` (either bound optional, `start` inclusive, `end` exclusive), ordered by day
    /// then name. See [`BlockSummaryRow`].
    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>>;
}

impl<S: SpendLogStore + ?Sized> SpendLogStore for Arc<S> {
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>> {
        (**self).query(filter)
    }

    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>> {
        (**self).block_summary(start, end)
    }
}

impl<S: SpendLogStore + ?Sized> SpendLogStore for Box<S> {
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>> {
        (**self).query(filter)
    }

    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>> {
        (**self).block_summary(start, end)
    }
}

/// Quotes an SQL identifier (`"name"`, inner quotes doubled). Valid for SQLite and PostgreSQL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The default table name, shared with LiteLLM.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const DEFAULT_TABLE: &str = "LiteLLM_SpendLogs";

/// The column list used by the SQL sinks' `INSERT` and `SELECT`, in [`SpendRecord`] field order.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const COLUMNS: &str = "request_id, client_request_id, call_type, status, model, api_base, \"user\", \
     api_key, spend, prompt_tokens, completion_tokens, total_tokens, \"startTime\", \"endTime\", \
     \"completionStartTime\", metadata";
