//! Records per second written by the SQLite and PostgreSQL sinks at batch sizes 1, 64 and 256,
//! and through the batching writer end to end.
//!
//! PostgreSQL runs when `GUARDRAIL_TOWER_TEST_PG_URL` is set (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); otherwise it is skipped with a note.

// Without either database feature there is nothing to measure.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_variables)
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_spend_log::{
    ChannelSink, SpendLogSink, SpendLogWriter, SpendRecord, SpendStatus,
};
use serde_json::json;
use tokio::runtime::Runtime;

const BATCH_SIZES: [usize; 3] = [1, 64, 256];
/// Records per iteration of the end-to-end benchmark (a multiple of the writer's batch size).
const END_TO_END_RECORDS: u64 = 2_560;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A realistic record with a unique `request_id`.
fn record() -> SpendRecord {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    SpendRecord {
        request_id: format!("bench-{}-{id}", std::process::id()),
        client_request_id: None,
        call_type: "acompletion".into(),
        status: SpendStatus::Success,
        model: "gpt-4o-mini".into(),
        api_base: Some("https://api.openai.com/v1".into()),
        user: Some("user-42".into()),
        api_key: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
        spend: 0.000_42,
        prompt_tokens: 120,
        completion_tokens: 80,
        total_tokens: 200,
        start_time: now,
        end_time: now + Duration::from_millis(900),
        completion_start_time: Some(now + Duration::from_millis(250)),
        metadata: serde_json::from_value(json!({
            "guardrail_information": [
                {"guardrail_name": "pii-mask", "guardrail_provider": "presidio",
                 "guardrail_mode": "pre_call", "guardrail_status": "success",
                 "guardrail_action": "allow", "guardrail_response": {},
                 "start_time": 1_795_780_800.1, "end_time": 1_795_780_800.2, "duration": 0.1},
                {"guardrail_name": "content-filter", "guardrail_provider": "litellm_content_filter",
                 "guardrail_mode": "post_call", "guardrail_status": "success",
                 "guardrail_action": "allow", "guardrail_response": {},
                 "start_time": 1_795_780_800.8, "end_time": 1_795_780_800.9, "duration": 0.1}
            ],
            "http_status": 200,
            "stream": true
        }))
        .expect("a valid metadata object"),
    }
}

fn bench_sink<S: SpendLogSink + Clone>(c: &mut Criterion, rt: &Runtime, name: &str, sink: &S) {
    let mut group = c.benchmark_group(format!("{name}_write_batch"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.to_async(rt).iter_custom(|iters| {
                let sink = sink.clone();
                async move {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<SpendRecord> = (0..size).map(|_| record()).collect();
                        let started = Instant::now();
                        sink.write_batch(&batch).await.expect("write");
                        elapsed += started.elapsed();
                    }
                    elapsed
                }
            });
        });
    }
    group.finish();
}

fn bench_writer<S: SpendLogSink + Clone>(c: &mut Criterion, rt: &Runtime, name: &str, sink: &S) {
    let mut group = c.benchmark_group("writer_end_to_end");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(END_TO_END_RECORDS));
    let handle = {
        let _guard = rt.enter();
        SpendLogWriter::new()
            .capacity(10_000)
            .max_batch_size(256)
            .spawn(sink.clone())
    };
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let handle = handle.clone();
            async move {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let records: Vec<SpendRecord> =
                        (0..END_TO_END_RECORDS).map(|_| record()).collect();
                    let target = handle.stats().written + END_TO_END_RECORDS;
                    let started = Instant::now();
                    for r in records {
                        handle.submit(r);
                    }
                    while handle.stats().written < target {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    elapsed += started.elapsed();
                }
                elapsed
            }
        });
    });
    group.finish();
    rt.block_on(handle.shutdown()).expect("shutdown");
    assert_eq!(handle.stats().dropped, 0);
}

fn sinks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    #[cfg(feature = "sqlite")]
    {
        let dir =
            std::env::temp_dir().join(format!("guardrail-spend-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sink = rt
            .block_on(guardrail_tower_spend_log::SqliteSink::open(
                dir.join("spend.db"),
            ))
            .expect("open SQLite");
        let sink = std::sync::Arc::new(sink);
        bench_sink(c, &rt, "sqlite", &sink);
        bench_writer(c, &rt, "sqlite", &sink);
        drop(sink);
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(not(feature = "sqlite"))]
    eprintln!("note: SQLite benchmarks skipped (feature `sqlite` is off)");

    #[cfg(feature = "postgres")]
    match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => {
            let table = format!("spend_bench_{}", std::process::id());
            let sink = rt
                .block_on(
                    guardrail_tower_spend_log::PostgresSink::builder(&url)
                        .table(&table)
                        .connect(),
                )
                .expect("connect to PostgreSQL");
            let sink = std::sync::Arc::new(sink);
            bench_sink(c, &rt, "postgres", &sink);
            bench_writer(c, &rt, "postgres", &sink);
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\""))
                        .await;
                }
            });
        }
        _ => {
            eprintln!("note: PostgreSQL benchmarks skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set")
        }
    }
    #[cfg(not(feature = "postgres"))]
    eprintln!("note: PostgreSQL benchmarks skipped (feature `postgres` is off)");
}

/// The layer's added time per request: `oneshot` of a realistic chat request through
/// `SpendLogLayer` (records going to a channel sink through the writer) against the bare
/// upstream service, both reading the whole response body.
fn layer(c: &mut Criterion) {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
    let request = r#"{"model":"gpt-4o-mini","user":"alice","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about the sea, and explain its imagery in two sentences."}]}"#;
    let upstream = service_fn(move |_req: Request<Full<Bytes>>| async move {
        Ok::<_, std::convert::Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(response.as_bytes())))
                .unwrap(),
        )
    });
    let make = || {
        Request::post("/v1/chat/completions")
            .header("authorization", "Bearer sk-test")
            .body(Full::new(Bytes::from_static(request.as_bytes())))
            .unwrap()
    };
    let (sink, mut rx) = ChannelSink::new();
    let writer = rt.block_on(async { SpendLogWriter::new().spawn(sink) });
    let drain = rt.spawn(async move { while rx.recv().await.is_some() {} });
    let logged = ServiceBuilder::new()
        .layer(guardrail_tower_spend_log::SpendLogLayer::new(
            writer.clone(),
        ))
        .service(upstream);
    let mut group = c.benchmark_group("spend_log_layer");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let mut svc = upstream;
            let resp = svc.ready().await.unwrap().call(make()).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    group.bench_function("with_spend_log", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = logged.clone().oneshot(make()).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    group.finish();
    rt.block_on(async {
        writer.shutdown().await.unwrap();
        drop(drain);
    });
}

criterion_group!(benches, sinks, layer);
criterion_main!(benches);
