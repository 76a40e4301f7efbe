//! The SQLite sink, against real database files.

use std::collections::BTreeSet;
use std::time::Duration;

use guardrail_tower_spend_log::{
    BlockSummaryRow, SinkErrorKind, SpendLogFilter, SpendLogSink, SpendLogStore, SpendLogWriter,
    SpendRecord, SpendStatus, SqliteSink,
};
use rusqlite::Connection;

use crate::common::{eventually, full_record, guarded, record, t, temp_dir, written};

#[tokio::test]
async fn round_trips_every_field() {
    let dir = temp_dir("sqlite-roundtrip");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::open(&path).await.unwrap();
    assert_eq!(sink.table(), "LiteLLM_SpendLogs");
    let full = full_record("req-full");
    let sparse = record("req-sparse", "2026-11-21T11:00:00Z", SpendStatus::Success);
    sink.write_batch(&[full.clone(), sparse.clone()])
        .await
        .unwrap();

    let got = sink
        .query(&SpendLogFilter::new().request_id("req-full"))
        .await
        .unwrap();
    assert_eq!(got, vec![full]);
    let got = sink
        .query(&SpendLogFilter::new().request_id("req-sparse"))
        .await
        .unwrap();
    assert_eq!(got, vec![sparse]);

    // The stored columns, as another program sees them.
    let db = Connection::open(&path).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let row = db
        .query_row(
            "SELECT status, \"user\", spend, total_tokens, \"startTime\", \"endTime\", \"completionStartTime\",
                    json_extract(metadata, '$.guardrail_information[1].guardrail_name'),
                    json_extract(metadata, '$.error_information.error_code'),
                    json_extract(metadata, '$.http_status'), json_extract(metadata, '$.stream'),
                    typeof(spend), typeof(total_tokens)
             FROM \"LiteLLM_SpendLogs\" WHERE request_id = 'req-full'",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    (r.get::<_, String>(11)?, r.get::<_, String>(12)?),
                ))
            },
        )
        .unwrap();
    assert_eq!(row.0, "failure");
    assert_eq!(row.1, "user-42");
    assert_eq!(row.2, 0.001_234_5);
    assert_eq!(row.3, 1290);
    assert_eq!(row.4, "2026-11-21T12:00:00.125Z");
    assert_eq!(row.5, "2026-11-21T12:00:02.250Z");
    assert_eq!(row.6, "2026-11-21T12:00:00.875Z");
    assert_eq!(row.7, "content-filter");
    assert_eq!(row.8, "content_policy_violation");
    assert_eq!((row.9, row.10), (400, 1));
    assert_eq!(row.11, ("real".to_owned(), "integer".to_owned()));
    assert_eq!(
        indexes(&db),
        vec![
            ("LiteLLM_SpendLogs_api_key_idx".to_owned(), true),
            ("LiteLLM_SpendLogs_client_request_id_idx".to_owned(), true),
            ("LiteLLM_SpendLogs_startTime_idx".to_owned(), false),
            ("LiteLLM_SpendLogs_user_idx".to_owned(), true),
        ],
        "startTime, and partial indexes on the lookup columns; none on status"
    );
    // Each lookup by equality uses its (partial) index.
    for (column, index) in [
        ("api_key", "api_key"),
        ("client_request_id", "client_request_id"),
        ("\"user\"", "user"),
    ] {
        let plan: String = db
            .query_row(
                &format!(
                    "EXPLAIN QUERY PLAN SELECT * FROM \"LiteLLM_SpendLogs\" WHERE {column} = ?1 \
                     ORDER BY \"startTime\" DESC LIMIT 10"
                ),
                ["x"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains(&format!("LiteLLM_SpendLogs_{index}_idx")),
            "{column}: {plan}"
        );
    }
}

/// The indexes the spend-log table has (name, whether partial), by name; the primary key's
/// automatic index is not listed.
fn indexes(db: &Connection) -> Vec<(String, bool)> {
    let mut stmt = db
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'
               AND tbl_name = 'LiteLLM_SpendLogs' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?.contains(" WHERE "),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test]
async fn a_duplicate_request_id_is_stored_once() {
    let dir = temp_dir("sqlite-dup");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::builder(&path)
        .table("spend_dup")
        .open()
        .await
        .unwrap();
    let first = full_record("dup");
    let mut second = first.clone();
    second.model = "retried".into();
    sink.write_batch(std::slice::from_ref(&first))
        .await
        .unwrap();
    sink.write_batch(&[
        second.clone(),
        second,
        record("other", "2026-11-21T00:00:00Z", SpendStatus::Success),
    ])
    .await
    .unwrap();

    let db = Connection::open(&path).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM spend_dup WHERE request_id = 'dup'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let all: i64 = db
        .query_row("SELECT count(*) FROM spend_dup", [], |r| r.get(0))
        .unwrap();
    assert_eq!(all, 2);
    assert_eq!(
        sink.query(&SpendLogFilter::new().request_id("dup"))
            .await
            .unwrap(),
        vec![first]
    );
}

/// A batch goes in as multi-row inserts of 16, 8, 4, 2 and 1 rows: every size is written whole,
/// each record once, in the order given (a repeated id keeps its first record, as one row at
/// a time would).
#[tokio::test]
async fn batches_of_every_size_are_written_whole() {
    let dir = temp_dir("sqlite-batches");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::open(&path).await.unwrap();
    let mut expected = 0;
    for size in [1usize, 2, 3, 7, 15, 16, 17, 31, 32, 37, 100] {
        let mut batch: Vec<SpendRecord> = (0..size)
            .map(|i| {
                let mut r = full_record(&format!("b{size}-{i}"));
                r.model = format!("first-{i}");
                r
            })
            .collect();
        // The same id again, later in the batch: ignored.
        let mut again = batch[0].clone();
        again.model = "second".into();
        batch.push(again);
        sink.write_batch(&batch).await.unwrap();
        expected += size;
        let stored = sink
            .query(&SpendLogFilter::new().request_id(format!("b{size}-0")))
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "batch of {size}");
        assert_eq!(stored[0].model, "first-0", "batch of {size}");
        let last = sink
            .query(&SpendLogFilter::new().request_id(format!("b{size}-{}", size - 1)))
            .await
            .unwrap();
        assert_eq!(last, vec![batch[size - 1].clone()], "batch of {size}");
    }
    let all: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM \"LiteLLM_SpendLogs\"", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(all, i64::try_from(expected).unwrap());
}

#[tokio::test]
async fn query_filters_by_id_time_status_and_pages_newest_first() {
    let dir = temp_dir("sqlite-query");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::open(&path).await.unwrap();
    let records: Vec<SpendRecord> = vec![
        record("q1", "2026-11-20T10:00:00Z", SpendStatus::Success),
        record("q2", "2026-11-21T00:00:00Z", SpendStatus::Failure),
        record("q3", "2026-11-21T11:00:00.500Z", SpendStatus::Success),
        record("q4", "2026-11-21T23:59:59.999Z", SpendStatus::Failure),
        record("q5", "2026-11-22T00:00:00Z", SpendStatus::Success),
    ];
    sink.write_batch(&records).await.unwrap();
    let ids = |v: Vec<SpendRecord>| v.into_iter().map(|r| r.request_id).collect::<Vec<_>>();

    assert_eq!(
        ids(sink.query(&SpendLogFilter::new()).await.unwrap()),
        ["q5", "q4", "q3", "q2", "q1"]
    );
    assert_eq!(
        ids(sink
            .query(&SpendLogFilter::new().request_id("q3"))
            .await
            .unwrap()),
        ["q3"]
    );
    assert!(
        sink.query(&SpendLogFilter::new().request_id("nope"))
            .await
            .unwrap()
            .is_empty()
    );
    let day =
        SpendLogFilter::from_query_string("start_date=2026-11-21&end_date=2026-11-21").unwrap();
    assert_eq!(ids(sink.query(&day).await.unwrap()), ["q4", "q3", "q2"]);
    let range = SpendLogFilter::new()
        .start(t("2026-11-21T11:00:00.500Z"))
        .end(t("2026-11-22T00:00:00Z"));
    assert_eq!(ids(sink.query(&range).await.unwrap()), ["q4", "q3"]);
    let failures = SpendLogFilter::new().status(SpendStatus::Failure);
    assert_eq!(ids(sink.query(&failures).await.unwrap()), ["q4", "q2"]);
    assert_eq!(
        ids(sink.query(&SpendLogFilter::new().limit(2)).await.unwrap()),
        ["q5", "q4"]
    );
    assert_eq!(
        ids(sink
            .query(&SpendLogFilter::new().limit(2).offset(3))
            .await
            .unwrap()),
        ["q2", "q1"]
    );
    let combined =
        SpendLogFilter::from_query_string("start_date=2026-11-21&status=success&limit=1").unwrap();
    assert_eq!(ids(sink.query(&combined).await.unwrap()), ["q5"]);
}

#[tokio::test]
async fn block_summary_counts_blocks_per_guardrail_per_day() {
    let dir = temp_dir("sqlite-blocks");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::open(&path).await.unwrap();
    sink.write_batch(&[
        guarded(
            "b1",
            "2026-11-20T10:00:00Z",
            &[("pii", "mask"), ("toxicity", "block")],
        ),
        guarded("b2", "2026-11-20T23:59:59.999Z", &[("toxicity", "block")]),
        guarded(
            "b3",
            "2026-11-21T00:00:00Z",
            &[("toxicity", "block"), ("jailbreak", "block")],
        ),
        guarded("b4", "2026-11-21T08:00:00Z", &[("jailbreak", "allow")]),
        full_record("b5"),
        record("b6", "2026-11-21T09:00:00Z", SpendStatus::Success),
    ])
    .await
    .unwrap();
    // A record without guardrail_information at all.
    let mut bare = record("b7", "2026-11-21T09:30:00Z", SpendStatus::Success);
    bare.metadata = guardrail_tower_spend_log::SpendMetadata {
        http_status: 200,
        ..Default::default()
    };
    sink.write_batch(&[bare]).await.unwrap();

    assert_eq!(
        sink.block_summary(None, None).await.unwrap(),
        vec![
            BlockSummaryRow::new("2026-11-20", "toxicity", 2),
            BlockSummaryRow::new("2026-11-21", "content-filter", 1),
            BlockSummaryRow::new("2026-11-21", "jailbreak", 1),
            BlockSummaryRow::new("2026-11-21", "toxicity", 1),
        ]
    );
    assert_eq!(
        sink.block_summary(
            Some(t("2026-11-20T12:00:00Z")),
            Some(t("2026-11-21T00:00:00Z"))
        )
        .await
        .unwrap(),
        vec![BlockSummaryRow::new("2026-11-20", "toxicity", 1)]
    );
}

/// Another connection holds the write lock (writes fail with "database is locked"), then lets go
/// while records keep flowing: every record ends up written, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_locked_database() {
    let dir = temp_dir("sqlite-locked");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::builder(&path)
        .busy_timeout(Duration::from_millis(5))
        .open()
        .await
        .unwrap();
    let handle = SpendLogWriter::new()
        .max_batch_size(16)
        .linger(Duration::from_millis(2))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .spawn(sink.clone());

    for i in 0..50 {
        handle.submit(record(
            &format!("before-{i}"),
            "2026-11-21T10:00:00Z",
            SpendStatus::Success,
        ));
    }
    written(&handle, 50).await;

    let locker = Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..100 {
        handle.submit(record(
            &format!("locked-{i}"),
            "2026-11-21T11:00:00Z",
            SpendStatus::Success,
        ));
    }
    eventually("failed writes while locked", || {
        handle.stats().failed_writes >= 3
    })
    .await;
    let err = sink
        .write_batch(&[record(
            "direct",
            "2026-11-21T11:00:00Z",
            SpendStatus::Success,
        )])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Busy, "{err}");
    assert_eq!(handle.stats().written, 50);
    for i in 0..100 {
        handle.submit(record(
            &format!("after-{i}"),
            "2026-11-21T12:00:00Z",
            SpendStatus::Success,
        ));
    }
    locker.execute_batch("COMMIT").unwrap();

    written(&handle, 250).await;
    handle.shutdown().await.unwrap();
    let stats = handle.stats();
    assert_eq!((stats.written, stats.dropped, stats.pending), (250, 0, 0));
    let ids: BTreeSet<String> = locker
        .prepare("SELECT request_id FROM \"LiteLLM_SpendLogs\"")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let count: i64 = locker
        .query_row("SELECT count(*) FROM \"LiteLLM_SpendLogs\"", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 250);
    assert_eq!(ids.len(), 250);
    assert!(ids.contains("locked-99") && ids.contains("after-0") && ids.contains("before-49"));
}

/// A database written by an earlier version (no `client_request_id`, the client's id as the
/// key) is migrated in place when the sink opens: old rows stay, new rows carry both ids.
#[tokio::test]
async fn an_old_table_is_migrated_in_place() {
    let dir = temp_dir("sqlite-migrate");
    let path = dir.path().join("spend.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE \"LiteLLM_SpendLogs\" (
                request_id TEXT PRIMARY KEY NOT NULL, call_type TEXT NOT NULL,
                status TEXT NOT NULL, model TEXT NOT NULL, api_base TEXT, \"user\" TEXT,
                api_key TEXT, spend REAL NOT NULL DEFAULT 0,
                prompt_tokens INTEGER NOT NULL DEFAULT 0,
                completion_tokens INTEGER NOT NULL DEFAULT 0,
                total_tokens INTEGER NOT NULL DEFAULT 0, \"startTime\" TEXT NOT NULL,
                \"endTime\" TEXT NOT NULL, \"completionStartTime\" TEXT,
                metadata TEXT NOT NULL DEFAULT '{}');
             CREATE INDEX \"LiteLLM_SpendLogs_startTime_idx\" ON \"LiteLLM_SpendLogs\" (\"startTime\");
             CREATE INDEX \"LiteLLM_SpendLogs_status_idx\" ON \"LiteLLM_SpendLogs\" (status);
             CREATE INDEX \"LiteLLM_SpendLogs_api_key_idx\" ON \"LiteLLM_SpendLogs\" (api_key);
             CREATE INDEX \"LiteLLM_SpendLogs_user_idx\" ON \"LiteLLM_SpendLogs\" (\"user\");
             INSERT INTO \"LiteLLM_SpendLogs\" (request_id, call_type, status, model,
                 prompt_tokens, completion_tokens, total_tokens, \"startTime\", \"endTime\", metadata)
             VALUES ('client-chosen', 'acompletion', 'success', 'gpt-4o', 1, 2, 3,
                 '2026-11-20T10:00:00.000Z', '2026-11-20T10:00:01.000Z', '{\"http_status\":200}');",
        )
        .unwrap();
    }
    let sink = SqliteSink::open(&path).await.unwrap();
    let old = sink
        .query(&SpendLogFilter::new().request_id("client-chosen"))
        .await
        .unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(
        (old[0].client_request_id.as_deref(), old[0].total_tokens),
        (None, 3)
    );
    let new = full_record("0198a8a0-0000-7000-8000-000000000001");
    sink.write_batch(std::slice::from_ref(&new)).await.unwrap();
    let got = sink
        .query(&SpendLogFilter::new().client_request_id(new.client_request_id.clone().unwrap()))
        .await
        .unwrap();
    assert_eq!(got, vec![new.clone()]);
    // Opening again (a second gateway, a restart) finds nothing left to do.
    drop(sink);
    let again = SqliteSink::open(&path).await.unwrap();
    assert_eq!(again.query(&SpendLogFilter::new()).await.unwrap().len(), 2);
    let columns: i64 = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM pragma_table_info('LiteLLM_SpendLogs')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(columns, 16);
    // The status index of the earlier schema is gone, the full indexes are partial now.
    assert_eq!(
        indexes(&Connection::open(&path).unwrap()),
        vec![
            ("LiteLLM_SpendLogs_api_key_idx".to_owned(), true),
            ("LiteLLM_SpendLogs_client_request_id_idx".to_owned(), true),
            ("LiteLLM_SpendLogs_startTime_idx".to_owned(), false),
            ("LiteLLM_SpendLogs_user_idx".to_owned(), true),
        ]
    );
    // A lookup by user goes through the rebuilt (partial) index.
    let by_user = again
        .query(&SpendLogFilter::new().user_id(new.user.clone().unwrap()))
        .await
        .unwrap();
    assert_eq!(by_user, vec![new]);
}

/// The database locked by another process under load from many tasks: writes wait (queue
/// bounded), reads keep working on their own connection, and once the lock is gone every
/// record is written once. With a queue smaller than the outage, what did not fit is in the
/// dead-letter file: rows + dead letters == requests, and memory stayed at the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_under_load_loses_nothing_and_holds_a_bounded_queue() {
    for (capacity, tasks, each) in [(4096, 8, 250), (64, 8, 100)] {
        let dir = temp_dir("sqlite-locked-load");
        let path = dir.path().join("spend.db");
        let dead = dir.path().join("dead.jsonl");
        let sink = SqliteSink::builder(&path)
            .busy_timeout(Duration::from_millis(5))
            .open()
            .await
            .unwrap();
        let handle = SpendLogWriter::new()
            .capacity(capacity)
            .max_batch_size(64)
            .linger(Duration::from_millis(2))
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .dead_letter_path(&dead)
            .spawn(sink.clone());
        sink.write_batch(&[record("seed", "2026-11-21T09:00:00Z", SpendStatus::Success)])
            .await
            .unwrap();

        let locker = Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let submitters: Vec<_> = (0..tasks)
            .map(|t| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for i in 0..each {
                        handle.submit(record(
                            &format!("load-{t}-{i}"),
                            "2026-11-21T11:00:00Z",
                            SpendStatus::Success,
                        ));
                        if i % 50 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for s in submitters {
            s.await.unwrap();
        }
        let total = (tasks * each) as u64;
        eventually("writes failing while locked", || {
            let s = handle.stats();
            s.queued == total && s.failed_writes >= 2
        })
        .await;
        let stats = handle.stats();
        assert_eq!(stats.written, 0, "{stats:?}");
        assert!(stats.queue_depth <= capacity as u64, "{stats:?}");
        assert!(stats.failed_writes >= 1, "{stats:?}");
        // Reads go on while writes wait.
        let seen = sink.query(&SpendLogFilter::new()).await.unwrap();
        assert_eq!(seen.len(), 1);
        locker.execute_batch("COMMIT").unwrap();

        eventually("every record settled", || handle.stats().pending == 0).await;
        handle.shutdown().await.unwrap();
        let stats = handle.stats();
        let rows: i64 = locker
            .query_row(
                "SELECT count(*) FROM \"LiteLLM_SpendLogs\" WHERE request_id LIKE 'load-%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let letters = std::fs::read_to_string(&dead)
            .unwrap_or_default()
            .lines()
            .count() as u64;
        assert_eq!(stats.dropped, 0, "{stats:?}");
        assert_eq!(rows as u64, stats.written, "{stats:?}");
        assert_eq!(letters, stats.dead_lettered);
        assert_eq!(
            rows as u64 + letters,
            total,
            "rows + dead letters == requests"
        );
        if capacity >= tasks * each {
            assert_eq!((rows as u64, letters), (total, 0), "nothing overflowed");
        } else {
            assert!(letters > 0, "{stats:?}");
        }
        eprintln!(
            "capacity {capacity}: {total} records while locked -> {rows} rows, {letters} dead letters"
        );
    }
}

/// A batch the database refuses part-way (here a trigger rejects its third row, after the
/// first two were inserted by one statement) leaves nothing behind, and the sink writes the
/// next batch: the failed transaction was rolled back, not left open.
#[tokio::test]
async fn a_batch_refused_part_way_is_rolled_back_and_the_next_one_written() {
    let dir = temp_dir("sqlite-rollback");
    let path = dir.path().join("spend.db");
    let sink = SqliteSink::open(&path).await.unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON \"LiteLLM_SpendLogs\"
             WHEN NEW.request_id = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
        )
        .unwrap();
    let at = "2026-11-21T10:00:00Z";
    let err = sink
        .write_batch(&[
            record("first", at, SpendStatus::Success),
            record("second", at, SpendStatus::Success),
            record("poison", at, SpendStatus::Success),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Rejected, "{err}");

    sink.write_batch(&[record("next", at, SpendStatus::Success)])
        .await
        .unwrap();
    let rows = sink.query(&SpendLogFilter::new()).await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["next"]);
}

/// The workspace builds its bundled SQLite with `SQLITE_DEFAULT_MEMSTATUS=0` and
/// `SQLITE_DEFAULT_LOOKASIDE=1200,100` (`.cargo/config.toml`). Without the first, every SQLite
/// allocation takes a global mutex to keep statistics nothing reads (about 600 instructions a
/// spend-log row); without the second, a batch's 16-row `INSERT` binds more short text values
/// than the default lookaside has slots, and each of the rest is a `malloc` and a `free` (about
/// 800 instructions a row; BENCHMARKS.md). The sink's connections and this one share the one
/// library linked into the binary.
#[test]
fn the_bundled_sqlite_is_built_with_the_workspace_options() {
    let db = Connection::open_in_memory().unwrap();
    let options: Vec<String> = db
        .prepare("SELECT compile_options FROM pragma_compile_options")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for option in ["DEFAULT_MEMSTATUS=0", "DEFAULT_LOOKASIDE=1200,100"] {
        assert!(
            options.iter().any(|o| o == option),
            "SQLite was built without SQLITE_{option} (LIBSQLITE3_FLAGS in .cargo/config.toml, \
             or overridden by the environment): {options:?}"
        );
    }
}
