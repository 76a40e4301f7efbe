//! A guarded chat-completions stack for the provider tests: the pre-call and the streaming
//! layer in front of an upstream that records what it receives and answers with JSON or a
//! stream of deltas, driven with `oneshot`.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, ConfiguredGuardrail, GuardrailInput, GuardrailLog, GuardrailLogEntry, GuardrailMode,
    Guardrails, RequestId, RequestMeta, StreamPolicy,
};
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::body::{self, TestBody};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

pub mod echo;

/// What the upstream answers.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A chat completion with this text.
    Json(String),
    /// A chat stream with one delta per item, then a finish chunk and `[DONE]`.
    Stream(Vec<String>),
    /// A chat completion (or a stream of one delta per word, if the request asks for one) that
    /// says "You said: {the last message's content}".
    Echo,
}

/// What a client saw, what the upstream received, and the guardrail log.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    pub body: String,
    pub upstream: Vec<Value>,
    pub log: Vec<GuardrailLogEntry>,
}

impl Seen {
    /// The JSON body.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// The assistant's text: a JSON completion's content, or a stream's deltas joined.
    pub fn text(&self) -> String {
        if let Ok(v) = serde_json::from_str::<Value>(&self.body) {
            return v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        sse_data(&self.body)
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The entries of one mode.
    pub fn entries(&self, mode: GuardrailMode) -> Vec<&GuardrailLogEntry> {
        self.log
            .iter()
            .filter(|e| e.guardrail_mode == mode)
            .collect()
    }
}

/// The JSON payloads of a stream's `data:` lines (without `[DONE]`).
pub fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect()
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    let event = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    });
    format!("data: {event}\n\n")
}

/// Each event is its own body frame: the streaming layer does not poll for the next one while
/// a check runs, so every delta that reaches a window's size is checked on its own.
fn stream_response(deltas: &[String]) -> Response<TestBody> {
    let mut events: Vec<String> = deltas.iter().map(|d| chunk(Some(d), None)).collect();
    events.push(chunk(None, Some("stop")));
    events.push("data: [DONE]\n\n".to_owned());
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body::chunks(events))
        .unwrap()
}

fn json_response(text: &str) -> Response<TestBody> {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(body::chunks([body.to_string()]))
        .unwrap()
}

/// Sends `request` (a chat completions body) through the pre-call and streaming layers with
/// `guardrails` (all `default_on`), posts-call streams checked under `policy`.
pub async fn call(
    guardrails: Vec<ConfiguredGuardrail>,
    policy: StreamPolicy,
    upstream: Upstream,
    request: Value,
) -> Seen {
    let guardrails = Guardrails::new(guardrails.into_iter().map(|g| g.default_on(true)));
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = received.clone();
    let upstream = service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        let upstream = upstream.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push(body.clone());
            let response = match upstream {
                Upstream::Json(text) => json_response(&text),
                Upstream::Stream(deltas) => stream_response(&deltas),
                Upstream::Echo => {
                    let said = body["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let reply = format!("You said: {said}");
                    if body["stream"] == true {
                        let words: Vec<String> =
                            reply.split_inclusive(' ').map(str::to_owned).collect();
                        stream_response(&words)
                    } else {
                        json_response(&reply)
                    }
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails).policy(policy))
        .service(upstream);
    let mut req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(request.to_string())))
        .unwrap();
    let log = GuardrailLog::get_or_insert(&mut req);
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Seen {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        upstream: received.lock().unwrap().clone(),
        log: log.entries(),
    }
}

/// A chat request with one user message.
pub fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]})
}

/// A request-side input of `texts`, for calling a guardrail directly.
pub fn input(texts: &[&str]) -> GuardrailInput {
    let meta = RequestMeta::new(RequestId::from("req-1"), CallType::ChatCompletions);
    GuardrailInput::new(
        texts.iter().map(|t| (*t).to_owned()).collect(),
        Side::Request,
        GuardrailMode::PreCall,
        Arc::new(meta),
    )
}

/// A window with `chars` new characters per check and `overlap` of context.
pub fn window(chars: usize, overlap: usize) -> StreamPolicy {
    StreamPolicy::Window { chars, overlap }
}

/// A URL on which nothing listens.
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
