//! A bounded soak of the whole gateway on loopback: the mock upstream and the gateway run in
//! this process, driven by `concurrency` client tasks for a fixed time with a mix of clean,
//! pre_call-blocked, masked and streamed requests (some streams blocked mid-way by a post_call
//! guardrail, some abandoned mid-way by the client) and a small share of injected upstream
//! faults.
//!
//! It asserts that every response is the one its kind calls for (no 5xx but the injected
//! ones), that the process's memory (VmRSS, sampled every few seconds) stays flat after the
//! warm-up, and that once the spend log is flushed it holds exactly one record per request,
//! with as many failures as requests that should fail.
//!
//! `soak_short` (5 s at concurrency 16) runs with the suite. `soak_full` is ignored by default:
//! `GUARDRAIL_TOWER_SOAK_SECS` (default 60) sets its duration at concurrency 64:
//!
//! ```text
//! GUARDRAIL_TOWER_SOAK_SECS=60 cargo test --release --test soak -- --ignored --nocapture
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use guardrail_gateway::app::Gateway;
use guardrail_tower_testkit::mock::MockUpstream;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The longest one request may take before it counts as a failure.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak(Duration::from_secs(5), 16, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s at concurrency 64 (GUARDRAIL_TOWER_SOAK_SECS sets the duration)"]
async fn soak_full() {
    let secs = std::env::var("GUARDRAIL_TOWER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    soak(Duration::from_secs(secs), 64, Duration::from_secs(5)).await;
}

/// The kinds of request in the mix, with their weights (out of 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A clean JSON chat completion: 200.
    Clean,
    /// A prompt with a blocked word: 400 `content_policy_violation` from the pre_call guardrail.
    Blocked,
    /// A prompt with an email: 200, masked on the way in and out.
    Masked,
    /// A clean stream: 200, ends with `[DONE]`.
    Stream,
    /// A stream the post_call guardrail blocks mid-way: 200, an in-band error, then `[DONE]`.
    StreamBlocked,
    /// A clean Anthropic stream: 200, ends with `message_stop`.
    AnthropicStream,
    /// A stream the client abandons after two frames.
    Disconnect,
    /// An injected upstream 503 (`x-mock-fault: status-503`): a 503 JSON error.
    Injected503,
}

const MIX: [(Kind, u64); 8] = [
    (Kind::Clean, 25),
    (Kind::Blocked, 10),
    (Kind::Masked, 15),
    (Kind::Stream, 20),
    (Kind::StreamBlocked, 10),
    (Kind::AnthropicStream, 8),
    (Kind::Disconnect, 10),
    (Kind::Injected503, 2),
];

impl Kind {
    fn pick(roll: u64) -> Kind {
        let mut roll = roll % 100;
        for (kind, weight) in MIX {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        Kind::Clean
    }

    /// Whether its spend-log record must say `failure`.
    fn fails(self) -> bool {
        matches!(
            self,
            Kind::Blocked | Kind::StreamBlocked | Kind::Disconnect | Kind::Injected503
        )
    }
}

/// A small deterministic PRNG (xorshift64*), one per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    by_kind: Mutex<BTreeMap<Kind, u64>>,
    unexpected_5xx: AtomicU64,
    /// The first few responses that were not what their kind calls for.
    problems: Mutex<Vec<String>>,
    problem_count: AtomicU64,
}

impl Tally {
    fn problem(&self, kind: Kind, what: String) {
        self.problem_count.fetch_add(1, Ordering::Relaxed);
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 5 {
            let what = if what.len() > 700 {
                let cut = what.len() - 500;
                let cut = (cut..what.len())
                    .find(|&i| what.is_char_boundary(i))
                    .unwrap_or(cut);
                format!("{} ... {}", &what[..150.min(what.len())], &what[cut..])
            } else {
                what
            };
            problems.push(format!("{kind:?}: {what}"));
        }
    }
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const CONFIG_GUARDRAILS: &str = r#"
guardrails:
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{keyword: forbidden, action: BLOCK}]
  - guardrail_name: pii-mask
    litellm_params:
      guardrail: litellm_content_filter
      mode: [pre_call, post_call]
      default_on: true
      patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]
  - guardrail_name: no-codenames
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      default_on: false
      blocked_words: [{keyword: BLUEBIRD, action: BLOCK}]
"#;

async fn soak(duration: Duration, concurrency: usize, sample_every: Duration) {
    let upstream = MockUpstream::start().await.unwrap();
    // A long run must not keep every upstream request in memory.
    upstream.set_recording(false);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: gpt-guarded
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream, guardrails: [no-codenames]}}
  - model_name: claude-guarded
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant, guardrails: [no-codenames]}}
{CONFIG_GUARDRAILS}
general_settings:
  spend_logs: "sqlite://{db}"
  request_timeout: 10
"#,
        base = upstream.base_url(),
        origin = upstream.origin(),
        db = dir.path().join("spend.db").display(),
    );
    let gateway = Gateway::from_config_str(&config).await.unwrap();
    let spend = gateway.spend_log().clone();
    let running = gateway
        .spawn(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let url = running.url("");

    let tally = Arc::new(Tally::default());
    let tag = format!("soak-{}", std::process::id());
    let start = Instant::now();
    let deadline = start + duration;

    // RSS samples, every `sample_every` until the load stops.
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let sampler = tokio::spawn({
        let (samples, tally) = (Arc::clone(&samples), Arc::clone(&tally));
        async move {
            let mut next = start;
            while next <= deadline + Duration::from_millis(10) {
                tokio::time::sleep_until(next.into()).await;
                let sent = tally.sent.load(Ordering::Relaxed);
                let rss = vm_rss_kib();
                eprintln!(
                    "t={:>5.1}s rss={:>7} KiB requests={sent}",
                    start.elapsed().as_secs_f64(),
                    rss
                );
                samples
                    .lock()
                    .unwrap()
                    .push((start.elapsed().as_secs_f64(), rss));
                next += sample_every;
            }
        }
    });

    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (tally, url, tag) = (Arc::clone(&tally), url.clone(), tag.clone());
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) * 0x1000_0001));
                // Bounded by count as well as by time.
                for i in 0..10_000_000u64 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let kind = Kind::pick(rng.next());
                    let id = format!("{tag}-{w}-{i}");
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    *tally.by_kind.lock().unwrap().entry(kind).or_default() += 1;
                    let outcome =
                        tokio::time::timeout(REQUEST_BOUND, one(&client, &url, kind, &id, i)).await;
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err((status, what))) => {
                            if status >= 500 {
                                tally.unexpected_5xx.fetch_add(1, Ordering::Relaxed);
                            }
                            tally.problem(kind, format!("{id}: {status} {what}"));
                        }
                        Err(_) => tally.problem(kind, format!("{id}: timed out")),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = start.elapsed();
    sampler.await.unwrap();
    let sent = tally.sent.load(Ordering::Relaxed);

    // Flush: every record submitted and written (bounded).
    let flush = Instant::now();
    loop {
        let stats = spend.stats();
        if stats.queued >= sent && stats.pending == 0 {
            break;
        }
        assert!(
            flush.elapsed() < Duration::from_secs(60),
            "the spend log did not flush: {stats:?}, {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = spend.stats();
    let flushed_in = flush.elapsed();
    let by_kind = tally.by_kind.lock().unwrap().clone();
    let failures: u64 = by_kind
        .iter()
        .filter(|(k, _)| k.fails())
        .map(|(_, n)| n)
        .sum();
    let verify = Instant::now();
    let stored = count(&url, "", sent).await;
    let stored_failures = count(&url, "status=failure&", failures).await;
    let samples = samples.lock().unwrap().clone();

    eprintln!(
        "soak: {sent} requests in {:.1} s at concurrency {concurrency} = {:.0} req/s; \
         spend log flushed {flushed_in:?} after the load; {stats:?}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    eprintln!(
        "soak: by kind {by_kind:?}; records {stored} ({stored_failures} failures), counted in {:?}",
        verify.elapsed()
    );
    eprintln!(
        "soak: RSS KiB {:?}",
        samples
            .iter()
            .map(|(t, kib)| format!("{t:.0}s:{kib}"))
            .collect::<Vec<_>>()
    );

    let problems = tally.problems.lock().unwrap().clone();
    assert_eq!(
        tally.problem_count.load(Ordering::Relaxed),
        0,
        "{} unexpected 5xx; first problems: {problems:#?}",
        tally.unexpected_5xx.load(Ordering::Relaxed)
    );
    assert!(sent >= concurrency as u64, "{sent} requests");
    assert_eq!(
        (stats.queued, stats.written, stats.dropped),
        (sent, sent, 0),
        "one record per request, each written once"
    );
    assert_eq!(stored, sent, "spend-log records == requests");
    assert_eq!(
        stored_failures, failures,
        "failure records == failing requests"
    );

    // Memory is flat after the warm-up (the first 40% of the run): no sample after it is more
    // than 25% (plus 24 MiB of slack for allocator noise) above the first sample after it.
    let warm = duration.as_secs_f64() * 0.4;
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warm)
        .map(|(_, kib)| *kib)
        .collect();
    assert!(after.len() >= 2, "too few samples: {samples:?}");
    let base = after[0];
    let max = *after.iter().max().unwrap();
    assert!(
        max <= base + base / 4 + 24 * 1024,
        "RSS grew after the warm-up: {base} KiB -> {max} KiB ({samples:?})"
    );

    // A few records, looked up by id, are the request they stand for.
    for w in [0, concurrency / 2, concurrency - 1] {
        let id = format!("{tag}-{w}-0");
        let rows = get(&url, &format!("/spend/logs?client_request_id={id}")).await;
        assert_eq!(rows.as_array().map(Vec::len), Some(1), "{id}: {rows}");
    }

    tokio::time::timeout(Duration::from_secs(15), running.stop())
        .await
        .expect("the gateway shut down in time")
        .unwrap();
    assert_eq!(spend.stats().dropped, 0);
}

/// GETs a JSON document from the gateway.
async fn get(url: &str, path: &str) -> Value {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("{url}{path}"))
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(REQUEST_BOUND, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// How many spend-log records match `filter` (e.g. `status=failure&`), found by probing
/// offsets (the API has no count): two queries when there are `expected` of them, a binary
/// search otherwise.
async fn count(url: &str, filter: &str, expected: u64) -> u64 {
    let exists = |offset: u64| {
        let path = format!("/spend/logs?{filter}limit=1&offset={offset}");
        async move {
            get(url, &path)
                .await
                .as_array()
                .is_some_and(|a| !a.is_empty())
        }
    };
    if expected > 0 && exists(expected - 1).await && !exists(expected).await {
        return expected;
    }
    if !exists(0).await {
        return 0;
    }
    let mut high = 1;
    while exists(high).await {
        high *= 2;
        assert!(high < 1 << 40);
    }
    let mut low = high / 2; // exists(low), !exists(high)
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if exists(mid).await {
            low = mid;
        } else {
            high = mid;
        }
    }
    low + 1
}

/// The content deltas of a chat completion stream, joined.
fn streamed_text(sse: &str) -> String {
    sse.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Sends one request of `kind` and checks the answer; `Err((status, what))` when it is not
/// what the kind calls for.
async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    kind: Kind,
    id: &str,
    i: u64,
) -> Result<(), (u16, String)> {
    let chat = |content: String, stream: bool| json!({"model": "gpt-guarded", "stream": stream, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": content}]});
    let (path, body, headers): (&str, Value, Vec<(&str, &str)>) = match kind {
        Kind::Clean => (
            "/v1/chat/completions",
            chat(format!("Hello there {i}"), false),
            vec![],
        ),
        Kind::Blocked => (
            "/v1/chat/completions",
            chat(format!("the forbidden fruit {i}"), false),
            vec![],
        ),
        Kind::Masked => (
            "/v1/chat/completions",
            chat(format!("my email is jane{i}@corp.com"), false),
            vec![],
        ),
        Kind::Stream => (
            "/v1/chat/completions",
            chat(format!("hello stream {i}"), true),
            vec![("x-mock-events", "16")],
        ),
        Kind::StreamBlocked => (
            "/v1/chat/completions",
            chat(format!("tell me about the project {i}"), true),
            vec![],
        ),
        Kind::AnthropicStream => (
            "/v1/messages",
            json!({"model": "claude-guarded", "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": format!("hello claude {i}")}]}),
            vec![],
        ),
        Kind::Disconnect => (
            "/v1/chat/completions",
            chat(format!("hello slow {i}"), true),
            vec![("x-mock-events", "40"), ("x-mock-delay-ms", "2")],
        ),
        Kind::Injected503 => (
            "/v1/chat/completions",
            chat(format!("hello {i}"), false),
            vec![("x-mock-fault", "status-503")],
        ),
    };
    let mut req = Request::post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .header("x-request-id", id);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client
        .request(req)
        .await
        .map_err(|e| (0, format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if kind == Kind::Disconnect {
        if status != 200 {
            return Err((status, "a stream was expected".into()));
        }
        for _ in 0..2 {
            match body.frame().await {
                Some(Ok(_)) => {}
                other => return Err((status, format!("frame: {other:?}"))),
            }
        }
        drop(body);
        return Ok(());
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| (status, format!("body failed: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let fail = |what: &str| Err((status, format!("{what}: {text}")));
    match kind {
        Kind::Clean | Kind::Masked => {
            if status != 200 {
                return fail("expected 200");
            }
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| (status, e.to_string()))?;
            let content = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
            let ok = match kind {
                Kind::Clean => content == format!("You said: Hello there {i}."),
                _ => content.contains("[EMAIL_REDACTED]") && !content.contains('@'),
            };
            if !ok {
                return fail("unexpected content");
            }
        }
        Kind::Blocked => {
            if status != 400 || !text.contains("\"code\":\"content_policy_violation\"") {
                return fail("expected a 400 block");
            }
        }
        Kind::Stream | Kind::AnthropicStream => {
            let end: &str = if kind == Kind::Stream {
                "data: [DONE]\n\n"
            } else {
                "event: message_stop"
            };
            if status != 200 || !text.contains(end) || text.contains("\"error\"") {
                return fail("expected a clean stream");
            }
        }
        Kind::StreamBlocked => {
            if status != 200
                || !text.ends_with("\"code\":\"content_policy_violation\"}}\n\ndata: [DONE]\n\n")
                || streamed_text(&text).to_lowercase().contains("bluebird")
            {
                return fail("expected a stream blocked mid-way");
            }
        }
        Kind::Injected503 => {
            if status != 503 || !text.starts_with("{\"error\":{\"message\":") {
                return fail("expected the injected 503 as JSON");
            }
        }
        Kind::Disconnect => unreachable!(),
    }
    Ok(())
}
