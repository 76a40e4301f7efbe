//! Every example in `examples/`, run through its own functions (the ones its `main` calls)
//! against the mock upstream on loopback, asserting what a client of the example sees.

// Each example declares `mod support;` as a standalone binary does; included here side by side,
// that module is compiled once per example.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/axum_per_route.rs"]
#[allow(dead_code)]
mod axum_per_route;
#[path = "../examples/axum_route_layer.rs"]
#[allow(dead_code)]
mod axum_route_layer;
#[path = "../examples/custom_guardrail.rs"]
#[allow(dead_code)]
mod custom_guardrail;
#[path = "../examples/hyper_server.rs"]
#[allow(dead_code)]
mod hyper_server;
#[path = "../examples/normalized_error.rs"]
#[allow(dead_code)]
mod normalized_error;
#[path = "../examples/reqwest_upstream.rs"]
#[allow(dead_code)]
mod reqwest_upstream;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use guardrail_tower::spend_log::{
    ChannelSink, SpendLogHandle, SpendLogWriter, SpendRecord, SpendStatus,
};
use guardrail_tower_testkit::mock::{EMAIL_SENTENCE, MockUpstream};
use guardrail_tower_testkit::{post_json, send};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tower::ServiceExt;

/// The mock's answer to an email question, once the guardrails masked it.
fn masked_email_sentence() -> String {
    EMAIL_SENTENCE.replace("team@example.com", "[EMAIL_REDACTED]")
}

fn chat(model: &str, content: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

fn spend_log() -> (SpendLogHandle, UnboundedReceiver<SpendRecord>) {
    let (sink, records) = ChannelSink::new();
    (SpendLogWriter::new().spawn(sink), records)
}

/// Flushes the spend log and returns every record it wrote.
async fn records(
    handle: SpendLogHandle,
    mut records: UnboundedReceiver<SpendRecord>,
) -> Vec<SpendRecord> {
    handle.shutdown().await.expect("every record written");
    let mut out = Vec::new();
    while let Ok(record) = records.try_recv() {
        out.push(record);
    }
    out
}

/// Sends `body` to `path` through an axum router; returns the status and the whole body.
async fn call(router: &Router, method: &str, path: &str, body: &str) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer the-client-key")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn chat_answer(body: &[u8]) -> String {
    json_of(body)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// The text of a chat stream: its content deltas joined.
fn streamed_text(body: &[u8]) -> String {
    sse_data(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn assert_policy_block(body: &[u8]) {
    let v = json_of(body);
    assert_eq!(v["error"]["code"], "content_policy_violation", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[tokio::test]
async fn axum_per_route_guards_chat_and_only_logs_embeddings() {
    let mock = MockUpstream::start().await.unwrap();
    let (log, rx) = spend_log();
    let app = axum_per_route::app(&mock.base_url(), Some("sk-upstream"), log.clone()).unwrap();

    let (status, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &chat("m", "hello", false),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat_answer(&body), "You said: hello.");
    let seen = mock.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream"));

    // The address is masked before the upstream sees it; the upstream's own is masked on the way
    // back.
    let prompt = "I am jane@corp.com, what is your email";
    let (status, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &chat("m", prompt, false),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        chat_answer(&body),
        format!(
            "You said: I am [EMAIL_REDACTED], what is your email.{}",
            masked_email_sentence()
        )
    );
    let seen = mock.requests().pop().unwrap().json().unwrap();
    assert_eq!(
        seen["messages"][0]["content"],
        "I am [EMAIL_REDACTED], what is your email"
    );

    let before = mock.request_count();
    let (status, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &chat("m", "a forbidden question", false),
    )
    .await;
    assert_eq!(status, 400);
    assert_policy_block(&body);
    assert_eq!(mock.request_count(), before, "blocked before the upstream");

    // Embeddings: no guardrail layer, so "forbidden" passes; errors and spend log still apply.
    let (status, body) = call(
        &app,
        "POST",
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":["forbidden","b"]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["data"].as_array().unwrap().len(), 2);

    let records = records(log, rx).await;
    let mut seen: Vec<(&str, SpendStatus)> = records
        .iter()
        .map(|r| (r.call_type.as_str(), r.status))
        .collect();
    seen.sort_by_key(|(call_type, status)| (*call_type, *status == SpendStatus::Failure));
    assert_eq!(
        seen,
        [
            ("acompletion", SpendStatus::Success),
            ("acompletion", SpendStatus::Success),
            ("acompletion", SpendStatus::Failure),
            ("aembedding", SpendStatus::Success),
        ]
    );
}

#[tokio::test]
async fn axum_route_layer_guards_the_apps_own_handler_only() {
    let mock = MockUpstream::start().await.unwrap();
    let (log, rx) = spend_log();
    let app = axum_route_layer::app(&mock.base_url(), None, log.clone()).unwrap();
    let path = "/support/v1/chat/completions";

    let (status, body) = call(
        &app,
        "POST",
        path,
        r#"{"messages":[{"role":"user","content":"How do I reset my password?"}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(chat_answer(&body), "You said: How do I reset my password?.");
    // The handler's own work: its system prompt first, its model.
    let seen = mock.requests().pop().unwrap().json().unwrap();
    assert_eq!(seen["model"], axum_route_layer::MODEL);
    assert_eq!(
        seen["messages"][0],
        json!({"role": "system", "content": axum_route_layer::SYSTEM_PROMPT})
    );
    assert_eq!(
        seen["messages"][1]["content"],
        "How do I reset my password?"
    );

    // The answer the handler returns is checked too, streamed or not.
    let (status, body) = call(&app, "POST", path, &chat("x", "what is your email", true)).await;
    assert_eq!(status, 200);
    assert_eq!(
        streamed_text(&body),
        format!("You said: what is your email.{}", masked_email_sentence())
    );
    assert_eq!(sse_data(&body).last().unwrap(), "[DONE]");

    let before = mock.request_count();
    let (status, body) = call(&app, "POST", path, &chat("x", "forbidden", false)).await;
    assert_eq!(status, 400);
    assert_policy_block(&body);
    assert_eq!(mock.request_count(), before, "the handler never ran");

    // The other handlers have no layers: nothing checked, nothing logged.
    let (status, body) = call(&app, "GET", "/support/hours", "").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["open"], "09:00");
    let (status, body) = call(&app, "GET", "/health", "").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, _) = call(&app, "POST", "/support/v1/unknown", "forbidden").await;
    assert_eq!(status, 404);

    let records = records(log, rx).await;
    let mut statuses: Vec<SpendStatus> = records.iter().map(|r| r.status).collect();
    statuses.sort_by_key(|s| *s == SpendStatus::Failure);
    assert_eq!(
        statuses,
        [
            SpendStatus::Success,
            SpendStatus::Success,
            SpendStatus::Failure
        ]
    );
    assert!(records.iter().all(|r| r.call_type == "acompletion"));
}

#[tokio::test]
async fn custom_guardrail_blocks_and_redacts_both_ways() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();

    let (status, body) = custom_guardrail::ask(&base, None, "What is the status of TICKET-42?")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        chat_answer(&body),
        "You said: What is the status of TICKET-***?."
    );
    let seen = mock.requests().pop().unwrap().json().unwrap();
    assert_eq!(
        seen["messages"][0]["content"],
        "What is the status of TICKET-***?"
    );

    let before = mock.request_count();
    let (status, body) = custom_guardrail::ask(&base, None, "Is Acme Corp any good?")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_policy_block(&body);
    assert_eq!(
        json_of(&body)["error"]["message"],
        "We don't discuss competitors."
    );
    assert_eq!(mock.request_count(), before);

    let (status, body) = custom_guardrail::ask(&base, None, "Hello!").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(chat_answer(&body), "You said: Hello!.");
}

#[test]
fn custom_guardrail_redaction_is_idempotent() {
    let once = custom_guardrail::redact_tickets("TICKET-1 and TICKET-22, TICKET-x, TICKET-");
    assert_eq!(once, "TICKET-*** and TICKET-***, TICKET-x, TICKET-");
    assert_eq!(custom_guardrail::redact_tickets(&once), once);
}

#[tokio::test]
async fn hyper_server_serves_the_stack_with_a_model_level_guardrail() {
    let mock = MockUpstream::start().await.unwrap();
    let (log, rx) = spend_log();
    let stack = hyper_server::stack(mock.base_url(), None, log.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hyper_server::serve(listener, stack, async {
        let _ = stopped.await;
    }));

    // `pii-mask` is attached to `gpt-guarded` only.
    let resp = send(post_json(&url, &chat("gpt-guarded", "your email?", false))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        chat_answer(resp.body()),
        format!("You said: your email?.{}", masked_email_sentence())
    );
    let resp = send(post_json(&url, &chat("gpt-plain", "your email?", false))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        chat_answer(resp.body()),
        format!("You said: your email?.{EMAIL_SENTENCE}")
    );
    // `block-words` is default_on: every model.
    let resp = send(post_json(&url, &chat("gpt-plain", "forbidden", true))).await;
    assert_eq!(resp.status(), 400);
    assert_policy_block(resp.body());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(records(log, rx).await.len(), 3);
}

#[tokio::test]
async fn normalized_error_shapes_each_upstream_failure() {
    let mock = MockUpstream::start().await.unwrap();
    // The third failure is an upstream that never answers: this timeout is what is under test.
    let seen = normalized_error::failures(&mock.base_url(), Duration::from_millis(300))
        .await
        .unwrap();
    let seen: Vec<(u16, String)> = seen
        .into_iter()
        .map(|(status, body)| (status.as_u16(), String::from_utf8(body.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                500,
                r#"{"error":{"message":"upstream returned 500 Internal Server Error (HTML body omitted)","type":"internal_server_error","param":null,"code":null}}"#.to_owned()
            ),
            (
                503,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"upstream connect error or disconnect/reset before headers. reset reason: overflow"}}"#.to_owned()
            ),
            (
                504,
                r#"{"error":{"message":"upstream timed out: request timed out","type":"timeout_error","param":null,"code":"upstream_timeout"}}"#.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn reqwest_upstream_behind_the_layers() {
    let mock = MockUpstream::start().await.unwrap();
    let (log, rx) = spend_log();
    let upstream =
        reqwest_upstream::ReqwestUpstream::new(&mock.base_url(), Some("sk-upstream")).unwrap();
    let gateway = reqwest_upstream::gateway(upstream, log.clone()).unwrap();

    // A stream: the upstream's email is masked in the deltas, the stream ends properly.
    let (status, body) = call(
        &gateway,
        "POST",
        "/v1/chat/completions",
        &chat("m", "what is your email", true),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        streamed_text(&body),
        format!("You said: what is your email.{}", masked_email_sentence())
    );
    assert_eq!(sse_data(&body).last().unwrap(), "[DONE]");
    // The gateway's key went upstream, not the client's.
    let seen = mock.requests().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream"));
    assert_eq!(seen.path, "/v1/chat/completions");

    // Anthropic messages through the same client: blocked in Anthropic's error shape.
    let (status, body) = call(
        &gateway,
        "POST",
        "/v1/messages",
        r#"{"model":"claude","max_tokens":32,"messages":[{"role":"user","content":"forbidden"}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    let v = json_of(&body);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    // reqwest's connect failure is a 502 in the endpoint's shape.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused =
        reqwest_upstream::ReqwestUpstream::new(&format!("http://{closed}/v1"), None).unwrap();
    let (dead_log, dead_rx) = spend_log();
    let dead = reqwest_upstream::gateway(refused, dead_log.clone()).unwrap();
    let (status, body) = call(
        &dead,
        "POST",
        "/v1/responses",
        r#"{"model":"m","input":"hi"}"#,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(json_of(&body)["error"]["code"], "upstream_error");

    assert_eq!(records(log, rx).await.len(), 2);
    let dead = records(dead_log, dead_rx).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].status, SpendStatus::Failure);
    assert_eq!(dead[0].metadata.http_status, 502);
}
