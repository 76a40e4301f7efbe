//! [`SqliteKeyStore`]: virtual keys in the spend log's SQLite file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::{Map, Value};

use super::{
    DeleteOutcome, KeyFuture, KeyPage, KeyQuery, KeySelector, KeyStore, KeyStoreError,
    KeyStoreErrorKind, TABLE, VirtualKey, timestamp,
};

/// Virtual keys in a SQLite file (the spend log's, by default): its own connection, its own
/// table (`LiteLLM_VerificationToken`), created if missing. Timestamps are RFC 3339 text (UTC),
/// `models` a JSON array, `metadata` a JSON object. Every operation runs on the blocking thread
/// pool.
pub struct SqliteKeyStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "token, key_name, key_alias, spend, expires, models, metadata, user_id, \
                       team_id, organization_id, blocked, created_at, created_by, updated_at, \
                       updated_by, max_parallel_requests";

fn sql_error(what: &str, e: rusqlite::Error) -> KeyStoreError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    let kind = if busy {
        KeyStoreErrorKind::Unavailable
    } else {
        KeyStoreErrorKind::Other
    };
    KeyStoreError::new(kind, format!("{what}: {e}"))
}

impl SqliteKeyStore {
    /// Opens (or creates) the file and the table.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, KeyStoreError> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, KeyStoreError> {
            let mut conn = Connection::open(&opened).map_err(|e| sql_error("cannot open", e))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| sql_error("cannot set the busy timeout", e))?;
            conn.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS \"{TABLE}\" (
                    token TEXT PRIMARY KEY NOT NULL,
                    key_name TEXT,
                    key_alias TEXT,
                    spend REAL NOT NULL DEFAULT 0,
                    expires TEXT,
                    models TEXT NOT NULL DEFAULT '[]',
                    metadata TEXT NOT NULL DEFAULT '{{}}',
                    user_id TEXT,
                    team_id TEXT,
                    organization_id TEXT,
                    blocked INTEGER,
                    created_at TEXT,
                    created_by TEXT,
                    updated_at TEXT,
                    updated_by TEXT,
                    max_parallel_requests INTEGER
                );
                CREATE INDEX IF NOT EXISTS \"{TABLE}_user_id_team_id_idx\" ON \"{TABLE}\" (user_id, team_id);
                CREATE INDEX IF NOT EXISTS \"{TABLE}_team_id_idx\" ON \"{TABLE}\" (team_id);
                CREATE INDEX IF NOT EXISTS \"{TABLE}_key_alias_idx\" ON \"{TABLE}\" (key_alias);"
            ))
            .map_err(|e| sql_error("cannot create the key table", e))?;
            add_missing_columns(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|_| KeyStoreError::new(KeyStoreErrorKind::Other, "the SQLite task panicked"))??;
        Ok(SqliteKeyStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    fn run<'a, T, F>(&'a self, f: F) -> KeyFuture<'a, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, KeyStoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn)
            })
            .await
            .map_err(|_| KeyStoreError::new(KeyStoreErrorKind::Other, "the SQLite task panicked"))?
        })
    }
}

/// Adds the columns a table made by an earlier version lacks (`max_parallel_requests`), in
/// one write transaction, so two gateways opening the file at once add it once.
fn add_missing_columns(conn: &mut Connection) -> Result<(), KeyStoreError> {
    let migrate = |e| sql_error("cannot migrate the key table", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(migrate)?;
    let present: bool = tx
        .query_row(
            &format!(
                "SELECT count(*) > 0 FROM pragma_table_info('{TABLE}') \
                 WHERE name = 'max_parallel_requests'"
            ),
            [],
            |r| r.get(0),
        )
        .map_err(migrate)?;
    if !present {
        tx.execute_batch(&format!(
            "ALTER TABLE \"{TABLE}\" ADD COLUMN max_parallel_requests INTEGER"
        ))
        .map_err(migrate)?;
    }
    tx.commit().map_err(migrate)
}

fn time_text(t: Option<SystemTime>) -> Option<String> {
    t.map(timestamp)
}

fn parse_time(text: Option<String>) -> Option<SystemTime> {
    text.and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
}

fn row_to_key(row: &Row<'_>) -> rusqlite::Result<VirtualKey> {
    let models: String = row.get(5)?;
    let metadata: String = row.get(6)?;
    let blocked: Option<i64> = row.get(10)?;
    Ok(VirtualKey {
        token: row.get(0)?,
        key_name: row.get(1)?,
        key_alias: row.get(2)?,
        spend: row.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
        expires: parse_time(row.get(4)?),
        models: serde_json::from_str(&models).unwrap_or_default(),
        metadata: match serde_json::from_str::<Value>(&metadata) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        },
        user_id: row.get(7)?,
        team_id: row.get(8)?,
        organization_id: row.get(9)?,
        blocked: blocked.map(|b| b != 0),
        created_at: parse_time(row.get(11)?),
        created_by: row.get(12)?,
        updated_at: parse_time(row.get(13)?),
        updated_by: row.get(14)?,
        max_parallel_requests: row
            .get::<_, Option<i64>>(15)?
            .and_then(|n| u32::try_from(n).ok()),
    })
}

fn alias_taken(
    tx: &rusqlite::Transaction<'_>,
    alias: Option<&str>,
    token: &str,
) -> Result<(), KeyStoreError> {
    let Some(alias) = alias else { return Ok(()) };
    let other: Option<String> = tx
        .query_row(
            &format!("SELECT token FROM \"{TABLE}\" WHERE key_alias = ?1 AND token <> ?2 LIMIT 1"),
            params![alias, token],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error("cannot check the alias", e))?;
    match other {
        Some(_) => Err(KeyStoreError::new(
            KeyStoreErrorKind::AliasTaken(alias.to_owned()),
            format!("a key with alias '{alias}' already exists"),
        )),
        None => Ok(()),
    }
}

fn write_params(key: &VirtualKey) -> [rusqlite::types::Value; 16] {
    use rusqlite::types::Value as V;
    let text = |s: &Option<String>| s.clone().map_or(V::Null, V::Text);
    [
        V::Text(key.token.clone()),
        text(&key.key_name),
        text(&key.key_alias),
        V::Real(key.spend),
        time_text(key.expires).map_or(V::Null, V::Text),
        V::Text(serde_json::to_string(&key.models).unwrap_or_else(|_| "[]".into())),
        V::Text(Value::Object(key.metadata.clone()).to_string()),
        text(&key.user_id),
        text(&key.team_id),
        text(&key.organization_id),
        key.blocked.map_or(V::Null, |b| V::Integer(i64::from(b))),
        time_text(key.created_at).map_or(V::Null, V::Text),
        text(&key.created_by),
        time_text(key.updated_at).map_or(V::Null, V::Text),
        text(&key.updated_by),
        key.max_parallel_requests
            .map_or(V::Null, |n| V::Integer(i64::from(n))),
    ]
}

impl KeyStore for SqliteKeyStore {
    fn get<'a>(&'a self, token: &'a str) -> KeyFuture<'a, Option<VirtualKey>> {
        let token = token.to_owned();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM \"{TABLE}\" WHERE token = ?1"),
                [token],
                row_to_key,
            )
            .optional()
            .map_err(|e| sql_error("cannot read the key", e))
        })
    }

    fn insert<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, ()> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error("cannot begin", e))?;
            alias_taken(&tx, key.key_alias.as_deref(), &key.token)?;
            let inserted = tx
                .execute(
                    &format!(
                        "INSERT INTO \"{TABLE}\" ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                         ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT (token) DO NOTHING"
                    ),
                    rusqlite::params_from_iter(write_params(&key)),
                )
                .map_err(|e| sql_error("cannot store the key", e))?;
            if inserted == 0 {
                return Err(KeyStoreError::new(
                    KeyStoreErrorKind::Exists,
                    "a key with this value already exists",
                ));
            }
            tx.commit().map_err(|e| sql_error("cannot commit", e))
        })
    }

    fn update<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, bool> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error("cannot begin", e))?;
            alias_taken(&tx, key.key_alias.as_deref(), &key.token)?;
            let changed = tx
                .execute(
                    &format!(
                        "UPDATE \"{TABLE}\" SET key_name = ?2, key_alias = ?3, spend = ?4, \
                         expires = ?5, models = ?6, metadata = ?7, user_id = ?8, team_id = ?9, \
                         organization_id = ?10, blocked = ?11, created_at = ?12, \
                         created_by = ?13, updated_at = ?14, updated_by = ?15, \
                         max_parallel_requests = ?16 WHERE token = ?1"
                    ),
                    rusqlite::params_from_iter(write_params(&key)),
                )
                .map_err(|e| sql_error("cannot update the key", e))?;
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(changed > 0)
        })
    }

    fn delete<'a>(&'a self, which: &'a KeySelector) -> KeyFuture<'a, DeleteOutcome> {
        let which = which.clone();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| sql_error("cannot begin", e))?;
            let (column, names) = match &which {
                KeySelector::Tokens(t) => ("token", t),
                KeySelector::Aliases(a) => ("key_alias", a),
            };
            let mut outcome = DeleteOutcome::default();
            let mut tokens = Vec::new();
            for name in names {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT token FROM \"{TABLE}\" WHERE {column} = ?1"
                    ))
                    .map_err(|e| sql_error("cannot find the keys", e))?;
                let found: Vec<String> = stmt
                    .query_map([name], |r| r.get(0))
                    .and_then(Iterator::collect)
                    .map_err(|e| sql_error("cannot find the keys", e))?;
                if found.is_empty() {
                    outcome.missing.push(name.clone());
                }
                tokens.extend(found);
            }
            if !outcome.missing.is_empty() {
                return Ok(outcome);
            }
            tokens.sort();
            tokens.dedup();
            for token in &tokens {
                tx.execute(
                    &format!("DELETE FROM \"{TABLE}\" WHERE token = ?1"),
                    [token],
                )
                .map_err(|e| sql_error("cannot delete the key", e))?;
            }
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            outcome.deleted = tokens;
            Ok(outcome)
        })
    }

    fn list<'a>(&'a self, query: &'a KeyQuery) -> KeyFuture<'a, KeyPage> {
        let query = query.clone();
        self.run(move |conn| {
            let mut filters = Vec::new();
            let mut values: Vec<String> = Vec::new();
            for (column, value) in [
                ("user_id", &query.user_id),
                ("team_id", &query.team_id),
                ("organization_id", &query.organization_id),
                ("key_alias", &query.key_alias),
                ("token", &query.token),
            ] {
                if let Some(v) = value {
                    values.push(v.clone());
                    filters.push(format!("{column} = ?{}", values.len()));
                }
            }
            let filter = if filters.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", filters.join(" AND "))
            };
            let total: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM \"{TABLE}\"{filter}"),
                    rusqlite::params_from_iter(&values),
                    |r| r.get(0),
                )
                .map_err(|e| sql_error("cannot count the keys", e))?;
            let limit = query.size.min(i64::MAX as u64) as i64;
            let offset = query.page.saturating_sub(1).saturating_mul(query.size);
            let offset = offset.min(i64::MAX as u64) as i64;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM \"{TABLE}\"{filter} ORDER BY {} LIMIT {limit} OFFSET {offset}",
                    query.order_by()
                ))
                .map_err(|e| sql_error("cannot list the keys", e))?;
            let keys = stmt
                .query_map(rusqlite::params_from_iter(&values), row_to_key)
                .and_then(Iterator::collect)
                .map_err(|e| sql_error("cannot list the keys", e))?;
            Ok(KeyPage {
                keys,
                total: u64::try_from(total).unwrap_or(0),
            })
        })
    }
}
