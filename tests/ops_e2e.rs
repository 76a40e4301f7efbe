//! Operating the gateway, end to end over real sockets: monitor mode (a guardrail that watches
//! and never blocks), Prometheus metrics on `GET /metrics` with LiteLLM's names, and
//! `applied_guardrails` in the spend log and the `x-litellm-applied-guardrails` header.

use std::path::PathBuf;

use bytes::Bytes;
use guardrail_gateway::app::{Gateway, RunningGateway};
use guardrail_tower::spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::{EMAIL_SENTENCE, MockUpstream, SECRET_SENTENCE};
use guardrail_tower_testkit::{post_json, send};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const MASTER: &str = "sk-master-0123456789abcdef";

/// A mock upstream and a gateway on loopback, from `guardrails` and `litellm_settings`.
struct Gw {
    _upstream: MockUpstream,
    url: String,
    /// The gateway's routes, to serve again after it stopped (its metrics are in them).
    router: axum::Router,
    db: PathBuf,
    _dir: tempfile::TempDir,
    running: Option<RunningGateway>,
}

impl Gw {
    async fn start(guardrails: &str, litellm_settings: &str) -> Gw {
        let upstream = MockUpstream::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("spend.db");
        let config = format!(
            r#"
model_list:
  - model_name: gpt-plain
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream, input_cost_per_token: 0.5, output_cost_per_token: 0.25}}
guardrails:
{guardrails}
litellm_settings:
{litellm_settings}
general_settings:
  master_key: {MASTER}
  spend_logs: "sqlite://{db}"
  request_timeout: 5
"#,
            base = upstream.base_url(),
            db = db.display(),
        );
        let gateway = Gateway::from_config_str(&config).await.unwrap();
        let router = gateway.router();
        let running = gateway
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        Gw {
            _upstream: upstream,
            url: running.url(""),
            router,
            db,
            _dir: dir,
            running: Some(running),
        }
    }

    fn chat(&self, body: &Value) -> Request<Full<Bytes>> {
        let mut req = post_json(
            &format!("{}/v1/chat/completions", self.url),
            &body.to_string(),
        );
        req.headers_mut()
            .insert("authorization", format!("Bearer {MASTER}").parse().unwrap());
        req
    }

    /// `GET /metrics` with `key` (if any): the status and the text.
    async fn scrape(&self, key: Option<&str>) -> (u16, String) {
        scrape(&self.url, key).await
    }

    /// Stops the gateway (every record completed, the spend log flushed), then serves its
    /// routes again on a new socket and scrapes `/metrics` there.
    async fn rows_then_scrape(&mut self, n: usize) -> (Vec<Value>, String) {
        let rows = self.rows(n).await;
        let server = guardrail_tower_testkit::serve(self.router.clone()).await;
        let (status, metrics) = scrape(&server.url(""), Some(MASTER)).await;
        assert_eq!(status, 200);
        (rows, metrics)
    }

    /// Stops the gateway (which flushes the spend log) and returns its rows, oldest first.
    async fn rows(&mut self, n: usize) -> Vec<Value> {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        let store = SqliteSink::open(&self.db).await.unwrap();
        let rows = store.query(&SpendLogFilter::new()).await.unwrap();
        let mut rows = serde_json::to_value(rows)
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        rows.reverse();
        assert_eq!(rows.len(), n, "one row per request: {rows:#?}");
        rows
    }
}

/// `GET {base}/metrics` with `key` (if any): the status and the text.
async fn scrape(base: &str, key: Option<&str>) -> (u16, String) {
    let mut req = Request::get(format!("{base}/metrics"));
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = send(req.body(Full::default()).unwrap()).await;
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(
            resp.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
    (status, String::from_utf8(resp.body().to_vec()).unwrap())
}

fn sse_text(body: &[u8]) -> String {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The guardrail runs of a row: (name, mode, status, action).
fn runs(row: &Value) -> Vec<(String, String, String, String)> {
    let mut runs: Vec<_> = row["metadata"]["guardrail_information"]
        .as_array()
        .unwrap()
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
        .collect();
    runs.sort();
    runs
}

fn run(name: &str, mode: &str, status: &str, action: &str) -> (String, String, String, String) {
    (name.into(), mode.into(), status.into(), action.into())
}

/// The value of the sample line `series` (name and labels exactly as written), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    })
}

#[track_caller]
fn assert_sample(metrics: &str, series: &str, want: f64) {
    assert_eq!(
        sample(metrics, series),
        Some(want),
        "{series} in:\n{metrics}"
    );
}

const MONITOR: &str = r#"
  - guardrail_name: trial
    litellm_params:
      guardrail: litellm_content_filter
      mode: logging_only
      default_on: true
      blocked_words: [{keyword: forbidden, action: BLOCK}, {keyword: BLUEBIRD, action: BLOCK}]
  - guardrail_name: trial-buffered
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      monitor: true
      default_on: true
      stream_policy: {buffer_all: {max_bytes: 1000000, on_overflow: fail_closed}}
      blocked_words: [{keyword: BLUEBIRD, action: BLOCK}]
"#;

#[tokio::test]
async fn monitor_mode_passes_a_blocking_word_and_records_the_would_be_block() {
    let mut gw = Gw::start(MONITOR, "  callbacks: [\"prometheus\"]").await;
    let prompt = "the forbidden project";
    let reply = format!("You said: {prompt}.{SECRET_SENTENCE}");

    // A word both monitors would block, on the request and in the answer: a 200, unchanged.
    let resp = send(
        gw.chat(&json!({"model": "gpt-plain", "messages": [{"role": "user", "content": prompt}]})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-litellm-applied-guardrails"],
        "trial,trial-buffered"
    );
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], reply.as_str());

    // Streamed: every delta as the upstream sent it, no error event, the normal end.
    let resp = send(gw.chat(&json!({"model": "gpt-plain", "stream": true, "messages": [{"role": "user", "content": prompt}]}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sse_text(resp.body()), reply);
    assert!(!resp.body().windows(8).any(|w| w == b"\"error\":"));
    assert!(resp.body().ends_with(b"data: [DONE]\n\n"));

    // A stream that never ends: a buffer_all guardrail that enforced would hold every event
    // forever; as a monitor it holds none back.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = gw.chat(&json!({"model": "gpt-plain", "stream": true, "messages": [{"role": "user", "content": "tell me"}]}));
    req.headers_mut()
        .insert("x-mock-fault", "never-end".parse().unwrap());
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while sse_text(&got).split_whitespace().count() < 3 {
        let frame = body.frame().await.expect("a frame").unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
            // Only whole events count.
            if !got.ends_with(b"\n\n") {
                continue;
            }
        }
    }
    assert!(
        got.starts_with(b"data: {"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(body);

    let (rows, metrics) = gw.rows_then_scrape(3).await;
    for (row, stream) in rows[..2].iter().zip([false, true]) {
        assert_eq!(row["status"], "success", "{row}");
        assert_eq!(row["metadata"]["http_status"], 200);
        assert_eq!(row["metadata"]["stream"], stream);
        assert_eq!(row["metadata"]["error_information"], Value::Null);
        assert_eq!(
            row["metadata"]["applied_guardrails"],
            json!(["trial", "trial-buffered"])
        );
        // The would-be blocks, recorded: intervened, the text allowed.
        assert_eq!(
            runs(row),
            [
                run("trial", "post_call", "guardrail_intervened", "allow"),
                run("trial", "pre_call", "guardrail_intervened", "allow"),
                run(
                    "trial-buffered",
                    "post_call",
                    "guardrail_intervened",
                    "allow"
                ),
            ],
            "{row}"
        );
    }
    // The abandoned stream: the monitors checked what arrived (no BLUEBIRD in it).
    assert_eq!(
        rows[2]["metadata"]["error_information"]["error_type"],
        "client_disconnected"
    );
    assert_eq!(
        runs(&rows[2]),
        [
            run("trial", "post_call", "success", "allow"),
            run("trial", "pre_call", "success", "allow"),
            run("trial-buffered", "post_call", "success", "allow"),
        ]
    );
    // The would-be blocks are counted as LiteLLM's `intervened`: a monitor's hit rate.
    assert_sample(
        &metrics,
        r#"litellm_guardrail_requests_total{guardrail_name="trial",status="intervened",hook_type="pre_call"}"#,
        2.0,
    );
    assert_sample(
        &metrics,
        r#"litellm_guardrail_requests_total{guardrail_name="trial-buffered",status="intervened",hook_type="post_call"}"#,
        2.0,
    );
    assert_sample(
        &metrics,
        r#"litellm_guardrail_requests_total{guardrail_name="trial",status="success",hook_type="post_call"}"#,
        1.0,
    );
    // Two successes and the abandoned stream (a failure after its 200).
    assert_sample(
        &metrics,
        r#"litellm_proxy_total_requests_metric_total{requested_model="gpt-plain",status_code="200"}"#,
        3.0,
    );
    assert_sample(
        &metrics,
        r#"litellm_proxy_failed_requests_metric_total{requested_model="gpt-plain",exception_status="200",exception_class="client_error"}"#,
        1.0,
    );
}

const STACK: &str = r#"
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{keyword: forbidden, action: BLOCK}]
  - guardrail_name: no-codenames
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      default_on: true
      blocked_words: [{keyword: BLUEBIRD, action: BLOCK}]
"#;

#[tokio::test]
async fn metrics_count_a_pass_a_block_a_stream_blocked_after_the_200_and_a_guardrail_failure() {
    let stopped = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let guardrails = format!(
        "{STACK}  - guardrail_name: down\n    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: \"http://{stopped}\", unreachable_fallback: fail_open, timeout: 1}}\n"
    );
    let mut gw = Gw::start(&guardrails, "  success_callback: [\"prometheus\"]").await;

    // /metrics is behind the master key (LiteLLM's require_auth_for_metrics_endpoint default).
    assert_eq!(gw.scrape(None).await.0, 401);
    assert_eq!(gw.scrape(Some("sk-wrong-key-0000000000")).await.0, 401);

    // A pass (JSON), a block before the call, a stream blocked after its 200, a guardrail
    // service that is down (failing open).
    let pass = send(gw.chat(
        &json!({"model": "gpt-plain", "messages": [{"role": "user", "content": "Hello there"}]}),
    ))
    .await;
    assert_eq!(pass.status(), 200);
    assert_eq!(
        pass.headers()["x-litellm-applied-guardrails"],
        "block-words,no-codenames"
    );
    let block = send(gw.chat(&json!({"model": "gpt-plain", "messages": [{"role": "user", "content": "the forbidden fruit"}]}))).await;
    assert_eq!(block.status(), 400);
    assert_eq!(
        block.headers()["x-litellm-applied-guardrails"],
        "block-words"
    );
    let stream = send(gw.chat(&json!({"model": "gpt-plain", "stream": true, "messages": [{"role": "user", "content": "the project"}]}))).await;
    assert_eq!(stream.status(), 200);
    // The head went out before the post_call guardrail read a word.
    assert_eq!(
        stream.headers()["x-litellm-applied-guardrails"],
        "block-words"
    );
    assert!(
        std::str::from_utf8(stream.body())
            .unwrap()
            .contains(r#""code":"content_policy_violation""#)
    );
    let failing = send(gw.chat(&json!({"model": "gpt-plain", "guardrails": ["down"], "messages": [{"role": "user", "content": "email me"}]}))).await;
    assert_eq!(failing.status(), 200);
    assert_eq!(
        failing.headers()["x-litellm-applied-guardrails"],
        "block-words,down,no-codenames"
    );
    let v: Value = serde_json::from_slice(failing.body()).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("You said: email me.{EMAIL_SENTENCE}")
    );

    // Every record complete (the gateway stopped and flushed), then a scrape of its routes.
    let (rows, m) = gw.rows_then_scrape(4).await;
    let guardrail = |name: &str, status: &str, hook: &str| {
        format!(
            r#"litellm_guardrail_requests_total{{guardrail_name="{name}",status="{status}",hook_type="{hook}"}}"#
        )
    };
    assert_sample(&m, &guardrail("block-words", "success", "pre_call"), 3.0);
    assert_sample(&m, &guardrail("block-words", "intervened", "pre_call"), 1.0);
    assert_sample(&m, &guardrail("no-codenames", "success", "post_call"), 2.0);
    assert_sample(
        &m,
        &guardrail("no-codenames", "intervened", "post_call"),
        1.0,
    );
    assert_sample(&m, &guardrail("down", "error", "pre_call"), 1.0);
    assert_sample(
        &m,
        r#"litellm_guardrail_errors_total{guardrail_name="down",error_type="unreachable",hook_type="pre_call"}"#,
        1.0,
    );
    // Only the failing guardrail has errors.
    assert_eq!(
        m.matches("litellm_guardrail_errors_total{").count(),
        1,
        "{m}"
    );
    assert_sample(
        &m,
        r#"litellm_guardrail_latency_seconds_count{guardrail_name="down",status="error",error_type="unreachable",hook_type="pre_call"}"#,
        1.0,
    );
    assert_sample(
        &m,
        r#"litellm_guardrail_latency_seconds_count{guardrail_name="block-words",status="success",error_type="none",hook_type="pre_call"}"#,
        3.0,
    );
    assert!(m.contains("# TYPE litellm_guardrail_latency_seconds histogram\n"));
    assert_sample(
        &m,
        r#"litellm_proxy_total_requests_metric_total{requested_model="gpt-plain",status_code="200"}"#,
        3.0,
    );
    assert_sample(
        &m,
        r#"litellm_proxy_total_requests_metric_total{requested_model="gpt-plain",status_code="400"}"#,
        1.0,
    );
    assert_sample(
        &m,
        r#"litellm_proxy_failed_requests_metric_total{requested_model="gpt-plain",exception_status="400",exception_class="policy_block"}"#,
        1.0,
    );
    assert_sample(
        &m,
        r#"litellm_proxy_failed_requests_metric_total{requested_model="gpt-plain",exception_status="200",exception_class="policy_block"}"#,
        1.0,
    );
    assert_sample(
        &m,
        r#"guardrail_tower_stream_blocks_after_head_total{guardrail_name="no-codenames"}"#,
        1.0,
    );
    assert_sample(
        &m,
        r#"litellm_request_total_latency_metric_count{requested_model="gpt-plain",model="gpt-4o-mini"}"#,
        4.0,
    );
    // Every metric the shipped Grafana dashboard queries is there.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/grafana/guardrail-tower.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("litellm_") || w.starts_with("guardrail_tower_"))
            {
                queried += 1;
                assert!(
                    m.lines().any(|l| l
                        .strip_prefix(name)
                        .is_some_and(|r| r.starts_with(['{', ' ']))),
                    "the dashboard queries {name}, which the gateway does not export:\n{m}"
                );
            }
        }
    }
    assert!(queried >= 15, "{queried}");
    // No key, request id or user is a label.
    assert!(!m.contains(MASTER) && !m.contains("hashed_api_key") && !m.contains("request_id"));

    assert_eq!(
        rows.iter()
            .map(|r| r["metadata"]["applied_guardrails"].clone())
            .collect::<Vec<_>>(),
        [
            json!(["block-words", "no-codenames"]),
            json!(["block-words"]),
            json!(["block-words", "no-codenames"]),
            json!(["block-words", "down", "no-codenames"]),
        ]
    );
    // Tokens and spend are the spend log's, summed.
    let sum = |k: &str| rows.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>();
    let labels = r#"{requested_model="gpt-plain",model="gpt-4o-mini"}"#;
    assert_sample(
        &m,
        &format!("litellm_input_tokens_metric_total{labels}"),
        sum("prompt_tokens"),
    );
    assert_sample(
        &m,
        &format!("litellm_output_tokens_metric_total{labels}"),
        sum("completion_tokens"),
    );
    assert_sample(
        &m,
        &format!("litellm_total_tokens_metric_total{labels}"),
        sum("total_tokens"),
    );
    assert!(sum("spend") > 0.0);
    assert_sample(
        &m,
        r#"litellm_spend_metric_total{model="gpt-4o-mini"}"#,
        sum("spend"),
    );
}

#[tokio::test]
async fn metrics_endpoint_follows_litellm_settings() {
    // Open when require_auth_for_metrics_endpoint is false; the spend-log counters are there.
    let gw = Gw::start(
        STACK,
        "  callbacks: [\"prometheus\"]\n  require_auth_for_metrics_endpoint: false",
    )
    .await;
    let resp = send(
        gw.chat(&json!({"model": "gpt-plain", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (status, m) = gw.scrape(None).await;
    assert_eq!(status, 200);
    assert!(
        m.contains("# TYPE guardrail_tower_spend_log_queue_depth gauge\n"),
        "{m}"
    );
    assert!(m.contains("# TYPE guardrail_tower_spend_log_rows_written_total counter\n"));
    assert!(sample(&m, "guardrail_tower_spend_log_rows_dead_lettered_total") == Some(0.0));
    assert!(sample(&m, "guardrail_tower_spend_log_rows_dropped_total") == Some(0.0));

    // No prometheus callback: no /metrics.
    let gw = Gw::start(STACK, "  callbacks: []").await;
    assert_eq!(gw.scrape(Some(MASTER)).await.0, 404);
}
