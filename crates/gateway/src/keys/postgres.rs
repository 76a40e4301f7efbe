//! [`PostgresKeyStore`]: virtual keys in a PostgreSQL table shared by every replica.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row};

use super::{
    DeleteOutcome, KeyFuture, KeyPage, KeyQuery, KeySelector, KeyStore, KeyStoreError,
    KeyStoreErrorKind, TABLE, VirtualKey,
};

/// Virtual keys in PostgreSQL: the table `"LiteLLM_VerificationToken"` with LiteLLM's column
/// types (`models` TEXT[], `metadata` JSONB, timestamps `TIMESTAMP(3)` in UTC), created if
/// missing under an advisory lock. An existing LiteLLM table works as it is: this store reads and
/// writes only the columns it knows, and the others keep their defaults.
///
/// One connection for lookups (PostgreSQL pipelines concurrent queries on it) and one for
/// writes, each opened on first use and again after it breaks; every operation is bounded by a timeout (10 s). Writes that must
/// check an alias run in a transaction under an advisory lock, so two replicas cannot give two
/// keys the same alias. Without TLS (`NoTls`), like the spend-log sink.
pub struct PostgresKeyStore {
    config: Config,
    timeout: Duration,
    /// Lookups and lists, concurrently.
    read: Mutex<Option<Arc<Client>>>,
    /// Writes, one transaction at a time.
    write: Mutex<Option<Client>>,
}

impl fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresKeyStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "token, key_name, key_alias, spend, expires, models, metadata::text, \
                       user_id, team_id, organization_id, blocked, created_at, created_by, \
                       updated_at, updated_by, max_parallel_requests";

/// `pg_advisory_xact_lock` key of the key table's writes (FNV-1a of a fixed name).
const LOCK: i64 = {
    let name = b"guardrail-tower LiteLLM_VerificationToken";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < name.len() {
        hash ^= name[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash as i64
};

fn pg_error(what: &str, e: tokio_postgres::Error) -> KeyStoreError {
    let unavailable = match e.code() {
        Some(c) => {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS
        }
        // No server error: the connection failed, broke, or was refused (or a value did not
        // convert, which is not an outage).
        None => {
            e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        }
    };
    let kind = if unavailable {
        KeyStoreErrorKind::Unavailable
    } else {
        KeyStoreErrorKind::Other
    };
    // tokio-postgres's messages name no host or password.
    KeyStoreError::new(kind, format!("{what}: {e}"))
}

fn row_to_key(row: &Row) -> Result<VirtualKey, KeyStoreError> {
    let decode = |e: tokio_postgres::Error| pg_error("cannot read a key row", e);
    let metadata: Option<String> = row.try_get(6).map_err(decode)?;
    Ok(VirtualKey {
        token: row.try_get(0).map_err(decode)?,
        key_name: row.try_get(1).map_err(decode)?,
        key_alias: row.try_get(2).map_err(decode)?,
        spend: row
            .try_get::<_, Option<f64>>(3)
            .map_err(decode)?
            .unwrap_or(0.0),
        expires: row.try_get(4).map_err(decode)?,
        models: row
            .try_get::<_, Option<Vec<String>>>(5)
            .map_err(decode)?
            .unwrap_or_default(),
        metadata: match metadata.map(|m| serde_json::from_str::<Value>(&m)) {
            Some(Ok(Value::Object(map))) => map,
            _ => Map::new(),
        },
        user_id: row.try_get(7).map_err(decode)?,
        team_id: row.try_get(8).map_err(decode)?,
        organization_id: row.try_get(9).map_err(decode)?,
        blocked: row.try_get(10).map_err(decode)?,
        created_at: row.try_get(11).map_err(decode)?,
        created_by: row.try_get(12).map_err(decode)?,
        updated_at: row.try_get(13).map_err(decode)?,
        updated_by: row.try_get(14).map_err(decode)?,
        max_parallel_requests: row
            .try_get::<_, Option<i32>>(15)
            .map_err(decode)?
            .and_then(|n| u32::try_from(n).ok()),
    })
}

/// The values written for a key, in [`COLUMNS`] order (`metadata` as JSON text).
struct Write {
    token: String,
    key_name: Option<String>,
    key_alias: Option<String>,
    spend: f64,
    expires: Option<SystemTime>,
    models: Vec<String>,
    metadata: String,
    user_id: Option<String>,
    team_id: Option<String>,
    organization_id: Option<String>,
    blocked: Option<bool>,
    created_at: Option<SystemTime>,
    created_by: Option<String>,
    updated_at: Option<SystemTime>,
    updated_by: Option<String>,
    max_parallel_requests: Option<i32>,
}

impl Write {
    fn of(key: &VirtualKey) -> Self {
        Write {
            token: key.token.clone(),
            key_name: key.key_name.clone(),
            key_alias: key.key_alias.clone(),
            spend: key.spend,
            expires: key.expires,
            models: key.models.clone(),
            metadata: Value::Object(key.metadata.clone()).to_string(),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            organization_id: key.organization_id.clone(),
            blocked: key.blocked,
            created_at: key.created_at,
            created_by: key.created_by.clone(),
            updated_at: key.updated_at,
            updated_by: key.updated_by.clone(),
            max_parallel_requests: key
                .max_parallel_requests
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.token,
            &self.key_name,
            &self.key_alias,
            &self.spend,
            &self.expires,
            &self.models,
            &self.metadata,
            &self.user_id,
            &self.team_id,
            &self.organization_id,
            &self.blocked,
            &self.created_at,
            &self.created_by,
            &self.updated_at,
            &self.updated_by,
            &self.max_parallel_requests,
        ]
    }
}

impl PostgresKeyStore {
    /// A store for `url` (`postgres://user:password@host:port/database`); connects on first
    /// use, so the gateway starts while the database is down. The URL is checked now.
    pub fn new(url: &str) -> Result<Self, KeyStoreError> {
        let config = Config::from_str(url)
            .map_err(|_| KeyStoreError::new(KeyStoreErrorKind::Other, "invalid PostgreSQL URL"))?;
        Ok(PostgresKeyStore {
            config,
            timeout: Duration::from_secs(10),
            read: Mutex::new(None),
            write: Mutex::new(None),
        })
    }

    /// [`PostgresKeyStore::new`], then connects and creates the table now.
    pub async fn connect(url: &str) -> Result<Self, KeyStoreError> {
        let store = PostgresKeyStore::new(url)?;
        store.reader().await?;
        Ok(store)
    }

    fn timed_out() -> KeyStoreError {
        KeyStoreError::new(
            KeyStoreErrorKind::Unavailable,
            "the key database did not answer in time",
        )
    }

    /// The lookup connection, opened (and the table created) if there is none or it broke.
    async fn reader(&self) -> Result<Arc<Client>, KeyStoreError> {
        let mut slot = self.read.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        *slot = None;
        let client = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| Self::timed_out())??;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn open(&self) -> Result<Client, KeyStoreError> {
        let (mut client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| pg_error("cannot connect to PostgreSQL", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "key store: PostgreSQL connection closed with an error");
            }
        });
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("cannot begin", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
            .await
            .map_err(|e| pg_error("cannot lock the key table", e))?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{TABLE}\" (
                token TEXT PRIMARY KEY,
                key_name TEXT,
                key_alias TEXT,
                spend DOUBLE PRECISION NOT NULL DEFAULT 0.0,
                expires TIMESTAMP(3),
                models TEXT[],
                metadata JSONB NOT NULL DEFAULT '{{}}',
                user_id TEXT,
                team_id TEXT,
                organization_id TEXT,
                blocked BOOLEAN,
                created_at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
                created_by TEXT,
                updated_at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
                updated_by TEXT,
                max_parallel_requests INTEGER
            );
            ALTER TABLE \"{TABLE}\" ADD COLUMN IF NOT EXISTS max_parallel_requests INTEGER;
            CREATE INDEX IF NOT EXISTS \"{TABLE}_user_id_team_id_idx\" ON \"{TABLE}\" (user_id, team_id);
            CREATE INDEX IF NOT EXISTS \"{TABLE}_team_id_idx\" ON \"{TABLE}\" (team_id);"
        ))
        .await
        .map_err(|e| pg_error("cannot create the key table", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_error("cannot create the key table", e))?;
        Ok(client)
    }

    /// Runs a read on the lookup connection within the timeout; a connection that failed is
    /// dropped so the next operation opens a new one.
    async fn read<T, F, Fut>(&self, op: F) -> Result<T, KeyStoreError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, KeyStoreError>>,
    {
        let client = self.reader().await?;
        let result = tokio::time::timeout(self.timeout, op(Arc::clone(&client)))
            .await
            .unwrap_or_else(|_| Err(Self::timed_out()));
        if matches!(&result, Err(e) if *e.kind() == KeyStoreErrorKind::Unavailable) {
            let mut slot = self.read.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                *slot = None;
            }
        }
        result
    }

    /// The write connection (opened if there is none or it broke), locked: one write
    /// transaction at a time.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, KeyStoreError> {
        let mut slot = self.write.lock().await;
        if slot.as_ref().is_some_and(Client::is_closed) {
            *slot = None;
        }
        if slot.is_none() {
            let client = tokio::time::timeout(self.timeout, self.open())
                .await
                .map_err(|_| Self::timed_out())??;
            *slot = Some(client);
        }
        Ok(slot)
    }

    /// The outcome of a write within the timeout; a failed connection is dropped.
    fn settle<T>(
        slot: &mut Option<Client>,
        result: Result<Result<T, KeyStoreError>, tokio::time::error::Elapsed>,
    ) -> Result<T, KeyStoreError> {
        let result = result.unwrap_or_else(|_| Err(Self::timed_out()));
        if matches!(&result, Err(e) if *e.kind() == KeyStoreErrorKind::Unavailable) {
            *slot = None;
        }
        result
    }
}

/// Begins a transaction holding the key table's advisory lock, so alias checks and writes of
/// every replica are serialized.
async fn begin_locked(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, KeyStoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("cannot begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(|e| pg_error("cannot lock the key table", e))?;
    Ok(tx)
}

/// Fails with [`KeyStoreErrorKind::AliasTaken`] if a key other than `token` has `alias`.
async fn check_alias(
    tx: &tokio_postgres::Transaction<'_>,
    alias: Option<&str>,
    token: &str,
) -> Result<(), KeyStoreError> {
    let Some(alias) = alias else { return Ok(()) };
    let other = tx
        .query_opt(
            &format!("SELECT token FROM \"{TABLE}\" WHERE key_alias = $1 AND token <> $2 LIMIT 1"),
            &[&alias, &token],
        )
        .await
        .map_err(|e| pg_error("cannot check the alias", e))?;
    match other {
        Some(_) => Err(KeyStoreError::new(
            KeyStoreErrorKind::AliasTaken(alias.to_owned()),
            format!("a key with alias '{alias}' already exists"),
        )),
        None => Ok(()),
    }
}

impl KeyStore for PostgresKeyStore {
    fn get<'a>(&'a self, token: &'a str) -> KeyFuture<'a, Option<VirtualKey>> {
        Box::pin(self.read(move |client: Arc<Client>| async move {
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM \"{TABLE}\" WHERE token = $1"),
                    &[&token],
                )
                .await
                .map_err(|e| pg_error("cannot read the key", e))?;
            row.as_ref().map(row_to_key).transpose()
        }))
    }

    fn insert<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, ()> {
        let values = Write::of(key);
        Box::pin(async move {
            let mut slot = self.writer().await?;
            let client = slot.as_mut().expect("writer() opened a connection");
            let run = async {
                let tx = begin_locked(client).await?;
                check_alias(&tx, values.key_alias.as_deref(), &values.token).await?;
                let inserted = tx
                    .execute(
                        &format!(
                            "INSERT INTO \"{TABLE}\" (token, key_name, key_alias, spend, \
                             expires, models, metadata, user_id, team_id, organization_id, \
                             blocked, created_at, created_by, updated_at, updated_by, \
                             max_parallel_requests) VALUES ($1, $2, $3, $4, $5, $6, \
                             $7::text::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                             ON CONFLICT (token) DO NOTHING"
                        ),
                        &values.params(),
                    )
                    .await
                    .map_err(|e| pg_error("cannot store the key", e))?;
                if inserted == 0 {
                    return Err(KeyStoreError::new(
                        KeyStoreErrorKind::Exists,
                        "a key with this value already exists",
                    ));
                }
                tx.commit().await.map_err(|e| pg_error("cannot commit", e))
            };
            let result = tokio::time::timeout(self.timeout, run).await;
            Self::settle(&mut slot, result)
        })
    }

    fn update<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, bool> {
        let values = Write::of(key);
        Box::pin(async move {
            let mut slot = self.writer().await?;
            let client = slot.as_mut().expect("writer() opened a connection");
            let run = async {
                let tx = begin_locked(client).await?;
                check_alias(&tx, values.key_alias.as_deref(), &values.token).await?;
                let changed = tx
                    .execute(
                        &format!(
                            "UPDATE \"{TABLE}\" SET key_name = $2, key_alias = $3, spend = $4, \
                             expires = $5, models = $6, metadata = $7::text::jsonb, user_id = $8, \
                             team_id = $9, organization_id = $10, blocked = $11, \
                             created_at = $12, created_by = $13, updated_at = $14, \
                             updated_by = $15, max_parallel_requests = $16 WHERE token = $1"
                        ),
                        &values.params(),
                    )
                    .await
                    .map_err(|e| pg_error("cannot update the key", e))?;
                tx.commit()
                    .await
                    .map_err(|e| pg_error("cannot commit", e))?;
                Ok(changed > 0)
            };
            let result = tokio::time::timeout(self.timeout, run).await;
            Self::settle(&mut slot, result)
        })
    }

    fn delete<'a>(&'a self, which: &'a KeySelector) -> KeyFuture<'a, DeleteOutcome> {
        Box::pin(async move {
            let mut slot = self.writer().await?;
            let client = slot.as_mut().expect("writer() opened a connection");
            let run = async {
                let tx = begin_locked(client).await?;
                let (column, names) = match which {
                    KeySelector::Tokens(t) => ("token", t),
                    KeySelector::Aliases(a) => ("key_alias", a),
                };
                let mut outcome = DeleteOutcome::default();
                let mut tokens = Vec::new();
                for name in names {
                    let rows = tx
                        .query(
                            &format!("SELECT token FROM \"{TABLE}\" WHERE {column} = $1"),
                            &[name],
                        )
                        .await
                        .map_err(|e| pg_error("cannot find the keys", e))?;
                    if rows.is_empty() {
                        outcome.missing.push(name.clone());
                    }
                    for row in rows {
                        tokens.push(
                            row.try_get::<_, String>(0)
                                .map_err(|e| pg_error("cannot read a key row", e))?,
                        );
                    }
                }
                if !outcome.missing.is_empty() {
                    // All or nothing: the transaction is rolled back when dropped.
                    return Ok(outcome);
                }
                tokens.sort();
                tokens.dedup();
                tx.execute(
                    &format!("DELETE FROM \"{TABLE}\" WHERE token = ANY($1)"),
                    &[&tokens],
                )
                .await
                .map_err(|e| pg_error("cannot delete the keys", e))?;
                tx.commit()
                    .await
                    .map_err(|e| pg_error("cannot commit", e))?;
                outcome.deleted = tokens;
                Ok(outcome)
            };
            let result = tokio::time::timeout(self.timeout, run).await;
            Self::settle(&mut slot, result)
        })
    }

    fn list<'a>(&'a self, query: &'a KeyQuery) -> KeyFuture<'a, KeyPage> {
        Box::pin(self.read(move |client: Arc<Client>| async move {
            let mut filters = Vec::new();
            let mut values: Vec<&(dyn ToSql + Sync)> = Vec::new();
            for (column, value) in [
                ("user_id", &query.user_id),
                ("team_id", &query.team_id),
                ("organization_id", &query.organization_id),
                ("key_alias", &query.key_alias),
                ("token", &query.token),
            ] {
                if let Some(v) = value {
                    values.push(v);
                    filters.push(format!("{column} = ${}", values.len()));
                }
            }
            let filter = if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            };
            let total: i64 = client
                .query_one(&format!("SELECT count(*) FROM \"{TABLE}\"{filter}"), &values)
                .await
                .map_err(|e| pg_error("cannot count the keys", e))?
                .try_get(0)
                .map_err(|e| pg_error("cannot count the keys", e))?;
            let limit = query.size.min(i64::MAX as u64) as i64;
            let offset = query.page.saturating_sub(1).saturating_mul(query.size);
            let offset = offset.min(i64::MAX as u64) as i64;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM \"{TABLE}\"{filter} ORDER BY {} LIMIT {limit} OFFSET {offset}",
                        query.order_by()
                    ),
                    &values,
                )
                .await
                .map_err(|e| pg_error("cannot list the keys", e))?;
            Ok(KeyPage {
                keys: rows.iter().map(row_to_key).collect::<Result<_, _>>()?,
                total: u64::try_from(total).unwrap_or(0),
            })
        }))
    }
}
