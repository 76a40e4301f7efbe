//! [`JsonlSink`]: one JSON object per line, appended to a file.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::filter::{block_summary_in_memory, filter_in_memory};
use super::{BlockSummaryRow, SinkError, SinkFuture, SpendLogFilter, SpendLogSink, SpendLogStore};
use crate::record::SpendRecord;

/// A sink that appends each record as one line of JSON (the `serde` form of [`SpendRecord`],
/// the same names as the SQL columns) to a file, flushed after every batch.
///
/// A batch is appended with a single write; if that write fails, the file is truncated back to
/// its previous length, so a retried batch is never written twice. A `request_id` submitted
/// twice in different batches is appended twice; [`query`](SpendLogStore::query) and
/// [`block_summary`](SpendLogStore::block_summary) keep the first line for each `request_id`,
/// like the SQL sinks' primary key.
///
/// The query API reads the whole file, so this sink suits small deployments, tests and log
/// shipping (a collector tailing the file), not large histories. File I/O runs on Tokio's
/// blocking pool.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    path: Arc<PathBuf>,
    file: Arc<Mutex<File>>,
    sync_data: bool,
}

impl JsonlSink {
    /// Opens (creating if missing) `path` for appending.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let open_path = path.clone();
        let file = blocking(move || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&open_path)
                .map_err(|e| SinkError::io(format!("cannot open {}", open_path.display()), e))
        })
        .await?;
        Ok(JsonlSink {
            path: Arc::new(path),
            file: Arc::new(Mutex::new(file)),
            sync_data: false,
        })
    }

    /// Also `fsync` the file's data after every batch (default: off; the batch is flushed to the
    /// OS, which survives a process crash but not a power loss).
    pub fn sync_data(mut self, enabled: bool) -> Self {
        self.sync_data = enabled;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_all(
        &self,
    ) -> impl Future<Output = Result<Vec<SpendRecord>, SinkError>> + Send + 'static {
        let path = Arc::clone(&self.path);
        blocking(move || {
            let file = File::open(&*path)
                .map_err(|e| SinkError::io(format!("cannot open {}", path.display()), e))?;
            let mut records = Vec::new();
            let mut invalid = 0usize;
            for line in BufReader::new(file).lines() {
                let line =
                    line.map_err(|e| SinkError::io(format!("cannot read {}", path.display()), e))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<SpendRecord>(&line) {
                    Ok(record) => records.push(record),
                    Err(_) => invalid += 1,
                }
            }
            if invalid > 0 {
                tracing::warn!(
                    path = %path.display(),
                    invalid,
                    "spend log: skipped lines that are not spend-log records"
                );
            }
            Ok(records)
        })
    }
}

impl SpendLogSink for JsonlSink {
    fn dead_letter_path(&self) -> Option<PathBuf> {
        Some(super::beside(&self.path))
    }

    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let mut buf = Vec::with_capacity(records.len() * 512);
            for record in records {
                serde_json::to_writer(&mut buf, record)
                    .map_err(|e| SinkError::encoding("cannot serialize a spend-log record", e))?;
                buf.push(b'\n');
            }
            let file = Arc::clone(&self.file);
            let path = Arc::clone(&self.path);
            let sync_data = self.sync_data;
            blocking(move || {
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let before = file
                    .metadata()
                    .map_err(|e| SinkError::io(format!("cannot stat {}", path.display()), e))?
                    .len();
                let written = file
                    .write_all(&buf)
                    .and_then(|()| file.flush())
                    .and_then(|()| if sync_data { file.sync_data() } else { Ok(()) });
                if let Err(e) = written {
                    // All or nothing: drop a partial append so a retry does not duplicate lines.
                    if let Err(truncate) = file.set_len(before) {
                        tracing::error!(
                            path = %path.display(),
                            error = %truncate,
                            "spend log: cannot roll back a partial append; a retry may duplicate lines"
                        );
                    }
                    return Err(SinkError::io(format!("cannot append to {}", path.display()), e));
                }
                Ok(())
            })
            .await
        })
    }
}

impl SpendLogStore for JsonlSink {
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>> {
        let read = self.read_all();
        Box::pin(async move { Ok(filter_in_memory(read.await?, filter)) })
    }

    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>> {
        let read = self.read_all();
        Box::pin(async move { Ok(block_summary_in_memory(read.await?, start, end)) })
    }
}

/// Runs blocking file I/O on Tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::closed("the blocking file task did not complete").with_source(e))?
}
