//! The Generic Guardrail API client against real local HTTP servers: the wire request field by
//! field (with a secret planted in every field that must not reach the service), the path rule,
//! every answer and every rewrite it may carry (`texts`, `structured_messages`, `tool_calls`)
//! through the pre-call and streaming layers, failure classification and detail, fallbacks and
//! retries.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Caller, ConfiguredGuardrail, Decision, Fallback, Guardrail, GuardrailErrorKind,
    GuardrailInput, GuardrailLog, GuardrailMode, GuardrailSelection, GuardrailStatus, Guardrails,
    Outcome, RequestId, RequestMeta,
};
use guardrail_tower_guardrails::content_filter::{ContentFilter, ContentFilterConfig};
use guardrail_tower_guardrails::generic_api::{GenericGuardrailApi, GenericGuardrailApiConfig};
use guardrail_tower_guardrails::http::HttpClient;
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::{TestServer, serve};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// One request the fake guardrail service received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

impl Received {
    /// Everything the service received, headers and body, as text.
    fn everything(&self) -> String {
        let mut out = format!("{}\n", self.path);
        for (name, value) in &self.headers {
            out.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        out.push_str(&String::from_utf8_lossy(&self.raw));
        out
    }
}

/// An answer computed from the request the service received.
type Answerer = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

type Log = Arc<Mutex<Vec<Received>>>;

/// What the fake service does for one request.
#[derive(Clone)]
enum Reply {
    Answer(u16, &'static str),
    Json(Value),
    With(Answerer),
    Never,
}

fn answer(f: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Reply {
    Reply::With(Arc::new(f))
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
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock().unwrap().push(Received {
                path,
                headers,
                body: body.clone(),
                raw: bytes,
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
                Reply::With(f) => (200, f(&body).to_string()),
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

/// A secret that must never reach the guardrail service, planted in a field it does not need.
const SECRET: &str = "SECRET-7f3a";

/// A chat request with a text in every place the text view reads, an image, a tool call, a
/// tool result, tools, a trace id, an end user, and secrets in fields the service must not see.
fn planted_chat_body() -> Value {
    json!({
        "model": "gpt-4o",
        "user": "end-user-7",
        "api_key": format!("sk-body-{SECRET}"),
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
        "metadata": {"litellm_trace_id": "trace-7", "internal_note": format!("note-{SECRET}")}
    })
}

/// Client headers: the allowlisted ones, one that is sent as present, and every credential.
fn planted_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("user-agent", "OpenAI/Python 1.0".to_owned()),
        ("x-stainless-lang", "python".to_owned()),
        ("x-litellm-tags", "team-a".to_owned()),
        ("x-team", format!("blue-{SECRET}")),
        ("authorization", format!("Bearer sk-client-{SECRET}")),
        ("proxy-authorization", format!("Basic {SECRET}")),
        ("x-api-key", format!("sk-x-{SECRET}")),
        ("api-key", format!("azure-{SECRET}")),
        ("x-litellm-api-key", format!("sk-litellm-{SECRET}")),
        ("cookie", format!("session={SECRET}")),
    ] {
        h.insert(
            http::header::HeaderName::from_static(name),
            value.parse().unwrap(),
        );
    }
    h
}

fn caller() -> Arc<Caller> {
    Arc::new(
        Caller::with_key_hash("5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8")
            .key_alias("search-team-key")
            .user_id("user-1")
            .user_email("dev@corp.example")
            .team_id("team-search")
            .org_id("org-9"),
    )
}

/// The last request body the upstream received.
type SeenBody = Arc<Mutex<Option<Value>>>;

/// An upstream that records the request body it received and answers `{}`.
fn recording_upstream() -> (
    impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone,
    SeenBody,
) {
    let seen: Arc<Mutex<Option<Value>>> = Arc::default();
    let upstream_seen = seen.clone();
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let seen = upstream_seen.clone();
        async move {
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            *seen.lock().unwrap() = Some(serde_json::from_slice(&bytes).unwrap());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    });
    (svc, seen)
}

/// Sends `body` to `path` through the pre-call layer with `guardrails` (and the planted headers
/// and caller); returns the client's status and answer, and what the upstream received.
async fn through_pre_call(
    guardrails: Guardrails,
    path: &str,
    body: &Value,
) -> (u16, Value, Option<Value>) {
    through_pre_call_raw(guardrails, path, &body.to_string()).await
}

/// [`through_pre_call`] with the body's JSON text as the client writes it.
async fn through_pre_call_raw(
    guardrails: Guardrails,
    path: &str,
    body: &str,
) -> (u16, Value, Option<Value>) {
    let (upstream, seen) = recording_upstream();
    let svc = ServiceBuilder::new()
        .layer(PreCallGuardrailLayer::new(guardrails))
        .service(upstream);
    let mut req = Request::post(path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    *req.headers_mut() = planted_headers();
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    req.extensions_mut().insert(caller());
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let upstream = seen.lock().unwrap().take();
    (status, answer, upstream)
}

fn pre_call(api: GenericGuardrailApi) -> Guardrails {
    Guardrails::new([
        ConfiguredGuardrail::new("remote-guard", GuardrailMode::PreCall, api).default_on(true),
    ])
}

#[tokio::test]
async fn a_chat_request_is_sent_field_by_field_with_no_secret() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let mut config = config(server.url("/guard"));
    config.api_key = Some("guard-key".into());
    config
        .headers
        .insert("x-custom".into(), json!("custom-value"));
    config.headers.insert("x-version".into(), json!(3));
    config.additional_provider_specific_params = Some(json!({"threshold": 0.8}));
    // Asking for a credential's value by name does not send it either.
    config.extra_headers = vec!["authorization".into(), "x-team".into()];
    let api = guard(config);

    let body = planted_chat_body();
    let (status, _, upstream) =
        through_pre_call(pre_call(api.clone()), "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.as_ref(),
        Some(&body),
        "allowed: forwarded unchanged"
    );

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
        "litellm_call_id": got.body["litellm_call_id"],
        "litellm_trace_id": "trace-7",
        "structured_messages": body["messages"],
        "images": ["https://img.example/sky.png"],
        "tools": body["tools"],
        "texts": ["be nice", "what is the weather?", "{\"city\":\"Oslo\"}", "sunny"],
        "request_data": {
            "user_api_key_hash": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
            "user_api_key_alias": "search-team-key",
            "user_api_key_user_id": "user-1",
            "user_api_key_user_email": "dev@corp.example",
            "user_api_key_team_id": "team-search",
            "user_api_key_org_id": "org-9",
            "user_api_key_end_user_id": "end-user-7"
        },
        "request_headers": {
            "user-agent": "OpenAI/Python 1.0",
            "x-stainless-lang": "python",
            "x-litellm-tags": "team-a",
            "x-team": format!("blue-{SECRET}"),
            "content-length": body.to_string().len().to_string(),
            "content-type": "application/json"
        },
        "litellm_version": null,
        "additional_provider_specific_params": {"threshold": 0.8},
        "tool_calls": [body["messages"][2]["tool_calls"][0]],
        "model": "gpt-4o"
    });
    assert_eq!(got.body, want);
    assert_eq!(keys(&got.body), FIELD_ORDER);
    assert!(
        got.body["litellm_call_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    // No credential, and nothing of the body the service does not need, in anything it got
    // (the x-team value is there because `extra_headers` asked for it).
    let everything = got.everything().replace(&format!("blue-{SECRET}"), "");
    assert!(!everything.contains(SECRET), "{everything}");
    assert!(!everything.contains("sk-"), "{everything}");
}

/// The wire request without the fields that differ between two checks of one body (the call
/// id, the trace id when it is the call id, and the headers and caller only the request through
/// the layer has).
fn comparable(mut wire: Value) -> Value {
    if wire["litellm_trace_id"] == wire["litellm_call_id"] {
        wire["litellm_trace_id"] = Value::Null;
    }
    for field in ["litellm_call_id", "request_headers"] {
        wire[field] = Value::Null;
    }
    wire["request_data"] = wire["request_data"]["user_api_key_end_user_id"].clone();
    wire
}

/// A check of a request the layer read (the guardrail copies the messages, tools and tool
/// calls from the client's bytes) sends what a check of the same body as a parsed `Value`
/// sends, for every API, whatever the spacing and escapes of the client's JSON.
#[tokio::test]
async fn the_client_s_bytes_and_the_parsed_body_send_the_same_request() {
    let cases = [
        ("/v1/chat/completions", CallType::ChatCompletions, planted_chat_body().to_string()),
        (
            "/v1/chat/completions",
            CallType::ChatCompletions,
            // Spacing, escaped text and names, a number in exponent form, a null tools.
            "{ \"model\" : \"gpt-4o\", \"tools\": null, \"temperature\": 1e0,\n \"messages\" : [\n\t{\"role\":\"user\", \"c\\u006fntent\": \"caf\\u00e9 \\\"quoted\\\" \\ud83d\\ude00\", \"name\": \"\\u0041da\"} ],\n \"litellm_trace_id\": null, \"metadata\": {\"litellm_trace_id\": \"unused\"}, \"user\": \"\" }".to_owned(),
        ),
        (
            "/v1/messages",
            CallType::AnthropicMessages,
            json!({"model": "claude", "max_tokens": 10, "system": "be brief", "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "it"}}
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a cat"}]}
            ], "metadata": {"user_id": "u-9"}})
            .to_string(),
        ),
        (
            "/v1/responses",
            CallType::Responses,
            json!({"model": "gpt-4o", "instructions": "be brief", "user": "u-3", "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "Oslo weather?"},
                    {"type": "input_image", "image_url": "https://img.example/o.png"}
                ]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"}
            ], "tools": [{"type": "function", "name": "weather", "description": "the weather"}]})
            .to_string(),
        ),
    ];
    for (path, call_type, body) in cases {
        let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
        let api = guard(config(server.url("")));
        let (status, _, upstream) = through_pre_call_raw(pre_call(api.clone()), path, &body).await;
        assert_eq!(status, 200, "{body}");
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(upstream.as_ref(), Some(&parsed));
        let got = log.lock().unwrap()[0].body.clone();
        let texts: Vec<String> = serde_json::from_value(got["texts"].clone()).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let input = input(
            call_type,
            Side::Request,
            Some(parsed),
            &HeaderMap::new(),
            &texts,
        );
        let mut from_value = api.request_body(&input);
        from_value["model"] = got["model"].clone();
        assert_eq!(comparable(got), comparable(from_value), "{body}");
    }
}

/// A key a message names twice: the service gets the messages as the text view read them (the
/// last value counts, as for the upstream's parser), not the client's bytes with both.
#[tokio::test]
async fn a_key_repeated_in_the_messages_is_sent_once_with_its_last_value() {
    for body in [
        r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "first", "content": "last"}]}"#,
        r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "first"}], "messages": [{"role": "user", "content": "last"}]}"#,
        r#"{"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "first", "text": "last"}]}]}"#,
    ] {
        let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
        let api = guard(config(server.url("")));
        let (status, _, _) =
            through_pre_call_raw(pre_call(api), "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{body}");
        let got = log.lock().unwrap()[0].clone();
        assert_eq!(got.body["texts"], json!(["last"]), "{body}");
        let raw = String::from_utf8_lossy(&got.raw).into_owned();
        assert!(!raw.contains("first"), "{body}: {raw}");
        assert!(
            got.body["structured_messages"].to_string().contains("last"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn request_data_is_empty_without_a_caller_and_a_user() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let api = guard(config(server.url("")));
    api.check(&simple_input(&["hi"])).await.unwrap();
    assert_eq!(log.lock().unwrap()[0].body["request_data"], json!({}));
}

#[tokio::test]
async fn a_response_side_check_sends_the_response_texts_only() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let api = guard(config(server.url("")));
    let guardrails =
        Guardrails::new([
            ConfiguredGuardrail::new("remote-guard", GuardrailMode::PostCall, api).default_on(true),
        ]);
    let response = json!({
        "id": "c", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "here is a drawing",
            "tool_calls": [{"id": "t", "type": "function",
                            "function": {"name": "draw", "arguments": "{\"shape\":\"circle\"}"}}]
        }}]
    });
    let svc = ServiceBuilder::new()
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(service_fn({
            let response = response.clone();
            move |_req: Request<Full<Bytes>>| {
                let response = response.clone();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(response.to_string())))
                            .unwrap(),
                    )
                }
            }
        }));
    let request_body = planted_chat_body().to_string();
    let mut req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(request_body.clone())))
        .unwrap();
    req.extensions_mut().insert(caller());
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), response);

    let got = log.lock().unwrap()[0].clone();
    let want = json!({
        "input_type": "response",
        "litellm_call_id": got.body["litellm_call_id"],
        "litellm_trace_id": "trace-7",
        "structured_messages": null,
        "images": null,
        "tools": null,
        "texts": ["here is a drawing", "{\"shape\":\"circle\"}"],
        "request_data": got.body["request_data"],
        "request_headers": {"content-length": request_body.len().to_string()},
        "litellm_version": null,
        "additional_provider_specific_params": {},
        "tool_calls": null,
        "model": "gpt-4o"
    });
    assert_eq!(got.body, want);
    assert_eq!(keys(&got.body), FIELD_ORDER);
    assert_eq!(
        got.body["request_data"]["user_api_key_team_id"],
        "team-search"
    );
    assert!(!got.everything().contains(SECRET));
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

// ---- the guardrail sees what earlier guardrails left ---------------------------------------

#[tokio::test]
async fn after_a_mask_the_service_never_sees_the_original() {
    let (server, log) = service(vec![Reply::Json(json!({"action": "NONE"}))]).await;
    let filter: ContentFilterConfig = serde_yaml_ng::from_str(
        "patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]",
    )
    .unwrap();
    let guardrails = Guardrails::new([
        ConfiguredGuardrail::new(
            "pii-mask",
            GuardrailMode::PreCall,
            ContentFilter::new(filter).unwrap(),
        )
        .default_on(true),
        ConfiguredGuardrail::new(
            "remote-guard",
            GuardrailMode::PreCall,
            guard(config(server.url(""))),
        )
        .default_on(true),
    ]);
    let body = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "mail jane@corp.example"}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "send", "arguments": "{\"to\":\"jane@corp.example\"}"}}]}
    ]});
    let (status, _, upstream) = through_pre_call(guardrails, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let got = log.lock().unwrap()[0].clone();
    assert_eq!(
        got.body["texts"],
        json!(["mail [EMAIL_REDACTED]", "{\"to\":\"[EMAIL_REDACTED]\"}"])
    );
    assert_eq!(
        got.body["structured_messages"][0]["content"][0]["text"],
        "mail [EMAIL_REDACTED]"
    );
    assert_eq!(
        got.body["tool_calls"][0]["function"]["arguments"],
        "{\"to\":\"[EMAIL_REDACTED]\"}"
    );
    assert!(!got.everything().contains("jane@corp.example"));
    assert!(!upstream.unwrap().to_string().contains("jane@corp.example"));
}

// ---- every rewrite the answer may carry is applied -----------------------------------------

/// Replaces `from` by `to` in every string of a JSON value.
fn replace_strings(value: &Value, from: &str, to: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace(from, to)),
        Value::Array(items) => items.iter().map(|v| replace_strings(v, from, to)).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), replace_strings(v, from, to)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

/// A service that answers with `field` of the request it got, `from` replaced by `to`.
fn rewriting(field: &'static str, from: &'static str, to: &'static str) -> Reply {
    answer(
        move |req| json!({"action": "GUARDRAIL_INTERVENED", field: replace_strings(&req[field], from, to)}),
    )
}

#[tokio::test]
async fn a_structured_messages_rewrite_reaches_the_upstream_for_every_api() {
    let cases = [
        ("/v1/chat/completions", planted_chat_body(), "Oslo"),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "instructions": "be brief", "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Oslo weather?"},
                                             {"type": "input_image", "image_url": "https://img/1.png"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "Oslo: sunny"}
            ]}),
            "Oslo",
        ),
        (
            "/v1/messages",
            json!({"model": "claude", "max_tokens": 10, "system": "be brief", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Oslo weather?"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Oslo: sunny"}]}
            ]}),
            "Oslo",
        ),
    ];
    for (path, body, secret) in cases {
        let (server, _log) =
            service(vec![rewriting("structured_messages", secret, "[CITY]")]).await;
        let (status, answer, upstream) =
            through_pre_call(pre_call(guard(config(server.url("")))), path, &body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let upstream = upstream.unwrap();
        // Exactly the request with every text's secret replaced; nothing else changed.
        let key = if path == "/v1/responses" {
            "input"
        } else {
            "messages"
        };
        let mut want = body.clone();
        want[key] = replace_strings(&body[key], secret, "[CITY]");
        assert_eq!(upstream, want, "{path}");
        assert!(!upstream[key].to_string().contains(secret), "{path}");
    }
}

#[tokio::test]
async fn a_tool_calls_rewrite_reaches_the_upstream() {
    for (path, body) in [
        ("/v1/chat/completions", planted_chat_body()),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": [
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}
            ]}),
        ),
    ] {
        let (server, _log) = service(vec![rewriting("tool_calls", "Oslo", "[CITY]")]).await;
        let (status, answer, upstream) =
            through_pre_call(pre_call(guard(config(server.url("")))), path, &body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let want = replace_strings(&body, "{\"city\":\"Oslo\"}", "{\"city\":\"[CITY]\"}");
        assert_eq!(upstream.unwrap(), want, "{path}");
    }
}

#[tokio::test]
async fn texts_and_structured_messages_together_must_agree() {
    // Agreeing: applied.
    let (server, _log) = service(vec![answer(|req| {
        json!({"action": "GUARDRAIL_INTERVENED",
               "texts": replace_strings(&req["texts"], "Oslo", "[CITY]"),
               "structured_messages": replace_strings(&req["structured_messages"], "Oslo", "[CITY]")})
    })])
    .await;
    let body = planted_chat_body();
    let (status, _, upstream) = through_pre_call(
        pre_call(guard(config(server.url("")))),
        "/v1/chat/completions",
        &body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.unwrap(),
        replace_strings(&body, "{\"city\":\"Oslo\"}", "{\"city\":\"[CITY]\"}")
    );

    // Disagreeing: the check fails, closed by default.
    let (server, _log) = service(vec![answer(|req| {
        json!({"action": "GUARDRAIL_INTERVENED",
               "texts": replace_strings(&req["texts"], "Oslo", "[A]"),
               "structured_messages": replace_strings(&req["structured_messages"], "Oslo", "[B]")})
    })])
    .await;
    let (status, answer, upstream) = through_pre_call(
        pre_call(guard(config(server.url("")))),
        "/v1/chat/completions",
        &body,
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "guardrail_error");
    assert!(upstream.is_none());
}

/// A service that answers with its request's `structured_messages` (or `tool_calls`) changed
/// by `f`.
fn restructuring(field: &'static str, f: fn(&mut Vec<Value>)) -> Reply {
    answer(move |req| {
        let mut items = req[field].as_array().cloned().unwrap_or_default();
        f(&mut items);
        json!({"action": "GUARDRAIL_INTERVENED", field: items})
    })
}

#[tokio::test]
async fn a_rewrite_that_changes_the_structure_fails_and_the_fallback_decides() {
    // (what changes, the list it is in, the change)
    type Case = (&'static str, &'static str, fn(&mut Vec<Value>));
    let cases: [Case; 8] = [
        ("a message added", "structured_messages", |m| {
            m.push(json!({"role": "user", "content": "more"}))
        }),
        ("a message removed", "structured_messages", |m| {
            m.remove(0);
        }),
        ("a role changed", "structured_messages", |m| {
            m[0]["role"] = json!("user");
        }),
        ("an image changed", "structured_messages", |m| {
            m[1]["content"][1]["image_url"]["url"] = json!("https://evil.example/x.png");
        }),
        ("a part added", "structured_messages", |m| {
            m[1]["content"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "text", "text": "extra"}));
        }),
        (
            "a message that is not an object",
            "structured_messages",
            |m| {
                m[3] = json!("sunny");
            },
        ),
        ("a tool name changed", "tool_calls", |c| {
            c[0]["function"]["name"] = json!("delete_everything");
        }),
        ("a tool call added", "tool_calls", |c| {
            c.push(c[0].clone());
        }),
    ];
    let body = planted_chat_body();
    for (what, field, f) in cases {
        let (server, _log) = service(vec![restructuring(field, f)]).await;
        // Fails closed: 500, nothing reaches the upstream, the detail says why.
        let (status, answer, upstream) = through_pre_call(
            pre_call(guard(config(server.url("")))),
            "/v1/chat/completions",
            &body,
        )
        .await;
        assert_eq!(status, 500, "{what}: {answer}");
        assert!(upstream.is_none(), "{what}");
        // The check itself names the reason.
        let input = input(
            CallType::ChatCompletions,
            Side::Request,
            Some(body.clone()),
            &HeaderMap::new(),
            &[
                "be nice",
                "what is the weather?",
                "{\"city\":\"Oslo\"}",
                "sunny",
            ],
        );
        let err = guard(config(server.url("")))
            .check(&input)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), GuardrailErrorKind::Failed, "{what}");
        assert!(err.message().contains(&server.url("")), "{what}: {err}");
        assert!(
            ["not add or remove", "more than text", "not only objects"]
                .iter()
                .any(|r| err.message().contains(r)),
            "{what}: {err}"
        );
        // With error_fallback: fail_open, the request passes unchanged.
        let open = Guardrails::new([ConfiguredGuardrail::new(
            "remote-guard",
            GuardrailMode::PreCall,
            guard(config(server.url(""))),
        )
        .error_fallback(Fallback::FailOpen)
        .default_on(true)]);
        let (status, _, upstream) = through_pre_call(open, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{what}");
        assert_eq!(upstream.as_ref(), Some(&body), "{what}");
    }
}

#[tokio::test]
async fn a_structural_rewrite_of_a_response_fails() {
    let (server, _log) = service(vec![Reply::Json(json!({
        "action": "GUARDRAIL_INTERVENED",
        "structured_messages": [{"role": "assistant", "content": "rewritten"}]
    }))])
    .await;
    let input = input(
        CallType::ChatCompletions,
        Side::Response,
        Some(planted_chat_body()),
        &HeaderMap::new(),
        &["a response"],
    );
    let err = guard(config(server.url("")))
        .check(&input)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(
        err.message().contains("cannot be applied to a response"),
        "{err}"
    );
    // Echoing nothing back (null or []) is no rewrite.
    let (server, _log) = service(vec![Reply::Json(json!({
        "action": "NONE", "structured_messages": [], "tool_calls": null
    }))])
    .await;
    let verdict = guard(config(server.url(""))).check(&input).await.unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
}

// ---- a failing service's detail goes to the log entry --------------------------------------

#[tokio::test]
async fn a_failing_service_s_url_status_and_body_are_in_the_log_entry() {
    let (server, _log) = service(vec![Reply::Answer(
        500,
        "Traceback: db password hunter2 at 10.9.8.7",
    )])
    .await;
    let configured = ConfiguredGuardrail::new(
        "remote-guard",
        GuardrailMode::PreCall,
        guard(config(server.url("/internal"))),
    );
    let (outcome, log) = run_configured(configured).await;
    assert!(matches!(outcome, Outcome::Blocked(_)), "{outcome:?}");
    let entry = &log.entries()[0];
    assert_eq!(
        entry.guardrail_status,
        GuardrailStatus::GuardrailFailedToRespond
    );
    let error = entry.guardrail_response["error"].as_str().unwrap();
    assert!(
        error.contains(&server.url("/internal/beta/litellm_basic_guardrail_api")),
        "{error}"
    );
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("db password hunter2"), "{error}");
}

/// The service is sent the request's messages and headers with a response: a stream checked
/// by it keeps the request body and headers to the end.
#[test]
fn the_generic_api_reads_the_request_body_and_headers() {
    let guard = guard(GenericGuardrailApiConfig::new("http://127.0.0.1:9"));
    assert!(guard.reads_request_body() && guard.reads_request_headers());
}
