//! The gateway end to end, over real sockets: the mock upstream and the gateway started from a
//! config string, driven with a real HTTP client. Each test asserts what a client sees (status,
//! body, SSE frames) and the spend-log row the request left.

use std::path::PathBuf;

use bytes::Bytes;
use guardrail_gateway::app::{Gateway, RunningGateway};
use guardrail_tower::spend_log::{PostgresSink, SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::{client, post_json, send};
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A running mock upstream and gateway.
struct Harness {
    upstream: MockUpstream,
    gateway: String,
    config: String,
    db: PathBuf,
    _dir: tempfile::TempDir,
    running: Option<RunningGateway>,
}

const GUARDRAILS: &str = r#"
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

impl Harness {
    /// The gateway with `extra` appended to the standard config (more guardrails or models).
    async fn start_with(extra_models: &str, extra_guardrails: &str) -> Harness {
        Harness::start_full(extra_models, extra_guardrails, None, "").await
    }

    /// The standard config with more models and guardrails, its spend log in `spend_logs`
    /// (default: a SQLite file in a temporary directory), and more `general_settings` lines
    /// (indented by two spaces).
    async fn start_full(
        extra_models: &str,
        extra_guardrails: &str,
        spend_logs: Option<&str>,
        extra_settings: &str,
    ) -> Harness {
        let upstream = MockUpstream::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}", dir.path().join("spend.db").display());
        let spend_logs = spend_logs.unwrap_or(&sqlite);
        let base = upstream.base_url();
        let config = format!(
            r#"
model_list:
  - model_name: gpt-guarded
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream, guardrails: [no-codenames]}}
  - model_name: gpt-plain
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream}}
  - model_name: claude-guarded
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant, guardrails: [no-codenames]}}
{extra_models}
{GUARDRAILS}
{extra_guardrails}
general_settings:
  spend_logs: "{spend_logs}"
  request_timeout: 5
{extra_settings}
"#,
            origin = upstream.origin(),
        );
        let mut harness = Harness {
            upstream,
            gateway: String::new(),
            config,
            db: dir.path().join("spend.db"),
            _dir: dir,
            running: None,
        };
        harness.serve().await;
        harness
    }

    /// Starts a gateway from the config (again, after [`Harness::spend_rows`] stopped it).
    async fn serve(&mut self) {
        let gateway = Gateway::from_config_str(&self.config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = gateway.spawn(listener).unwrap();
        self.gateway = running.url("");
        self.running = Some(running);
    }

    async fn start() -> Harness {
        Harness::start_with("", "").await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// Stops the gateway and waits until it has shut down: in-flight requests finished, the
    /// spend log flushed.
    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    /// `GET path` on the gateway: the status and the body as JSON.
    async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = send(Request::get(self.url(path)).body(Full::default()).unwrap()).await;
        let body = serde_json::from_slice(resp.body())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(resp.body())));
        (resp.status().as_u16(), body)
    }

    /// Stops the gateway, which flushes its spend log at shutdown, and returns every row it
    /// wrote (newest first, as `GET /spend/logs` gives them), asserting there are exactly `n`:
    /// one per request.
    async fn spend_rows(&mut self, n: usize) -> Vec<Value> {
        self.stop().await;
        let store = SqliteSink::open(&self.db).await.unwrap();
        let rows = store.query(&SpendLogFilter::new()).await.unwrap();
        let rows = serde_json::to_value(rows).unwrap();
        let rows = rows.as_array().unwrap().clone();
        assert_eq!(rows.len(), n, "exactly one row per request: {rows:#?}");
        rows
    }
}

fn chat(model: &str, content: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": content}]}).to_string()
}

fn sse_data(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn chat_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn guardrail_summary(row: &Value) -> Vec<(String, String, String, String)> {
    row["metadata"]["guardrail_information"]
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
        .collect()
}

fn entry(name: &str, mode: &str, status: &str, action: &str) -> (String, String, String, String) {
    (name.into(), mode.into(), status.into(), action.into())
}

#[tokio::test]
async fn clean_chat_in_both_stream_modes() {
    let mut h = Harness::start().await;
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-guarded", "Hello there", false),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-litellm-applied-guardrails"],
        "block-words,pii-mask,no-codenames"
    );
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "You said: Hello there."
    );
    assert_eq!(v["model"], "gpt-4o-mini");
    // The upstream got the deployment's model name and key, not the client's.
    let seen = &h.upstream.requests()[0];
    assert_eq!(seen.json().unwrap()["model"], "gpt-4o-mini");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream"));

    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-guarded", "Hello there", true),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.body().ends_with(b"data: [DONE]\n\n"));
    assert_eq!(chat_text(&sse_data(resp.body())), "You said: Hello there.");

    let rows = h.spend_rows(2).await;
    for row in &rows {
        assert_eq!(row["status"], "success");
        assert_eq!(row["model"], "gpt-guarded");
        assert_eq!(row["total_tokens"], 6, "{row}");
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r["metadata"]["stream"] == true)
            .count(),
        1
    );
}

#[tokio::test]
async fn pre_call_block_never_reaches_the_upstream_and_is_logged() {
    let mut h = Harness::start().await;
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-guarded", "the forbidden fruit", false),
    ))
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.body(),
        r#"{"error":{"message":"Content blocked: keyword 'forbidden' detected","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
    );
    assert_eq!(h.upstream.request_count(), 0);
    let rows = h.spend_rows(1).await;
    assert_eq!(rows[0]["status"], "failure");
    assert_eq!(rows[0]["metadata"]["http_status"], 400);
    assert_eq!(
        rows[0]["metadata"]["error_information"]["error_class"],
        "policy_block"
    );
    assert_eq!(
        guardrail_summary(&rows[0]),
        [
            entry("block-words", "pre_call", "guardrail_intervened", "block"),
            entry("pii-mask", "pre_call", "not_run", "allow"),
        ]
    );
}

#[tokio::test]
async fn masking_on_the_way_in_and_out() {
    let mut h = Harness::start().await;
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-plain", "my email is jane@corp.com", false),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let sent = h.upstream.requests()[0].json().unwrap();
    assert_eq!(
        sent["messages"][0]["content"],
        "my email is [EMAIL_REDACTED]"
    );
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "You said: my email is [EMAIL_REDACTED]. You can reach the team at [EMAIL_REDACTED]."
    );
    let rows = h.spend_rows(1).await;
    let info = &rows[0]["metadata"]["guardrail_information"];
    assert_eq!(info[1]["masked_entity_count"], json!({"email": 1}));
    assert_eq!(info[2]["guardrail_mode"], "post_call");
    assert_eq!(info[2]["masked_entity_count"], json!({"email": 1}));
}

#[tokio::test]
async fn model_level_guardrail_blocks_a_stream_mid_way() {
    let mut h = Harness::start().await;
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-guarded", "tell me about the project", true),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let body = std::str::from_utf8(resp.body()).unwrap();
    assert!(body.ends_with(
        "data: {\"error\":{\"message\":\"Content blocked: keyword 'bluebird' detected\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"content_policy_violation\"}}\n\ndata: [DONE]\n\n"
    ), "{body}");
    let text = chat_text(&sse_data(resp.body()));
    assert!(
        text.starts_with("You said: tell me about the project. The secret project is codenamed")
    );
    assert!(!text.to_lowercase().contains("bluebird"));
    // The same prompt to a model without the guardrail streams to the end.
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-plain", "tell me about the project", true),
    ))
    .await;
    assert!(chat_text(&sse_data(resp.body())).contains("BLUEBIRD"));
    let rows = h.spend_rows(2).await;
    let blocked = rows.iter().find(|r| r["model"] == "gpt-guarded").unwrap();
    assert_eq!(blocked["status"], "failure");
    assert_eq!(blocked["metadata"]["http_status"], 200);
    assert_eq!(
        blocked["metadata"]["error_information"]["guardrail"],
        "no-codenames"
    );
    assert!(guardrail_summary(blocked).contains(&entry(
        "no-codenames",
        "post_call",
        "guardrail_intervened",
        "block"
    )));
    let plain = rows.iter().find(|r| r["model"] == "gpt-plain").unwrap();
    assert_eq!(plain["status"], "success");
}

#[tokio::test]
async fn responses_blocks_are_in_the_spend_log_like_chat_ones() {
    let mut h = Harness::start().await;
    let pre = json!({"model": "gpt-guarded", "input": "a forbidden topic"}).to_string();
    let resp = send(post_json(&h.url("/v1/responses"), &pre)).await;
    assert_eq!(resp.status(), 400);
    let streamed =
        json!({"model": "gpt-guarded", "input": "tell me about the project", "stream": true})
            .to_string();
    let resp = send(post_json(&h.url("/v1/responses"), &streamed)).await;
    assert_eq!(resp.status(), 200);
    let events = sse_data(resp.body());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["error", "response.failed"]);
    assert_eq!(events[events.len() - 2]["code"], "content_policy_violation");
    assert_eq!(events[events.len() - 1]["response"]["status"], "failed");
    assert!(!kinds.contains(&"response.completed"));

    let rows = h.spend_rows(2).await;
    for row in &rows {
        assert_eq!(row["call_type"], "aresponses");
        assert_eq!(row["status"], "failure");
        let info = row["metadata"]["guardrail_information"].as_array().unwrap();
        assert!(
            info.iter().any(|e| e["guardrail_action"] == "block"),
            "{row}"
        );
    }
}

#[tokio::test]
async fn generic_guardrail_api_down_fails_open_or_closed() {
    let stopped = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let guardrails = format!(
        r#"
  - guardrail_name: remote-open
    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: "http://{stopped}", unreachable_fallback: fail_open, timeout: 1}}
  - guardrail_name: remote-closed
    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: "http://{stopped}", unreachable_fallback: fail_closed, timeout: 1}}
"#
    );
    let mut h = Harness::start_with("", &guardrails).await;
    let open = json!({"model": "gpt-plain", "guardrails": ["remote-open"], "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let resp = send(post_json(&h.url("/v1/chat/completions"), &open)).await;
    assert_eq!(resp.status(), 200);
    let closed = json!({"model": "gpt-plain", "guardrails": ["remote-closed"], "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let resp = send(post_json(&h.url("/v1/chat/completions"), &closed)).await;
    assert_eq!(resp.status(), 503);
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["error"]["code"], "guardrail_unreachable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("guardrail 'remote-closed' could not be reached")
    );
    assert_eq!(h.upstream.request_count(), 1);

    let rows = h.spend_rows(2).await;
    let find = |name: &str| {
        rows.iter()
            .flat_map(|r| {
                r["metadata"]["guardrail_information"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .find(|e| e["guardrail_name"] == name)
            .unwrap()
    };
    assert_eq!(
        find("remote-open")["guardrail_status"],
        "guardrail_failed_to_respond"
    );
    assert_eq!(find("remote-open")["guardrail_action"], "allow");
    assert_eq!(
        find("remote-closed")["guardrail_status"],
        "guardrail_failed_to_respond"
    );
    assert_eq!(find("remote-closed")["guardrail_action"], "block");
}

#[tokio::test]
async fn a_failing_guardrail_service_s_url_and_body_stay_out_of_the_client_error() {
    // A guardrail service that fails with an internal error page, and one that is down.
    const BODY: &str = "Traceback (most recent call last): db password hunter2 at 10.9.8.7";
    let failing = guardrail_tower_testkit::serve(tower::service_fn(
        |_req: Request<hyper::body::Incoming>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(500)
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .unwrap(),
            )
        },
    ))
    .await;
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failing_url = failing.url("/internal-guard");
    let down_url = format!("http://{down}/internal-down");
    let guardrails = format!(
        r#"
  - guardrail_name: remote-failing
    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: "{failing_url}", timeout: 2}}
  - guardrail_name: remote-down
    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: "{down_url}", unreachable_fallback: fail_closed, timeout: 2}}
"#
    );
    let mut h =
        Harness::start_full("", &guardrails, None, "  store_prompts_in_spend_logs: true").await;
    let mut rows_expected = 0;
    for (name, url, status, detail) in [
        ("remote-failing", &failing_url, 500, "hunter2"),
        ("remote-down", &down_url, 503, "refused"),
    ] {
        let body = json!({"model": "gpt-plain", "guardrails": [name],
                          "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        let resp = send(post_json(&h.url("/v1/chat/completions"), &body)).await;
        assert_eq!(resp.status(), status, "{name}");
        let client = String::from_utf8_lossy(resp.body()).into_owned();
        let v: Value = serde_json::from_slice(resp.body()).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(name),
            "the client learns which guardrail failed: {client}"
        );
        let addr = url.trim_start_matches("http://").split('/').next().unwrap();
        for secret in [
            addr,
            "/internal-",
            "hunter2",
            "Traceback",
            "10.9.8.7",
            "refused",
        ] {
            assert!(
                !client.contains(secret),
                "{name}: the client's error holds {secret:?}: {client}"
            );
        }
        rows_expected += 1;
        let rows = h.spend_rows(rows_expected).await;
        let entry = rows[0]["metadata"]["guardrail_information"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["guardrail_name"] == name)
            .unwrap()
            .clone();
        assert_eq!(entry["guardrail_status"], "guardrail_failed_to_respond");
        let error = entry["guardrail_response"]["error"].as_str().unwrap();
        let endpoint = format!("{url}/beta/litellm_basic_guardrail_api");
        assert!(error.contains(&endpoint), "{name}: {error}");
        assert!(error.contains(detail), "{name}: {error}");
        if name == "remote-failing" {
            assert!(error.contains("500") && error.contains(BODY), "{error}");
        }
        h.serve().await;
    }
    assert_eq!(h.upstream.request_count(), 0);
}

#[tokio::test]
async fn upstream_html_500_becomes_a_json_error() {
    let mut h = Harness::start().await;
    let req = Request::post(h.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("x-mock-fault", "html-500")
        .body(Full::new(Bytes::from(json!({"model": "claude-guarded", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).to_string())))
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.body(),
        r#"{"type":"error","error":{"type":"api_error","message":"upstream returned 500 Internal Server Error (HTML body omitted)"}}"#
    );
    let rows = h.spend_rows(1).await;
    assert_eq!(rows[0]["status"], "failure");
    assert_eq!(
        rows[0]["metadata"]["error_information"]["error_class"],
        "upstream_failure"
    );
}

#[tokio::test]
async fn an_upstream_that_drops_mid_stream_ends_with_the_in_band_error() {
    // Seed bug 001 for another cause: after the 200, the client gets the endpoint's error
    // event and its terminator, with or without a post-call guardrail, never a cut body.
    let mut h = Harness::start().await;
    for model in ["gpt-plain", "gpt-guarded"] {
        let req = Request::post(h.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-mock-fault", "drop-mid-stream")
            .body(Full::new(Bytes::from(chat(model, "hello", true))))
            .unwrap();
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        // A clean end: `collect` fails on an error frame.
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.ends_with(
                "data: {\"error\":{\"message\":\"the upstream stopped sending the stream before it ended\",\"type\":\"bad_gateway_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}\n\ndata: [DONE]\n\n"
            ),
            "{model}: {got}"
        );
        assert_eq!(got.matches("[DONE]").count(), 1, "{model}: {got}");
    }
    let rows = h.spend_rows(2).await;
    for row in &rows {
        assert_eq!(row["status"], "failure", "{row}");
        assert_eq!(
            row["metadata"]["error_information"]["error_code"], "upstream_stream_error",
            "{row}"
        );
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_logged() {
    let mut h = Harness::start().await;
    let req = Request::post(h.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-mock-fault", "never-end")
        .body(Full::new(Bytes::from(chat("gpt-plain", "hello", true))))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let rows = h.spend_rows(1).await;
    assert_eq!(rows[0]["status"], "failure");
    assert_eq!(
        rows[0]["metadata"]["error_information"]["error_code"],
        "client_disconnected"
    );
    assert!(rows[0]["completionStartTime"].is_string());
}

#[tokio::test]
async fn unknown_models_health_and_spend_log_queries() {
    let mut h = Harness::start().await;
    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-9", "hi", false),
    ))
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");

    let health = send(
        Request::get(h.url("/health"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (health.status().as_u16(), health.body().as_ref()),
        (200, br#"{"status":"healthy"}"#.as_ref())
    );

    let ok = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-plain", "hi", false),
    ))
    .await;
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    h.spend_rows(2).await;
    // The rows are in the database: a gateway started again on it serves them.
    h.serve().await;
    let one = send(
        Request::get(h.url(&format!("/spend/logs?request_id={id}")))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let rows: Vec<Value> = serde_json::from_slice(one.body()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["request_id"], id.as_str());
    let failures = send(
        Request::get(h.url("/spend/logs?status=failure"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let rows: Vec<Value> = serde_json::from_slice(failures.body()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["metadata"]["error_information"]["error_code"],
        "model_not_found"
    );
    let bad = send(
        Request::get(h.url("/spend/logs?start_date=yesterday"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status(), 400);
}

/// Whether this run is CI's (`CI` set, as CI services and `.ci/run` set it): there, a test that
/// cannot run fails instead of skipping.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The PostgreSQL server to test against, from `GUARDRAIL_TOWER_TEST_PG_URL`. Unset: the test
/// is skipped, saying so, except under CI, where it fails. Set: the server must answer.
async fn pg_url() -> Option<String> {
    let url = match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if ci() => panic!(
            "GUARDRAIL_TOWER_TEST_PG_URL is not set, and under CI the PostgreSQL tests must run"
        ),
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            return None;
        }
    };
    if let Err(e) = PostgresSink::connect(&url).await {
        panic!("GUARDRAIL_TOWER_TEST_PG_URL is set but its server does not answer: {e}");
    }
    Some(url)
}

#[tokio::test]
async fn pg_spend_logs_through_the_gateway() {
    let Some(url) = pg_url().await else { return };
    let mut h = Harness::start_full("", "", Some(&url), "").await;
    let ok = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-guarded", "Hello there", true),
    ))
    .await;
    assert_eq!(ok.status(), 200);
    let blocked = send(post_json(
        &h.url("/v1/responses"),
        r#"{"model":"gpt-guarded","input":"the forbidden fruit"}"#,
    ))
    .await;
    assert_eq!(blocked.status(), 400);
    let ids: Vec<String> = [&ok, &blocked]
        .iter()
        .map(|r| r.headers()["x-request-id"].to_str().unwrap().to_owned())
        .collect();

    // Flushed at shutdown; a gateway started again on the same database serves the rows (the
    // table is shared with other runs: each row is looked up by its request id).
    h.stop().await;
    h.serve().await;
    let (status, rows) = h
        .get_json(&format!("/spend/logs?request_id={}", ids[0]))
        .await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["status"], "success");
    assert_eq!(rows[0]["call_type"], "acompletion");
    assert_eq!(rows[0]["metadata"]["stream"], true);
    assert_eq!(rows[0]["total_tokens"], 6, "{}", rows[0]);

    let (status, rows) = h
        .get_json(&format!("/spend/logs?request_id={}", ids[1]))
        .await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["status"], "failure");
    assert_eq!(rows[0]["call_type"], "aresponses");
    assert_eq!(rows[0]["metadata"]["http_status"], 400);
    assert_eq!(
        guardrail_summary(&rows[0])[0],
        entry("block-words", "pre_call", "guardrail_intervened", "block")
    );
}

#[tokio::test]
async fn a_compressed_upstream_answer_is_decoded_and_checked() {
    // An upstream that compresses although it is asked for `identity`: the gateway decodes
    // gzip, br and deflate before the post-call guardrails read the text, so the email in
    // the answer is masked, in a JSON body and in a stream, never passed through unread.
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    let asked: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = asked.clone();
    let upstream = guardrail_tower_testkit::serve(tower::service_fn(
        move |req: Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(
                    req.headers()
                        .get("accept-encoding")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let stream = serde_json::from_slice::<Value>(&body).unwrap()["stream"] == true;
                let (content_type, plain) = if stream {
                    (
                        "text/event-stream",
                        concat!(
                            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"write to jane\"},\"finish_reason\":null}]}\n\n",
                            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"@corp.com today\"},\"finish_reason\":\"stop\"}]}\n\n",
                            "data: [DONE]\n\n"
                        )
                        .to_owned(),
                    )
                } else {
                    (
                        "application/json",
                        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "write to jane@corp.com today"}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
                        .to_string(),
                    )
                };
                let mut gz = GzEncoder::new(Vec::new(), Compression::default());
                gz.write_all(plain.as_bytes()).unwrap();
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", content_type)
                        .header("content-encoding", "gzip")
                        .body(Full::new(Bytes::from(gz.finish().unwrap())))
                        .unwrap(),
                )
            }
        },
    ))
    .await;
    let base = upstream.url("/v1");
    let models = format!(
        "  - model_name: gpt-gzip\n    litellm_params: {{model: openai/m, api_base: \"{base}\", api_key: sk-up}}\n"
    );
    let mut h = Harness::start_with(&models, "").await;

    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-gzip", "hi", false),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-encoding").is_none());
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "write to [EMAIL_REDACTED] today"
    );

    let resp = send(post_json(
        &h.url("/v1/chat/completions"),
        &chat("gpt-gzip", "hi", true),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let events = sse_data(resp.body());
    assert_eq!(chat_text(&events), "write to [EMAIL_REDACTED] today");
    assert!(resp.body().ends_with(b"data: [DONE]\n\n"));

    // The upstream was asked for an uncompressed answer both times.
    assert_eq!(
        *asked.lock().unwrap(),
        [Some("identity".to_owned()), Some("identity".to_owned())]
    );
    let rows = h.spend_rows(2).await;
    assert!(rows.iter().all(|r| r["status"] == "success"), "{rows:?}");
}
