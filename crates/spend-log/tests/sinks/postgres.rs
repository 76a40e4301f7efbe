//! The PostgreSQL sink, against the server in `GUARDRAIL_TOWER_TEST_PG_URL` (skipped when unset).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guardrail_tower_spend_log::{
    BlockSummaryRow, PostgresSink, SinkErrorKind, SpendLogFilter, SpendLogSink, SpendLogStore,
    SpendLogWriter, SpendRecord, SpendStatus,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::common::{eventually, full_record, guarded, record, t, written};

/// The test server's URL: `None` (the test prints that it was skipped) when
/// `GUARDRAIL_TOWER_TEST_PG_URL` is unset. When it is set, the tests run and fail if the server
/// cannot be reached (every test connects first with [`client`], which panics).
fn pg_url() -> Option<String> {
    match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            None
        }
    }
}

async fn client(url: &str) -> Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "GUARDRAIL_TOWER_TEST_PG_URL is set but the server cannot be reached: {e} \
             (unset it to skip the PostgreSQL tests)"
        ),
    };
    tokio::spawn(connection);
    client
}

/// A table name of its own for each test (tests run in parallel), dropped first.
async fn fresh_table(client: &Client, name: &str) -> String {
    let table = format!("spend_test_{name}_{}", std::process::id());
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await
        .unwrap();
    table
}

async fn drop_table(client: &Client, table: &str) {
    let _ = client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .await;
}

/// The table's indexes by name, each with whether it is partial.
async fn indexes(client: &Client, table: &str) -> Vec<(String, bool)> {
    client
        .query(
            "SELECT indexname, indexdef LIKE '% WHERE %' FROM pg_indexes \
             WHERE tablename = $1 ORDER BY indexname",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// What [`indexes`] gives for a table the sink created or migrated: the primary key,
/// `startTime`, and partial indexes on the lookup columns; none on `status`.
fn expected_indexes(table: &str) -> Vec<(String, bool)> {
    vec![
        (format!("{table}_api_key_idx"), true),
        (format!("{table}_client_request_id_idx"), true),
        (format!("{table}_pkey"), false),
        (format!("{table}_startTime_idx"), false),
        (format!("{table}_user_idx"), true),
    ]
}

async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn pg_round_trips_every_field_and_metadata_is_jsonb() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "roundtrip").await;
    let sink = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    let full = full_record("req-full");
    let sparse = record("req-sparse", "2026-11-21T11:00:00Z", SpendStatus::Success);
    sink.write_batch(&[full.clone(), sparse.clone()])
        .await
        .unwrap();

    assert_eq!(
        sink.query(&SpendLogFilter::new().request_id("req-full"))
            .await
            .unwrap(),
        vec![full]
    );
    assert_eq!(
        sink.query(&SpendLogFilter::new().request_id("req-sparse"))
            .await
            .unwrap(),
        vec![sparse]
    );

    let row = db
        .query_one(
            &format!(
                "SELECT metadata->'guardrail_information'->0->>'guardrail_name',
                        metadata->'guardrail_information'->1->>'guardrail_action',
                        metadata->'error_information'->>'error_code',
                        (metadata->>'http_status')::int,
                        (metadata->>'stream')::bool,
                        to_char(\"startTime\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'),
                        \"user\", total_tokens, spend
                 FROM \"{table}\" WHERE request_id = 'req-full'"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pii-mask");
    assert_eq!(row.get::<_, String>(1), "block");
    assert_eq!(row.get::<_, String>(2), "content_policy_violation");
    assert_eq!(row.get::<_, i32>(3), 400);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, String>(5), "2026-11-21 12:00:00.125");
    assert_eq!(row.get::<_, String>(6), "user-42");
    assert_eq!(row.get::<_, i64>(7), 1290);
    assert_eq!(row.get::<_, f64>(8), 0.001_234_5);

    let types: Vec<(String, String)> = db
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ty = |c: &str| {
        types
            .iter()
            .find(|(n, _)| n == c)
            .map(|(_, t)| t.as_str())
            .unwrap()
    };
    assert_eq!(types.len(), 16);
    assert_eq!(ty("request_id"), "text");
    assert_eq!(ty("client_request_id"), "text");
    assert_eq!(ty("metadata"), "jsonb");
    assert_eq!(ty("startTime"), "timestamp with time zone");
    assert_eq!(ty("completionStartTime"), "timestamp with time zone");
    assert_eq!(ty("spend"), "double precision");
    assert_eq!(ty("prompt_tokens"), "bigint");
    assert_eq!(ty("user"), "text");
    assert_eq!(
        indexes(&db, &table).await,
        expected_indexes(&table),
        "primary key, startTime, and partial indexes on the lookup columns; none on status"
    );
    // A lookup by equality can use its partial index.
    db.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan: String = db
        .query(
            &format!("EXPLAIN SELECT * FROM \"{table}\" WHERE api_key = 'k' LIMIT 10"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    db.batch_execute("RESET enable_seqscan").await.unwrap();
    assert!(
        plan.contains(&format!("{table}_api_key_idx")),
        "the api_key lookup does not use its index: {plan}"
    );
    drop_table(&db, &table).await;
}

#[tokio::test]
async fn pg_a_duplicate_request_id_is_stored_once() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "dup").await;
    let sink = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    let first = full_record("dup");
    let mut second = first.clone();
    second.model = "retried".into();
    sink.write_batch(std::slice::from_ref(&first))
        .await
        .unwrap();
    // Again, and twice within one batch.
    sink.write_batch(&[
        second.clone(),
        second,
        record("other", "2026-11-21T00:00:00Z", SpendStatus::Success),
    ])
    .await
    .unwrap();
    assert_eq!(count(&db, &table).await, 2);
    assert_eq!(
        sink.query(&SpendLogFilter::new().request_id("dup"))
            .await
            .unwrap(),
        vec![first]
    );
    drop_table(&db, &table).await;
}

#[tokio::test]
async fn pg_query_filters_by_id_time_status_and_pages_newest_first() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "query").await;
    let sink = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    sink.write_batch(&[
        record("q1", "2026-11-20T10:00:00Z", SpendStatus::Success),
        record("q2", "2026-11-21T00:00:00Z", SpendStatus::Failure),
        record("q3", "2026-11-21T11:00:00.500Z", SpendStatus::Success),
        record("q4", "2026-11-21T23:59:59.999Z", SpendStatus::Failure),
        record("q5", "2026-11-22T00:00:00Z", SpendStatus::Success),
    ])
    .await
    .unwrap();
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
    drop_table(&db, &table).await;
}

#[tokio::test]
async fn pg_block_summary_counts_blocks_per_guardrail_per_day() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "blocks").await;
    let sink = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    let mut bare = record("b7", "2026-11-21T09:30:00Z", SpendStatus::Success);
    bare.metadata = guardrail_tower_spend_log::SpendMetadata {
        http_status: 200,
        ..Default::default()
    };
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
        bare,
    ])
    .await
    .unwrap();
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
    drop_table(&db, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_replicas_share_one_table() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "replicas").await;
    // Both create the (missing) table at once.
    let (a, b) = tokio::join!(
        PostgresSink::builder(&url).table(&table).connect(),
        PostgresSink::builder(&url).table(&table).connect(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let batch = |from: usize, to: usize| {
        (from..to)
            .map(|i| {
                record(
                    &format!("r{i}"),
                    "2026-11-21T10:00:00Z",
                    SpendStatus::Success,
                )
            })
            .collect::<Vec<_>>()
    };
    let (ba, bb) = (batch(0, 300), batch(200, 500));
    let (ra, rb) = tokio::join!(a.write_batch(&ba), b.write_batch(&bb));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(count(&db, &table).await, 500);
    drop_table(&db, &table).await;
}

#[tokio::test]
async fn pg_invalid_url_is_a_config_error() {
    let err = PostgresSink::connect("postgres://host:notaport/db")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Config, "{err}");
}

/// A TCP proxy in front of the server that can be taken down (existing connections cut, new
/// ones closed at once) and brought back.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, conns) = (Arc::clone(&up), Arc::clone(&conns));
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Proxy {
            addr,
            up,
            conns,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// `url` with its host and port replaced.
fn via(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    format!(
        "{}{userinfo}{addr}{}",
        &url[..scheme_end],
        &rest[authority_end..]
    )
}

async fn upstream_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[allow(unreachable_patterns)]
        other => panic!("the test needs a TCP host, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// The server goes away while records flow, then comes back: every record is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_writes_survive_the_server_going_away() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "outage").await;
    let proxy = Proxy::start(upstream_addr(&url).await).await;
    let sink = Arc::new(
        PostgresSink::builder(via(&url, proxy.addr))
            .table(&table)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    );
    let handle = SpendLogWriter::new()
        .max_batch_size(16)
        .linger(Duration::from_millis(2))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .spawn(Arc::clone(&sink));

    let mut sent = 0;
    for _ in 0..40 {
        handle.submit(record(
            &format!("r{sent}"),
            "2026-11-21T10:00:00Z",
            SpendStatus::Success,
        ));
        sent += 1;
    }
    written(&handle, 40).await;

    proxy.down();
    for _ in 0..60 {
        handle.submit(record(
            &format!("r{sent}"),
            "2026-11-21T11:00:00Z",
            SpendStatus::Success,
        ));
        sent += 1;
    }
    eventually("failed writes while down", || {
        handle.stats().failed_writes >= 3
    })
    .await;
    let err = sink
        .query(&SpendLogFilter::new().limit(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Unavailable, "{err}");
    assert_eq!(count(&db, &table).await, 40);
    for _ in 0..50 {
        handle.submit(record(
            &format!("r{sent}"),
            "2026-11-21T12:00:00Z",
            SpendStatus::Success,
        ));
        sent += 1;
    }
    proxy.up();

    written(&handle, sent).await;
    handle.shutdown().await.unwrap();
    assert_eq!(count(&db, &table).await, i64::try_from(sent).unwrap());
    let ids: BTreeSet<String> = db
        .query(&format!("SELECT request_id FROM \"{table}\""), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len() as u64, sent);
    let stats = handle.stats();
    assert_eq!((stats.written, stats.dropped, stats.pending), (sent, 0, 0));
    // The sink reconnected for queries too.
    assert_eq!(
        sink.query(&SpendLogFilter::new().limit(1))
            .await
            .unwrap()
            .len(),
        1
    );
    drop_table(&db, &table).await;
}

/// A table from an earlier version (no `client_request_id`) is migrated in place.
#[tokio::test]
async fn pg_an_old_table_is_migrated_in_place() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "migrate").await;
    db.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (
            request_id TEXT PRIMARY KEY, call_type TEXT NOT NULL, status TEXT NOT NULL,
            model TEXT NOT NULL, api_base TEXT, \"user\" TEXT, api_key TEXT,
            spend DOUBLE PRECISION NOT NULL DEFAULT 0, prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0, total_tokens BIGINT NOT NULL DEFAULT 0,
            \"startTime\" TIMESTAMPTZ NOT NULL, \"endTime\" TIMESTAMPTZ NOT NULL,
            \"completionStartTime\" TIMESTAMPTZ, metadata JSONB NOT NULL DEFAULT '{{}}'::jsonb);
         CREATE INDEX \"{table}_startTime_idx\" ON \"{table}\" (\"startTime\");
         CREATE INDEX \"{table}_status_idx\" ON \"{table}\" (status);
         CREATE INDEX \"{table}_api_key_idx\" ON \"{table}\" (api_key);
         CREATE INDEX \"{table}_user_idx\" ON \"{table}\" (\"user\");
         INSERT INTO \"{table}\" (request_id, call_type, status, model, total_tokens,
             \"startTime\", \"endTime\", metadata)
         VALUES ('client-chosen', 'acompletion', 'success', 'gpt-4o', 3,
             '2026-11-20T10:00:00Z', '2026-11-20T10:00:01Z', '{{\"http_status\":200}}');"
    ))
    .await
    .unwrap();
    let sink = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    let old = sink
        .query(&SpendLogFilter::new().request_id("client-chosen"))
        .await
        .unwrap();
    assert_eq!(
        (
            old.len(),
            old[0].client_request_id.clone(),
            old[0].total_tokens
        ),
        (1, None, 3)
    );
    let new = full_record("0198a8a0-0000-7000-8000-000000000002");
    sink.write_batch(std::slice::from_ref(&new)).await.unwrap();
    let got = sink
        .query(&SpendLogFilter::new().client_request_id(new.client_request_id.clone().unwrap()))
        .await
        .unwrap();
    assert_eq!(got, vec![new]);
    // A second replica connecting finds nothing left to do.
    let again = PostgresSink::builder(&url)
        .table(&table)
        .connect()
        .await
        .unwrap();
    assert_eq!(again.query(&SpendLogFilter::new()).await.unwrap().len(), 2);
    // The status index of the earlier schema is gone, the full indexes are partial now.
    assert_eq!(indexes(&db, &table).await, expected_indexes(&table));
    drop_table(&db, &table).await;
}

/// Rows PostgreSQL rejects for good do not jam the queue: a NUL byte (22021 in text, 22P05 in
/// JSONB) and an oversized value (54000: an index row over the B-tree limit) are stored
/// sanitized; a row that breaks a constraint even sanitized (23514) goes whole to the
/// dead-letter file, with a warning; the rows around and after them land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rejected_rows_are_sanitized_or_dead_lettered_and_later_rows_land() {
    let Some(url) = pg_url() else { return };
    let db = client(&url).await;
    let table = fresh_table(&db, "rejected").await;
    let sink = Arc::new(
        PostgresSink::builder(&url)
            .table(&table)
            .connect()
            .await
            .unwrap(),
    );
    db.batch_execute(&format!(
        "ALTER TABLE \"{table}\" ADD CONSTRAINT no_banned CHECK (model <> 'banned-model')"
    ))
    .await
    .unwrap();
    let dead_dir = crate::common::temp_dir("pg-dead-letter");
    let dead = dead_dir.path().join("dead.jsonl");
    let handle = SpendLogWriter::new()
        .max_batch_size(32)
        .linger(Duration::from_millis(20))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .dead_letter_path(&dead)
        .spawn(Arc::clone(&sink));

    let at = "2026-11-21T10:00:00Z";
    let mut nul_user = record("nul-user", at, SpendStatus::Success);
    nul_user.user = Some("eve\0".into());
    let mut nul_meta = record("nul-meta", at, SpendStatus::Failure);
    nul_meta.metadata = crate::common::realistic_metadata();
    nul_meta
        .metadata
        .error_information
        .as_mut()
        .unwrap()
        .error_message = "upstream said \0 and stopped".into();
    let mut huge = record("huge-user", at, SpendStatus::Success);
    // Incompressible, so the index entry really is 100 kB.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    huge.user = Some(
        (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect(),
    );
    let mut banned = record("banned", at, SpendStatus::Success);
    banned.model = "banned-model".into();
    for i in 0..10 {
        handle.submit(record(&format!("ok-{i}"), at, SpendStatus::Success));
    }
    for r in [&nul_user, &nul_meta, &huge, &banned] {
        handle.submit(r.clone());
    }
    for i in 10..20 {
        handle.submit(record(&format!("ok-{i}"), at, SpendStatus::Success));
    }
    written(&handle, 23).await;
    // The queue kept flowing: later rows land.
    for i in 20..40 {
        handle.submit(record(&format!("ok-{i}"), at, SpendStatus::Success));
    }
    written(&handle, 43).await;
    handle.shutdown().await.unwrap();

    let stats = handle.stats();
    assert_eq!(
        (
            stats.written,
            stats.sanitized,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (43, 3, 1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(count(&db, &table).await, 43);
    let get = |id: &'static str| {
        let sink = Arc::clone(&sink);
        async move {
            sink.query(&SpendLogFilter::new().request_id(id))
                .await
                .unwrap()
                .pop()
                .unwrap()
        }
    };
    let stored = get("nul-user").await;
    assert_eq!(stored.user.as_deref(), Some("eve"));
    assert!(stored.metadata.sanitized);
    let stored = get("nul-meta").await;
    assert_eq!(
        stored.metadata.error_information.unwrap().error_message,
        "upstream said  and stopped"
    );
    let stored = get("huge-user").await;
    let user = stored.user.unwrap();
    assert!(
        user.len() <= 1000 && user.ends_with("…[truncated 99048 bytes]"),
        "{}",
        user.len()
    );
    let letters: Vec<guardrail_tower_spend_log::DeadLetterEntry> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record, banned, "the original, whole");
    assert_eq!(letters[0].reason, "rejected");
    assert!(
        letters[0].error.as_deref().unwrap().contains("no_banned"),
        "{:?}",
        letters[0].error
    );
    drop_table(&db, &table).await;
}
