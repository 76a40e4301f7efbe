//! The virtual-key stores against real databases: SQLite files, and PostgreSQL when
//! `GUARDRAIL_TOWER_TEST_PG_URL` is set (each test in a fresh schema; skipped, and said so,
//! when unset; a failure when set but unreachable).

use std::time::{Duration, SystemTime};

use guardrail_gateway::keys::{
    KeyQuery, KeySelector, KeyStore, KeyStoreErrorKind, PostgresKeyStore, SqliteKeyStore,
    VirtualKey, hash_key,
};
use serde_json::json;
use tokio_postgres::NoTls;

fn row(key: &str, alias: Option<&str>, user: &str, created: u64) -> VirtualKey {
    let mut row = VirtualKey::new(hash_key(key));
    row.key_alias = alias.map(str::to_owned);
    row.key_name = Some("sk-...abcd".into());
    row.user_id = Some(user.into());
    row.team_id = Some("red".into());
    row.models = vec!["gpt-a".into(), "gpt-b".into()];
    row.metadata = json!({"guardrails": ["pii"], "owner": {"name": "é \" '"}})
        .as_object()
        .unwrap()
        .clone();
    // Millisecond precision: what both databases keep.
    row.expires = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_900_000_000_123));
    row.created_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + created));
    row.updated_at = row.created_at;
    row.created_by = Some("default_user_id".into());
    row.blocked = Some(false);
    row.max_parallel_requests = Some(4);
    row
}

/// The same contract for every store.
async fn contract(store: &dyn KeyStore) {
    let a = row("sk-a", Some("alias-a"), "alice", 1);
    let b = row("sk-b", None, "bob", 2);
    store.insert(&a).await.unwrap();
    store.insert(&b).await.unwrap();
    assert_eq!(store.get(&hash_key("sk-a")).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get(&hash_key("sk-missing")).await.unwrap(), None);

    // Aliases are unique; tokens too.
    let err = store
        .insert(&row("sk-c", Some("alias-a"), "carol", 3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &KeyStoreErrorKind::AliasTaken("alias-a".into()));
    let err = store.insert(&a).await.unwrap_err();
    assert_eq!(err.kind(), &KeyStoreErrorKind::Exists);

    // Update.
    let mut changed = b.clone();
    changed.key_alias = Some("alias-a".into());
    assert_eq!(
        store.update(&changed).await.unwrap_err().kind(),
        &KeyStoreErrorKind::AliasTaken("alias-a".into())
    );
    changed.key_alias = Some("alias-b".into());
    changed.models.clear();
    changed.expires = None;
    changed.blocked = Some(true);
    changed.max_parallel_requests = None;
    assert!(store.update(&changed).await.unwrap());
    assert_eq!(store.get(&b.token).await.unwrap(), Some(changed.clone()));
    assert!(
        !store
            .update(&row("sk-missing", None, "x", 0))
            .await
            .unwrap()
    );

    // List: filters, pages, order.
    let c = row("sk-c", Some("alias-c"), "alice", 3);
    store.insert(&c).await.unwrap();
    let page = store.list(&KeyQuery::new()).await.unwrap();
    assert_eq!(page.total, 3);
    let tokens = |keys: &[VirtualKey]| keys.iter().map(|k| k.token.clone()).collect::<Vec<_>>();
    assert_eq!(
        tokens(&page.keys),
        [c.token.clone(), b.token.clone(), a.token.clone()]
    );
    let mut query = KeyQuery::new();
    query.user_id = Some("alice".into());
    query.size = 1;
    query.page = 2;
    query.ascending = true;
    let page = store.list(&query).await.unwrap();
    assert_eq!((page.total, tokens(&page.keys)), (2, vec![c.token.clone()]));
    let mut query = KeyQuery::new();
    query.key_alias = Some("alias-b".into());
    assert_eq!(
        tokens(&store.list(&query).await.unwrap().keys),
        std::slice::from_ref(&b.token)
    );
    let mut query = KeyQuery::new();
    query.sort_by = Some("key_alias; DROP TABLE x".into());
    assert_eq!(store.list(&query).await.unwrap().total, 3);

    // Delete: all or nothing.
    let out = store
        .delete(&KeySelector::Tokens(vec![
            a.token.clone(),
            hash_key("sk-missing"),
        ]))
        .await
        .unwrap();
    assert_eq!(out.deleted, Vec::<String>::new());
    assert_eq!(out.missing, [hash_key("sk-missing")]);
    assert!(store.get(&a.token).await.unwrap().is_some());
    let out = store
        .delete(&KeySelector::Aliases(vec![
            "alias-a".into(),
            "alias-c".into(),
        ]))
        .await
        .unwrap();
    let mut want = vec![a.token.clone(), c.token.clone()];
    want.sort();
    assert_eq!((out.deleted, out.missing), (want, vec![]));
    assert_eq!(store.list(&KeyQuery::new()).await.unwrap().total, 1);
}

#[tokio::test]
async fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.db");
    let store = SqliteKeyStore::open(&path).await.unwrap();
    contract(&store).await;
    // Reopening keeps the rows and the table.
    drop(store);
    let store = SqliteKeyStore::open(&path).await.unwrap();
    assert_eq!(store.list(&KeyQuery::new()).await.unwrap().total, 1);
}

/// What a store shows of a table an earlier version made, with one row `sk-old` of user
/// `old`, once it has opened it: that row, with no limit, and a new row's limit stored.
async fn earlier_table_migrated(store: &dyn KeyStore) {
    let old = store.get(&hash_key("sk-old")).await.unwrap().unwrap();
    assert_eq!(
        (old.user_id.as_deref(), old.max_parallel_requests),
        (Some("old"), None)
    );
    let new = row("sk-new", None, "new", 1);
    store.insert(&new).await.unwrap();
    assert_eq!(store.get(&new.token).await.unwrap(), Some(new));
}

/// A key table made by an earlier version, without `max_parallel_requests`, gains the column
/// when a store opens it: its rows are read (with no limit), and a limit is stored. Two stores
/// opening it add the column once.
#[tokio::test]
async fn sqlite_store_adds_the_column_an_earlier_table_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE \"LiteLLM_VerificationToken\" (token TEXT PRIMARY KEY NOT NULL, \
             key_name TEXT, key_alias TEXT, spend REAL NOT NULL DEFAULT 0, expires TEXT, \
             models TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL DEFAULT '{{}}', \
             user_id TEXT, team_id TEXT, organization_id TEXT, blocked INTEGER, created_at TEXT, \
             created_by TEXT, updated_at TEXT, updated_by TEXT);
             INSERT INTO \"LiteLLM_VerificationToken\" (token, user_id) VALUES ('{}', 'old');",
            hash_key("sk-old")
        ))
        .unwrap();
    }
    let (first, second) = tokio::join!(SqliteKeyStore::open(&path), SqliteKeyStore::open(&path));
    let (store, _) = (first.unwrap(), second.unwrap());
    earlier_table_migrated(&store).await;
}

/// The PostgreSQL URL for tests, `None` (and a note) when it is not set.
pub fn pg_url() -> Option<String> {
    match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            None
        }
    }
}

/// A fresh schema; the URL that makes it the search path.
async fn fresh_schema(url: &str, name: &str) -> (tokio_postgres::Client, String, String) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("GUARDRAIL_TOWER_TEST_PG_URL is set but PostgreSQL cannot be reached");
    tokio::spawn(connection);
    let schema = format!("keys_{name}_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    (client, schema, url)
}

#[tokio::test]
async fn postgres_store_contract() {
    let Some(url) = pg_url() else { return };
    let (admin, schema, url) = fresh_schema(&url, "contract").await;
    let store = PostgresKeyStore::connect(&url).await.unwrap();
    contract(&store).await;
    // The table is in the test's schema, with LiteLLM's column types.
    let types: Vec<(String, String)> = admin
        .query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'LiteLLM_VerificationToken' \
             AND column_name IN ('models', 'metadata', 'expires') ORDER BY column_name",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        types,
        [
            ("expires".into(), "timestamp without time zone".into()),
            ("metadata".into(), "jsonb".into()),
            ("models".into(), "ARRAY".into()),
        ]
    );
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A key table made by an earlier version, without `max_parallel_requests`, gains the column.
#[tokio::test]
async fn postgres_store_adds_the_column_an_earlier_table_lacks() {
    let Some(url) = pg_url() else { return };
    let (admin, schema, url) = fresh_schema(&url, "earlier").await;
    admin
        .batch_execute(&format!(
            r#"CREATE TABLE {schema}."LiteLLM_VerificationToken" (token TEXT PRIMARY KEY,
                key_name TEXT, key_alias TEXT, spend DOUBLE PRECISION NOT NULL DEFAULT 0.0,
                expires TIMESTAMP(3), models TEXT[], metadata JSONB NOT NULL DEFAULT '{{}}',
                user_id TEXT, team_id TEXT, organization_id TEXT, blocked BOOLEAN,
                created_at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, created_by TEXT,
                updated_at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, updated_by TEXT);
            INSERT INTO {schema}."LiteLLM_VerificationToken" (token, user_id) VALUES ('{}', 'old');"#,
            hash_key("sk-old")
        ))
        .await
        .unwrap();
    let store = PostgresKeyStore::connect(&url).await.unwrap();
    earlier_table_migrated(&store).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A table as LiteLLM's migrations create it (its other columns, with their defaults) works as
/// it is: keys made by LiteLLM are read, and keys made here leave LiteLLM's columns valid.
#[tokio::test]
async fn postgres_store_reads_and_writes_a_litellm_table() {
    let Some(url) = pg_url() else { return };
    let (admin, schema, url) = fresh_schema(&url, "litellm").await;
    admin
        .batch_execute(&format!(
            r#"CREATE TABLE {schema}."LiteLLM_VerificationToken" (
                "token" TEXT NOT NULL,
                "key_name" TEXT,
                "key_alias" TEXT,
                "soft_budget_cooldown" BOOLEAN NOT NULL DEFAULT false,
                "spend" DOUBLE PRECISION NOT NULL DEFAULT 0.0,
                "expires" TIMESTAMP(3),
                "models" TEXT[],
                "aliases" JSONB NOT NULL DEFAULT '{{}}',
                "config" JSONB NOT NULL DEFAULT '{{}}',
                "user_id" TEXT,
                "team_id" TEXT,
                "permissions" JSONB NOT NULL DEFAULT '{{}}',
                "max_parallel_requests" INTEGER,
                "metadata" JSONB NOT NULL DEFAULT '{{}}',
                "blocked" BOOLEAN,
                "tpm_limit" BIGINT,
                "rpm_limit" BIGINT,
                "max_budget" DOUBLE PRECISION,
                "budget_duration" TEXT,
                "budget_reset_at" TIMESTAMP(3),
                "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[],
                "allowed_routes" TEXT[] DEFAULT ARRAY[]::TEXT[],
                "model_spend" JSONB NOT NULL DEFAULT '{{}}',
                "model_max_budget" JSONB NOT NULL DEFAULT '{{}}',
                "budget_id" TEXT,
                "organization_id" TEXT,
                "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
                "created_by" TEXT,
                "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
                "updated_by" TEXT,
                CONSTRAINT "LiteLLM_VerificationToken_pkey" PRIMARY KEY ("token")
            );
            INSERT INTO {schema}."LiteLLM_VerificationToken" (token, key_alias, models, metadata, user_id, max_parallel_requests)
            VALUES ('{}', 'made-by-litellm', ARRAY['gpt-4o'], '{{"guardrails": ["pii"]}}', 'u1', 5);"#,
            hash_key("sk-from-litellm")
        ))
        .await
        .unwrap();
    let store = PostgresKeyStore::connect(&url).await.unwrap();
    let found = store
        .get(&hash_key("sk-from-litellm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.key_alias.as_deref(), Some("made-by-litellm"));
    assert_eq!(found.models, ["gpt-4o"]);
    assert_eq!(found.guardrails(), ["pii"]);
    assert_eq!(found.max_parallel_requests, Some(5));
    store.insert(&row("sk-here", None, "u2", 0)).await.unwrap();
    let defaults: (String, bool) = {
        let r = admin
            .query_one(
                &format!(
                    "SELECT aliases::text, soft_budget_cooldown FROM {schema}.\"LiteLLM_VerificationToken\" WHERE token = $1"
                ),
                &[&hash_key("sk-here")],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(defaults, ("{}".into(), false));
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_store_starts_while_the_database_is_down_and_says_so() {
    // A port nothing listens on: the store is built, and a lookup fails as unavailable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://user:hunter2-secret@127.0.0.1:{port}/db");
    let store = PostgresKeyStore::new(&url).unwrap();
    let err = store.get(&hash_key("sk-a")).await.unwrap_err();
    assert_eq!(err.kind(), &KeyStoreErrorKind::Unavailable);
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{store:?}").contains("hunter2"));
}
