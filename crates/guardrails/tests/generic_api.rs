//! The Generic Guardrail API client against real local HTTP servers: the wire request field by
//! field, the path rule, every answer, failure classification, fallbacks and retries.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, ConfiguredGuardrail, Decision, Fallback, Guardrail, GuardrailErrorKind,
    GuardrailInput, GuardrailLog, GuardrailMode, GuardrailSelection, GuardrailStatus, Guardrails,
    Outcome, RequestId, RequestMeta,
};
use guardrail_tower_guardrails::generic_api::{GenericGuardrailApi, GenericGuardrailApiConfig};
use guardrail_tower_guardrails::http::HttpClient;
use guardrail_tower_testkit::{TestServer, serve};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tower::service_fn;

/// One request the fake guardrail service received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// What the fake service does for one request.
#[derive(Clone)]
enum Reply {
    Answer(u16, &'static str),
    Json(Value),
    Never,
}

/// A guardrail service that records what it receives and answers the scripted replies in
/// order, repeating the last one.
async fn service(replies: Vec<Reply>) -> (TestServer, Log) {
    let log: Log = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(replies)));
    let seen = log.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let script = script.clone();
        async move {
            let path = req.uri().path().to_owned();
            let headers = req.headers().clone();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push(Received {
                path,
                headers,
                body,
            });
            let reply = {
                let mut script = script.lock().unwrap();
                if script.len() > 1 {
                    script.pop_front().unwrap()
                } else {
                    script.front().cloned().unwrap()
                }
            };
            let (status, body) = match reply {
                Reply::Answer(status, body) => (status, body.to_owned()),
                Reply::Json(value) => (200, value.to_string()),
                Reply::Never => std::future::pending().await,
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    (serve(svc).await, log)
}

fn config(api_base: String) -> GenericGuardrailApiConfig {
    let mut config = GenericGuardrailApiConfig::new(api_base);
    config.timeout = Some(0.5);
    config
}

fn guard(config: GenericGuardrailApiConfig) -> GenericGuardrailApi {
    GenericGuardrailApi::with_client(config, HttpClient::new()).expect("valid config")
}

fn chat_body() -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is the weather?"},
                {"type": "image_url", "image_url": {"url": "https://img.example/sky.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        ],
        "metadata": {"litellm_trace_id": "trace-7"}
    })
}

fn input(
    call_type: CallType,
    side: Side,
    body: Option<Value>,
    headers: &HeaderMap,
    texts: &[&str],
) -> GuardrailInput {
    let meta = RequestMeta::new(RequestId::from("req-42"), call_type)
        .with_model(Some("gpt-4o".into()))
        .with_body(body.map(Arc::new))
        .with_headers(headers);
    GuardrailInput::new(
        texts.iter().map(|t| t.to_string()).collect(),
        side,
        GuardrailMode::PreCall,
        Arc::new(meta),
    )
}

fn simple_input(texts: &[&str]) -> GuardrailInput {
    input(
        CallType::ChatCompletions,
        Side::Request,
        Some(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": texts.join(" ")}]}),
        ),
        &HeaderMap::new(),
        texts,
    )
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

const FIELD_ORDER: [&str; 13] = [
    "input_type",
    "litellm_call_id",
    "litellm_trace_id",
    "structured_messages",
    "images",
    "tools",
    "texts",
    "request_data",
    "request_headers",
    "litellm_version",
    "additional_provider_specific_params",
    "tool_calls",
    "model",
];

#[tokio::test]
async fn a_chat_request_is_sent_field_by_field() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let mut config = config(server.url("/guard"));
    config.api_key = Some("guard-key".into());
    config
        .headers
        .insert("x-custom".into(), json!("custom-value"));
    config.headers.insert("x-version".into(), json!(3));
    config.additional_provider_specific_params = Some(json!({"threshold": 0.8}));
    let api = guard(config);

    let mut client_headers = HeaderMap::new();
    client_headers.insert("user-agent", "OpenAI/Python 1.0".parse().unwrap());
    client_headers.insert("x-stainless-lang", "python".parse().unwrap());
    client_headers.insert("x-team", "blue".parse().unwrap());
    client_headers.insert("authorization", "Bearer sk-client".parse().unwrap());
    let body = chat_body();
    let input = input(
        CallType::ChatCompletions,
        Side::Request,
        Some(body.clone()),
        &client_headers,
        &["be nice", "what is the weather?", "sunny"],
    );
    let verdict = api.check(&input).await.unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert_eq!(verdict.detail(), Some(&json!({"action": "NONE"})));

    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.path, "/guard/beta/litellm_basic_guardrail_api");
    assert_eq!(got.headers["x-api-key"], "guard-key");
    assert_eq!(got.headers["x-custom"], "custom-value");
    assert_eq!(got.headers["x-version"], "3");
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(got.headers.get("authorization").is_none());

    let want = json!({
        "input_type": "request",
        "litellm_call_id": "req-42",
        "litellm_trace_id": "trace-7",
        "structured_messages": body["messages"],
        "images": ["https://img.example/sky.png"],
        "tools": body["tools"],
        "texts": ["be nice", "what is the weather?", "sunny"],
        "request_data": body,
        "request_headers": {
            "user-agent": "OpenAI/Python 1.0",
            "x-stainless-lang": "python",
            "x-team": "[present]"
        },
        "litellm_version": null,
        "additional_provider_specific_params": {"threshold": 0.8},
        "tool_calls": [body["messages"][2]["tool_calls"][0]],
        "model": "gpt-4o"
    });
    assert_eq!(got.body, want);
    assert_eq!(keys(&got.body), FIELD_ORDER);
    assert_eq!(api.request_body(&input), want);
}

#[tokio::test]
async fn a_response_side_check_is_sent_field_by_field() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let api = guard(config(server.url("")));
    let body = json!({
        "model": "gpt-4o",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "draw"},
                {"type": "input_image", "image_url": "https://img.example/a.png"}
            ]}
        ],
        "tools": [{"type": "function", "name": "f"}]
    });
    let input = input(
        CallType::Responses,
        Side::Response,
        Some(body.clone()),
        &HeaderMap::new(),
        &["here is a drawing"],
    );
    assert_eq!(
        api.check(&input).await.unwrap().decision(),
        &Decision::Allow
    );

    let got = log.lock().unwrap()[0].clone();
    assert_eq!(got.path, "/beta/litellm_basic_guardrail_api");
    assert!(got.headers.get("x-api-key").is_none());
    let want = json!({
        "input_type": "response",
        "litellm_call_id": "req-42",
        "litellm_trace_id": "req-42",
        "structured_messages": body["input"],
        "images": null,
        "tools": null,
        "texts": ["here is a drawing"],
        "request_data": body,
        "request_headers": null,
        "litellm_version": null,
        "additional_provider_specific_params": {},
        "tool_calls": null,
        "model": "gpt-4o"
    });
    assert_eq!(got.body, want);
    assert_eq!(keys(&got.body), FIELD_ORDER);
}

#[tokio::test]
async fn a_request_without_a_body_sends_nulls_and_an_empty_request_data() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let api = guard(config(server.url("")));
    let input = input(
        CallType::Other,
        Side::Request,
        None,
        &HeaderMap::new(),
        &["x"],
    );
    api.check(&input).await.unwrap();
    let got = log.lock().unwrap()[0].body.clone();
    for field in [
        "structured_messages",
        "images",
        "tools",
        "request_headers",
        "litellm_version",
        "tool_calls",
    ] {
        assert_eq!(got[field], Value::Null, "{field}");
    }
    assert_eq!(got["request_data"], json!({}));
    assert_eq!(keys(&got), FIELD_ORDER);
}

#[tokio::test]
async fn the_path_is_appended_unless_present() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let cases = [
        ("", "/beta/litellm_basic_guardrail_api"),
        ("/", "/beta/litellm_basic_guardrail_api"),
        ("/prefix/", "/prefix/beta/litellm_basic_guardrail_api"),
        (
            "/beta/litellm_basic_guardrail_api",
            "/beta/litellm_basic_guardrail_api",
        ),
        (
            "/beta/litellm_basic_guardrail_api/",
            "/beta/litellm_basic_guardrail_api",
        ),
    ];
    for (base, want) in cases {
        let api = guard(config(server.url(base)));
        assert_eq!(api.endpoint().path(), want, "endpoint for {base:?}");
        api.check(&simple_input(&["hi"])).await.unwrap();
    }
    let paths: Vec<String> = log.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    let want: Vec<&str> = cases.iter().map(|(_, path)| *path).collect();
    assert_eq!(paths, want);
}

#[tokio::test]
async fn blocked_blocks_with_the_reason() {
    let answer = json!({"action": "BLOCKED", "blocked_reason": "no weather talk", "score": 0.97});
    let (server, _log) = service(vec![Reply::Json(answer.clone())]).await;
    let verdict = guard(config(server.url("")))
        .check(&simple_input(&["weather?"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Block {
            message: "no weather talk".into()
        }
    );
    assert_eq!(verdict.detail(), Some(&answer));
}

#[tokio::test]
async fn none_allows() {
    let (server, _log) = service(vec![Reply::Json(
        json!({"action": "NONE", "texts": ["hi", "there"]}),
    )])
    .await;
    let verdict = guard(config(server.url("")))
        .check(&simple_input(&["hi", "there"]))
        .await
        .unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
}

#[tokio::test]
async fn intervened_texts_rewrite() {
    let answer = json!({"action": "GUARDRAIL_INTERVENED", "texts": ["mail [EMAIL]", "ok"]});
    let (server, _log) = service(vec![Reply::Json(answer.clone())]).await;
    let verdict = guard(config(server.url("")))
        .check(&simple_input(&["mail a@b.c", "ok"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Rewrite {
            texts: vec!["mail [EMAIL]".into(), "ok".into()]
        }
    );
    assert_eq!(verdict.detail(), Some(&answer));
}

#[tokio::test]
async fn a_rewrite_with_the_wrong_number_of_texts_fails() {
    let (server, _log) = service(vec![Reply::Json(
        json!({"action": "GUARDRAIL_INTERVENED", "texts": ["only one"]}),
    )])
    .await;
    let err = guard(config(server.url("")))
        .check(&simple_input(&["a", "b"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("1 texts for 2 inputs"), "{err}");
}

#[tokio::test]
async fn an_unknown_action_fails() {
    let (server, _log) = service(vec![Reply::Json(json!({"action": "MAYBE"}))]).await;
    let err = guard(config(server.url("")))
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("MAYBE"), "{err}");
}

/// A loopback address nothing listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    let mut config = config(closed_port_url().await);
    config.num_retries = 3;
    let err = guard(config)
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);
}

#[tokio::test]
async fn no_answer_in_time_is_a_timeout() {
    let (server, _log) = service(vec![Reply::Never]).await;
    let mut config = config(server.url(""));
    config.timeout = Some(0.2);
    let started = tokio::time::Instant::now();
    let err = guard(config)
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Timeout);
    assert!(err.is_unreachable());
    assert!(err.message().contains("200 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn http_503_is_unreachable() {
    let (server, _log) = service(vec![Reply::Answer(503, "overloaded")]).await;
    let err = guard(config(server.url("")))
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);
    assert!(err.message().contains("503"), "{err}");
    assert!(err.message().contains("overloaded"), "{err}");
}

#[tokio::test]
async fn http_400_fails_and_is_not_unreachable() {
    let (server, _log) = service(vec![Reply::Answer(400, r#"{"detail": "texts missing"}"#)]).await;
    let err = guard(config(server.url("")))
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(!err.is_unreachable());
    assert!(err.message().contains("400"), "{err}");
    assert!(err.message().contains("texts missing"), "{err}");
}

#[tokio::test]
async fn invalid_json_fails() {
    let (server, _log) = service(vec![Reply::Answer(200, "<html>oops</html>")]).await;
    let err = guard(config(server.url("")))
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("not JSON"), "{err}");
    assert!(err.message().contains("<html>oops</html>"), "{err}");
}

async fn run_configured(configured: ConfiguredGuardrail) -> (Outcome, GuardrailLog) {
    let guardrails = Guardrails::new([configured.default_on(true)]);
    let log = GuardrailLog::new();
    let input = simple_input(&["hello"]);
    let outcome = guardrails
        .run(
            GuardrailMode::PreCall,
            &GuardrailSelection::new(),
            Side::Request,
            input.texts().to_vec(),
            Arc::new(input.meta().clone()),
            log.clone(),
        )
        .expect("selected")
        .await;
    (outcome, log)
}

#[tokio::test]
async fn unreachable_goes_to_the_fallback() {
    // Connection refused, no answer in time, and 503: each fails open and fails closed.
    let (never, _log1) = service(vec![Reply::Never]).await;
    let (unavailable, _log2) = service(vec![Reply::Answer(503, "")]).await;
    let bases = [closed_port_url().await, never.url(""), unavailable.url("")];
    for base in bases {
        let mut config = config(base.clone());
        config.timeout = Some(0.2);
        let api = guard(config);

        let open = ConfiguredGuardrail::new("remote-guard", GuardrailMode::PreCall, api.clone())
            .unreachable_fallback(Fallback::FailOpen);
        let (outcome, log) = run_configured(open).await;
        assert!(
            matches!(
                outcome,
                Outcome::Allowed {
                    rewritten: None,
                    ..
                }
            ),
            "{base}: {outcome:?}"
        );
        let entry = &log.entries()[0];
        assert_eq!(
            entry.guardrail_status,
            GuardrailStatus::GuardrailFailedToRespond
        );
        assert_eq!(entry.guardrail_provider, "generic_guardrail_api");
        assert_eq!(entry.guardrail_response["fallback"], "fail_open");

        let closed = ConfiguredGuardrail::new("remote-guard", GuardrailMode::PreCall, api)
            .unreachable_fallback(Fallback::FailClosed);
        let (outcome, log) = run_configured(closed).await;
        let Outcome::Blocked(err) = outcome else {
            panic!("{base}: allowed")
        };
        assert_eq!(err.status(), 503, "{base}");
        assert!(err.message().contains("remote-guard"), "{}", err.message());
        assert_eq!(
            log.entries()[0].guardrail_status,
            GuardrailStatus::GuardrailFailedToRespond
        );
    }
}

#[tokio::test]
async fn a_block_through_the_runner_is_a_policy_block() {
    let (server, _log) = service(vec![Reply::Json(
        json!({"action": "BLOCKED", "blocked_reason": "nope"}),
    )])
    .await;
    let configured = ConfiguredGuardrail::new(
        "remote-guard",
        GuardrailMode::PreCall,
        guard(config(server.url(""))),
    )
    .unreachable_fallback(Fallback::FailOpen);
    let (outcome, log) = run_configured(configured).await;
    let Outcome::Blocked(err) = outcome else {
        panic!("allowed")
    };
    assert_eq!(err.status(), 400);
    assert_eq!(err.message(), "nope");
    let entry = &log.entries()[0];
    assert_eq!(entry.guardrail_status, GuardrailStatus::GuardrailIntervened);
    assert_eq!(entry.guardrail_response["blocked_reason"], "nope");
}

#[tokio::test]
async fn retries_recover_from_503() {
    let replies = vec![
        Reply::Answer(503, ""),
        Reply::Answer(503, ""),
        Reply::Json(json!({"action": "NONE"})),
    ];
    let (server, log) = service(replies.clone()).await;
    let mut config = config(server.url(""));
    config.num_retries = 2;
    let verdict = guard(config).check(&simple_input(&["a"])).await.unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert_eq!(log.lock().unwrap().len(), 3);

    let (server, log) = service(replies).await;
    let mut config = self::config(server.url(""));
    config.num_retries = 1;
    let err = guard(config)
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);
    assert_eq!(log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (server, log) = service(vec![Reply::Answer(422, "bad")]).await;
    let mut config = config(server.url(""));
    config.num_retries = 3;
    let err = guard(config)
        .check(&simple_input(&["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert_eq!(log.lock().unwrap().len(), 1);
}
