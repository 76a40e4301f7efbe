//! The streaming no-leak guarantee, as properties of `StreamingGuardrailBodyLayer` with the real
//! content filter.
//!
//! A generated stream carries two texts: the model's content and a tool call's arguments, in
//! the chat, Responses and Anthropic stream shapes. A blocked keyword (content filter `BLOCK`)
//! or a masked one (`MASK`) is inserted at any character offset of either text; the texts are
//! cut into deltas anywhere; the stream's bytes are cut into body chunks anywhere (inside UTF-8
//! sequences and inside SSE frames included), and sometimes the upstream dies at a byte. Under
//! `exact`, `window` (the content filter with any overlap, and a guardrail without a span
//! matcher whose overlap is longer than the word) and `buffer_all`:
//!
//! - no byte of the blocked word reaches the client, in any event or across events, and the
//!   client always gets a well-formed ending: the endpoint's in-band error events and
//!   terminator (or, under `buffer_all`, a plain 400 before the head);
//! - the masked word never appears, and what the client reads equals masking the whole text at
//!   once (summaries included).
//!
//! The JSON response each stream stands for gets the same verdict (blocked, or masked to the
//! same texts).
//!
//! What the client read is extracted here field by field, independently of the protocol crate's
//! text view, so a field the view forgot shows up as a leak.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::{
    ConfiguredGuardrail, Decision, Fallback, GuardrailInput, GuardrailMode, Guardrails,
    StreamPolicy, guardrail_fn,
};
use guardrail_tower_guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::body::{self, TestBody};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// The `BLOCK` keyword.
const BLOCKED: &str = "forbidden";
/// The `MASK` keyword.
const MASKED: &str = "classified";
/// What the content filter replaces a masked keyword with.
const TAG: &str = "[KEYWORD_REDACTED]";
/// The message of a block of [`BLOCKED`].
const BLOCK_MESSAGE: &str = "Content blocked: keyword 'forbidden' detected";

/// Words the texts are made of: ASCII, accents, CJK, emoji (4-byte UTF-8) and a flag (two
/// code points), so byte cuts land inside UTF-8 sequences. None contains either keyword.
const WORDS: &[&str] = &[
    "the",
    "report",
    "is",
    "ready,",
    "résumé",
    "naïve",
    "Zürich",
    "日本語",
    "テスト",
    "📝",
    "🇨🇭",
    "ok",
    "fine.",
    "forbid",
    "den",
    "class",
    "ified",
    "a-b",
    "x_y",
    "42",
];

fn filter() -> ContentFilter {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(
        "blocked_words: [{keyword: forbidden, action: BLOCK}, {keyword: classified, action: MASK}]",
    )
    .unwrap();
    ContentFilter::new(config).unwrap()
}

/// How the guardrail checks the stream.
#[derive(Debug, Clone, Copy)]
enum Policy {
    /// The content filter, `exact`.
    Exact,
    /// The content filter, `window` with any overlap (its holdback is at least its longest
    /// match whatever the overlap).
    Window { chars: usize, overlap: usize },
    /// A guardrail without a span matcher (a remote service's shape: it only sees whole
    /// windows), `window` with an overlap longer than either keyword.
    RemoteWindow { chars: usize, overlap: usize },
    /// The content filter, `buffer_all`.
    BufferAll,
}

impl Policy {
    fn buffers(self) -> bool {
        matches!(self, Policy::BufferAll)
    }

    fn guardrail(self) -> ConfiguredGuardrail {
        let policy = match self {
            Policy::RemoteWindow { chars, overlap } => {
                assert!(overlap > MASKED.len() && overlap > BLOCKED.len());
                let filter = Arc::new(filter());
                let remote = guardrail_fn(move |input: GuardrailInput| {
                    let verdict = filter.check_texts(input.texts());
                    async move { Ok(verdict) }
                });
                return ConfiguredGuardrail::new("filter", GuardrailMode::PostCall, remote)
                    .default_on(true)
                    .stream_policy(StreamPolicy::Window { chars, overlap });
            }
            Policy::Exact => StreamPolicy::Exact,
            Policy::Window { chars, overlap } => StreamPolicy::Window { chars, overlap },
            Policy::BufferAll => StreamPolicy::BufferAll {
                max_bytes: 1 << 20,
                on_overflow: Fallback::FailClosed,
            },
        };
        ConfiguredGuardrail::new("filter", GuardrailMode::PostCall, filter())
            .default_on(true)
            .stream_policy(policy)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Responses,
    Anthropic,
}

impl Shape {
    fn path(self) -> &'static str {
        match self {
            Shape::Chat => "/v1/chat/completions",
            Shape::Responses => "/v1/responses",
            Shape::Anthropic => "/v1/messages",
        }
    }
}

/// One SSE event.
fn event(name: Option<&str>, data: &Value) -> String {
    match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The upstream stream: `content` in content deltas, then a tool call whose arguments are
/// `args`, in deltas.
fn stream(shape: Shape, content: &[String], args: &[String]) -> String {
    let full_content: String = content.concat();
    let full_args: String = args.concat();
    let mut out = String::new();
    match shape {
        Shape::Chat => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            out += &event(
                None,
                &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            );
            for d in content {
                out += &event(None, &chunk(json!({"content": d}), Value::Null));
            }
            out += &event(
                None,
                &chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ""}}]}),
                    Value::Null,
                ),
            );
            for d in args {
                out += &event(
                    None,
                    &chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": d}}]}),
                        Value::Null,
                    ),
                );
            }
            out += &event(None, &chunk(json!({}), json!("tool_calls")));
            out += "data: [DONE]\n\n";
        }
        Shape::Responses => {
            let mut seq = 0u64;
            let mut ev = |name: &str, mut data: Value| {
                data["type"] = json!(name);
                data["sequence_number"] = json!(seq);
                seq += 1;
                event(Some(name), &data)
            };
            let response = |status: &str, output: Value| {
                json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status,
                       "model": "m", "output": output, "usage": null})
            };
            let message = |status: &str, text: Option<&str>| {
                let content = match text {
                    Some(t) => json!([{"type": "output_text", "annotations": [], "text": t}]),
                    None => json!([]),
                };
                json!({"id": "msg_1", "type": "message", "status": status, "role": "assistant", "content": content})
            };
            let call = |status: &str, arguments: &str| {
                json!({"id": "fc_1", "type": "function_call", "status": status, "call_id": "call_1",
                       "name": "search", "arguments": arguments})
            };
            out += &ev(
                "response.created",
                json!({"response": response("in_progress", json!([]))}),
            );
            out += &ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": message("in_progress", None)}),
            );
            out += &ev(
                "response.content_part.added",
                json!({"item_id": "msg_1", "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "annotations": [], "text": ""}}),
            );
            for d in content {
                out += &ev(
                    "response.output_text.delta",
                    json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": d}),
                );
            }
            out += &ev(
                "response.output_text.done",
                json!({"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": full_content}),
            );
            out += &ev(
                "response.content_part.done",
                json!({"item_id": "msg_1", "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "annotations": [], "text": full_content}}),
            );
            out += &ev(
                "response.output_item.done",
                json!({"output_index": 0, "item": message("completed", Some(&full_content))}),
            );
            out += &ev(
                "response.output_item.added",
                json!({"output_index": 1, "item": call("in_progress", "")}),
            );
            for d in args {
                out += &ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": "fc_1", "output_index": 1, "delta": d}),
                );
            }
            out += &ev(
                "response.function_call_arguments.done",
                json!({"item_id": "fc_1", "output_index": 1, "arguments": full_args}),
            );
            out += &ev(
                "response.output_item.done",
                json!({"output_index": 1, "item": call("completed", &full_args)}),
            );
            out += &ev(
                "response.completed",
                json!({"response": response("completed", json!([message("completed", Some(&full_content)), call("completed", &full_args)]))}),
            );
        }
        Shape::Anthropic => {
            out += &event(
                Some("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                        "content": [], "model": "m", "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 1, "output_tokens": 1}}}),
            );
            out += &event(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            for d in content {
                out += &event(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                );
            }
            out += &event(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 0}),
            );
            out += &event(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 1,
                        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}}),
            );
            for d in args {
                out += &event(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": d}}),
                );
            }
            out += &event(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 1}),
            );
            out += &event(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                        "usage": {"output_tokens": 2}}),
            );
            out += &event(Some("message_stop"), &json!({"type": "message_stop"}));
        }
    }
    out
}

/// What a client read from a stream, field by field.
#[derive(Debug, Default)]
struct Seen {
    /// The events, as (event name, data).
    events: Vec<(Option<String>, String)>,
    /// The content deltas, concatenated.
    content: String,
    /// The tool-call argument deltas, concatenated.
    args: String,
    /// The complete content texts summary events repeat.
    full_contents: Vec<String>,
    /// The complete arguments summary events repeat.
    full_args: Vec<String>,
    /// The texts of items, parts and blocks as a stream announces them (before any delta).
    announced: Vec<String>,
}

/// Parses a client's SSE body: it must be whole events (each ends with a blank line), each a
/// `data:` line with JSON or `[DONE]`, after an optional `event:` line.
fn read(shape: Shape, body: &str) -> Result<Seen, String> {
    let mut seen = Seen::default();
    if !body.ends_with("\n\n") {
        return Err(format!(
            "the body does not end with a whole event: {body:?}"
        ));
    }
    for raw in body[..body.len() - 2].split("\n\n") {
        let mut name = None;
        let mut data = None;
        for line in raw.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            } else if let Some(d) = line.strip_prefix("data: ") {
                if data.is_some() {
                    return Err(format!("two data lines in {raw:?}"));
                }
                data = Some(d.to_owned());
            } else {
                return Err(format!("unexpected line {line:?} in {raw:?}"));
            }
        }
        let data = data.ok_or_else(|| format!("an event without data: {raw:?}"))?;
        if data != "[DONE]" {
            let v: Value =
                serde_json::from_str(&data).map_err(|e| format!("{e}: bad JSON in {raw:?}"))?;
            collect(shape, name.as_deref(), &v, &mut seen);
        }
        seen.events.push((name, data));
    }
    Ok(seen)
}

fn push_str(to: &mut String, v: &Value) {
    if let Some(s) = v.as_str() {
        to.push_str(s);
    }
}

fn push_full(to: &mut Vec<String>, v: &Value) {
    if let Some(s) = v.as_str() {
        to.push(s.to_owned());
    }
}

/// Takes the texts of one event, by field.
fn collect(shape: Shape, name: Option<&str>, v: &Value, seen: &mut Seen) {
    match shape {
        Shape::Chat => {
            for choice in v["choices"].as_array().into_iter().flatten() {
                push_str(&mut seen.content, &choice["delta"]["content"]);
                for call in choice["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    push_str(&mut seen.args, &call["function"]["arguments"]);
                }
            }
        }
        Shape::Responses => {
            let item = |item: &Value, seen: &mut Seen| {
                for part in item["content"].as_array().into_iter().flatten() {
                    push_full(&mut seen.full_contents, &part["text"]);
                }
                push_full(&mut seen.full_args, &item["arguments"]);
            };
            match name.unwrap_or_default() {
                "response.output_text.delta" => push_str(&mut seen.content, &v["delta"]),
                "response.function_call_arguments.delta" => push_str(&mut seen.args, &v["delta"]),
                "response.output_text.done" => push_full(&mut seen.full_contents, &v["text"]),
                "response.content_part.added" => push_full(&mut seen.announced, &v["part"]["text"]),
                "response.content_part.done" => {
                    push_full(&mut seen.full_contents, &v["part"]["text"])
                }
                "response.function_call_arguments.done" => {
                    push_full(&mut seen.full_args, &v["arguments"])
                }
                "response.output_item.added" => {
                    for part in v["item"]["content"].as_array().into_iter().flatten() {
                        push_full(&mut seen.announced, &part["text"]);
                    }
                    push_full(&mut seen.announced, &v["item"]["arguments"]);
                }
                "response.output_item.done" => item(&v["item"], seen),
                _ => {
                    for output in v["response"]["output"].as_array().into_iter().flatten() {
                        item(output, seen);
                    }
                }
            }
        }
        Shape::Anthropic => {
            push_str(&mut seen.content, &v["delta"]["text"]);
            push_str(&mut seen.args, &v["delta"]["partial_json"]);
            push_full(&mut seen.announced, &v["content_block"]["text"]);
            if let Some(input) = v["content_block"]["input"].as_object() {
                if !input.is_empty() {
                    seen.announced
                        .push(Value::Object(input.clone()).to_string());
                }
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the layer over an upstream answering with `upstream`: the status and the body.
fn run(shape: Shape, policy: Policy, upstream: TestBody) -> (u16, String) {
    respond(shape, policy, "text/event-stream", true, upstream)
}

/// Runs the layer over an upstream answering with `upstream` as `content_type`, to a request
/// with `stream` set or not.
fn respond(
    shape: Shape,
    policy: Policy,
    content_type: &str,
    stream: bool,
    upstream: TestBody,
) -> (u16, String) {
    let response = Arc::new(Mutex::new(Some(
        Response::builder()
            .header("content-type", content_type)
            .body(upstream)
            .unwrap(),
    )));
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([policy.guardrail()]));
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(
        move |_req: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(
                response.lock().unwrap().take().unwrap(),
            ))
        },
    ));
    let request =
        json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    runtime().block_on(async move {
        let req = Request::post(shape.path())
            .body(Full::new(Bytes::from(request.to_string())))
            .unwrap();
        let response = svc.oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        // A well-formed body never ends with an error frame: collecting it must succeed.
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
        )
    })
}

/// The JSON response a stream of `content` and `args` stands for; `None` for an Anthropic
/// tool call whose arguments are not JSON (its `input` must be an object).
fn json_response(shape: Shape, content: &str, args: &str) -> Option<Value> {
    Some(match shape {
        Shape::Chat => {
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": content, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "search", "arguments": args}}]}}]})
        }
        Shape::Responses => json!({"id": "resp_1", "object": "response", "created_at": 1,
            "status": "completed", "model": "m", "output": [
                {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "annotations": [], "text": content}]},
                {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
                 "name": "search", "arguments": args}]}),
        Shape::Anthropic => {
            let input: Value = serde_json::from_str(args).ok()?;
            if !input.is_object() {
                return None;
            }
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": content},
                            {"type": "tool_use", "id": "toolu_1", "name": "search", "input": input}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 1}})
        }
    })
}

/// The (content, arguments) texts of a JSON response, by field.
fn json_texts(shape: Shape, v: &Value) -> (String, Value) {
    match shape {
        Shape::Chat => {
            let m = &v["choices"][0]["message"];
            (
                m["content"].as_str().unwrap_or_default().to_owned(),
                m["tool_calls"][0]["function"]["arguments"].clone(),
            )
        }
        Shape::Responses => (
            v["output"][0]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            v["output"][1]["arguments"].clone(),
        ),
        Shape::Anthropic => (
            v["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            v["content"][1]["input"].clone(),
        ),
    }
}

/// The JSON response a stream stands for gets the same verdict as the stream: blocked (a 400
/// in the endpoint's shape), or masked to the same texts.
fn assert_json_verdict_is_the_stream_s(shape: Shape, case: &Case) -> Result<(), TestCaseError> {
    let Some(body) = json_response(shape, &case.content, &case.args) else {
        return Ok(());
    };
    let (status, got) = respond(
        shape,
        Policy::Exact,
        "application/json",
        false,
        body::chunks([body.to_string()]),
    );
    let ctx = || {
        format!(
            "{shape:?}
upstream: {body}
client: {got}"
        )
    };
    let f = filter();
    let verdict = f.check_texts(&[case.content.as_str(), case.args.as_str()]);
    let got: Value = serde_json::from_str(&got).unwrap();
    match verdict.decision() {
        Decision::Block { .. } => {
            prop_assert_eq!((status, &got), (400, &buffered_block(shape)), "{}", ctx());
            // And its stream is blocked too.
            let (_, streamed) = run(shape, Policy::Exact, body::chunks([case.stream(shape)]));
            let seen = read(shape, &streamed).unwrap();
            check_block_ending(shape, &seen, BLOCK_MESSAGE, "content_policy_violation").map_err(
                |e| {
                    TestCaseError::fail(format!(
                        "{e}
{}",
                        ctx()
                    ))
                },
            )?;
        }
        Decision::Rewrite { texts } => {
            prop_assert_eq!(status, 200, "{}", ctx());
            let (content, args) = json_texts(shape, &got);
            prop_assert_eq!(&content, &texts[0], "{}", ctx());
            let want_args = match shape {
                Shape::Anthropic => serde_json::from_str(&texts[1]).unwrap(),
                _ => Value::from(texts[1].clone()),
            };
            prop_assert_eq!(&args, &want_args, "{}", ctx());
            prop_assert!(!got.to_string().contains(MASKED), "{}", ctx());
        }
        _ => prop_assert!(false, "the word was inserted: {}", ctx()),
    }
    Ok(())
}

/// The error a block ends the stream with, in the endpoint's shape, checked exactly. Returns
/// the events before it.
fn check_block_ending(
    shape: Shape,
    seen: &Seen,
    message: &str,
    code: &str,
) -> Result<usize, String> {
    let events = &seen.events;
    let data = |i: usize| -> Value { serde_json::from_str(&events[i].1).unwrap_or(Value::Null) };
    let n = events.len();
    match shape {
        Shape::Chat => {
            if n < 2 || events[n - 1].1 != "[DONE]" {
                return Err(format!("no [DONE] at the end: {events:?}"));
            }
            let want = json!({"error": {"message": message, "type": error_type(code),
                                        "param": null, "code": code}});
            if data(n - 2) != want || events[n - 2].0.is_some() {
                return Err(format!("ending {:?} is not {want}", events[n - 2]));
            }
            Ok(n - 2)
        }
        Shape::Responses => {
            if n < 2 {
                return Err(format!("too short: {events:?}"));
            }
            let last_seq = events[..n - 2]
                .iter()
                .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["sequence_number"].as_u64())
                .max();
            let next = last_seq.map_or(0, |s| s + 1);
            let error = data(n - 2);
            let want = json!({"type": "error", "code": code, "message": message, "param": null,
                              "sequence_number": next});
            if events[n - 2].0.as_deref() != Some("error") || error != want {
                return Err(format!("error event {:?} is not {want}", events[n - 2]));
            }
            let failed = data(n - 1);
            if events[n - 1].0.as_deref() != Some("response.failed")
                || failed["type"] != "response.failed"
                || failed["sequence_number"] != next + 1
                || failed["response"]["status"] != "failed"
                || failed["response"]["error"] != json!({"code": code, "message": message})
            {
                return Err(format!("terminal event {:?}", events[n - 1]));
            }
            Ok(n - 2)
        }
        Shape::Anthropic => {
            let want = json!({"type": "error", "error": {"type": anthropic_type(code), "message": message}});
            if n < 1 || events[n - 1].0.as_deref() != Some("error") || data(n - 1) != want {
                return Err(format!("ending {:?} is not {want}", events.last()));
            }
            Ok(n - 1)
        }
    }
}

fn error_type(code: &str) -> &'static str {
    if code == "content_policy_violation" {
        "invalid_request_error"
    } else {
        "bad_gateway_error"
    }
}

fn anthropic_type(code: &str) -> &'static str {
    if code == "content_policy_violation" {
        "invalid_request_error"
    } else {
        "api_error"
    }
}

/// The plain 400 a `buffer_all` block is, in the endpoint's shape.
fn buffered_block(shape: Shape) -> Value {
    match shape {
        Shape::Anthropic => {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": BLOCK_MESSAGE}})
        }
        _ => json!({"error": {"message": BLOCK_MESSAGE, "type": "invalid_request_error",
                              "param": null, "code": "content_policy_violation"}}),
    }
}

/// `text` with ` word ` inserted at character offset `at` (modulo the length + 1).
fn insert(text: &str, at: usize, word: &str) -> String {
    let at = at % (text.chars().count() + 1);
    let byte = text.char_indices().nth(at).map_or(text.len(), |(i, _)| i);
    format!("{} {word} {}", &text[..byte], &text[byte..])
}

/// The byte offsets inside multi-byte UTF-8 sequences of `bytes`.
fn inside_utf8(bytes: &[u8]) -> Vec<usize> {
    (1..bytes.len())
        .filter(|&i| bytes[i] & 0b1100_0000 == 0b1000_0000)
        .collect()
}

/// One generated case.
#[derive(Debug, Clone)]
struct Case {
    content: String,
    args: String,
    content_cuts: Vec<usize>,
    args_cuts: Vec<usize>,
    byte_cuts: Vec<usize>,
    utf8_cuts: Vec<usize>,
    /// The upstream dies (a connection reset), if set: after this many bytes (modulo the
    /// length), or (`true`) this many bytes (modulo 64) after the first whole inserted word,
    /// where a check has the word but the stream has not ended.
    die_at: Option<(bool, usize)>,
    word: &'static str,
    chars: usize,
    overlap: usize,
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(0..WORDS.len(), 0..14)
        .prop_map(|ws| ws.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" "))
}

fn args_text() -> impl Strategy<Value = String> {
    text().prop_map(|t| format!("{{\"query\": \"{t}\"}}"))
}

/// A case with `word` inserted in the content (`in_args` false) or the arguments.
fn case(word: &'static str) -> impl Strategy<Value = Case> {
    (
        (text(), args_text(), any::<bool>(), any::<usize>()),
        (
            proptest::collection::vec(any::<usize>(), 0..12),
            proptest::collection::vec(any::<usize>(), 0..12),
        ),
        (
            proptest::collection::vec(any::<usize>(), 0..24),
            proptest::collection::vec(any::<usize>(), 0..8),
            proptest::option::weighted(0.3, (any::<bool>(), any::<usize>())),
        ),
        (1usize..48, 0usize..24),
    )
        .prop_map(
            move |(
                (content, args, in_args, at),
                (content_cuts, args_cuts),
                (byte_cuts, utf8_cuts, die_at),
                (chars, overlap),
            )| {
                let (content, args) = if in_args {
                    (content, insert(&args, at, word))
                } else {
                    (insert(&content, at, word), args)
                };
                Case {
                    content,
                    args,
                    content_cuts,
                    args_cuts,
                    byte_cuts,
                    utf8_cuts,
                    die_at,
                    word,
                    chars,
                    overlap,
                }
            },
        )
}

impl Case {
    fn policies(&self) -> [Policy; 4] {
        [
            Policy::Exact,
            Policy::Window {
                chars: self.chars,
                overlap: self.overlap,
            },
            Policy::RemoteWindow {
                chars: self.chars,
                overlap: MASKED.len() + 1 + self.overlap,
            },
            Policy::BufferAll,
        ]
    }

    fn stream(&self, shape: Shape) -> String {
        stream(
            shape,
            &body::deltas(&self.content, &self.content_cuts),
            &body::deltas(&self.args, &self.args_cuts),
        )
    }

    /// The upstream body: the stream's bytes cut at the chosen offsets (some inside UTF-8
    /// sequences), ending, or dying after `die_at` bytes.
    fn upstream(&self, stream: &str) -> TestBody {
        let bytes = stream.as_bytes();
        let inside = inside_utf8(bytes);
        let mut cuts: Vec<usize> = self.byte_cuts.iter().map(|c| c % bytes.len()).collect();
        if !inside.is_empty() {
            cuts.extend(self.utf8_cuts.iter().map(|c| inside[c % inside.len()]));
        }
        match self.die_at {
            None => body::split_at(bytes, &cuts),
            Some((after_word, at)) => {
                let at = match stream.find(self.word) {
                    Some(word) if after_word => (word + self.word.len() + at % 64).min(bytes.len()),
                    _ => at % bytes.len(),
                };
                cuts.retain(|c| *c < at);
                body::split_at(&bytes[..at], &cuts).then_error("connection reset")
            }
        }
    }
}

/// The blocked word reached the client nowhere: not in a text (per field, across events), not
/// anywhere in the bytes but the error message.
fn assert_no_block_leak(shape: Shape, case: &Case, policy: Policy) -> Result<(), TestCaseError> {
    let stream = case.stream(shape);
    let (status, body) = run(shape, policy, case.upstream(&stream));
    let ctx = || format!("{shape:?} {policy:?}\nupstream: {stream}\nclient: {body}");
    let everywhere_else = body.replace(BLOCK_MESSAGE, "");
    prop_assert!(
        !everywhere_else.contains(BLOCKED),
        "the blocked word leaked\n{}",
        ctx()
    );
    if policy.buffers() {
        match case.die_at {
            None => {
                prop_assert_eq!(status, 400, "{}", ctx());
                let v: Value = serde_json::from_str(&body).unwrap();
                prop_assert_eq!(v, buffered_block(shape), "{}", ctx());
            }
            // Died before the end: an error status before the head, nothing of the stream.
            Some(_) => {
                prop_assert!(status >= 400, "{}", ctx());
                prop_assert!(serde_json::from_str::<Value>(&body).is_ok(), "{}", ctx());
            }
        }
        return Ok(());
    }
    prop_assert_eq!(status, 200, "{}", ctx());
    let seen = read(shape, &body).map_err(|e| TestCaseError::fail(format!("{e}\n{}", ctx())))?;
    prop_assert!(!seen.content.contains(BLOCKED), "{}", ctx());
    prop_assert!(!seen.args.contains(BLOCKED), "{}", ctx());
    // What the client saw is the start of what the model said.
    prop_assert!(case.content.starts_with(&seen.content), "{}", ctx());
    prop_assert!(case.args.starts_with(&seen.args), "{}", ctx());
    // The ending: the block's error (or, when the upstream died first, the interruption's).
    let blocked = check_block_ending(shape, &seen, BLOCK_MESSAGE, "content_policy_violation");
    let interrupted = || {
        check_block_ending(
            shape,
            &seen,
            "the upstream stopped sending the stream before it ended",
            "upstream_stream_error",
        )
    };
    match (blocked, case.die_at) {
        (Ok(_), _) => {}
        (Err(_), Some(_)) => {
            interrupted().map_err(|e| TestCaseError::fail(format!("{e}\n{}", ctx())))?;
        }
        (Err(e), None) => return Err(TestCaseError::fail(format!("{e}\n{}", ctx()))),
    }
    Ok(())
}

/// The masked word reached the client nowhere, and what it read is the whole text masked at
/// once.
fn assert_masked(shape: Shape, case: &Case, policy: Policy) -> Result<(), TestCaseError> {
    let stream = case.stream(shape);
    let (status, body) = run(shape, policy, case.upstream(&stream));
    let ctx = || format!("{shape:?} {policy:?}\nupstream: {stream}\nclient: {body}");
    prop_assert!(!body.contains(MASKED), "the masked word leaked\n{}", ctx());
    if case.die_at.is_some() {
        // What was cleared, then an error; never the word.
        if !policy.buffers() {
            let seen =
                read(shape, &body).map_err(|e| TestCaseError::fail(format!("{e}\n{}", ctx())))?;
            check_block_ending(
                shape,
                &seen,
                "the upstream stopped sending the stream before it ended",
                "upstream_stream_error",
            )
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", ctx())))?;
        }
        return Ok(());
    }
    prop_assert_eq!(status, 200, "{}", ctx());
    let seen = read(shape, &body).map_err(|e| TestCaseError::fail(format!("{e}\n{}", ctx())))?;
    let f = filter();
    let masked = |t: &str| match f.check_texts(&[t]).decision() {
        Decision::Rewrite { texts } => texts[0].clone(),
        _ => t.to_owned(),
    };
    let (content, args) = (masked(&case.content), masked(&case.args));
    prop_assert!(content.contains(TAG) || args.contains(TAG));
    prop_assert_eq!(&seen.content, &content, "{}", ctx());
    prop_assert_eq!(&seen.args, &args, "{}", ctx());
    for full in &seen.full_contents {
        prop_assert!(full.is_empty() || *full == content, "{}", ctx());
    }
    for full in &seen.full_args {
        prop_assert!(full.is_empty() || *full == args, "{}", ctx());
    }
    // The upstream put its text in deltas, not in announcements: so does the layer, for
    // clients that read only the deltas.
    for announced in &seen.announced {
        prop_assert!(announced.is_empty(), "{}", ctx());
    }
    // The stream's own end, untouched.
    let last = seen.events.last().map(|(n, d)| (n.as_deref(), d.as_str()));
    match shape {
        Shape::Chat => prop_assert_eq!(last, Some((None, "[DONE]")), "{}", ctx()),
        Shape::Responses => {
            prop_assert_eq!(last.unwrap().0, Some("response.completed"), "{}", ctx())
        }
        Shape::Anthropic => prop_assert_eq!(last.unwrap().0, Some("message_stop"), "{}", ctx()),
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chat_a_blocked_word_never_reaches_the_client(case in case(BLOCKED)) {
        for policy in case.policies() {
            assert_no_block_leak(Shape::Chat, &case, policy)?;
        }
    }

    #[test]
    fn responses_a_blocked_word_never_reaches_the_client(case in case(BLOCKED)) {
        for policy in case.policies() {
            assert_no_block_leak(Shape::Responses, &case, policy)?;
        }
    }

    #[test]
    fn anthropic_a_blocked_word_never_reaches_the_client(case in case(BLOCKED)) {
        for policy in case.policies() {
            assert_no_block_leak(Shape::Anthropic, &case, policy)?;
        }
    }

    #[test]
    fn chat_a_masked_word_never_reaches_the_client(case in case(MASKED)) {
        for policy in case.policies() {
            assert_masked(Shape::Chat, &case, policy)?;
        }
    }

    #[test]
    fn responses_a_masked_word_never_reaches_the_client(case in case(MASKED)) {
        for policy in case.policies() {
            assert_masked(Shape::Responses, &case, policy)?;
        }
    }

    #[test]
    fn anthropic_a_masked_word_never_reaches_the_client(case in case(MASKED)) {
        for policy in case.policies() {
            assert_masked(Shape::Anthropic, &case, policy)?;
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_json_response_gets_the_verdict_of_its_stream(
        blocked in case(BLOCKED),
        masked in case(MASKED),
    ) {
        for shape in [Shape::Chat, Shape::Responses, Shape::Anthropic] {
            assert_json_verdict_is_the_stream_s(shape, &blocked)?;
            assert_json_verdict_is_the_stream_s(shape, &masked)?;
        }
    }
}

/// Every insertion offset of a fixed short text, with the stream delivered one byte per chunk
/// (every byte boundary a chunk boundary at once), in every shape, under every policy.
#[test]
fn every_offset_split_at_every_byte_never_leaks() {
    let base = "Grüße aus Zürich 📝 ok";
    let n = base.chars().count();
    for shape in [Shape::Chat, Shape::Responses, Shape::Anthropic] {
        for at in 0..=n {
            for in_args in [false, true] {
                let (content, args) = if in_args {
                    (base.to_owned(), insert(base, at, BLOCKED))
                } else {
                    (insert(base, at, BLOCKED), base.to_owned())
                };
                let case = Case {
                    content,
                    args,
                    // Deltas of three characters.
                    content_cuts: (0..64).map(|i| i * 3).collect(),
                    args_cuts: (0..64).map(|i| i * 3).collect(),
                    byte_cuts: Vec::new(),
                    utf8_cuts: Vec::new(),
                    die_at: None,
                    word: BLOCKED,
                    chars: 5,
                    overlap: 3,
                };
                let stream = case.stream(shape);
                let every_byte: Vec<usize> = (1..stream.len()).collect();
                for policy in case.policies() {
                    let (status, body) = run(
                        shape,
                        policy,
                        body::split_at(stream.as_bytes(), &every_byte),
                    );
                    assert!(
                        !body.replace(BLOCK_MESSAGE, "").contains(BLOCKED),
                        "{shape:?} {policy:?} at {at}: leaked in {body}"
                    );
                    if policy.buffers() {
                        assert_eq!(status, 400);
                    } else {
                        let seen = read(shape, &body).unwrap();
                        check_block_ending(shape, &seen, BLOCK_MESSAGE, "content_policy_violation")
                            .unwrap_or_else(|e| panic!("{shape:?} {policy:?} at {at}: {e}"));
                    }
                }
            }
        }
    }
}
