//! The error type shared by every sink and store.

use std::error::Error as StdError;
use std::fmt;

/// What kind of failure a [`SinkError`] is.
///
/// The [`SpendLogWriter`](super::SpendLogWriter) acts on the kind: transient kinds
/// ([`is_transient`](SinkError::is_transient)) are retried with capped backoff until the write
/// succeeds; a permanent one ([`is_permanent`](SinkError::is_permanent): the database rejected
/// a value of the batch) has the batch written row by row, the rejected row sanitized and
/// retried once, then dead-lettered; any other kind is retried a few times, then handled like
/// a permanent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The database could not be reached, or the connection broke. Transient.
    Unavailable,
    /// The database is locked by another writer (SQLite `SQLITE_BUSY` / `SQLITE_LOCKED`).
    /// Transient.
    Busy,
    /// The operation did not finish within its timeout. Transient.
    Timeout,
    /// The database rejected a value of the batch: a data exception (a NUL byte in text, a value
    /// too long for its column, an invalid encoding) or a constraint violation (PostgreSQL
    /// SQLSTATE classes 22, 23 and 54; SQLite `SQLITE_CONSTRAINT`, `SQLITE_TOOBIG`,
    /// `SQLITE_MISMATCH`). Permanent for that row: retrying it as it is cannot succeed.
    Rejected,
    /// The database refused a statement for another reason (schema mismatch, permissions).
    Database,
    /// A file could not be opened, read or written.
    Io,
    /// A record could not be encoded, or a stored row could not be decoded.
    Encoding,
    /// The sink is closed: its receiver, worker thread or runtime is gone.
    Closed,
    /// The sink's configuration is invalid (a malformed URL, for example).
    Config,
}

impl SinkErrorKind {
    /// A short lowercase name (`unavailable`, `busy`, ...), for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkErrorKind::Unavailable => "unavailable",
            SinkErrorKind::Busy => "busy",
            SinkErrorKind::Timeout => "timeout",
            SinkErrorKind::Rejected => "rejected",
            SinkErrorKind::Database => "database",
            SinkErrorKind::Io => "io",
            SinkErrorKind::Encoding => "encoding",
            SinkErrorKind::Closed => "closed",
            SinkErrorKind::Config => "config",
        }
    }
}

impl fmt::Display for SinkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sink or store operation failed.
///
/// An opaque error: [`kind`](SinkError::kind) says what class of failure it is, `Display` says
/// what happened (including the underlying cause), and [`source`](StdError::source) gives the
/// underlying error (a database driver error, an `io::Error`, a `serde_json::Error`) for
/// downcasting.
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl SinkError {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        SinkError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation later may succeed without anyone changing anything
    /// (unavailable, busy, timeout, I/O).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            SinkErrorKind::Unavailable
                | SinkErrorKind::Busy
                | SinkErrorKind::Timeout
                | SinkErrorKind::Io
        )
    }

    /// Whether the database rejected a value of the batch for good (a data exception or a
    /// constraint violation), or a record could not be encoded: retrying the same rows cannot
    /// succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self.kind, SinkErrorKind::Rejected | SinkErrorKind::Encoding)
    }

    #[cfg(any(feature = "jsonl", feature = "sqlite"))]
    pub(crate) fn io(message: impl Into<String>, err: std::io::Error) -> Self {
        SinkError::new(SinkErrorKind::Io, message).with_source(err)
    }

    #[cfg(any(feature = "jsonl", feature = "sqlite", feature = "postgres"))]
    pub(crate) fn encoding(
        message: impl Into<String>,
        err: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        SinkError::new(SinkErrorKind::Encoding, message).with_source(err)
    }

    pub(crate) fn closed(message: impl Into<String>) -> Self {
        SinkError::new(SinkErrorKind::Closed, message)
    }
}

impl fmt::Debug for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SinkError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for SinkError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
