//! [`SqliteSink`]: an embedded SQLite database file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime};

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, ffi, params_from_iter};
use tokio::sync::oneshot;

use super::{
    BlockSummaryRow, COLUMNS, DEFAULT_TABLE, SinkError, SinkErrorKind, SinkFuture, SpendLogFilter,
    SpendLogSink, SpendLogStore, quote_ident,
};
use crate::record::{SpendRecord, SpendStatus, rfc3339};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A sink (and [`SpendLogStore`]) backed by an SQLite database file: the embedded default.
///
/// [`open`](SqliteSink::open) creates the table (default `LiteLLM_SpendLogs`) and its indexes if
/// they are missing and switches the database to WAL mode (`synchronous = NORMAL`), so readers
/// (a dashboard, `sqlite3` on the command line) never block the writer. Columns follow the
/// record's serialized names: `request_id` (primary key), `call_type`, `status`, `model`,
/// `api_base`, `"user"`, `api_key`, `spend` (REAL), `prompt_tokens`, `completion_tokens`,
/// `total_tokens` (INTEGER), `"startTime"`, `"endTime"`, `"completionStartTime"` (RFC 3339 text
/// in UTC with milliseconds, which sorts chronologically) and `metadata` (JSON text; query it
/// with SQLite's JSON functions).
///
/// A batch is one `BEGIN IMMEDIATE` transaction of `INSERT OR IGNORE`s, so a retried batch never
/// duplicates a record. While another connection holds the write lock, a write waits up to the
/// busy timeout (default 5 s) and then fails with [`SinkErrorKind::Busy`] (transient: the
/// writer retries). A row SQLite refuses (a constraint, a value too big) fails with
/// [`SinkErrorKind::Rejected`].
///
/// The table also has `client_request_id` (the client's `x-request-id`). Indexes: the primary
/// key, `"startTime"` (time ranges, newest first), and partial indexes (`WHERE column IS NOT
/// NULL`) on `client_request_id`, `api_key` and `"user"` for the query filters, so a row
/// without one of them costs no entry in its index. A table created by an earlier version is
/// migrated in place when the sink opens: `client_request_id` is added (existing rows keep
/// their `request_id` and get a null one), the `status` index is dropped, and full indexes on
/// the lookup columns are rebuilt as partial ones.
///
/// SQLite is blocking: the write connection lives on a dedicated thread and every write is sent
/// to it, so no Tokio worker ever blocks. Queries ([`SpendLogStore`]) run on a second,
/// read-only connection on a thread of its own (WAL mode lets it read while the writer
/// writes), so a slow query never delays writes (`:memory:` databases, which only one
/// connection can see, use the write connection). The threads end when the last clone of the
/// sink is dropped.
#[derive(Clone)]
pub struct SqliteSink {
    jobs: std_mpsc::Sender<Job>,
    /// The read connection's thread (`None` for `:memory:`, which only one connection sees).
    reads: Option<std_mpsc::Sender<Job>>,
    table: String,
    /// The multi-row `INSERT`s a batch is written with (see [`ROWS_PER_INSERT`]), made once.
    inserts: Arc<[(usize, String)]>,
    path: PathBuf,
}

impl fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSink")
            .field("path", &self.path)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Configures and opens a [`SqliteSink`]; from [`SqliteSink::builder`].
#[derive(Debug, Clone)]
pub struct SqliteSinkBuilder {
    path: PathBuf,
    table: String,
    busy_timeout: Duration,
}

impl SqliteSinkBuilder {
    /// The table name (default `LiteLLM_SpendLogs`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a write waits for another connection's lock before failing with
    /// [`SinkErrorKind::Busy`] (default 5 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Opens (creating if missing) the database, the table and its indexes.
    pub async fn open(self) -> Result<SqliteSink, SinkError> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let path = self.path.clone();
        let table = self.table.clone();
        let busy_timeout = self.busy_timeout;
        std::thread::Builder::new()
            .name("spend-log-sqlite".into())
            .spawn(move || {
                let mut conn = match open_connection(&path, &table, busy_timeout) {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| SinkError::io("cannot start the SQLite thread", e))?;
        ready_rx
            .await
            .map_err(|_| SinkError::closed("the SQLite thread exited while opening"))??;
        let reads = if is_memory(&self.path) {
            None
        } else {
            let (reads, rx) = std_mpsc::channel::<Job>();
            let (ready_tx, ready_rx) = oneshot::channel();
            let path = self.path.clone();
            std::thread::Builder::new()
                .name("spend-log-sqlite-read".into())
                .spawn(move || {
                    let mut conn = match open_reader(&path, busy_timeout) {
                        Ok(conn) => {
                            let _ = ready_tx.send(Ok(()));
                            conn
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    for job in rx {
                        job(&mut conn);
                    }
                })
                .map_err(|e| SinkError::io("cannot start the SQLite read thread", e))?;
            ready_rx
                .await
                .map_err(|_| SinkError::closed("the SQLite read thread exited while opening"))??;
            Some(reads)
        };
        let table = quote_ident(&self.table);
        Ok(SqliteSink {
            jobs,
            reads,
            inserts: ROWS_PER_INSERT
                .map(|size| (size, insert_sql(&table, size)))
                .into(),
            table: self.table,
            path: self.path,
        })
    }
}

impl SqliteSink {
    /// Opens (creating if missing) the database at `path` with the default settings.
    /// `":memory:"` opens a private in-memory database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        SqliteSink::builder(path).open().await
    }

    /// A builder, to set the table name or the busy timeout.
    pub fn builder(path: impl AsRef<Path>) -> SqliteSinkBuilder {
        SqliteSinkBuilder {
            path: path.as_ref().to_path_buf(),
            table: DEFAULT_TABLE.to_owned(),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the write connection's thread.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        Self::run(&self.jobs, f).await
    }

    /// Runs `f` on the read connection's thread (the write connection's for `:memory:`).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        Self::run(self.reads.as_ref().unwrap_or(&self.jobs), f).await
    }

    async fn run<T: Send + 'static>(
        jobs: &std_mpsc::Sender<Job>,
        f: impl FnOnce(&mut Connection) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let (tx, rx) = oneshot::channel();
        jobs.send(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }))
        .map_err(|_| SinkError::closed("the SQLite thread has exited"))?;
        rx.await.map_err(|_| {
            SinkError::closed("the SQLite thread dropped an operation (it panicked)")
        })?
    }
}

fn is_memory(path: &Path) -> bool {
    path == Path::new(":memory:") || path.as_os_str().is_empty()
}

/// The read-only connection for queries.
fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, SinkError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_error(&format!("cannot open {} for reading", path.display()), e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| sql_error("cannot set the busy timeout", e))?;
    Ok(conn)
}

fn open_connection(
    path: &Path,
    table: &str,
    busy_timeout: Duration,
) -> Result<Connection, SinkError> {
    let conn = Connection::open(path)
        .map_err(|e| sql_error(&format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| sql_error("cannot set the busy timeout", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| sql_error("cannot switch to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") && path != Path::new(":memory:") {
        tracing::warn!(path = %path.display(), mode, "spend log: SQLite did not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| sql_error("cannot set synchronous = NORMAL", e))?;
    let t = quote_ident(table);
    // One writer at a time creates or migrates the table (two gateways opening one file).
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| sql_error(&format!("cannot create the table {table}"), e))?;
    let created = create_or_migrate(&conn, table, &t);
    let end = if created.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    conn.execute_batch(end)
        .map_err(|e| sql_error(&format!("cannot create the table {table}"), e))?;
    created?;
    Ok(conn)
}

/// Creates the table and its indexes, or brings an older table up to date: adds
/// `client_request_id`, drops the `status` index (two values: no query is faster with it, and
/// every insert paid for it), and replaces full indexes on the lookup columns by partial ones.
fn create_or_migrate(conn: &Connection, table: &str, t: &str) -> Result<(), SinkError> {
    let fail = |e| sql_error(&format!("cannot create the table {table}"), e);
    let migrate = |e| sql_error(&format!("cannot migrate the table {table}"), e);
    let existing: Vec<String> = {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info({})",
                quote_literal(table)
            ))
            .map_err(fail)?;
        stmt.query_map([], |row| row.get::<_, String>(0))
            .map_err(fail)?
            .collect::<Result<_, _>>()
            .map_err(fail)?
    };
    if !existing.is_empty() && !existing.iter().any(|c| c == "client_request_id") {
        tracing::info!(
            table,
            "spend log: adding client_request_id to an existing table"
        );
        conn.execute_batch(&format!(
            "ALTER TABLE {t} ADD COLUMN client_request_id TEXT"
        ))
        .map_err(migrate)?;
    }
    let start_idx = quote_ident(&format!("{table}_startTime_idx"));
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            request_id TEXT PRIMARY KEY NOT NULL,
            client_request_id TEXT,
            call_type TEXT NOT NULL,
            status TEXT NOT NULL,
            model TEXT NOT NULL,
            api_base TEXT,
            \"user\" TEXT,
            api_key TEXT,
            spend REAL NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            total_tokens INTEGER NOT NULL DEFAULT 0,
            \"startTime\" TEXT NOT NULL,
            \"endTime\" TEXT NOT NULL,
            \"completionStartTime\" TEXT,
            metadata TEXT NOT NULL DEFAULT '{{}}'
        );
        CREATE INDEX IF NOT EXISTS {start_idx} ON {t} (\"startTime\");
        DROP INDEX IF EXISTS {};",
        quote_ident(&format!("{table}_status_idx"))
    ))
    .map_err(fail)?;
    for (name, column) in super::PARTIAL_INDEXES {
        let index = format!("{table}_{name}_idx");
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&index],
                |row| row.get(0),
            )
            .optional()
            .map_err(fail)?
            .flatten();
        let partial = sql.as_deref().is_some_and(|sql| sql.contains(" WHERE "));
        if partial {
            continue;
        }
        if sql.is_some() {
            tracing::info!(table, index, "spend log: making an index partial");
        }
        let index = quote_ident(&index);
        conn.execute_batch(&format!(
            "DROP INDEX IF EXISTS {index};
             CREATE INDEX {index} ON {t} ({column}) WHERE {column} IS NOT NULL;"
        ))
        .map_err(migrate)?;
    }
    Ok(())
}

/// Quotes an SQL string literal (`'text'`, inner quotes doubled).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Records as SQLite values, built on the async side so the SQLite thread only inserts: the
/// text of every value of every record in one buffer (one allocation a batch, where a value
/// each cost an allocation, a copy and a free), the values as ranges of it.
struct Rows {
    text: String,
    cells: Vec<Cell>,
}

/// One value of a [`Rows`]: text as a range of [`Rows::text`].
#[derive(Clone, Copy)]
enum Cell {
    Null,
    Text(usize, usize),
    Integer(i64),
    Real(f64),
}

/// The columns of a row, in [`COLUMNS`]' order.
const ROW_CELLS: usize = 16;

/// The most text a row is guessed to hold when a batch's buffer is sized (a row with two
/// guardrail entries holds about 1,150 bytes; rows with stored prompts, more).
const ROW_GUESS_MAX: usize = 4096;

impl Rows {
    fn new(records: &[SpendRecord]) -> Rows {
        let mut rows = Rows {
            text: String::with_capacity(1024),
            cells: Vec::with_capacity(records.len() * ROW_CELLS),
        };
        let Some((first, rest)) = records.split_first() else {
            return rows;
        };
        rows.push(first);
        // The first row's size stands for the others' (one gateway's rows are alike: the same
        // members, the same guardrails' entries), with a quarter more: the buffer is allocated
        // about once, where a fixed guess of 512 bytes a row grew it, copying it, once or
        // twice a batch for rows with guardrail entries. Not beyond `ROW_GUESS_MAX` a row: a
        // first row with a stored prompt of a megabyte says nothing about the others.
        let per_row = (rows.text.len() + rows.text.len() / 4).min(ROW_GUESS_MAX);
        rows.text.reserve(rest.len() * per_row);
        for r in rest {
            rows.push(r);
        }
        rows
    }

    fn push(&mut self, r: &SpendRecord) {
        let int = |n: u64| Cell::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let before = self.cells.len();
        self.text(&r.request_id);
        self.optional(r.client_request_id.as_deref());
        self.text(&r.call_type);
        self.text(r.status.as_str());
        self.text(&r.model);
        self.optional(r.api_base.as_deref());
        self.optional(r.user.as_deref());
        self.optional(r.api_key.as_deref());
        self.cells.push(Cell::Real(r.spend));
        self.cells.push(int(r.prompt_tokens));
        self.cells.push(int(r.completion_tokens));
        self.cells.push(int(r.total_tokens));
        self.written(|out| rfc3339::write(r.start_time, out));
        self.written(|out| rfc3339::write(r.end_time, out));
        match r.completion_start_time {
            Some(t) => self.written(|out| rfc3339::write(t, out)),
            None => self.cells.push(Cell::Null),
        }
        self.written(|out| r.metadata.write_json(out));
        debug_assert_eq!(self.cells.len() - before, ROW_CELLS);
    }

    fn text(&mut self, s: &str) {
        self.written(|out| out.push_str(s));
    }

    fn optional(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.cells.push(Cell::Null),
        }
    }

    /// A text value: what `write` appends to the buffer.
    fn written(&mut self, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        write(&mut self.text);
        self.cells.push(Cell::Text(start, self.text.len()));
    }

    fn len(&self) -> usize {
        self.cells.len() / ROW_CELLS
    }

    /// The values of the rows from `row` on, `rows` of them, as SQLite binds them (the text
    /// borrowed from the buffer).
    fn values(&self, row: usize, rows: usize) -> impl Iterator<Item = ToSqlOutput<'_>> {
        self.cells[row * ROW_CELLS..(row + rows) * ROW_CELLS]
            .iter()
            .map(|cell| {
                ToSqlOutput::Borrowed(match *cell {
                    Cell::Null => ValueRef::Null,
                    Cell::Text(start, end) => ValueRef::Text(&self.text.as_bytes()[start..end]),
                    Cell::Integer(n) => ValueRef::Integer(n),
                    Cell::Real(x) => ValueRef::Real(x),
                })
            })
    }
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SpendRecord, SinkError>> {
    let status: String = row.get(3)?;
    let tokens = |i: usize| -> rusqlite::Result<u64> {
        let n: i64 = row.get(i)?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let start: String = row.get(12)?;
    let end: String = row.get(13)?;
    let completion_start: Option<String> = row.get(14)?;
    let metadata: String = row.get(15)?;
    let request_id: String = row.get(0)?;
    let client_request_id: Option<String> = row.get(1)?;
    let (call_type, model): (String, String) = (row.get(2)?, row.get(4)?);
    let (api_base, user, api_key) = (row.get(5)?, row.get(6)?, row.get(7)?);
    let spend: f64 = row.get(8)?;
    let (prompt_tokens, completion_tokens, total_tokens) = (tokens(9)?, tokens(10)?, tokens(11)?);
    let decode = move || -> Result<SpendRecord, SinkError> {
        let bad = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
            SinkError::encoding(format!("stored record {request_id}: invalid {what}"), e)
        };
        let time = |what: &str, s: &str| rfc3339::parse(s).map_err(|e| bad(what, e.into()));
        Ok(SpendRecord {
            status: status
                .parse::<SpendStatus>()
                .map_err(|e| bad("status", e.into()))?,
            start_time: time("startTime", &start)?,
            end_time: time("endTime", &end)?,
            completion_start_time: completion_start
                .as_deref()
                .map(|s| time("completionStartTime", s))
                .transpose()?,
            metadata: serde_json::from_str(&metadata).map_err(|e| bad("metadata", e.into()))?,
            call_type,
            model,
            api_base,
            user,
            api_key,
            spend,
            prompt_tokens,
            completion_tokens,
            total_tokens,
            request_id,
            client_request_id,
        })
    };
    Ok(decode())
}

/// Classifies an SQLite error: busy and locked are transient (another connection holds the
/// lock), as are a database that cannot be opened and I/O failures (a full disk, an unmounted
/// volume); a constraint, a value too big or of the wrong type is the row's fault
/// ([`SinkErrorKind::Rejected`]); anything else is a database error.
fn sql_error(context: &str, e: rusqlite::Error) -> SinkError {
    let kind = match e.sqlite_error_code() {
        Some(ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked) => SinkErrorKind::Busy,
        Some(ffi::ErrorCode::CannotOpen) => SinkErrorKind::Unavailable,
        Some(ffi::ErrorCode::SystemIoFailure | ffi::ErrorCode::DiskFull) => SinkErrorKind::Io,
        Some(
            ffi::ErrorCode::ConstraintViolation
            | ffi::ErrorCode::TooBig
            | ffi::ErrorCode::TypeMismatch,
        ) => SinkErrorKind::Rejected,
        _ => match e {
            rusqlite::Error::ToSqlConversionFailure(_) => SinkErrorKind::Rejected,
            _ => SinkErrorKind::Database,
        },
    };
    SinkError::new(kind, context).with_source(e)
}

impl SpendLogSink for SqliteSink {
    fn dead_letter_path(&self) -> Option<PathBuf> {
        (!is_memory(&self.path)).then(|| super::beside(&self.path))
    }

    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let rows = Rows::new(records);
            let statements = Arc::clone(&self.inserts);
            self.call(move |conn| {
                immediate_transaction(conn, |conn| {
                    let (mut at, mut left) = (0, rows.len());
                    // Several rows per statement (one VDBE run, one bind pass), in chunks of
                    // 16, 8, 4, 2 and 1 rows: five cached statements cover any batch size.
                    for (size, sql) in statements.iter() {
                        let size = *size;
                        if left < size {
                            continue;
                        }
                        // Taken from the cache once for all its runs: each return to the
                        // cache clears the 256 bindings.
                        let mut insert = conn.prepare_cached(sql)?;
                        while left >= size {
                            insert.execute(params_from_iter(rows.values(at, size)))?;
                            at += size;
                            left -= size;
                        }
                    }
                    Ok(())
                })
                .map_err(|e| sql_error("cannot write spend-log records", e))
            })
            .await
        })
    }
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction: committed when `f` succeeds, rolled back when
/// it or the commit fails. `BEGIN` and `COMMIT` are cached statements (rusqlite's `Transaction`
/// parses both anew for every batch, a few thousand instructions each time).
fn immediate_transaction(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let done = f(conn).and_then(|()| conn.prepare_cached("COMMIT")?.execute([]).map(drop));
    if done.is_err() && !conn.is_autocommit() {
        // The error is the one to report; a rollback that fails too leaves nothing to add (the
        // next `BEGIN` would fail and say why).
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

/// The row counts of the multi-row `INSERT`s a batch is written with, largest first (16 rows of
/// 16 columns: 256 parameters, within SQLite's oldest limit of 999).
const ROWS_PER_INSERT: [usize; 5] = [16, 8, 4, 2, 1];

/// `INSERT OR IGNORE INTO table (...) VALUES (?, ...), ...` for `rows` rows.
fn insert_sql(table: &str, rows: usize) -> String {
    let one = format!("({})", ["?"; ROW_CELLS].join(", "));
    format!(
        "INSERT OR IGNORE INTO {table} ({COLUMNS}) VALUES {}",
        vec![one; rows].join(", ")
    )
}

/// Appends `<column> >= ?` / `<column> < ?` conditions (the stored RFC 3339 text sorts like the
/// times it holds).
fn push_time_range(
    column: &str,
    conditions: &mut Vec<String>,
    params: &mut Vec<SqlValue>,
    start: Option<SystemTime>,
    end: Option<SystemTime>,
) {
    if let Some(start) = start {
        conditions.push(format!("{column} >= ?"));
        params.push(SqlValue::Text(rfc3339::format(start)));
    }
    if let Some(end) = end {
        conditions.push(format!("{column} < ?"));
        params.push(SqlValue::Text(rfc3339::format(end)));
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

impl SpendLogStore for SqliteSink {
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>> {
        Box::pin(async move {
            let mut conditions = Vec::new();
            let mut params = Vec::new();
            for (column, value) in [
                ("request_id", &filter.request_id),
                ("client_request_id", &filter.client_request_id),
                ("api_key", &filter.api_key),
                ("\"user\"", &filter.user_id),
            ] {
                if let Some(value) = value {
                    conditions.push(format!("{column} = ?"));
                    params.push(SqlValue::Text(value.clone()));
                }
            }
            push_time_range(
                "\"startTime\"",
                &mut conditions,
                &mut params,
                filter.start,
                filter.end,
            );
            if let Some(status) = filter.status {
                conditions.push("status = ?".to_owned());
                params.push(SqlValue::Text(status.as_str().to_owned()));
            }
            params.push(SqlValue::Integer(
                filter
                    .limit
                    .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)),
            ));
            params.push(SqlValue::Integer(
                i64::try_from(filter.offset).unwrap_or(i64::MAX),
            ));
            let sql = format!(
                "SELECT {COLUMNS} FROM {} {} ORDER BY \"startTime\" DESC, request_id DESC LIMIT ? OFFSET ?",
                quote_ident(&self.table),
                where_clause(&conditions),
            );
            self.read(move |conn| {
                let fail = |e| sql_error("cannot query spend-log records", e);
                let mut stmt = conn.prepare_cached(&sql).map_err(fail)?;
                let rows = stmt
                    .query_map(params_from_iter(params), from_row)
                    .map_err(fail)?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(row.map_err(fail)??);
                }
                Ok(out)
            })
            .await
        })
    }

    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>> {
        Box::pin(async move {
            let mut conditions = vec![
                "json_type(s.metadata, '$.guardrail_information') = 'array'".to_owned(),
                "json_extract(g.value, '$.guardrail_action') = 'block'".to_owned(),
            ];
            let mut params = Vec::new();
            push_time_range("s.\"startTime\"", &mut conditions, &mut params, start, end);
            let sql = format!(
                "SELECT substr(s.\"startTime\", 1, 10) AS day,
                        coalesce(json_extract(g.value, '$.guardrail_name'), '') AS name,
                        count(*)
                 FROM {} AS s, json_each(s.metadata, '$.guardrail_information') AS g
                 {}
                 GROUP BY day, name
                 ORDER BY day, name",
                quote_ident(&self.table),
                where_clause(&conditions),
            );
            self.read(move |conn| {
                let fail = |e| sql_error("cannot query the guardrail block summary", e);
                let mut stmt = conn.prepare_cached(&sql).map_err(fail)?;
                let rows = stmt
                    .query_map(params_from_iter(params), |row| {
                        let blocks: i64 = row.get(2)?;
                        Ok(BlockSummaryRow::new(
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            u64::try_from(blocks).unwrap_or(0),
                        ))
                    })
                    .map_err(fail)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(fail)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::filter::utc_day;
    use super::*;

    /// `substr("startTime", 1, 10)` is the UTC day because `rfc3339::format` always writes UTC.

    #[test]
    fn substr_of_stored_time_is_the_utc_day() {
        let t = rfc3339::parse("2026-11-21T23:59:59.999Z").unwrap();
        assert_eq!(&rfc3339::format(t)[..10], utc_day(t));
    }

    /// A batch's buffer is sized from its first row, within a bound: a first row with a huge
    /// value does not make the buffer that row's size times the batch.
    #[test]
    fn a_batch_buffer_is_sized_from_its_first_row_within_a_bound() {
        let record = |user: String| SpendRecord {
            user: Some(user),
            ..crate::record::tests::record()
        };
        let mut batch = vec![record("u".repeat(1024 * 1024))];
        batch.extend((0..255).map(|_| record("u".into())));
        let rows = Rows::new(&batch);
        assert_eq!(rows.len(), 256);
        // The first row's own growth doubles to 2 MiB; the 255 others get `ROW_GUESS_MAX` each
        // (without the bound they would get 1.25 MiB each: 320 MiB).
        assert!(rows.text.capacity() <= 2 * 1024 * 1024 + 255 * ROW_GUESS_MAX);
        // Rows like the first: one allocation, no growth.
        let batch: Vec<_> = (0..256).map(|_| record("u".repeat(900))).collect();
        let rows = Rows::new(&batch);
        let first_row = rows.text.len() / 256;
        assert!(rows.text.capacity() <= 1024.max(first_row) + 255 * (first_row + first_row / 4));
    }

    #[tokio::test]
    async fn in_memory_database_works() {
        let sink = SqliteSink::open(":memory:").await.unwrap();
        let n = sink
            .call(|conn| {
                conn.query_row("SELECT count(*) FROM \"LiteLLM_SpendLogs\"", [], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map_err(|e| sql_error("count", e))
            })
            .await
            .unwrap();
        assert_eq!(n, Some(0));
    }
}
