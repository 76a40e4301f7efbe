//! Fault injection over real loopback sockets: the gateway (started in-process from a config
//! string) in front of the mock upstream's injected faults, a guardrail service under the
//! test's control, and a PostgreSQL spend log behind a proxy that is taken down and brought
//! back.
//!
//! Every test asserts three things: the client gets a well-formed error (the status and the
//! endpoint's exact error shape before the head is sent; a failed body or an in-band error
//! after it), the gateway stays up (clean requests afterwards succeed), and the spend log holds
//! exactly one record per request sent (matched by the `x-request-id` each request carries).
//!
//! Everything is bounded: each request by [`REQUEST_BOUND`], each wait by a count of short
//! sleeps. The PostgreSQL tests print that they were skipped when `GUARDRAIL_TOWER_TEST_PG_URL`
//! is unset.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use guardrail_gateway::app::{Gateway, RunningGateway};
use guardrail_tower::spend_log::SpendLogHandle;
use guardrail_tower_testkit::TestServer;
use guardrail_tower_testkit::mock::MockUpstream;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest any one request (head and body) may take before the test fails.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// What a test adds to the standard config.
struct Setup {
    /// More `model_list` entries (YAML list items, indented by two spaces).
    models: String,
    /// More `guardrails` entries.
    guardrails: String,
    /// `general_settings.request_timeout`, in seconds.
    request_timeout: f64,
    /// `general_settings.spend_logs`; `None`: an SQLite file of the test's own.
    spend_logs: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            models: String::new(),
            guardrails: String::new(),
            request_timeout: 5.0,
            spend_logs: None,
        }
    }
}

/// A running mock upstream and gateway, and the ids of the requests sent through it.
struct Harness {
    upstream: MockUpstream,
    gateway: String,
    spend: SpendLogHandle,
    tag: String,
    sent: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
    _running: RunningGateway,
}

impl Harness {
    async fn start(tag: &str, setup: Setup) -> Harness {
        let upstream = MockUpstream::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spend_logs = setup
            .spend_logs
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("spend.db").display()));
        let config = format!(
            r#"
model_list:
  - model_name: gpt-plain
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream}}
  - model_name: gpt-post
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream, guardrails: [no-codenames]}}
  - model_name: claude-plain
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant}}
  - model_name: claude-post
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant, guardrails: [no-codenames]}}
{models}
guardrails:
  - guardrail_name: no-codenames
    litellm_params: {{guardrail: litellm_content_filter, mode: post_call, default_on: false, blocked_words: [{{keyword: BLUEBIRD, action: BLOCK}}]}}
{guardrails}
general_settings:
  spend_logs: "{spend_logs}"
  request_timeout: {timeout}
"#,
            base = upstream.base_url(),
            origin = upstream.origin(),
            models = setup.models,
            guardrails = setup.guardrails,
            timeout = setup.request_timeout,
        );
        let gateway = Gateway::from_config_str(&config).await.unwrap();
        let spend = gateway.spend_log().clone();
        let running = gateway
            .spawn(TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        Harness {
            upstream,
            gateway: running.url(""),
            spend,
            tag: format!("{tag}-{}-{}", std::process::id(), unique()),
            sent: Mutex::new(Vec::new()),
            _dir: dir,
            _running: running,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// A JSON POST with a fresh `x-request-id` (recorded as sent) and extra headers.
    fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let mut sent = self.sent.lock().unwrap();
        let id = format!("{}-{}", self.tag, sent.len());
        sent.push(id.clone());
        let mut req = Request::post(self.url(path))
            .header("content-type", "application/json")
            .header("x-request-id", id);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    }

    /// Sends `body` to `path` with an `x-mock-fault` header (when given) and reads it all. The
    /// request (and its id) is made at once; the returned future sends it.
    fn call(
        &self,
        path: &str,
        body: &Value,
        fault: Option<&str>,
    ) -> impl Future<Output = Got> + use<> {
        let headers: Vec<(&str, &str)> = fault.map(|f| ("x-mock-fault", f)).into_iter().collect();
        fetch(self.post(path, body, &headers))
    }

    /// Clean requests (JSON and streamed) still succeed.
    async fn assert_still_serves(&self) {
        let got = self
            .call(
                "/v1/chat/completions",
                &chat("gpt-plain", "Hello there", false),
                None,
            )
            .await;
        assert_eq!(got.status, 200, "{got:?}");
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "You said: Hello there."
        );
        let got = self
            .call(
                "/v1/chat/completions",
                &chat("gpt-post", "Hello there", true),
                None,
            )
            .await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.failed.is_none(), "{got:?}");
        assert!(got.body.ends_with(b"data: [DONE]\n\n"), "{got:?}");
        assert_eq!(chat_text(&got.body), "You said: Hello there.");
    }

    /// Waits (bounded) until the spend log holds one record for every request sent, checks that
    /// it holds nothing else and that each record was submitted once, and returns the records
    /// by request id.
    async fn spend_rows(&self) -> BTreeMap<String, Value> {
        let sent: BTreeSet<String> = self.sent.lock().unwrap().iter().cloned().collect();
        let mut last = String::new();
        for _ in 0..400 {
            let resp = fetch(
                Request::get(self.url("/spend/logs?limit=1000"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            if resp.status == 200 {
                let rows: Vec<Value> = serde_json::from_slice(&resp.body).unwrap();
                if rows.len() >= sent.len() {
                    let by_id: BTreeMap<String, Value> = rows
                        .into_iter()
                        .map(|r| (r["client_request_id"].as_str().unwrap().to_owned(), r))
                        .collect();
                    let ids: BTreeSet<String> = by_id.keys().cloned().collect();
                    assert_eq!(ids, sent, "one spend-log record per request, no others");
                    let stats = self.spend.stats();
                    assert_eq!(
                        (stats.queued, stats.dropped),
                        (sent.len() as u64, 0),
                        "each request submitted its record exactly once: {stats:?}"
                    );
                    return by_id;
                }
                last = format!("{} of {} rows", rows.len(), sent.len());
            } else {
                last = format!("{resp:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the spend log never held every request: {last}");
    }

    /// The id of the request with this index (in sending order).
    fn id(&self, index: usize) -> String {
        self.sent.lock().unwrap()[index].clone()
    }
}

/// A process-unique number, for request ids.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// What a client got: the head, and the body up to its end or its failure.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    /// The body error, if the body failed instead of ending.
    failed: Option<String>,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} failed={:?}",
            self.status,
            String::from_utf8_lossy(&self.body),
            self.failed
        )
    }
}

/// Sends `req` with a fresh client and reads the whole body (bounded by [`REQUEST_BOUND`]).
async fn fetch(req: Request<Full<Bytes>>) -> Got {
    tokio::time::timeout(REQUEST_BOUND, async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.expect("the gateway answered");
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        let mut got = Vec::new();
        let mut failed = None;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    failed = Some(e.to_string());
                    break;
                }
                None => break,
            }
        }
        Got {
            status,
            headers: parts.headers,
            body: got.into(),
            failed,
        }
    })
    .await
    .expect("the request finished in time")
}

/// Sends `req`, reads `frames` body frames after a 200 head, then goes away.
async fn fetch_then_disconnect(req: Request<Full<Bytes>>, frames: usize) -> Vec<u8> {
    tokio::time::timeout(REQUEST_BOUND, async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.expect("the gateway answered");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        for _ in 0..frames {
            let frame = body.frame().await.expect("a frame").expect("not an error");
            got.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        got
    })
    .await
    .expect("the frames arrived in time")
}

fn chat(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": content}]})
}

fn messages(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 50, "messages": [{"role": "user", "content": content}]})
}

fn responses(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "input": content})
}

/// The `data:` payloads of an SSE body, `[DONE]` excluded.
fn sse_data(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn chat_text(body: &[u8]) -> String {
    sse_data(body)
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Asserts `got` is an OpenAI-shaped JSON error with exactly these status, `type` and `code`
/// (and a null `param`); returns the message.
fn openai_error(got: &Got, status: u16, kind: &str, code: Option<&str>) -> String {
    assert_eq!(got.status, status, "{got:?}");
    assert!(got.failed.is_none(), "{got:?}");
    assert_eq!(got.headers["content-type"], "application/json", "{got:?}");
    let v: Value = serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {got:?}"));
    assert_eq!(keys(&v), ["error"], "{got:?}");
    let mut inner = keys(&v["error"]);
    inner.sort_unstable();
    assert_eq!(inner, ["code", "message", "param", "type"], "{got:?}");
    assert_eq!(v["error"]["type"], kind, "{got:?}");
    assert_eq!(v["error"]["code"].as_str(), code, "{got:?}");
    assert_eq!(v["error"]["param"], Value::Null, "{got:?}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// Asserts `got` is an Anthropic-shaped JSON error with this status and `type`; returns the
/// message.
fn anthropic_error(got: &Got, status: u16, kind: &str) -> String {
    assert_eq!(got.status, status, "{got:?}");
    assert!(got.failed.is_none(), "{got:?}");
    assert_eq!(got.headers["content-type"], "application/json", "{got:?}");
    let v: Value = serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {got:?}"));
    let mut top = keys(&v);
    top.sort_unstable();
    assert_eq!(top, ["error", "type"], "{got:?}");
    assert_eq!(v["type"], "error");
    let mut inner = keys(&v["error"]);
    inner.sort_unstable();
    assert_eq!(inner, ["message", "type"], "{got:?}");
    assert_eq!(v["error"]["type"], kind, "{got:?}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// Asserts a spend-log row is a failure with this HTTP status and error code.
fn assert_failure(row: &Value, http_status: u16, code: &str) {
    assert_eq!(row["status"], "failure", "{row}");
    assert_eq!(row["metadata"]["http_status"], http_status, "{row}");
    assert_eq!(
        row["metadata"]["error_information"]["error_code"], code,
        "{row}"
    );
}

/// `(name, mode, status, action)` of each guardrail entry of a row.
fn guardrail_summary(row: &Value) -> Vec<(String, String, String, String)> {
    row["metadata"]["guardrail_information"]
        .as_array()
        .unwrap_or_else(|| panic!("no guardrail_information: {row}"))
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (
                s("guardrail_name"),
                s("guardrail_mode"),
                s("guardrail_status"),
                s("guardrail_action"),
            )
        })
        .collect()
}

fn entry(name: &str, mode: &str, status: &str, action: &str) -> (String, String, String, String) {
    (name.into(), mode.into(), status.into(), action.into())
}

/// A loopback address nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Upstream faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_refusing_connections_is_a_502_in_each_endpoint_shape() {
    let dead = closed_port();
    let h = Harness::start(
        "refused",
        Setup {
            models: format!(
                r#"
  - model_name: gpt-dead
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "http://{dead}/v1", guardrails: [no-codenames]}}
  - model_name: claude-dead
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "http://{dead}"}}
"#
            ),
            ..Setup::default()
        },
    )
    .await;
    let (a, b, c, d) = tokio::join!(
        h.call("/v1/chat/completions", &chat("gpt-dead", "hi", false), None),
        h.call("/v1/chat/completions", &chat("gpt-dead", "hi", true), None),
        h.call("/v1/responses", &responses("gpt-dead", "hi", true), None),
        h.call("/v1/messages", &messages("claude-dead", "hi", false), None),
    );
    for got in [&a, &b, &c] {
        let message = openai_error(got, 502, "bad_gateway_error", Some("upstream_error"));
        assert!(
            message.starts_with("upstream request failed: ") && message.contains("refused"),
            "{message}"
        );
    }
    let message = anthropic_error(&d, 502, "api_error");
    assert!(
        message.starts_with("upstream request failed: "),
        "{message}"
    );
    h.assert_still_serves().await;

    let rows = h.spend_rows().await;
    assert_eq!(rows.len(), 6);
    for i in 0..4 {
        let row = &rows[&h.id(i)];
        assert_failure(row, 502, "upstream_error");
        assert_eq!(
            row["metadata"]["error_information"]["error_class"],
            "upstream_failure"
        );
    }
    assert_eq!(rows[&h.id(2)]["call_type"], "aresponses");
    assert_eq!(rows[&h.id(3)]["call_type"], "anthropic_messages");
}

#[tokio::test]
async fn upstream_that_never_answers_is_a_504_after_the_request_timeout() {
    let h = Harness::start(
        "hang",
        Setup {
            request_timeout: 1.0,
            ..Setup::default()
        },
    )
    .await;
    let start = Instant::now();
    let (a, b, c, e) = tokio::join!(
        h.call(
            "/v1/chat/completions",
            &chat("gpt-plain", "hi", false),
            Some("hang")
        ),
        h.call(
            "/v1/chat/completions",
            &chat("gpt-post", "hi", true),
            Some("hang")
        ),
        h.call(
            "/v1/messages",
            &messages("claude-post", "hi", true),
            Some("hang")
        ),
        h.call(
            "/v1/chat/completions",
            &chat("gpt-plain", "hi", true),
            Some("hang")
        ),
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    for got in [&a, &b, &e] {
        let message = openai_error(got, 504, "timeout_error", Some("upstream_timeout"));
        assert!(message.starts_with("upstream timed out"), "{message}");
    }
    anthropic_error(&c, 504, "timeout_error");
    assert_eq!(
        h.upstream.request_count(),
        4,
        "each hung request reached the mock"
    );
    h.assert_still_serves().await;

    let rows = h.spend_rows().await;
    for i in 0..4 {
        assert_failure(&rows[&h.id(i)], 504, "upstream_timeout");
    }
}

/// An upstream that sends the head, then stalls (no byte for longer than `request_timeout`,
/// and the connection stays open): the upstream body's idle timeout fails the client's body,
/// and the record says why.
#[tokio::test]
async fn an_upstream_stream_that_stalls_after_the_head_is_cut_after_the_request_timeout() {
    let h = Harness::start(
        "stall",
        Setup {
            request_timeout: 1.0,
            ..Setup::default()
        },
    )
    .await;
    let req = h.post(
        "/v1/chat/completions",
        &chat("gpt-plain", "hi", true),
        // The mock sends the head at once, then an event every 5 s.
        &[("x-mock-fault", "never-end"), ("x-mock-delay-ms", "5000")],
    );
    let start = Instant::now();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Cut after the request timeout, the stream ends with the in-band error and [DONE].
    let body = tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "after {:?} the client still waits on a stalled stream",
                start.elapsed()
            )
        })
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("\"code\":\"upstream_stream_error\""),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    assert_failure(&rows[&h.id(0)], 200, "upstream_stream_error");
}

#[tokio::test]
async fn upstream_html_500_and_plain_text_503_become_json_errors() {
    let h = Harness::start("html", Setup::default()).await;
    let (a, b, c, d) = tokio::join!(
        h.call(
            "/v1/chat/completions",
            &chat("gpt-plain", "hi", false),
            Some("html-500")
        ),
        h.call(
            "/v1/chat/completions",
            &chat("gpt-post", "hi", true),
            Some("html-500")
        ),
        h.call(
            "/v1/responses",
            &responses("gpt-post", "hi", false),
            Some("status-503")
        ),
        h.call(
            "/v1/messages",
            &messages("claude-plain", "hi", true),
            Some("status-503")
        ),
    );
    for got in [&a, &b] {
        assert_eq!(
            openai_error(got, 500, "internal_server_error", None),
            "upstream returned 500 Internal Server Error (HTML body omitted)"
        );
        assert_eq!(
            got.body,
            r#"{"error":{"message":"upstream returned 500 Internal Server Error (HTML body omitted)","type":"internal_server_error","param":null,"code":null}}"#
        );
    }
    const PLAIN_503: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    assert_eq!(
        openai_error(&c, 503, "service_unavailable_error", None),
        PLAIN_503
    );
    assert_eq!(anthropic_error(&d, 503, "overloaded_error"), PLAIN_503);
    h.assert_still_serves().await;

    let rows = h.spend_rows().await;
    for (i, status) in [(0, 500), (1, 500), (2, 503), (3, 503)] {
        let row = &rows[&h.id(i)];
        assert_eq!(row["status"], "failure", "{row}");
        assert_eq!(row["metadata"]["http_status"], status, "{row}");
        assert_eq!(
            row["metadata"]["error_information"]["error_class"], "upstream_failure",
            "{row}"
        );
    }
}

/// The mock promises the whole body's `content-length`, sends half of it and aborts. The
/// client must never be able to take what it got for a complete answer: where a post_call
/// guardrail reads the whole body first, the client gets a 502 in the endpoint's shape; where
/// the body passes through (head already sent), the client's body fails.
#[tokio::test]
async fn upstream_half_json_body_is_an_error_never_a_truncated_200() {
    let h = Harness::start("halfjson", Setup::default()).await;
    let (guarded, guarded_anthropic, plain, plain_anthropic) = tokio::join!(
        h.call(
            "/v1/chat/completions",
            &chat("gpt-post", "hi", false),
            Some("half-json")
        ),
        h.call(
            "/v1/messages",
            &messages("claude-post", "hi", false),
            Some("half-json")
        ),
        h.call(
            "/v1/chat/completions",
            &chat("gpt-plain", "hi", false),
            Some("half-json")
        ),
        h.call(
            "/v1/messages",
            &messages("claude-plain", "hi", false),
            Some("half-json")
        ),
    );
    let message = openai_error(&guarded, 502, "bad_gateway_error", Some("upstream_error"));
    assert!(message.starts_with("upstream request failed"), "{message}");
    let message = anthropic_error(&guarded_anthropic, 502, "api_error");
    assert!(message.starts_with("upstream request failed"), "{message}");
    for got in [&plain, &plain_anthropic] {
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            got.failed.is_some(),
            "a truncated 200 body must fail, not end cleanly: {got:?}"
        );
        assert!(
            serde_json::from_slice::<Value>(&got.body).is_err(),
            "{got:?}"
        );
    }
    h.assert_still_serves().await;

    let rows = h.spend_rows().await;
    assert_failure(&rows[&h.id(0)], 502, "upstream_error");
    assert_failure(&rows[&h.id(1)], 502, "upstream_error");
    assert_failure(&rows[&h.id(2)], 200, "upstream_stream_error");
    assert_failure(&rows[&h.id(3)], 200, "upstream_stream_error");
}

/// The mock sends a few events and half of the next one, then aborts: the client's body
/// fails, with no `[DONE]` (or terminal event) it could mistake for the stream's end.
#[tokio::test]
async fn upstream_half_sse_event_ends_with_the_in_band_error_not_a_fake_end() {
    let h = Harness::start("halfevent", Setup::default()).await;
    let calls = [
        (
            "/v1/chat/completions",
            chat("gpt-plain", "hello world", true),
        ),
        (
            "/v1/chat/completions",
            chat("gpt-post", "hello world", true),
        ),
        ("/v1/responses", responses("gpt-post", "hello world", true)),
        (
            "/v1/messages",
            messages("claude-plain", "hello world", true),
        ),
        ("/v1/messages", messages("claude-post", "hello world", true)),
    ];
    let mut pending = Vec::new();
    for (path, body) in &calls {
        pending.push(fetch(h.post(
            path,
            body,
            &[("x-mock-fault", "half-event"), ("x-mock-events", "12")],
        )));
    }
    let results = join_all(pending).await;
    for (got, (path, _)) in results.iter().zip(&calls) {
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.failed.is_none(), "the body ends cleanly: {got:?}");
        let text = String::from_utf8_lossy(&got.body);
        // No fake success end; the endpoint's error event and terminator instead.
        for end in ["message_stop", "response.completed"] {
            assert!(!text.contains(end), "no fake end ({end}): {got:?}");
        }
        // Whole events only: the half event is not passed on, the error event stands alone.
        assert!(
            text.split("\n\n").all(|event| event.is_empty()
                || event
                    .lines()
                    .all(|l| l.starts_with("data: ") || l.starts_with("event: "))),
            "{text}"
        );
        match *path {
            "/v1/chat/completions" => {
                assert!(text.contains("upstream_stream_error"), "{text}");
                assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            }
            "/v1/responses" => {
                assert!(text.contains("upstream_stream_error"), "{text}");
                assert!(text.contains("event: response.failed\n"), "{text}");
            }
            // Anthropic's error event has no code: its type and message say it.
            _ => assert!(
                text.ends_with(
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\
                     \"message\":\"the upstream stopped sending the stream before it ended\"}}\n\n"
                ),
                "{text}"
            ),
        }
        assert!(
            !sse_data(&got.body).is_empty(),
            "some events arrived: {got:?}"
        );
    }
    h.assert_still_serves().await;

    let rows = h.spend_rows().await;
    for i in 0..calls.len() {
        let row = &rows[&h.id(i)];
        assert_failure(row, 200, "upstream_stream_error");
        assert_eq!(row["metadata"]["stream"], true);
        assert!(row["completionStartTime"].is_string(), "{row}");
    }
}

#[tokio::test]
async fn a_client_leaving_a_never_ending_stream_is_recorded_as_client_disconnected() {
    let h = Harness::start("neverend", Setup::default()).await;
    let calls = [
        ("/v1/chat/completions", chat("gpt-plain", "hi", true)),
        ("/v1/chat/completions", chat("gpt-post", "hi", true)),
        ("/v1/messages", messages("claude-post", "hi", true)),
    ];
    for (path, body) in &calls {
        let req = h.post(
            path,
            body,
            &[("x-mock-fault", "never-end"), ("x-mock-delay-ms", "10")],
        );
        let got = fetch_then_disconnect(req, 3).await;
        assert!(!got.is_empty());
    }
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    for i in 0..calls.len() {
        let row = &rows[&h.id(i)];
        assert_failure(row, 200, "client_disconnected");
        assert_eq!(
            row["metadata"]["error_information"]["error_class"],
            "client_error"
        );
        assert!(row["completionStartTime"].is_string(), "{row}");
    }
}

/// Opens a raw connection to the gateway and writes a request head with this
/// `content-length` and these body bytes (possibly fewer than promised).
async fn raw_request(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    content_length: usize,
    body: &[u8],
) -> TcpStream {
    let addr = h.gateway.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let id = {
        let mut sent = h.sent.lock().unwrap();
        let id = format!("{}-{}", h.tag, sent.len());
        sent.push(id.clone());
        id
    };
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\nx-request-id: {id}\r\ncontent-length: {content_length}\r\n"
    );
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream
}

/// A client that goes away before the response head (the upstream or a guardrail is still
/// working) still leaves its record, as a client disconnect, soon after it left.
#[tokio::test]
async fn a_client_leaving_before_the_head_is_recorded() {
    let (service, _stats) = guardrail_service().await;
    let silent = EndlessUpstream::start(true).await;
    let h = Harness::start(
        "earlyleave",
        Setup {
            models: format!(
                "  - model_name: gpt-silent\n    litellm_params: {{model: openai/m, api_base: \"http://{}/v1\"}}\n",
                silent.addr
            ),
            guardrails: remote(
                "slow-guard",
                "pre_call",
                &service.url("/hang"),
                "unreachable_fallback: fail_closed, timeout: 5",
            ),
            request_timeout: 5.0,
            ..Setup::default()
        },
    )
    .await;
    let hang = chat("gpt-plain", "hi", false).to_string();
    let guarded =
        json!({"model": "gpt-plain", "guardrails": ["slow-guard"], "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let a = raw_request(
        &h,
        "/v1/chat/completions",
        &[("x-mock-fault", "hang")],
        hang.len(),
        hang.as_bytes(),
    )
    .await;
    let b = raw_request(
        &h,
        "/v1/chat/completions",
        &[],
        guarded.len(),
        guarded.as_bytes(),
    )
    .await;
    let stream = json!({"model": "claude-post", "stream": true, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let c = raw_request(
        &h,
        "/v1/messages",
        &[("x-mock-fault", "hang")],
        stream.len(),
        stream.as_bytes(),
    )
    .await;
    let quiet = chat("gpt-silent", "hi", true).to_string();
    let d = raw_request(
        &h,
        "/v1/chat/completions",
        &[],
        quiet.len(),
        quiet.as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = Instant::now();
    drop((a, b, c, d));
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    // Well before the 5 s upstream and guardrail timeouts would have ended the requests.
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
    // The gateway dropped its upstream call too (the silent upstream saw the connection close).
    for _ in 0..100 {
        if silent.released.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(silent.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        silent.released.load(Ordering::SeqCst),
        1,
        "the upstream call was kept"
    );
    for i in 0..4 {
        let row = &rows[&h.id(i)];
        assert_failure(row, 0, "client_disconnected");
        assert!(row["completionStartTime"].is_null(), "{row}");
    }
    // The guardrail call was cut short by the client leaving: no verdict may be claimed for
    // it (today the entry is simply absent).
    let summary = guardrail_summary(&rows[&h.id(1)]);
    assert!(
        summary.iter().all(|e| e.2 != "success" && e.3 != "block"),
        "{summary:?}"
    );
}

/// A client that promises a body and closes half-way through it.
#[tokio::test]
async fn a_client_sending_half_a_request_body_is_recorded() {
    let h = Harness::start("halfbody", Setup::default()).await;
    let body = chat("gpt-plain", "hello there", false).to_string();
    let mut stream = raw_request(
        &h,
        "/v1/chat/completions",
        &[],
        body.len(),
        &body.as_bytes()[..body.len() / 2],
    )
    .await;
    stream.shutdown().await.unwrap();
    // Whatever the gateway answers (if anything), it must not be a success.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REQUEST_BOUND, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(head.contains("content-type: application/json"), "{answer}");
    assert_eq!(
        body,
        r#"{"error":{"message":"failed to read the request body: error reading a body from connection","type":"invalid_request_error","param":null,"code":"body_read_error"}}"#
    );
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    let row = &rows[&h.id(0)];
    assert_eq!(row["status"], "failure", "{row}");
    assert_eq!(
        h.upstream.request_count(),
        2,
        "the half request never reached the upstream"
    );
}

/// The upstream restarts on the same port: the gateway's pooled keep-alive connections to the
/// old process are dead, and requests after the restart must still succeed.
#[tokio::test]
async fn an_upstream_restart_does_not_fail_requests_on_stale_pooled_connections() {
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = first.local_addr().unwrap();
    let old = MockUpstream::start_on(first).unwrap();
    let h = Harness::start(
        "restart",
        Setup {
            models: format!(
                r#"
  - model_name: gpt-restarting
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "http://{addr}/v1"}}
"#
            ),
            ..Setup::default()
        },
    )
    .await;
    let burst = |n: usize| {
        let pending: Vec<_> = (0..n)
            .map(|i| {
                h.call(
                    "/v1/chat/completions",
                    &chat("gpt-restarting", "hi", i % 2 == 1),
                    None,
                )
            })
            .collect();
        join_all(pending)
    };
    for got in burst(8).await {
        assert_eq!(got.status, 200, "{got:?}");
    }
    assert_eq!(old.request_count(), 8);
    drop(old);
    // The old server closes its idle connections within its shutdown grace; rebind the port.
    let mut listener = None;
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            listener = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = MockUpstream::start_on(listener.expect("the port is free again")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for got in burst(8).await {
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.failed.is_none(), "{got:?}");
    }
    assert_eq!(new.request_count(), 8);
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    assert_eq!(
        rows.values().filter(|r| r["status"] == "success").count(),
        18
    );
}

/// An upstream (a raw socket) that streams SSE chunks forever and notes when its writes start
/// failing, i.e. when the gateway has let go of the connection.
struct EndlessUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    released: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for EndlessUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EndlessUpstream {
    /// `silent`: read the request and never answer (waiting, bounded, for the gateway to close
    /// the connection); else stream chunks forever.
    async fn start(silent: bool) -> EndlessUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (accepted, released) = (Arc::clone(&accepted), Arc::clone(&released));
            async move {
                let mut conns = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let released = Arc::clone(&released);
                    conns.push(AbortOnDrop(tokio::spawn(async move {
                        if endless_stream(stream, silent).await {
                            released.fetch_add(1, Ordering::SeqCst);
                        }
                    })));
                }
            }
        });
        EndlessUpstream {
            addr,
            accepted,
            released,
            task,
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one request, then writes chat chunks every 20 ms (at most 1,000 of them), or when
/// `silent` writes nothing; returns whether the peer closed the connection before the bound.
async fn endless_stream(mut stream: TcpStream, silent: bool) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The head, then as much body as content-length says.
    let body_start = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < body_start + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    if silent {
        // Released when the peer closes: a read returns 0 (or fails) within the bound.
        return matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        );
    }
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return true;
    }
    for i in 0..1000 {
        let event = format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" w{i}\"}},\"finish_reason\":null}}]}}\n\n"
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_gateway_lets_go_of_the_upstream_when_the_client_disconnects() {
    let endless = EndlessUpstream::start(false).await;
    let base = format!("http://{}/v1", endless.addr);
    let h = Harness::start(
        "release",
        Setup {
            models: format!(
                r#"
  - model_name: gpt-endless
    litellm_params: {{model: openai/m, api_base: "{base}"}}
  - model_name: gpt-endless-post
    litellm_params: {{model: openai/m, api_base: "{base}", guardrails: [no-codenames]}}
"#
            ),
            ..Setup::default()
        },
    )
    .await;
    for model in ["gpt-endless", "gpt-endless-post"] {
        let req = h.post("/v1/chat/completions", &chat(model, "hi", true), &[]);
        fetch_then_disconnect(req, 3).await;
    }
    // The gateway must close (or stop reading and reset) both upstream connections, so that
    // the upstream's writes start failing; not keep pulling an endless stream for nobody.
    let mut released = 0;
    for _ in 0..200 {
        released = endless.released.load(Ordering::SeqCst);
        if released == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(endless.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(released, 2, "upstream connections still being streamed to");
    h.assert_still_serves().await;
    let rows = h.spend_rows().await;
    for i in 0..2 {
        assert_failure(&rows[&h.id(i)], 200, "client_disconnected");
    }
}

// ---------------------------------------------------------------------------------------------
// Guardrail service faults
// ---------------------------------------------------------------------------------------------

/// Counters of the guardrail service.
#[derive(Default)]
struct GuardStats {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A Generic Guardrail API service whose behaviour is the first path segment of its
/// `api_base`: `slow` (allows after 200 ms), `hang` (answers after 10 s), `unavailable` (503),
/// `badjson` (a 200 whose body is not JSON).
async fn guardrail_service() -> (TestServer, Arc<GuardStats>) {
    let stats = Arc::new(GuardStats::default());
    let service = tower::service_fn({
        let stats = Arc::clone(&stats);
        move |req: Request<Incoming>| {
            let stats = Arc::clone(&stats);
            async move {
                stats.calls.fetch_add(1, Ordering::SeqCst);
                let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let behaviour = req.uri().path().split('/').nth(1).unwrap_or("").to_owned();
                let _ = req.into_body().collect().await;
                let (status, body) = match behaviour.as_str() {
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        (200, r#"{"action":"NONE"}"#)
                    }
                    "hang" => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        (200, r#"{"action":"NONE"}"#)
                    }
                    "unavailable" => (503, "upstream connect error or disconnect"),
                    "badjson" => (200, r#"{"action": "NONE", "texts": [tru"#),
                    _ => (404, "{}"),
                };
                stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap(),
                )
            }
        }
    });
    (guardrail_tower_testkit::serve(service).await, stats)
}

/// A `generic_guardrail_api` guardrail entry.
fn remote(name: &str, mode: &str, api_base: &str, extra: &str) -> String {
    format!(
        "  - guardrail_name: {name}\n    litellm_params: {{guardrail: generic_guardrail_api, mode: {mode}, api_base: \"{api_base}\", {extra}}}\n"
    )
}

#[tokio::test]
async fn guardrail_service_faults_fail_open_or_closed() {
    let (service, stats) = guardrail_service().await;
    let dead = format!("http://{}", closed_port());
    let base = |b: &str| service.url(&format!("/{b}"));
    let open = "unreachable_fallback: fail_open, timeout: 0.5";
    let closed = "unreachable_fallback: fail_closed, timeout: 0.5";
    let mut guardrails = String::new();
    for (name, api_base) in [
        ("refused", dead.clone()),
        ("hang", base("hang")),
        ("unavailable", base("unavailable")),
        ("badjson", base("badjson")),
    ] {
        guardrails += &remote(&format!("{name}-open"), "pre_call", &api_base, open);
        guardrails += &remote(&format!("{name}-closed"), "pre_call", &api_base, closed);
    }
    guardrails += &remote(
        "badjson-erropen",
        "pre_call",
        &base("badjson"),
        "error_fallback: fail_open, timeout: 0.5",
    );
    guardrails += &remote("post-refused-closed", "post_call", &dead, closed);
    guardrails += &remote(
        "post-unavailable-open",
        "post_call",
        &base("unavailable"),
        open,
    );
    guardrails += &remote("during-refused-closed", "during_call", &dead, closed);
    guardrails += &remote("during-hang-open", "during_call", &base("hang"), open);
    guardrails += &remote(
        "during-badjson-closed",
        "during_call",
        &base("badjson"),
        closed,
    );
    let h = Harness::start(
        "guardfaults",
        Setup {
            guardrails,
            ..Setup::default()
        },
    )
    .await;

    /// One request through one failing guardrail, and what must come of it.
    struct Case {
        guardrail: &'static str,
        path: &'static str,
        stream: bool,
        status: u16,
        code: &'static str,
        action: &'static str,
        reaches_upstream: bool,
    }
    let case = |guardrail, path, stream, status, code, action, reaches_upstream| Case {
        guardrail,
        path,
        stream,
        status,
        code,
        action,
        reaches_upstream,
    };
    const CHAT: &str = "/v1/chat/completions";
    const UNREACHABLE: &str = "guardrail_unreachable";
    const FAILED: &str = "guardrail_error";
    #[rustfmt::skip]
    let cases = [
        //   guardrail                path             stream status code         action   reaches upstream
        case("refused-open",          CHAT,            false, 200, "",          "allow", true),
        case("refused-closed",        CHAT,            false, 503, UNREACHABLE, "block", false),
        case("refused-closed",        "/v1/responses", true,  503, UNREACHABLE, "block", false),
        case("hang-open",             CHAT,            true,  200, "",          "allow", true),
        case("hang-closed",           CHAT,            false, 503, UNREACHABLE, "block", false),
        case("unavailable-open",      CHAT,            false, 200, "",          "allow", true),
        case("unavailable-closed",    CHAT,            true,  503, UNREACHABLE, "block", false),
        // Invalid JSON is a failed answer, not an unreachable service: unreachable_fallback
        // does not apply, and it fails closed unless error_fallback says otherwise.
        case("badjson-open",          CHAT,            false, 500, FAILED,      "block", false),
        case("badjson-closed",        CHAT,            false, 500, FAILED,      "block", false),
        case("badjson-erropen",       CHAT,            false, 200, "",          "allow", true),
        case("post-refused-closed",   CHAT,            false, 503, UNREACHABLE, "block", true),
        case("post-unavailable-open", CHAT,            true,  200, "",          "allow", true),
        // during_call runs beside the upstream call; the response waits for its verdict. (A
        // guardrail that fails fast can fail before the upstream call is even sent, so the
        // failing three may or may not reach the upstream.)
        case("during-refused-closed", CHAT,            false, 503, UNREACHABLE, "block", false),
        case("during-refused-closed", CHAT,            true,  503, UNREACHABLE, "block", false),
        case("during-hang-open",      CHAT,            true,  200, "",          "allow", true),
        case("during-badjson-closed", CHAT,            false, 500, FAILED,      "block", false),
    ];
    let body = |c: &Case| {
        let mut v = json!({"model": "gpt-plain", "stream": c.stream, "guardrails": [c.guardrail]});
        if c.path == CHAT {
            v["messages"] = json!([{"role": "user", "content": "hi"}]);
        } else {
            v["input"] = json!("hi");
        }
        v
    };
    let start = Instant::now();
    let pending: Vec<_> = cases
        .iter()
        .map(|c| fetch(h.post(c.path, &body(c), &[])))
        .collect();
    let results = join_all(pending).await;
    // Every call ran concurrently, each bounded by its 0.5 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    for (c, got) in cases.iter().zip(&results) {
        let name = c.guardrail;
        match c.status {
            200 => {
                assert_eq!(got.status, 200, "{name}: {got:?}");
                assert!(got.failed.is_none(), "{name}: {got:?}");
                if c.stream {
                    assert!(got.body.ends_with(b"data: [DONE]\n\n"), "{name}: {got:?}");
                    assert_eq!(chat_text(&got.body), "You said: hi.", "{name}");
                }
            }
            503 => {
                let message = openai_error(got, 503, "service_unavailable_error", Some(c.code));
                // The guardrail's name and nothing of its service (address, answer).
                assert_eq!(message, format!("guardrail '{name}' could not be reached"));
            }
            _ => {
                let message = openai_error(got, 500, "internal_server_error", Some(c.code));
                assert_eq!(
                    message,
                    format!("guardrail '{name}' failed: it could not give a verdict")
                );
            }
        }
    }
    // A post_call guardrail that is unreachable and fails closed on a stream: the head is
    // sent before the answer is checked, so the error goes in-band, then the proper end.
    let got = h
        .call(
            CHAT,
            &body(&case("post-refused-closed", CHAT, true, 200, "", "", true)),
            None,
        )
        .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(got.failed.is_none(), "{got:?}");
    assert!(got.body.ends_with(b"data: [DONE]\n\n"), "{got:?}");
    let events = sse_data(&got.body);
    let error = &events.last().unwrap()["error"];
    assert_eq!(error["code"], UNREACHABLE, "{got:?}");
    assert_eq!(error["type"], "service_unavailable_error", "{got:?}");
    // And the Anthropic shape for a pre_call guardrail that fails closed.
    let got = h
        .call(
            "/v1/messages",
            &json!({"model": "claude-plain", "max_tokens": 5, "guardrails": ["refused-closed"], "messages": [{"role": "user", "content": "hi"}]}),
            None,
        )
        .await;
    let message = anthropic_error(&got, 503, "overloaded_error");
    assert_eq!(message, "guardrail 'refused-closed' could not be reached");
    h.assert_still_serves().await;

    // Failing closed before the call keeps the request from the upstream.
    let reached = cases.iter().filter(|c| c.reaches_upstream).count() + 1 + 2;
    let count = h.upstream.request_count();
    assert!(
        (reached..=reached + 3).contains(&count),
        "{count} upstream calls, {reached} expected"
    );
    assert!(stats.calls.load(Ordering::SeqCst) >= 10);

    let rows = h.spend_rows().await;
    for (i, c) in cases.iter().enumerate() {
        let (name, row) = (c.guardrail, &rows[&h.id(i)]);
        let mode = &name[..name.find('-').unwrap()];
        let mode = match mode {
            "post" => "post_call",
            "during" => "during_call",
            _ => "pre_call",
        };
        assert_eq!(
            guardrail_summary(row),
            [entry(name, mode, "guardrail_failed_to_respond", c.action)],
            "{name}: {row}"
        );
        assert_eq!(row["metadata"]["http_status"], c.status, "{name}: {row}");
        if c.status == 200 {
            assert_eq!(row["status"], "success", "{name}: {row}");
        } else {
            assert_eq!(row["status"], "failure", "{name}: {row}");
            let error = &row["metadata"]["error_information"];
            assert_eq!(error["error_class"], "guardrail_failure", "{name}: {row}");
            assert_eq!(error["error_code"], c.code, "{name}: {row}");
            assert_eq!(error["guardrail"], name, "{name}: {row}");
        }
    }
    assert_eq!(rows[&h.id(2)]["call_type"], "aresponses");
    let streamed = &rows[&h.id(cases.len())];
    assert_failure(streamed, 200, UNREACHABLE);
    assert_eq!(
        guardrail_summary(streamed),
        [entry(
            "post-refused-closed",
            "post_call",
            "guardrail_failed_to_respond",
            "block"
        )]
    );
    let anthropic = &rows[&h.id(cases.len() + 1)];
    assert_failure(anthropic, 503, UNREACHABLE);
    assert_eq!(
        guardrail_summary(anthropic),
        [entry(
            "refused-closed",
            "pre_call",
            "guardrail_failed_to_respond",
            "block"
        )]
    );
}

#[tokio::test]
async fn a_slow_guardrail_under_load_is_called_concurrently_and_falls_back_on_timeout() {
    let (service, stats) = guardrail_service().await;
    let slow = service.url("/slow");
    let mut guardrails = String::new();
    guardrails += &remote(
        "slow-ok",
        "pre_call",
        &slow,
        "unreachable_fallback: fail_closed, timeout: 2",
    );
    guardrails += &remote(
        "slow-open",
        "pre_call",
        &slow,
        "unreachable_fallback: fail_open, timeout: 0.1",
    );
    guardrails += &remote(
        "slow-closed",
        "pre_call",
        &slow,
        "unreachable_fallback: fail_closed, timeout: 0.1",
    );
    let h = Harness::start(
        "slowguard",
        Setup {
            guardrails,
            ..Setup::default()
        },
    )
    .await;
    let with = |g: &str, i: usize| json!({"model": "gpt-plain", "stream": i % 2 == 0, "guardrails": [g], "messages": [{"role": "user", "content": format!("hello {i}")}]});

    // 32 concurrent requests through a guardrail that takes 200 ms per call, within its
    // timeout: all pass, in about one guardrail call's time, not 32 of them.
    let start = Instant::now();
    let results = join_all(
        (0..32)
            .map(|i| fetch(h.post("/v1/chat/completions", &with("slow-ok", i), &[])))
            .collect(),
    )
    .await;
    let elapsed = start.elapsed();
    for got in &results {
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.failed.is_none(), "{got:?}");
    }
    assert!(elapsed < Duration::from_secs(5), "serialized? {elapsed:?}");
    let max = stats.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max >= 16,
        "the guardrail saw at most {max} concurrent calls"
    );

    // The same load with a 100 ms timeout: 16 fail open, 16 fail closed.
    let start = Instant::now();
    let results = join_all(
        (0..32)
            .map(|i| {
                let g = if i % 2 == 0 {
                    "slow-open"
                } else {
                    "slow-closed"
                };
                fetch(h.post("/v1/chat/completions", &with(g, i / 2 * 2), &[]))
            })
            .collect(),
    )
    .await;
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    for (i, got) in results.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(got.status, 200, "{got:?}");
            assert!(got.failed.is_none(), "{got:?}");
        } else {
            let message = openai_error(
                got,
                503,
                "service_unavailable_error",
                Some("guardrail_unreachable"),
            );
            assert_eq!(message, "guardrail 'slow-closed' could not be reached");
        }
    }
    h.assert_still_serves().await;
    assert_eq!(h.upstream.request_count(), 32 + 16 + 2);

    let rows = h.spend_rows().await;
    for i in 0..32 {
        assert_eq!(
            guardrail_summary(&rows[&h.id(i)]),
            [entry("slow-ok", "pre_call", "success", "allow")]
        );
        assert_eq!(rows[&h.id(i)]["status"], "success");
    }
    for i in 0..32 {
        let row = &rows[&h.id(32 + i)];
        let expected = if i % 2 == 0 {
            entry(
                "slow-open",
                "pre_call",
                "guardrail_failed_to_respond",
                "allow",
            )
        } else {
            entry(
                "slow-closed",
                "pre_call",
                "guardrail_failed_to_respond",
                "block",
            )
        };
        assert_eq!(guardrail_summary(row), [expected], "{row}");
        let status = if i % 2 == 0 { "success" } else { "failure" };
        assert_eq!(row["status"], status, "{row}");
    }
}

/// Polls every future to completion, concurrently on this task.
async fn join_all<F: std::future::Future<Output = Got>>(futures: Vec<F>) -> Vec<Got> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<Got>> = (0..handles.len()).map(|_| None).collect();
    let mut handles: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, handle) in out.iter_mut().zip(handles.iter_mut()) {
            if let Some(fut) = handle {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(got) => {
                        *slot = Some(got);
                        *handle = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------
// Spend-log database faults (PostgreSQL through a proxy)
// ---------------------------------------------------------------------------------------------

/// The test server's URL with a fresh schema of the test's own in its `search_path` (so tests
/// running in parallel never share a table): `None` (and a line saying the test was skipped)
/// when `GUARDRAIL_TOWER_TEST_PG_URL` is unset; a failure when it is set and the server cannot
/// be reached.
async fn pg_url() -> Option<String> {
    let url = match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            return None;
        }
    };
    let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "GUARDRAIL_TOWER_TEST_PG_URL is set but the server cannot be reached: {e} \
             (unset it to skip the PostgreSQL tests)"
        ),
    };
    tokio::spawn(connection);
    let schema = format!("gt_faults_{}_{}", std::process::id(), unique());
    client
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-csearch_path%3D{schema}"))
}

/// A TCP proxy in front of the server that can be taken down (existing connections cut, new
/// ones closed at once) and brought back.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
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

/// The server address of a PostgreSQL URL.
async fn pg_server(url: &str) -> SocketAddr {
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// `url` with its host and port replaced by `addr`.
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

/// Waits (bounded) until every one of `ids` is in the spend log exactly once; the spend log
/// is shared with other runs, so records are looked up by id.
async fn wait_for_ids(h: &Harness, ids: &[String], bound: Duration) -> Duration {
    let start = Instant::now();
    let mut missing: Vec<String> = ids.to_vec();
    while !missing.is_empty() {
        assert!(
            start.elapsed() < bound,
            "{} of {} records never arrived: {:?}; {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(3)],
            h.spend.stats()
        );
        let mut still = Vec::new();
        for id in &missing {
            let got = fetch(
                Request::get(h.url(&format!("/spend/logs?client_request_id={id}")))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            if got.status != 200 {
                still.push(id.clone());
                continue;
            }
            let rows: Vec<Value> = serde_json::from_slice(&got.body).unwrap();
            assert!(rows.len() <= 1, "{id} stored twice");
            if rows.is_empty() {
                still.push(id.clone());
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    start.elapsed()
}

/// Sends `n` clean requests (alternating JSON and streamed); all must succeed.
async fn clean_burst(h: &Harness, n: usize) {
    let pending: Vec<_> = (0..n)
        .map(|i| {
            fetch(h.post(
                "/v1/chat/completions",
                &chat("gpt-post", "hi", i % 2 == 1),
                &[],
            ))
        })
        .collect();
    for got in join_all(pending).await {
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.failed.is_none(), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_spend_log_down_at_start_the_gateway_serves_and_writes_once_it_is_up() {
    let Some(url) = pg_url().await else { return };
    let proxy = Proxy::start(pg_server(&url).await, false).await;
    let proxied = via(&url, proxy.addr);
    let start = Instant::now();
    let h = Harness::start(
        "pgdown",
        Setup {
            spend_logs: Some(proxied),
            ..Setup::default()
        },
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    clean_burst(&h, 10).await;
    h.assert_still_serves().await;
    // The records wait: the spend-log query fails with a well-formed error meanwhile.
    let got = fetch(
        Request::get(h.url("/spend/logs?limit=1"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let message = openai_error(&got, 500, "internal_server_error", None);
    assert!(message.starts_with("spend log query failed"), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.spend.stats().written, 0);
    proxy.up();
    let ids: Vec<String> = h.sent.lock().unwrap().clone();
    let took = wait_for_ids(&h, &ids, Duration::from_secs(20)).await;
    eprintln!("records written {took:?} after the database came up");
    let stats = h.spend.stats();
    assert_eq!(
        (stats.written, stats.dropped, stats.pending),
        (12, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_spend_log_outage_mid_run_loses_no_record() {
    let Some(url) = pg_url().await else { return };
    let proxy = Proxy::start(pg_server(&url).await, true).await;
    let proxied = via(&url, proxy.addr);
    let h = Harness::start(
        "pgoutage",
        Setup {
            spend_logs: Some(proxied),
            ..Setup::default()
        },
    )
    .await;
    clean_burst(&h, 10).await;
    let ids: Vec<String> = h.sent.lock().unwrap().clone();
    wait_for_ids(&h, &ids, Duration::from_secs(10)).await;

    proxy.down();
    clean_burst(&h, 10).await;
    h.assert_still_serves().await;
    // Let the writer fail a few times.
    for _ in 0..100 {
        if h.spend.stats().failed_writes >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(h.spend.stats().failed_writes >= 1, "{:?}", h.spend.stats());
    clean_burst(&h, 6).await;
    proxy.up();
    clean_burst(&h, 6).await;

    let ids: Vec<String> = h.sent.lock().unwrap().clone();
    assert_eq!(ids.len(), 34);
    let took = wait_for_ids(&h, &ids, Duration::from_secs(20)).await;
    eprintln!("all records written {took:?} after the database came back");
    let stats = h.spend.stats();
    assert_eq!(
        (stats.queued, stats.written, stats.dropped, stats.pending),
        (34, 34, 0, 0),
        "{stats:?}"
    );
}

/// The database stopped and started while 16 clients keep sending (a mix of JSON and streams):
/// every request is served, the queue holds what the database cannot take (bounded by its
/// capacity: nothing is dead-lettered at this size), and once it is back, rows == requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_spend_log_stopped_and_started_under_load_loses_no_row() {
    let Some(url) = pg_url().await else { return };
    let proxy = Arc::new(Proxy::start(pg_server(&url).await, true).await);
    let h = Arc::new(
        Harness::start(
            "pgload",
            Setup {
                spend_logs: Some(via(&url, proxy.addr)),
                ..Setup::default()
            },
        )
        .await,
    );
    let done = Arc::new(AtomicUsize::new(0));
    let max_depth = Arc::new(AtomicUsize::new(0));
    let (down_at, up_at, stop_at) = (100, 350, 500);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (h, proxy, done, max_depth) = (
                Arc::clone(&h),
                Arc::clone(&proxy),
                Arc::clone(&done),
                Arc::clone(&max_depth),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    let n = done.load(Ordering::SeqCst);
                    if n >= stop_at {
                        break;
                    }
                    // The outage follows the load (counted, not timed).
                    if n == down_at {
                        proxy.down();
                    } else if n == up_at {
                        proxy.up();
                    }
                    let got = fetch(h.post(
                        "/v1/chat/completions",
                        &chat("gpt-post", &format!("hello {w} {i}"), i % 2 == 1),
                        &[],
                    ))
                    .await;
                    assert_eq!(got.status, 200, "{got:?}");
                    assert!(got.failed.is_none(), "{got:?}");
                    max_depth.fetch_max(h.spend.stats().queue_depth as usize, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    proxy.up();
    let during = h.spend.stats();
    assert!(during.failed_writes >= 1, "the outage was felt: {during:?}");
    let ids: Vec<String> = h.sent.lock().unwrap().clone();
    let took = wait_for_ids(&h, &ids, Duration::from_secs(30)).await;
    let stats = h.spend.stats();
    eprintln!(
        "{} requests under load, database down for ~{} of them: all rows written {took:?} after \
         the load; deepest queue {} records; {stats:?}",
        ids.len(),
        up_at - down_at,
        max_depth.load(Ordering::SeqCst)
    );
    assert!(max_depth.load(Ordering::SeqCst) <= 10_000);
    assert_eq!(
        (
            stats.queued,
            stats.written,
            stats.dead_lettered,
            stats.dropped,
            stats.pending
        ),
        (ids.len() as u64, ids.len() as u64, 0, 0, 0),
        "{stats:?}"
    );
    let got = fetch(
        Request::get(h.url("/spend/logs?limit=1000"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let rows: Vec<Value> = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(rows.len(), ids.len(), "rows == requests");
}
