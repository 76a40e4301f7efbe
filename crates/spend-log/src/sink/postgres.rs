//! [`PostgresSink`]: a PostgreSQL table shared by every gateway replica.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{
    BlockSummaryRow, COLUMNS, DEFAULT_TABLE, SinkError, SinkErrorKind, SinkFuture, SpendLogFilter,
    SpendLogSink, SpendLogStore, quote_ident,
};
use crate::record::{SpendRecord, SpendStatus};

type Param = Box<dyn ToSql + Send + Sync>;

/// A sink (and [`SpendLogStore`]) backed by a PostgreSQL table: for production and for several
/// gateway replicas sharing one table.
///
/// [`connect`](PostgresSink::connect) connects and creates the table (default
/// `LiteLLM_SpendLogs`, in the first schema of the connection's `search_path`) and its indexes
/// (on `"startTime"`, `status`, `client_request_id`, `api_key` and `"user"`) if they are
/// missing, under a transaction-scoped advisory lock so replicas starting together do not race.
/// Columns: `request_id` TEXT PRIMARY KEY, `client_request_id`, `call_type`, `status`, `model`,
/// `api_base`, `"user"`, `api_key` TEXT, `spend` DOUBLE PRECISION, `prompt_tokens`,
/// `completion_tokens`, `total_tokens` BIGINT, `"startTime"`, `"endTime"`,
/// `"completionStartTime"` TIMESTAMPTZ (microsecond precision), `metadata` JSONB (so
/// `metadata->'guardrail_information'` works in SQL). A table created by an earlier version
/// (without `client_request_id`) is migrated in place (`ADD COLUMN IF NOT EXISTS`); its rows
/// keep their `request_id` and get a null `client_request_id`.
///
/// Errors are classified for the writer: connection failures (SQLSTATE class 08, a connection
/// refused, reset or closed), serialization failures and deadlocks (40001, 40P01), and
/// administrator shutdowns (57P01 to 57P03) are transient; data exceptions (class 22: a NUL
/// byte, 22021; a value too long, 22001), constraint violations (class 23) and program limits
/// (class 54: an index row too large) are [`SinkErrorKind::Rejected`].
///
/// A batch is a single `INSERT ... SELECT FROM unnest(...) ON CONFLICT (request_id) DO NOTHING`
/// statement: one round trip, atomic, and idempotent, so a retried batch (or the same record
/// from two replicas) is stored once.
///
/// Writes use one connection, reconnected transparently: an operation on a broken connection
/// fails (and the writer retries it), and the next operation opens a new connection
/// (re-creating the table if it was dropped). Queries ([`SpendLogStore`]) use a pool of their
/// own (default up to 4 connections, opened on demand), so a slow query never delays writes
/// and writes never queue behind a dashboard. Every operation is bounded by the operation
/// timeout (default 30 s); a timed-out connection is discarded.
///
/// Connections are made without TLS (`NoTls`): use a URL with `sslmode=disable` or `prefer`
/// against a server on a trusted network, or a local TLS-terminating proxy.
pub struct PostgresSink {
    config: Config,
    table: String,
    connect_timeout: Duration,
    op_timeout: Duration,
    conn: Mutex<Option<Arc<Conn>>>,
    reads: ReadPool,
}

struct Conn {
    client: Client,
    insert: Statement,
}

/// The query connections: at most `permits` at once, idle ones kept for reuse.
struct ReadPool {
    permits: tokio::sync::Semaphore,
    idle: std::sync::Mutex<Vec<Client>>,
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`PostgresSink`]; from [`PostgresSink::builder`].
#[derive(Debug, Clone)]
pub struct PostgresSinkBuilder {
    url: String,
    table: String,
    connect_timeout: Duration,
    op_timeout: Duration,
    read_pool_size: usize,
}

impl PostgresSinkBuilder {
    /// The table name (default `LiteLLM_SpendLogs`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long connecting (and creating the table) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one write or query may take before it fails with [`SinkErrorKind::Timeout`] and
    /// the connection is discarded (default 30 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// How many connections queries may use at once (default 4, at least 1); a query beyond
    /// that waits (bounded by the operation timeout) for one to be free.
    pub fn read_pool_size(mut self, size: usize) -> Self {
        self.read_pool_size = size.max(1);
        self
    }

    /// Connects and creates the table if missing. Fails if the server cannot be reached now, so
    /// a misconfiguration shows at startup.
    pub async fn connect(self) -> Result<PostgresSink, SinkError> {
        let sink = self.build()?;
        sink.connection().await?;
        Ok(sink)
    }

    /// The sink without connecting: the URL is checked now, and the first write connects (and
    /// creates the table). A gateway can start while the database is down; the writer keeps
    /// its records and retries until it is back.
    pub fn build(self) -> Result<PostgresSink, SinkError> {
        let config = Config::from_str(&self.url).map_err(|e| {
            SinkError::new(SinkErrorKind::Config, "invalid PostgreSQL URL").with_source(e)
        })?;
        Ok(PostgresSink {
            config,
            table: self.table,
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            conn: Mutex::new(None),
            reads: ReadPool {
                permits: tokio::sync::Semaphore::new(self.read_pool_size),
                idle: std::sync::Mutex::new(Vec::new()),
            },
        })
    }
}

impl PostgresSink {
    /// Connects to `url` (`postgres://user:password@host:port/database`) with the default
    /// settings.
    pub async fn connect(url: &str) -> Result<Self, SinkError> {
        PostgresSink::builder(url).connect().await
    }

    /// A builder, to set the table name or the timeouts.
    pub fn builder(url: impl Into<String>) -> PostgresSinkBuilder {
        PostgresSinkBuilder {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            connect_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(30),
            read_pool_size: 4,
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The current connection, or a new one if there is none or it is broken.
    async fn connection(&self) -> Result<Arc<Conn>, SinkError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        *slot = None;
        let conn = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "connecting to PostgreSQL took longer than {:?}",
                        self.connect_timeout
                    ),
                )
            })??;
        let conn = Arc::new(conn);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// A new connection (its driver task spawned).
    async fn client(&self) -> Result<Client, SinkError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| pg_error("cannot connect to PostgreSQL", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "spend log: PostgreSQL connection closed with an error");
            }
        });
        Ok(client)
    }

    async fn open(&self) -> Result<Conn, SinkError> {
        let mut client = self.client().await?;

        let t = quote_ident(&self.table);
        let idx = |name: &str| quote_ident(&format!("{}_{name}_idx", self.table));
        let (start_idx, status_idx) = (idx("startTime"), idx("status"));
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                request_id TEXT PRIMARY KEY,
                client_request_id TEXT,
                call_type TEXT NOT NULL,
                status TEXT NOT NULL,
                model TEXT NOT NULL,
                api_base TEXT,
                \"user\" TEXT,
                api_key TEXT,
                spend DOUBLE PRECISION NOT NULL DEFAULT 0,
                prompt_tokens BIGINT NOT NULL DEFAULT 0,
                completion_tokens BIGINT NOT NULL DEFAULT 0,
                total_tokens BIGINT NOT NULL DEFAULT 0,
                \"startTime\" TIMESTAMPTZ NOT NULL,
                \"endTime\" TIMESTAMPTZ NOT NULL,
                \"completionStartTime\" TIMESTAMPTZ,
                metadata JSONB NOT NULL DEFAULT '{{}}'::jsonb
            );
            CREATE INDEX IF NOT EXISTS {start_idx} ON {t} (\"startTime\");
            DROP INDEX IF EXISTS {status_idx};"
        );
        let schema_error = |e| pg_error(&format!("cannot create the table {}", self.table), e);
        let tx = client.transaction().await.map_err(schema_error)?;
        // Replicas starting at once would race on CREATE TABLE IF NOT EXISTS (a unique violation
        // in pg_type); serialize them per table name.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&advisory_key(&self.table)],
        )
        .await
        .map_err(schema_error)?;
        // A table from an earlier version lacks `client_request_id`. Checked first: `ALTER
        // TABLE` takes an exclusive lock even when there is nothing to add, and every replica
        // runs this on every reconnect.
        let missing: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_class c
                 WHERE c.oid = to_regclass($1)
                   AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                       AND a.attname = 'client_request_id' AND NOT a.attisdropped)",
                &[&t],
            )
            .await
            .map_err(schema_error)?
            .get(0);
        if missing > 0 {
            tracing::info!(table = %self.table, "spend log: adding client_request_id to an existing table");
            tx.batch_execute(&format!(
                "ALTER TABLE {t} ADD COLUMN client_request_id TEXT"
            ))
            .await
            .map_err(schema_error)?;
        }
        tx.batch_execute(&create).await.map_err(schema_error)?;
        for (name, column) in super::PARTIAL_INDEXES {
            let index = idx(name);
            // The index's definition, if it exists (NULL otherwise).
            let definition: Option<String> = tx
                .query_one("SELECT pg_get_indexdef(to_regclass($1))", &[&index])
                .await
                .map_err(schema_error)?
                .get(0);
            if definition.as_deref().is_some_and(|d| d.contains(" WHERE ")) {
                continue;
            }
            if definition.is_some() {
                tracing::info!(table = %self.table, index = %index, "spend log: making an index partial");
            }
            tx.batch_execute(&format!(
                "DROP INDEX IF EXISTS {index};
                 CREATE INDEX {index} ON {t} ({column}) WHERE {column} IS NOT NULL;"
            ))
            .await
            .map_err(schema_error)?;
        }
        tx.commit().await.map_err(schema_error)?;

        let insert = client
            .prepare(&format!(
                "INSERT INTO {t} ({COLUMNS})
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::float8[], $10::int8[], $11::int8[],
                     $12::int8[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
                     $16::jsonb[])
                 ON CONFLICT (request_id) DO NOTHING"
            ))
            .await
            .map_err(|e| pg_error("cannot prepare the spend-log insert", e))?;
        Ok(Conn { client, insert })
    }

    /// Runs `op` on the connection with the operation timeout, discarding the connection when it
    /// is broken, timed out, or its table is gone.
    async fn run<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&Conn) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SinkError> {
        let conn = self.connection().await?;
        let result = tokio::time::timeout(self.op_timeout, op(&conn)).await;
        let discard = match &result {
            Err(_) => true,
            Ok(Err(e)) => {
                e.is_closed()
                    || conn.client.is_closed()
                    || e.code() == Some(&SqlState::UNDEFINED_TABLE)
            }
            Ok(Ok(_)) => false,
        };
        if discard {
            let mut slot = self.conn.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                *slot = None;
            }
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(pg_error(what, e)),
            Err(_) => Err(SinkError::new(
                SinkErrorKind::Timeout,
                format!(
                    "{what}: no answer from PostgreSQL within {:?}",
                    self.op_timeout
                ),
            )),
        }
    }
}

impl PostgresSink {
    /// Runs a query on a pooled read connection, bounded by the operation timeout (waiting for
    /// a free connection included); a connection that failed or timed out is not reused.
    async fn read<T>(
        &self,
        what: &str,
        op: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, SinkError> {
        let timeout = || {
            SinkError::new(
                SinkErrorKind::Timeout,
                format!(
                    "{what}: no answer from PostgreSQL within {:?}",
                    self.op_timeout
                ),
            )
        };
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let _permit = tokio::time::timeout_at(deadline, self.reads.permits.acquire())
            .await
            .map_err(|_| timeout())?
            .map_err(|_| SinkError::closed("the read pool is closed"))?;
        let idle = self
            .reads
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .filter(|c| !c.is_closed());
        let client = match idle {
            Some(client) => client,
            None => tokio::time::timeout_at(deadline, self.client())
                .await
                .map_err(|_| timeout())??,
        };
        match tokio::time::timeout_at(deadline, op(&client)).await {
            Ok(Ok(value)) => {
                self.reads
                    .idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(client);
                Ok(value)
            }
            Ok(Err(e)) => {
                if !e.is_closed() && !client.is_closed() && e.code().is_some() {
                    self.reads
                        .idle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(client);
                }
                Err(pg_error(what, e))
            }
            Err(_) => Err(timeout()),
        }
    }
}

/// A stable 64-bit key for `pg_advisory_xact_lock` (FNV-1a of the table name).
fn advisory_key(table: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"guardrail-tower spend log ".iter().chain(table.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Classifies a PostgreSQL error (see [`PostgresSink`]).
fn pg_error(context: &str, e: tokio_postgres::Error) -> SinkError {
    let kind = match e.code() {
        Some(c)
            if c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            SinkErrorKind::Unavailable
        }
        Some(c)
            if c.code().starts_with("22")
                || c.code().starts_with("23")
                || c.code().starts_with("54") =>
        {
            SinkErrorKind::Rejected
        }
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            SinkErrorKind::Busy
        }
        Some(_) => SinkErrorKind::Database,
        // No server error: the connection failed, broke, or was refused.
        None if e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
        {
            SinkErrorKind::Unavailable
        }
        None => SinkErrorKind::Database,
    };
    // The server's message and code (not its detail, which may quote the row's values).
    let message = match e.as_db_error() {
        Some(db) => format!(
            "{context}: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ),
        None => context.to_owned(),
    };
    SinkError::new(kind, message).with_source(e)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SpendLogSink for PostgresSink {
    fn dead_letter_path(&self) -> Option<std::path::PathBuf> {
        Some(std::path::PathBuf::from("spend_logs.dead-letter.jsonl"))
    }

    fn write_batch<'a>(&'a self, records: &'a [SpendRecord]) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let col = |f: fn(&SpendRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
            let opt =
                |f: fn(&SpendRecord) -> Option<&str>| records.iter().map(f).collect::<Vec<_>>();
            let request_id = col(|r| r.request_id.clone());
            let client_request_id = opt(|r| r.client_request_id.as_deref());
            let call_type = col(|r| r.call_type.clone());
            let status = records
                .iter()
                .map(|r| r.status.as_str())
                .collect::<Vec<_>>();
            let model = col(|r| r.model.clone());
            let api_base = opt(|r| r.api_base.as_deref());
            let user = opt(|r| r.user.as_deref());
            let api_key = opt(|r| r.api_key.as_deref());
            let spend = records.iter().map(|r| r.spend).collect::<Vec<_>>();
            let prompt = records
                .iter()
                .map(|r| to_i64(r.prompt_tokens))
                .collect::<Vec<_>>();
            let completion = records
                .iter()
                .map(|r| to_i64(r.completion_tokens))
                .collect::<Vec<_>>();
            let total = records
                .iter()
                .map(|r| to_i64(r.total_tokens))
                .collect::<Vec<_>>();
            let start = records.iter().map(|r| r.start_time).collect::<Vec<_>>();
            let end = records.iter().map(|r| r.end_time).collect::<Vec<_>>();
            let completion_start = records
                .iter()
                .map(|r| r.completion_start_time)
                .collect::<Vec<_>>();
            let metadata = records.iter().map(|r| &r.metadata).collect::<Vec<_>>();
            let metadata = Jsonb(metadata);
            self.run("cannot write spend-log records", async |conn: &Conn| {
                conn.client
                    .execute(
                        &conn.insert,
                        &[
                            &request_id,
                            &client_request_id,
                            &call_type,
                            &status,
                            &model,
                            &api_base,
                            &user,
                            &api_key,
                            &spend,
                            &prompt,
                            &completion,
                            &total,
                            &start,
                            &end,
                            &completion_start,
                            &metadata,
                        ],
                    )
                    .await
            })
            .await
            .map(drop)
        })
    }
}

impl SpendLogStore for PostgresSink {
    fn query<'a>(&'a self, filter: &'a SpendLogFilter) -> SinkFuture<'a, Vec<SpendRecord>> {
        Box::pin(async move {
            let mut conditions = Vec::new();
            let mut params: Vec<Param> = Vec::new();
            let mut push = |cond: &str, p: Param| {
                params.push(p);
                conditions.push(cond.replace('?', &format!("${}", params.len())));
            };
            for (condition, value) in [
                ("request_id = ?", &filter.request_id),
                ("client_request_id = ?", &filter.client_request_id),
                ("api_key = ?", &filter.api_key),
                ("\"user\" = ?", &filter.user_id),
            ] {
                if let Some(value) = value {
                    push(condition, Box::new(value.clone()));
                }
            }
            if let Some(start) = filter.start {
                push("\"startTime\" >= ?", Box::new(start));
            }
            if let Some(end) = filter.end {
                push("\"startTime\" < ?", Box::new(end));
            }
            if let Some(status) = filter.status {
                push("status = ?", Box::new(status.as_str()));
            }
            let where_clause = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let n = params.len();
            params.push(Box::new(filter.limit.map(to_i64)));
            params.push(Box::new(to_i64(filter.offset)));
            let sql = format!(
                "SELECT {} FROM {} {where_clause}
                 ORDER BY \"startTime\" DESC, request_id DESC LIMIT ${} OFFSET ${}",
                COLUMNS.replace("metadata", "metadata::text"),
                quote_ident(&self.table),
                n + 1,
                n + 2,
            );
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let rows = self
                .read("cannot query spend-log records", async |client: &Client| {
                    client.query(&sql, &refs).await
                })
                .await?;
            rows.iter().map(record_from_row).collect()
        })
    }

    fn block_summary(
        &self,
        start: Option<SystemTime>,
        end: Option<SystemTime>,
    ) -> SinkFuture<'_, Vec<BlockSummaryRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT to_char(s.\"startTime\" AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
                        coalesce(g->>'guardrail_name', '') AS name,
                        count(*)::int8
                 FROM {} AS s
                 CROSS JOIN LATERAL jsonb_array_elements(
                     CASE WHEN jsonb_typeof(s.metadata->'guardrail_information') = 'array'
                          THEN s.metadata->'guardrail_information' ELSE '[]'::jsonb END) AS g
                 WHERE g->>'guardrail_action' = 'block'
                   AND ($1::timestamptz IS NULL OR s.\"startTime\" >= $1)
                   AND ($2::timestamptz IS NULL OR s.\"startTime\" < $2)
                 GROUP BY day, name
                 ORDER BY day, name",
                quote_ident(&self.table),
            );
            let rows = self
                .read(
                    "cannot query the guardrail block summary",
                    async |client: &Client| client.query(&sql, &[&start, &end]).await,
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let decode = |e| SinkError::encoding("invalid block summary row", e);
                    let blocks: i64 = row.try_get(2).map_err(decode)?;
                    Ok(BlockSummaryRow::new(
                        row.try_get::<_, String>(0).map_err(decode)?,
                        row.try_get::<_, String>(1).map_err(decode)?,
                        u64::try_from(blocks).unwrap_or(0),
                    ))
                })
                .collect()
        })
    }
}

fn record_from_row(row: &tokio_postgres::Row) -> Result<SpendRecord, SinkError> {
    let decode = |e: tokio_postgres::Error| SinkError::encoding("invalid spend-log row", e);
    let tokens = |i: usize| -> Result<u64, SinkError> {
        Ok(u64::try_from(row.try_get::<_, i64>(i).map_err(decode)?).unwrap_or(0))
    };
    let request_id: String = row.try_get(0).map_err(decode)?;
    let status: String = row.try_get(3).map_err(decode)?;
    let metadata: String = row.try_get(15).map_err(decode)?;
    Ok(SpendRecord {
        client_request_id: row.try_get(1).map_err(decode)?,
        call_type: row.try_get(2).map_err(decode)?,
        status: status.parse::<SpendStatus>().map_err(|e| {
            SinkError::new(
                SinkErrorKind::Encoding,
                format!("stored record {request_id}: {e}"),
            )
        })?,
        model: row.try_get(4).map_err(decode)?,
        api_base: row.try_get(5).map_err(decode)?,
        user: row.try_get(6).map_err(decode)?,
        api_key: row.try_get(7).map_err(decode)?,
        spend: row.try_get(8).map_err(decode)?,
        prompt_tokens: tokens(9)?,
        completion_tokens: tokens(10)?,
        total_tokens: tokens(11)?,
        start_time: row.try_get(12).map_err(decode)?,
        end_time: row.try_get(13).map_err(decode)?,
        completion_start_time: row.try_get(14).map_err(decode)?,
        metadata: serde_json::from_str(&metadata).map_err(|e| {
            SinkError::encoding(format!("stored record {request_id}: invalid metadata"), e)
        })?,
        request_id,
    })
}

/// A `jsonb[]` parameter: each value in the binary `jsonb` format (a version byte, then the JSON
/// text), so the sink needs no `serde_json` feature of `postgres-types`.
#[derive(Debug)]
struct Jsonb<'a>(Vec<&'a crate::SpendMetadata>);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let texts = self
            .0
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<JsonbText<'_>> = texts.iter().map(|s| JsonbText(s)).collect();
        texts.to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB_ARRAY
    }

    tokio_postgres::types::to_sql_checked!();
}

#[derive(Debug)]
struct JsonbText<'a>(&'a str);

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}
