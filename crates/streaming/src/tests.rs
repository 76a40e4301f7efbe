use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use guardrail_tower_core::{
    CallType, ConfiguredGuardrail, Fallback, Guardrail, GuardrailAction, GuardrailError,
    GuardrailInput, GuardrailLog, GuardrailMode, GuardrailStatus, Guardrails, ResponseReport,
    SpanAction, SpanMatch, SpanMatcher, StreamPolicy, Usage, Verdict, guardrail_fn,
};
use guardrail_tower_testkit::body::{self, TestBody};
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use crate::StreamingGuardrailBodyLayer;

const CHAT: &str = include_str!("../../protocol/testdata/openai_chat.sse");
const RESPONSES: &str = include_str!("../../protocol/testdata/openai_responses.sse");
const ANTHROPIC: &str = include_str!("../../protocol/testdata/anthropic_messages.sse");

fn fixture(call_type: CallType) -> (&'static str, &'static str) {
    match call_type {
        CallType::Responses => ("/v1/responses", RESPONSES),
        CallType::AnthropicMessages => ("/v1/messages", ANTHROPIC),
        _ => ("/v1/chat/completions", CHAT),
    }
}

/// A case-sensitive word matcher: blocks or masks fixed strings, as a deterministic guardrail.
struct Words {
    words: Vec<(&'static str, Option<&'static str>)>,
}

impl SpanMatcher for Words {
    fn max_match_chars(&self) -> usize {
        self.words
            .iter()
            .map(|(w, _)| w.chars().count())
            .max()
            .unwrap_or(0)
    }

    fn find(&self, text: &str, partial: bool) -> Vec<SpanMatch> {
        let mut found: Vec<SpanMatch> = Vec::new();
        for (word, mask) in &self.words {
            for (start, _) in text.match_indices(word) {
                let end = start + word.len();
                if partial && end == text.len() {
                    continue;
                }
                found.push(SpanMatch {
                    range: start..end,
                    action: match mask {
                        Some(r) => SpanAction::Mask {
                            replacement: (*r).to_owned(),
                        },
                        None => SpanAction::Block,
                    },
                    entity: if mask.is_some() {
                        "WORD".into()
                    } else {
                        "BLOCKED".into()
                    },
                    message: format!("blocked word: {word}"),
                });
            }
        }
        found.sort_by_key(|m| m.range.start);
        let mut last = 0;
        found.retain(|m| {
            let keep = m.range.start >= last;
            if keep {
                last = m.range.end;
            }
            keep
        });
        found
    }
}

impl Guardrail for Words {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let mut texts = Vec::new();
        let mut masked = false;
        for text in input.texts() {
            let mut out = String::new();
            let mut pos = 0;
            for m in self.find(text, false) {
                match m.action {
                    SpanAction::Block => return Ok(Verdict::block(m.message)),
                    SpanAction::Mask { replacement } => {
                        out.push_str(&text[pos..m.range.start]);
                        out.push_str(&replacement);
                        pos = m.range.end;
                        masked = true;
                    }
                }
            }
            out.push_str(&text[pos..]);
            texts.push(out);
        }
        Ok(if masked {
            Verdict::rewrite(texts)
        } else {
            Verdict::allow()
        })
    }

    fn provider(&self) -> &str {
        "test_words"
    }

    fn span_matcher(&self) -> Option<&dyn SpanMatcher> {
        Some(self)
    }

    fn reads_request_body(&self) -> bool {
        false
    }

    fn reads_request_headers(&self) -> bool {
        false
    }
}

fn words(
    name: &'static str,
    words: Vec<(&'static str, Option<&'static str>)>,
) -> ConfiguredGuardrail {
    ConfiguredGuardrail::new(name, GuardrailMode::PostCall, Words { words }).default_on(true)
}

/// A guardrail without a span matcher (so it uses windows or the end of the stream).
fn remote(name: &'static str, word: &'static str) -> ConfiguredGuardrail {
    ConfiguredGuardrail::new(
        name,
        GuardrailMode::PostCall,
        guardrail_fn(move |input: GuardrailInput| async move {
            tokio::task::yield_now().await;
            Ok(if input.texts().iter().any(|t| t.contains(word)) {
                Verdict::block(format!("remote says no to {word}"))
            } else {
                Verdict::allow()
            })
        }),
    )
    .default_on(true)
}

/// An upstream that answers once with `response`.
fn once(
    response: Response<TestBody>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<TestBody>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<Response<TestBody>, std::convert::Infallible>>,
> + Clone {
    let response = Arc::new(Mutex::new(Some(response)));
    service_fn(move |_req: Request<Full<Bytes>>| {
        std::future::ready(Ok(response.lock().unwrap().take().expect("one request")))
    })
}

struct Run {
    status: u16,
    headers: HeaderMap,
    body: String,
    log: GuardrailLog,
    report: ResponseReport,
}

async fn run_with(
    path: &str,
    request_body: &str,
    layer: StreamingGuardrailBodyLayer,
    response: Response<TestBody>,
) -> Run {
    let svc = ServiceBuilder::new().layer(layer).service(once(response));
    let (mut req, log) = request(path, request_body, &[]);
    let report = ResponseReport::get_or_insert(&mut req);
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Run {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
        log,
        report,
    }
}

/// The body of a streaming chat request.
const STREAM_REQUEST: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

/// A request to `path` with `body` and `headers`, carrying a guardrail log (returned too).
fn request(
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (Request<Full<Bytes>>, GuardrailLog) {
    let mut builder = Request::post(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut req = builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let log = GuardrailLog::get_or_insert(&mut req);
    (req, log)
}

fn sse(body: TestBody) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// The stream split into one chunk per event, as upstreams deliver token streams.
fn per_event(stream: &str) -> TestBody {
    body::chunks(
        stream
            .split_inclusive("\n\n")
            .map(|e| e.to_owned())
            .collect::<Vec<_>>(),
    )
}

async fn run_stream(
    call_type: CallType,
    layer: StreamingGuardrailBodyLayer,
    body: TestBody,
) -> Run {
    let (path, _) = fixture(call_type);
    run_with(path, STREAM_REQUEST, layer, sse(body)).await
}

/// The text a client reads from an SSE body, per call type.
fn streamed_text(call_type: CallType, body: &str) -> String {
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::copy_from_slice(body.as_bytes()));
    let mut text = String::new();
    while let Some(event) = decoder.next_event().unwrap() {
        let Some(data) = event.data() else { continue };
        let Ok(view) = guardrail_tower_protocol::json::JsonView::parse(data) else {
            continue;
        };
        let read = call_type.read_event(event.event_type(), &view).unwrap();
        for (_, role, t) in read.texts {
            if role == guardrail_tower_protocol::text::Role::Delta {
                text.push_str(&t);
            }
        }
    }
    text
}

fn original_text(call_type: CallType) -> String {
    streamed_text(call_type, fixture(call_type).1)
}

/// The in-band error a block of `message` by a guardrail ends a stream with.
fn error_tail(call_type: CallType, message: &str) -> String {
    let err = guardrail_tower_core::Error::guardrail_blocked("g", message);
    match call_type {
        CallType::Responses => {
            "event: error\n".to_owned() + {
                let events = err.responses_stream_events(&Default::default());
                let s = String::from_utf8(events.to_vec()).unwrap();
                let data = s.split('\n').nth(1).unwrap().to_owned();
                // Only the first line's shape matters for the prefix check below.
                Box::leak(data.into_boxed_str())
            }
        }
        CallType::AnthropicMessages => {
            String::from_utf8(err.anthropic_stream_event().to_vec()).unwrap()
        }
        _ => String::from_utf8(err.chat_stream_event().to_vec()).unwrap(),
    }
}

/// Splits a block result into (what was released before the error, the error events).
fn split_error(call_type: CallType, body: &str) -> (String, String) {
    let marker = match call_type {
        CallType::ChatCompletions => "data: {\"error\"",
        _ => "event: error\n",
    };
    let at = body
        .find(marker)
        .unwrap_or_else(|| panic!("no error event in {body}"));
    (body[..at].to_owned(), body[at..].to_owned())
}

const ALL: [CallType; 3] = [
    CallType::ChatCompletions,
    CallType::Responses,
    CallType::AnthropicMessages,
];

/// A word near the start, in the middle and at the end of each fixture's text.
fn positions(call_type: CallType) -> [&'static str; 3] {
    match call_type {
        CallType::Responses => ["Hi!", "résumé", "short"],
        CallType::AnthropicMessages => ["Hello", "Zürich", "help?"],
        _ => ["Hello", "corner", "guest"],
    }
}

#[tokio::test]
async fn exact_block_never_leaks_and_ends_with_the_in_band_error() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        for word in positions(call_type) {
            let layer =
                StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![(word, None)])]));
            let run = run_stream(call_type, layer, per_event(stream)).await;
            assert_eq!(run.status, 200);
            assert!(!run.headers.contains_key("content-length"));
            let (released, error) = split_error(call_type, &run.body);
            // Every released event is the original one, except perhaps the last: the part of
            // it that was cleared before the block.
            let events: Vec<&str> = released.split_inclusive("\n\n").collect();
            let whole = events[..events.len().saturating_sub(1)].concat();
            assert!(
                stream.starts_with(&whole),
                "{call_type:?} {word}: released events are the original ones"
            );
            assert!(original_text(call_type).starts_with(&streamed_text(call_type, &released)));
            assert!(!released.contains(word), "{call_type:?}: '{word}' leaked");
            assert!(error.contains(&format!("blocked word: {word}")), "{error}");
            let tail = error_tail(call_type, &format!("blocked word: {word}"));
            assert!(
                error.starts_with(tail.lines().next().unwrap()),
                "{call_type:?}: {error}"
            );
            match call_type {
                CallType::ChatCompletions => assert!(error.ends_with("data: [DONE]\n\n")),
                CallType::Responses => assert!(
                    error.contains("event: response.failed\n")
                        && error.contains("\"status\":\"failed\"")
                ),
                _ => assert!(!error.contains("message_stop")),
            }
            let blocks: Vec<_> = run
                .log
                .entries()
                .into_iter()
                .filter(|e| e.guardrail_action == GuardrailAction::Block)
                .collect();
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].guardrail_mode, GuardrailMode::PostCall);
            assert!(run.report.in_band_error().unwrap().is_policy_block());
        }
    }
}

#[tokio::test]
async fn responses_error_events_continue_the_sequence_and_the_response() {
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("short", None)])]));
    let run = run_stream(CallType::Responses, layer, per_event(RESPONSES)).await;
    let (released, error) = split_error(CallType::Responses, &run.body);
    let last_seq = released
        .rsplit("\"sequence_number\":")
        .next()
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::from(error));
    let first = decoder.next_event().unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(first.data().unwrap()).unwrap();
    assert_eq!(first.event_type(), Some("error"));
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "content_policy_violation");
    assert_eq!(v["message"], "blocked word: short");
    assert_eq!(v["param"], serde_json::Value::Null);
    assert_eq!(v["sequence_number"], last_seq + 1);
    let failed = decoder.next_event().unwrap().unwrap();
    assert_eq!(failed.event_type(), Some("response.failed"));
    let v: serde_json::Value = serde_json::from_slice(failed.data().unwrap()).unwrap();
    assert_eq!(v["sequence_number"], last_seq + 2);
    assert_eq!(
        v["response"]["id"],
        "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    );
    assert_eq!(v["response"]["status"], "failed");
    assert_eq!(v["response"]["error"]["code"], "content_policy_violation");
    assert!(decoder.next_event().unwrap().is_none());
}

#[tokio::test]
async fn window_block_holds_text_until_checked() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        for word in positions(call_type) {
            let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([remote("g", word)]))
                .policy(StreamPolicy::Window {
                    chars: 12,
                    overlap: 6,
                });
            let run = run_stream(call_type, layer, per_event(stream)).await;
            assert_eq!(run.status, 200);
            let (released, error) = split_error(call_type, &run.body);
            let text = streamed_text(call_type, &released);
            assert!(
                original_text(call_type).starts_with(&text),
                "{call_type:?} {text:?}"
            );
            assert!(!text.contains(word), "{call_type:?} '{word}' leaked");
            assert!(error.contains(&format!("remote says no to {word}")));
            let checks = run.log.len();
            assert!(checks >= 1, "every window check is logged");
        }
    }
}

#[tokio::test]
async fn window_passes_a_clean_stream_unchanged() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([remote("g", "not-there")]))
            .policy(StreamPolicy::Window {
                chars: 10,
                overlap: 4,
            });
        let run = run_stream(call_type, layer, per_event(stream)).await;
        assert_eq!(run.body, stream, "{call_type:?}");
        // One check per 10 new characters, plus the final one.
        let n = original_text(call_type).chars().count();
        assert!(
            (2..=n / 10 + 1).contains(&run.log.len()),
            "{} checks for {n} chars",
            run.log.len()
        );
        assert!(
            run.log
                .entries()
                .iter()
                .all(|e| e.guardrail_status == GuardrailStatus::Success)
        );
    }
}

#[tokio::test]
async fn end_of_stream_holds_only_the_final_events() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([
            remote("g", "help?").stream_policy(StreamPolicy::EndOfStream)
        ]));
        let word = positions(call_type)[1];
        let layer_block = StreamingGuardrailBodyLayer::new(Guardrails::new([
            remote("g", word).stream_policy(StreamPolicy::EndOfStream)
        ]));
        let run = run_stream(call_type, layer_block, per_event(stream)).await;
        let (released, error) = split_error(call_type, &run.body);
        // The text flowed (end_of_stream cannot hold it back), the final events did not.
        assert!(stream.starts_with(&released));
        assert_eq!(
            streamed_text(call_type, &released),
            original_text(call_type)
        );
        for fin in [
            "[DONE]",
            "finish_reason\":\"stop",
            "response.completed",
            "message_stop",
            "output_text.done",
        ] {
            assert!(
                !released.contains(fin),
                "{call_type:?}: final event {fin} was released"
            );
        }
        assert!(error.contains(&format!("remote says no to {word}")));
        assert_eq!(run.log.len(), 1, "one check at the end");
        // A clean stream passes unchanged.
        if call_type != CallType::AnthropicMessages {
            let run = run_stream(call_type, layer, per_event(stream)).await;
            assert_eq!(run.body, stream);
        }
    }
}

#[tokio::test]
async fn buffer_all_block_is_a_400_before_the_head() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        let word = positions(call_type)[2];
        let policy = StreamPolicy::BufferAll {
            max_bytes: 1 << 20,
            on_overflow: Fallback::FailClosed,
        };
        let layer =
            StreamingGuardrailBodyLayer::new(Guardrails::new([
                words("g", vec![(word, None)]).stream_policy(policy)
            ]));
        let run = run_stream(call_type, layer, per_event(stream)).await;
        assert_eq!(run.status, 400, "{call_type:?}");
        assert_eq!(run.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&run.body).unwrap();
        match call_type {
            CallType::AnthropicMessages => {
                assert_eq!(v["error"]["message"], format!("blocked word: {word}"))
            }
            _ => assert_eq!(v["error"]["code"], "content_policy_violation"),
        }
        // A clean stream passes byte for byte.
        let layer =
            StreamingGuardrailBodyLayer::new(Guardrails::new([
                words("g", vec![("absent", None)]).stream_policy(policy)
            ]));
        let run = run_stream(call_type, layer, per_event(stream)).await;
        assert_eq!((run.status, run.body.as_str()), (200, stream));
    }
}

#[tokio::test]
async fn buffer_all_overflow_fails_closed_or_open() {
    let closed = StreamPolicy::BufferAll {
        max_bytes: 500,
        on_overflow: Fallback::FailClosed,
    };
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([
        remote("g", "nothing").stream_policy(closed)
    ]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert_eq!(run.status, 500);
    assert!(
        run.body.contains("buffer_all limit of 500 bytes"),
        "{}",
        run.body
    );

    let open = StreamPolicy::BufferAll {
        max_bytes: 500,
        on_overflow: Fallback::FailOpen,
    };
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([
        remote("g", "nothing").stream_policy(open)
    ]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert_eq!((run.status, run.body.as_str()), (200, CHAT));
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([
        remote("g", "guest").stream_policy(open)
    ]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert!(run.body.ends_with("data: [DONE]\n\n") && run.body.contains("remote says no to guest"));
}

#[tokio::test]
async fn exact_mask_rewrites_events_and_summaries() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        let (word, spans) = match call_type {
            CallType::Responses => ("résumé tips", "Naïve résumé tips"),
            CallType::AnthropicMessages => ("aus Zürich", "Grüße aus Zürich"),
            _ => ("Wi-Fi password", "its Wi-Fi password"),
        };
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words(
            "g",
            vec![(word, Some("[MASKED]"))],
        )]));
        let run = run_stream(call_type, layer, per_event(stream)).await;
        assert_eq!(run.status, 200);
        let want = original_text(call_type).replace(word, "[MASKED]");
        assert_eq!(streamed_text(call_type, &run.body), want, "{call_type:?}");
        assert!(
            !run.body.contains(word),
            "{call_type:?}: masked text leaked somewhere"
        );
        assert!(
            run.body.contains(&spans.replace(word, "[MASKED]"))
                || call_type == CallType::ChatCompletions
                || call_type == CallType::AnthropicMessages
        );
        // Events that carry no text are untouched.
        let first = stream.split_inclusive("\n\n").next().unwrap();
        assert!(run.body.starts_with(first));
        let entry = &run.log.entries()[0];
        assert_eq!(entry.guardrail_action, GuardrailAction::Mask);
        assert_eq!(entry.masked_entity_count.as_ref().unwrap()["WORD"], 1);
    }
}

/// What an answer cites, masked in a stream: a cited page's title in its own Responses event
/// and in the summaries that repeat it, a Claude citation's quote, a shell command written in
/// two deltas. Each event is sent whole, its text masked; the word never reaches the client.
#[tokio::test]
async fn exact_mask_rewrites_citations_titles_and_commands() {
    let ev = |data: serde_json::Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    let cited = |title: &str| {
        serde_json::json!({"type": "url_citation", "url": "https://a",
        "title": title, "start_index": 0, "end_index": 3})
    };
    let part = |title: &str| serde_json::json!({"type": "output_text", "text": "ok", "annotations": [cited(title)]});
    let responses = [
        ev(serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "ok"})),
        ev(serde_json::json!({"type": "response.output_text.annotation.added", "output_index": 0,
            "content_index": 0, "annotation_index": 0, "annotation": cited("the secret plan")})),
        ev(serde_json::json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "ok"})),
        ev(serde_json::json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": part("the secret plan")})),
        ev(serde_json::json!({"type": "response.shell_call_command.added", "output_index": 1, "command_index": 0, "command": "echo sec"})),
        ev(serde_json::json!({"type": "response.shell_call_command.delta", "output_index": 1, "command_index": 0, "delta": "ret"})),
        ev(serde_json::json!({"type": "response.shell_call_command.done", "output_index": 1, "command_index": 0, "command": "echo secret"})),
        ev(serde_json::json!({"type": "response.completed", "response": {"output": [
            {"type": "message", "content": [part("the secret plan")]},
            {"type": "shell_call", "action": {"commands": ["echo secret"]}}]}})),
    ]
    .concat();
    let anthropic = [
        ev(serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        ev(serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta",
            "citation": {"type": "char_location", "cited_text": "a secret quote", "document_index": 0}}})),
        ev(serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}})),
        ev(serde_json::json!({"type": "content_block_stop", "index": 0})),
        ev(serde_json::json!({"type": "message_stop"})),
    ]
    .concat();
    for (path, stream, masked) in [
        (
            "/v1/responses",
            responses.as_str(),
            ["the [MASKED] plan", "echo [MASKED]"].as_slice(),
        ),
        (
            "/v1/messages",
            anthropic.as_str(),
            ["a [MASKED] quote"].as_slice(),
        ),
    ] {
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words(
            "g",
            vec![("secret", Some("[MASKED]"))],
        )]));
        let run = run_with(path, STREAM_REQUEST, layer, sse(per_event(stream))).await;
        assert_eq!(run.status, 200);
        assert!(!run.body.contains("secret"), "{}", run.body);
        for text in masked {
            assert!(run.body.contains(text), "{text}: {}", run.body);
        }
        // Every event still goes out, whole.
        assert_eq!(
            run.body.matches("\n\n").count(),
            stream.matches("\n\n").count(),
            "{}",
            run.body
        );
    }
}

/// A mask and a block found in one scan (one event, or one chunk of events): the text released
/// before the block carries the mask, never the masked word.
#[tokio::test]
async fn a_mask_before_a_block_in_one_scan_is_applied_to_what_is_released() {
    let chunk = |text: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
            serde_json::to_string(text).unwrap()
        )
    };
    let layer = || {
        StreamingGuardrailBodyLayer::new(Guardrails::new([words(
            "g",
            vec![("MASKME", Some("[M]")), ("BLOCKME", None)],
        )]))
    };
    for events in [
        vec![chunk("one MASKME two BLOCKME three")],
        vec![chunk("one MASKME tw"), chunk("o BLOCKME three")],
    ] {
        let stream = events.concat() + "data: [DONE]\n\n";
        for body in [body::chunks([stream.clone()]), per_event(&stream)] {
            let run = run_stream(CallType::ChatCompletions, layer(), body).await;
            assert_eq!(run.status, 200);
            assert!(!run.body.contains("MASKME"), "{}", run.body);
            let (released, error) = split_error(CallType::ChatCompletions, &run.body);
            assert_eq!(
                streamed_text(CallType::ChatCompletions, &released),
                "one [M] two ",
                "{}",
                run.body
            );
            assert!(error.contains("blocked word: BLOCKME"), "{error}");
        }
    }
}

#[tokio::test]
async fn split_at_every_byte_gives_the_same_output() {
    for call_type in ALL {
        let (_, stream) = fixture(call_type);
        let word = positions(call_type)[1];
        let layer = || {
            StreamingGuardrailBodyLayer::new(Guardrails::new([words(
                "g",
                vec![(word, Some("<x>"))],
            )]))
        };
        let reference = run_stream(call_type, layer(), body::chunks([stream]))
            .await
            .body;
        assert!(!reference.contains(word));
        for i in 1..stream.len() {
            let got = run_stream(call_type, layer(), body::split_at(stream.as_bytes(), &[i]))
                .await
                .body;
            assert!(got == reference, "{call_type:?}: split at {i} differs");
        }
    }
}

#[tokio::test]
async fn fail_open_and_fail_closed_mid_stream() {
    let unreachable = |fallback| {
        ConfiguredGuardrail::new(
            "remote",
            GuardrailMode::PostCall,
            guardrail_fn(|_| async { Err(GuardrailError::unreachable("connection refused")) }),
        )
        .default_on(true)
        .unreachable_fallback(fallback)
    };
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([unreachable(Fallback::FailOpen)]))
            .policy(StreamPolicy::Window {
                chars: 20,
                overlap: 0,
            });
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert_eq!(run.body, CHAT);
    assert!(
        run.log
            .entries()
            .iter()
            .all(|e| e.guardrail_status == GuardrailStatus::GuardrailFailedToRespond)
    );

    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([unreachable(Fallback::FailClosed)]))
            .policy(StreamPolicy::Window {
                chars: 20,
                overlap: 0,
            });
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    let (released, error) = split_error(CallType::ChatCompletions, &run.body);
    assert_eq!(
        released,
        CHAT.split_inclusive("\n\n").next().unwrap(),
        "only the role chunk went out"
    );
    assert!(
        error.contains("\"code\":\"guardrail_unreachable\""),
        "{error}"
    );
    assert!(error.contains("guardrail 'remote' could not be reached"));
    assert!(error.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn upstream_death_mid_stream_ends_like_a_block() {
    // After the head, a reset upstream is seed bug 001 for another cause: the client must get
    // the endpoint's in-band error and terminator, not a cut body.
    for call_type in ALL {
        let (path, stream) = fixture(call_type);
        let layer =
            StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]));
        let events: Vec<String> = stream
            .split_inclusive("\n\n")
            .take(5)
            .map(str::to_owned)
            .collect();
        let upstream = body::chunks(events.clone()).then_error("upstream reset");
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(once(sse(upstream)));
        let mut req = Request::post(path)
            .body(Full::new(Bytes::from_static(
                br#"{"stream":true,"messages":[]}"#,
            )))
            .unwrap();
        let report = ResponseReport::get_or_insert(&mut req);
        let body = svc.oneshot(req).await.unwrap().into_body();
        // The body ends cleanly (no error frame): `collect` fails on one.
        let got = body.collect().await.unwrap().to_bytes();
        let got = String::from_utf8(got.to_vec()).unwrap();
        let (released, error) = split_error(call_type, &got);
        // Only what the five events carried, and nothing after the failure.
        assert!(original_text(call_type).starts_with(&streamed_text(call_type, &released)));
        assert!(
            streamed_text(call_type, &events.concat())
                .starts_with(&streamed_text(call_type, &released))
        );
        let want = guardrail_tower_core::Error::stream_interrupted();
        match call_type {
            CallType::ChatCompletions => {
                assert_eq!(error.as_bytes(), &want.chat_stream_event()[..]);
                assert!(error.ends_with("data: [DONE]\n\n"));
            }
            CallType::AnthropicMessages => {
                assert_eq!(error.as_bytes(), &want.anthropic_stream_event()[..]);
            }
            _ => {
                assert!(error.starts_with("event: error\n"), "{error}");
                assert!(error.contains("event: response.failed\n"), "{error}");
                assert!(error.contains(want.message()), "{error}");
            }
        }
        let err = report.in_band_error().expect("the failure is reported");
        assert_eq!(
            (err.status().as_u16(), err.code()),
            (502, Some("upstream_stream_error"))
        );
    }
}

#[tokio::test]
async fn non_text_events_pass_untouched() {
    // Comments, [DONE], usage chunks and unknown events are untouched.
    let stream = ": keep-alive\n\nevent: ping\ndata: {}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
    let run = run_stream(CallType::ChatCompletions, layer, body::chunks([stream])).await;
    assert_eq!(run.body, stream);
    assert_eq!(
        run.report.usage(),
        Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3
        })
    );

    // An upstream error response passes untouched (ErrorNormalizeLayer's job).
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
    let err = Response::builder()
        .status(500)
        .header("content-type", "application/json")
        .body(body::chunks(["{\"error\":\"x\"}"]))
        .unwrap();
    let run = run_with("/v1/chat/completions", r#"{"messages":[]}"#, layer, err).await;
    assert_eq!((run.status, run.body.as_str()), (500, "{\"error\":\"x\"}"));
}

/// An event whose data `serde_json` refuses may still be read by a client: JavaScript's and
/// Python's parsers take `1e400` as infinity and keep a lone surrogate. Its text would go out
/// unchecked, so the stream ends there with the in-band error; `[DONE]` and empty data pass.
#[tokio::test]
async fn stream_events_whose_data_is_not_json_fail_closed() {
    let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"all \"}}]}\n\n";
    for bad in [
        r#"data: {"created":1e400,"choices":[{"index":0,"delta":{"content":"x marks the spot"}}]}"#,
        r#"data: {"id":"\ud800","choices":[{"index":0,"delta":{"content":"x marks the spot"}}]}"#,
        r#"data: {"choices":[{"index":0,"delta":{"content":"x marks the spot","refusal":null}}],"n":-1e999}"#,
        "data: x marks the spot",
    ] {
        let stream = format!("{head}{bad}\n\ndata: [DONE]\n\n");
        let layer =
            StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
        let run = run_stream(CallType::ChatCompletions, layer, per_event(&stream)).await;
        assert_eq!(run.status, 200);
        assert!(!run.body.contains("marks the spot"), "{bad}: {}", run.body);
        let (released, tail) = split_error(CallType::ChatCompletions, &run.body);
        // What was cleared goes out (the trailing space is held for a word that may follow).
        assert_eq!(
            streamed_text(CallType::ChatCompletions, &released),
            "all",
            "{bad}"
        );
        assert!(tail.contains("its data is not JSON"), "{bad}: {tail}");
        assert!(tail.ends_with("data: [DONE]\n\n"), "{bad}: {tail}");
    }
    let stream = format!("{head}data:\n\ndata:  \n\ndata: [DONE]\n\n");
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(&stream)).await;
    assert_eq!(run.body, stream);
}

#[tokio::test]
async fn responses_the_guardrails_cannot_read_fail_closed() {
    // A body in another content type, with none, or compressed: a client may still read the
    // text in it, so with a post-call guardrail it is a 502, never an unchecked pass.
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("content-type", "text/plain")], "text/plain"),
        (&[], "(none)"),
        (
            &[("content-type", "application/octet-stream")],
            "octet-stream",
        ),
        (
            &[
                ("content-type", "text/event-stream"),
                ("content-encoding", "gzip"),
            ],
            "content-encoding: gzip",
        ),
        (
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            "content-encoding: br",
        ),
    ];
    for (headers, why) in cases {
        let layer =
            StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
        let mut response = Response::builder();
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        let response = response
            .body(body::chunks([
                "data: {\"choices\":[{\"delta\":{\"content\":\"x marks the spot\"}}]}\n\n",
            ]))
            .unwrap();
        let run = run_with(
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            layer,
            response,
        )
        .await;
        assert_eq!(run.status, 502, "{why}");
        let v: serde_json::Value = serde_json::from_str(&run.body).unwrap();
        assert_eq!(v["error"]["code"], "unreadable_upstream_response", "{why}");
        assert!(!run.body.contains("marks the spot"), "{why}");
    }
    // Without a post-call guardrail that applies, such a response passes untouched.
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([]));
    let plain = Response::builder()
        .header("content-type", "text/plain")
        .body(body::chunks(["x marks the spot"]))
        .unwrap();
    let run = run_with("/v1/chat/completions", r#"{"messages":[]}"#, layer, plain).await;
    assert_eq!((run.status, run.body.as_str()), (200, "x marks the spot"));
}

#[tokio::test]
async fn the_layer_asks_for_an_uncompressed_response_only_when_it_reads_it() {
    for (guardrails, want) in [
        (
            Guardrails::new([words("g", vec![("x", None)])]),
            Some("identity"),
        ),
        (Guardrails::new([]), Some("gzip, br")),
    ] {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let upstream = service_fn(move |req: Request<Full<Bytes>>| {
            *record.lock().unwrap() = req
                .headers()
                .get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            async { Ok::<_, std::convert::Infallible>(sse(body::chunks(["data: [DONE]\n\n"]))) }
        });
        let svc = ServiceBuilder::new()
            .layer(StreamingGuardrailBodyLayer::new(guardrails))
            .service(upstream);
        let req = Request::post("/v1/chat/completions")
            .header("accept-encoding", "gzip, br")
            .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
            .unwrap();
        svc.oneshot(req).await.unwrap();
        assert_eq!(seen.lock().unwrap().as_deref(), want);
    }
}

/// Sends `body` to `path` through the layer with `guardrails` in front of an upstream that
/// answers an empty stream: the status, the body, and how many requests the upstream saw.
async fn send_counted(guardrails: Guardrails, path: &str, body: &str) -> (u16, Bytes, usize) {
    let calls = Arc::new(Mutex::new(0));
    let count = calls.clone();
    let upstream = service_fn(move |_: Request<Full<Bytes>>| {
        *count.lock().unwrap() += 1;
        async { Ok::<_, std::convert::Infallible>(sse(body::chunks(["data: [DONE]\n\n"]))) }
    });
    let svc = ServiceBuilder::new()
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(upstream);
    let (req, _) = request(path, body, &[]);
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let calls = *calls.lock().unwrap();
    (status, got, calls)
}

/// A request that asks for log probabilities is refused before the upstream while a post-call
/// guardrail applies (the tokens would repeat the text beside it, unchecked), and passes to
/// the upstream when none does.
#[tokio::test]
async fn log_probabilities_are_refused_only_where_a_guardrail_reads_the_response() {
    for (guardrails, want) in [
        (Guardrails::new([words("g", vec![("x", None)])]), (400, 0)),
        (Guardrails::new([]), (200, 1)),
    ] {
        let (status, body, calls) = send_counted(
            guardrails,
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"logprobs":true,"messages":[]}"#,
        )
        .await;
        assert_eq!((status, calls), want);
        if status == 400 {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["param"], "logprobs");
            assert_eq!(body["error"]["code"], "unreadable_content");
        }
    }
}

/// A request that asks for images in the response (a Responses `image_generation` tool, chat
/// `modalities` with `"image"`) is refused before the upstream while a post-call guardrail
/// that cannot read them applies: an image can show any text. It passes when the guardrail
/// lets media pass (`media_fallback: fail_open`) or none applies.
#[tokio::test]
async fn images_asked_for_are_refused_where_a_guardrail_cannot_read_them() {
    let filter = || words("g", vec![("x", None)]);
    for (path, body, field) in [
        (
            "/v1/responses",
            r#"{"model":"m","stream":true,"input":"draw a cat","tools":[{"type":"image_generation"}]}"#,
            "tools",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"modalities":["image","text"],"messages":[{"role":"user","content":"draw a cat"}]}"#,
            "modalities",
        ),
    ] {
        for (why, guardrails, want) in [
            ("a text guardrail", Guardrails::new([filter()]), (400, 0)),
            (
                "media_fallback: fail_open",
                Guardrails::new([filter().media_fallback(Fallback::FailOpen)]),
                (200, 1),
            ),
            ("no guardrail", Guardrails::new([]), (200, 1)),
        ] {
            let (status, got, calls) = send_counted(guardrails, path, body).await;
            assert_eq!((status, calls), want, "{path}, {why}");
            if status == 400 {
                let got: serde_json::Value = serde_json::from_slice(&got).unwrap();
                assert_eq!(
                    got,
                    serde_json::json!({"error": {
                        "message": format!("post-call guardrails apply to this request, but '{field}' asks for images, which guardrail 'g' cannot read; ask without it, or set media_fallback: fail_open on the guardrail to let images pass unchecked"),
                        "type": "invalid_request_error", "param": field, "code": "unreadable_content"}}),
                    "{path}"
                );
            }
        }
    }
}

/// An image the model made that the request did not ask for (an upstream that sends one
/// anyway) ends the response while a post-call guardrail that cannot read it applies: a stream
/// at the image's first event, with the in-band error and nothing of the image; a JSON
/// response with a 502. With `media_fallback: fail_open` each passes as it came.
#[tokio::test]
async fn an_image_the_upstream_sends_is_refused_where_a_guardrail_cannot_read_it() {
    const IMAGE: &str = "iVBORw0KGgoSECRETIMAGE";
    let item = format!(
        r#"{{"type":"image_generation_call","id":"ig_1","status":"completed","result":"{IMAGE}"}}"#
    );
    let stream = format!(
        "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}}}\n\n\
         event: response.image_generation_call.partial_image\ndata: {{\"type\":\"response.image_generation_call.partial_image\",\"sequence_number\":1,\"output_index\":0,\"item_id\":\"ig_1\",\"partial_image_index\":0,\"partial_image_b64\":\"{IMAGE}\"}}\n\n\
         event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[{item}]}}}}\n\n"
    );
    let json = format!(
        r#"{{"id":"resp_1","object":"response","status":"completed","output":[{item}],"usage":null}}"#
    );
    let message = "the upstream sent an image, which guardrail 'g' cannot read; refused (set media_fallback: fail_open on the guardrail to let images pass unchecked)";
    let filter = || words("g", vec![("x", None)]);
    let layer = |g: ConfiguredGuardrail| StreamingGuardrailBodyLayer::new(Guardrails::new([g]));

    let buffer_all = StreamPolicy::BufferAll {
        max_bytes: 1 << 20,
        on_overflow: Fallback::FailClosed,
    };
    for guardrail in [filter(), filter().stream_policy(buffer_all)] {
        let run = run_stream(CallType::Responses, layer(guardrail), per_event(&stream)).await;
        assert!(!run.body.contains(IMAGE), "{}", run.body);
        assert!(run.body.contains(message), "{}", run.body);
    }
    let response = || {
        Response::builder()
            .header("content-type", "application/json")
            .body(body::chunks([json.clone()]))
            .unwrap()
    };
    // The JSON response through the layer with `guardrail`.
    let json_run = |guardrail| {
        run_with(
            "/v1/responses",
            r#"{"input":"hi"}"#,
            layer(guardrail),
            response(),
        )
    };
    let run = json_run(filter()).await;
    assert_eq!(run.status, 502, "{}", run.body);
    let body: serde_json::Value = serde_json::from_str(&run.body).unwrap();
    assert_eq!(body["error"]["message"], message);
    assert_eq!(body["error"]["code"], "unreadable_upstream_response");

    let open = || filter().media_fallback(Fallback::FailOpen);
    let run = run_stream(CallType::Responses, layer(open()), per_event(&stream)).await;
    assert_eq!(run.body, stream);
    let run = json_run(open()).await;
    assert_eq!((run.status, run.body.as_str()), (200, json.as_str()));
}

#[tokio::test]
async fn upstream_error_events_pass_through_as_is() {
    let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(stream)).await;
    assert_eq!(run.body, stream);
    assert!(
        run.report
            .in_band_error()
            .unwrap()
            .message()
            .contains("overloaded")
    );
}

#[tokio::test]
async fn trailers_pass_through() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]));
    let upstream = sse(per_event(CHAT).with_trailers(trailers));
    let svc = ServiceBuilder::new().layer(layer).service(once(upstream));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
        .unwrap();
    let collected = svc
        .oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), CHAT);
}

#[tokio::test]
async fn json_responses_block_mask_and_allow() {
    let json = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"call me at the corner"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    // In one frame, and in frames that cut the blocked word and a member name (one empty).
    let at = json.find("corner").unwrap() + 3;
    for frames in [vec![json], vec![&json[..7], "", &json[7..at], &json[at..]]] {
        json_response_blocks_masks_and_allows(json, frames).await;
    }
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("x", None)])]));
    let bad = Response::builder()
        .header("content-type", "application/json")
        .body(body::chunks(["{not json"]))
        .unwrap();
    let run = run_with("/v1/chat/completions", r#"{"messages":[]}"#, layer, bad).await;
    assert_eq!(run.status, 502);
}

async fn json_response_blocks_masks_and_allows(json: &'static str, frames: Vec<&'static str>) {
    let response = || {
        Response::builder()
            .header("content-type", "application/json")
            .header("content-length", json.len())
            .body(body::chunks(frames.clone()))
            .unwrap()
    };
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("corner", None)])]));
    let run = run_with(
        "/v1/chat/completions",
        r#"{"messages":[]}"#,
        layer,
        response(),
    )
    .await;
    assert_eq!(run.status, 400);
    assert_eq!(
        run.body,
        r#"{"error":{"message":"blocked word: corner","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
    );
    assert_eq!(run.report.usage().unwrap().total_tokens, 8);

    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([words(
        "g",
        vec![("corner", Some("[PLACE]"))],
    )]));
    let run = run_with(
        "/v1/chat/completions",
        r#"{"messages":[]}"#,
        layer,
        response(),
    )
    .await;
    assert_eq!(run.status, 200);
    assert_eq!(run.body, json.replace("corner", "[PLACE]"));
    assert_eq!(run.headers["content-length"], run.body.len().to_string());

    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("absent", None)])]));
    let run = run_with(
        "/v1/chat/completions",
        r#"{"messages":[]}"#,
        layer,
        response(),
    )
    .await;
    assert_eq!((run.status, run.body.as_str()), (200, json));
}

#[tokio::test]
async fn model_level_post_call_guardrail_blocks_a_streaming_request() {
    // Regression after the production bug: a model-level post_call guardrail with
    // default_on: false ran on non-streaming requests but was skipped on streaming ones.
    let opt_in = words("pii-block", vec![("corner", None)]).default_on(false);
    for (model, blocked) in [("gpt-guarded", true), ("gpt-plain", false)] {
        let svc = ServiceBuilder::new()
            .layer(
                guardrail_tower_model_merge::ModelGuardrailMergeLayer::new()
                    .model("gpt-guarded", ["pii-block"]),
            )
            .layer(StreamingGuardrailBodyLayer::new(Guardrails::new([
                opt_in.clone()
            ])))
            .service(once(sse(per_event(CHAT))));
        let body = format!(r#"{{"model":"{model}","stream":true,"messages":[]}}"#);
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let out = svc
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(out.contains("blocked word: corner"), blocked, "{model}");
        let sent_text = streamed_text(CallType::ChatCompletions, &out);
        assert_eq!(sent_text.contains("corner"), !blocked, "{model}");
    }
}

/// Reads the guarded body frame by frame and returns the most upstream chunks it was ahead of
/// the client at any point.
async fn max_lookahead(stream: &str, layer: StreamingGuardrailBodyLayer) -> usize {
    let polls = Arc::new(AtomicUsize::new(0));
    let upstream = per_event(stream).count_polls(polls.clone());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(once(sse(upstream)));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    let (mut frames, mut ahead) = (0, 0);
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        frames += 1;
        ahead = ahead.max(polls.load(Ordering::SeqCst).saturating_sub(frames));
    }
    assert!(body.is_end_stream());
    ahead
}

#[tokio::test]
async fn backpressure_the_upstream_is_read_only_as_the_client_reads() {
    // Events with no text are never held: one upstream chunk per frame the client takes.
    let keepalives = ": ping\n\n".repeat(50);
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]));
    assert!(max_lookahead(&keepalives, layer).await <= 1);
    // Text events wait only for the few characters a match could still need.
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]));
    assert!(max_lookahead(CHAT, layer).await <= 4);
}

/// A chat stream's state with one guardrail blocking `forbidden` under `policy`, driven by hand
/// (push a chunk, step until it needs input).
fn one_guardrail_state(policy: crate::state::Policy) -> crate::state::StreamState {
    let meta = Arc::new(guardrail_tower_core::RequestMeta::new(
        "r".into(),
        CallType::ChatCompletions,
    ));
    crate::state::StreamState::new(
        CallType::ChatCompletions,
        vec![(words("g", vec![("forbidden", None)]), policy)],
        meta,
        GuardrailLog::new(),
        None,
        1 << 20,
    )
}

/// A chat chunk with one piece of content.
fn chat_chunk(content: &str) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n")
}

#[tokio::test]
async fn exact_mode_memory_stays_bounded_on_a_long_stream() {
    let mut state = one_guardrail_state(crate::state::Policy::Exact);
    let event = chat_chunk("lorem ipsum ");
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut max_held = 0;
    for _ in 0..20_000 {
        state.push(Bytes::from(event.clone()));
        while let crate::state::Step::Progress = state.step(&mut cx) {
            state.out.clear();
        }
        max_held = max_held.max(state.held_bytes());
    }
    // 240 KB of text went through; what is held stays under a kilobyte (thousands of streams
    // are open at once).
    assert!(max_held < 1024, "held {max_held} bytes");
}

/// A window check that comes back releases what it cleared at once: the client does not wait
/// for the upstream's next chunk (a model pausing, a stream at its end but for `[DONE]`).
#[test]
fn a_window_check_releases_its_events_without_more_input() {
    let mut state = one_guardrail_state(crate::state::Policy::Window {
        chars: 10,
        holdback: 0,
    });
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // The first event fills a window (12 characters): checked and released before the second
    // arrives. The second (9) waits for its window to fill.
    for (word, released) in [
        ("twelve chars", chat_chunk("twelve chars")),
        (" and more", String::new()),
    ] {
        state.push(Bytes::from(chat_chunk(word)));
        let step = loop {
            match state.step(&mut cx) {
                crate::state::Step::Progress => continue,
                step => break step,
            }
        };
        assert!(matches!(step, crate::state::Step::NeedInput));
        let out: String = state
            .out
            .drain(..)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(out, released, "after {word:?}");
    }
}

/// An upstream body fed by the test: its chunks, then `Pending` until more are fed.
#[derive(Clone, Default)]
struct Feed(Arc<Mutex<std::collections::VecDeque<Bytes>>>);

impl Feed {
    fn push(&self, chunk: Bytes) {
        self.0.lock().unwrap().push_back(chunk);
    }
}

impl http_body::Body for Feed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.lock().unwrap().pop_front() {
            Some(chunk) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
            None => std::task::Poll::Pending,
        }
    }
}

#[tokio::test]
async fn held_events_do_not_pin_the_upstream_read_buffer() {
    // hyper hands the body over as slices of the connection's read buffer; an event held back
    // (exact mode holds each word until the next event shows it is whole) must not keep that
    // buffer alive while the stream waits for its upstream.
    let feed = Feed::default();
    let mut body = crate::body::GuardedBody::sse(
        feed.clone(),
        one_guardrail_state(crate::state::Policy::Exact),
    );
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut out = String::new();
    // One read buffer holding one event, then one holding two: the stream waits after each.
    for words in [&["lorem"][..], &[" ipsum", " dolor"], &[" sit"]] {
        let mut read_buffer = bytes::BytesMut::with_capacity(8192);
        let mut ends = Vec::new();
        for word in words {
            read_buffer.extend_from_slice(chat_chunk(word).as_bytes());
            ends.push(read_buffer.len());
        }
        read_buffer.extend_from_slice(b"unread");
        let read_buffer = read_buffer.freeze();
        let mut start = 0;
        for end in ends {
            feed.push(read_buffer.slice(start..end));
            start = end;
        }
        loop {
            match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    out.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap())
                }
                std::task::Poll::Pending => break,
                other => panic!("the stream goes on: {other:?}"),
            }
        }
        let held = body.held_events();
        assert!(!held.is_empty(), "the last word waits for the next event");
        let whole = read_buffer.as_ptr_range();
        for event in held {
            assert!(!whole.contains(&event.raw().as_ptr()));
            assert!(!whole.contains(&event.data_bytes().unwrap().as_ptr()));
        }
    }
    // What was released is the stream as it arrived, but for the events within the longest
    // word's reach of the end (" dolor sit"), still held.
    let expected: String = ["lorem", " ipsum"].into_iter().map(chat_chunk).collect();
    assert_eq!(out, expected);
}

#[tokio::test]
async fn no_post_call_guardrail_means_untouched_passthrough() {
    let opt_in = words("g", vec![("corner", None)]).default_on(false);
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([opt_in]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert_eq!(run.body, CHAT);
    assert!(run.log.is_empty());
    assert!(!run.report.is_observed());
}

#[tokio::test]
async fn an_oversized_event_ends_the_stream_with_an_error_not_unbounded_memory() {
    // A "single event" that never ends: 64 KiB of data with no blank line, over a 4 KiB limit.
    let first = CHAT.split_inclusive("\n\n").next().unwrap().to_owned();
    let endless = format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}",
        "x".repeat(64 * 1024)
    );
    let body = body::chunks([first.clone(), endless]);
    let layer =
        StreamingGuardrailBodyLayer::new(Guardrails::new([words("g", vec![("zzz", None)])]))
            .max_event_size(4096);
    let run = run_stream(CallType::ChatCompletions, layer, body).await;
    assert_eq!(run.status, 200);
    let (released, error) = split_error(CallType::ChatCompletions, &run.body);
    assert_eq!(released, first);
    assert!(
        error.contains("the upstream stream is invalid: server-sent event larger than 4096 bytes"),
        "{error}"
    );
    assert!(error.ends_with("data: [DONE]\n\n"));
}

/// A monitor that would block `word`, answering only once `release` is notified.
fn gated_monitor(word: &'static str, release: Arc<tokio::sync::Notify>) -> ConfiguredGuardrail {
    ConfiguredGuardrail::new(
        "trial",
        GuardrailMode::PostCall,
        guardrail_fn(move |input: GuardrailInput| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(if input.texts().iter().any(|t| t.contains(word)) {
                    Verdict::block(format!("{word} is not allowed"))
                } else {
                    Verdict::allow()
                })
            }
        }),
    )
    .default_on(true)
    .monitor(true)
}

#[tokio::test]
async fn a_monitor_holds_back_no_event_and_changes_no_byte() {
    for (call_type, word) in [
        (CallType::ChatCompletions, "café"),
        (CallType::Responses, "résumé"),
        (CallType::AnthropicMessages, "Zürich"),
    ] {
        let (path, stream) = fixture(call_type);
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([gated_monitor(
            word,
            release.clone(),
        )]));
        // The upstream sends every event, then never ends: whatever a guardrail held back
        // would never reach the client.
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(once(sse(per_event(stream).then_pending())));
        let (req, log) = request(path, STREAM_REQUEST, &[]);
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while got.len() < stream.len() {
            let frame = body.frame().await.expect("a frame").unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(String::from_utf8(got).unwrap(), stream, "{call_type:?}");
        assert!(log.is_empty());
        // The client goes away: the monitor checks what arrived, detached.
        drop(body);
        assert_eq!(log.detached_in_flight(), 1);
        release.notify_one();
        log.settled().await;
        let entries = log.entries();
        assert_eq!(entries.len(), 1, "{call_type:?}");
        assert_eq!(entries[0].guardrail_name, "trial");
        assert_eq!(entries[0].guardrail_mode, GuardrailMode::PostCall);
        assert_eq!(
            entries[0].guardrail_status,
            GuardrailStatus::GuardrailIntervened
        );
        assert_eq!(entries[0].guardrail_action, GuardrailAction::Allow);
        assert_eq!(
            entries[0].guardrail_response,
            format!("{word} is not allowed").as_str()
        );
    }
}

#[tokio::test]
async fn a_monitor_beside_an_enforcing_guardrail_checks_the_whole_stream_once() {
    let release = Arc::new(tokio::sync::Notify::new());
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([
        gated_monitor("corner", release.clone()),
        words("masker", vec![("café", Some("[X]"))]),
    ]));
    let run = run_stream(CallType::ChatCompletions, layer, per_event(CHAT)).await;
    assert_eq!(run.status, 200);
    // The enforcing guardrail masked; the monitor changed nothing.
    assert_eq!(
        streamed_text(CallType::ChatCompletions, &run.body),
        original_text(CallType::ChatCompletions).replace("café", "[X]")
    );
    release.notify_one();
    run.log.settled().await;
    let got: Vec<_> = run
        .log
        .entries()
        .into_iter()
        .map(|e| (e.guardrail_name, e.guardrail_status, e.guardrail_action))
        .collect();
    assert_eq!(
        got,
        [
            (
                "masker".to_owned(),
                GuardrailStatus::GuardrailIntervened,
                GuardrailAction::Mask
            ),
            (
                "trial".to_owned(),
                GuardrailStatus::GuardrailIntervened,
                GuardrailAction::Allow
            ),
        ]
    );
}

#[tokio::test]
async fn a_monitor_on_a_json_response_passes_it_byte_for_byte() {
    let release = Arc::new(tokio::sync::Notify::new());
    let json =
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"the corner café"}}]}"#;
    let run = run_with(
        "/v1/chat/completions",
        r#"{"model":"m","messages":[]}"#,
        StreamingGuardrailBodyLayer::new(Guardrails::new([gated_monitor("café", release.clone())])),
        Response::builder()
            .header("content-type", "application/json")
            .body(body::chunks([json]))
            .unwrap(),
    )
    .await;
    assert_eq!((run.status, run.body.as_str()), (200, json));
    assert!(run.log.is_empty());
    release.notify_one();
    run.log.settled().await;
    let entries = run.log.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].guardrail_status, entries[0].guardrail_action),
        (GuardrailStatus::GuardrailIntervened, GuardrailAction::Allow)
    );
}

/// A monitor that records whether its check saw the request body and the request's headers,
/// and says whether it reads them.
struct SeesRequest {
    reads_body: bool,
    reads_headers: bool,
    saw: Arc<Mutex<Vec<(bool, bool)>>>,
}

impl Guardrail for SeesRequest {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let meta = input.meta();
        self.saw.lock().unwrap().push((
            meta.body_bytes().is_some(),
            meta.headers().contains_key("x-trace"),
        ));
        Ok(Verdict::allow())
    }

    fn reads_request_body(&self) -> bool {
        self.reads_body
    }

    fn reads_request_headers(&self) -> bool {
        self.reads_headers
    }
}

/// A stream's state lives as long as the stream: it keeps the request body (the prompt) and the
/// request's headers only when one of its guardrails reads them, and a guardrail that reads them
/// still finds them at the end of the stream.
#[tokio::test]
async fn a_stream_keeps_the_request_body_and_headers_only_for_a_guardrail_that_reads_them() {
    // (reads_body, reads_headers) of the monitor under test, whether a monitor that reads both
    // runs beside it, and what the monitor under test must see.
    let cases = [
        ((true, true), false, (true, true)),
        ((true, false), false, (true, false)),
        ((false, true), false, (false, true)),
        ((false, false), false, (false, false)),
        ((false, false), true, (true, true)),
    ];
    for ((reads_body, reads_headers), beside_a_reader, expected) in cases {
        let saw = Arc::new(Mutex::new(Vec::new()));
        let monitor = |name, reads_body, reads_headers, saw| {
            ConfiguredGuardrail::new(
                name,
                GuardrailMode::PostCall,
                SeesRequest {
                    reads_body,
                    reads_headers,
                    saw,
                },
            )
            .default_on(true)
            .monitor(true)
        };
        let mut guardrails = vec![
            monitor("seer", reads_body, reads_headers, Arc::clone(&saw)),
            words("masker", vec![("café", Some("[X]"))]),
        ];
        if beside_a_reader {
            guardrails.push(monitor("reader", true, true, Arc::default()));
        }
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new(guardrails));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(once(sse(per_event(CHAT))));
        let (req, log) = request(
            "/v1/chat/completions",
            STREAM_REQUEST,
            &[("x-trace", "t-1")],
        );
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        log.settled().await;
        let case = (reads_body, reads_headers, beside_a_reader);
        assert_eq!(*saw.lock().unwrap(), vec![expected], "{case:?}");
    }
}

/// A Responses item whose text only its `output_item.done` event carries (an MCP call's
/// output: no delta event brings it) is new text, checked as deltas are, under every policy:
/// passed as it is when clean, blocked when not. It was replaced by what the deltas had
/// brought, nothing, so every MCP tool output of a guarded stream reached the client empty.
#[tokio::test]
async fn a_text_only_a_done_event_carries_is_checked_and_kept() {
    let stream = |output: &str| {
        format!(
            concat!(
                "event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"output_index\":0,",
                "\"item\":{{\"type\":\"mcp_call\",\"id\":\"m\",\"name\":\"t\",\"server_label\":\"s\",\"arguments\":\"\"}}}}\n\n",
                "event: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"output_index\":0,",
                "\"item\":{{\"type\":\"mcp_call\",\"id\":\"m\",\"name\":\"t\",\"server_label\":\"s\",\"arguments\":\"\",\"output\":\"{}\"}}}}\n\n",
            ),
            output
        )
    };
    let policies = [
        StreamPolicy::Exact,
        StreamPolicy::DEFAULT_WINDOW,
        StreamPolicy::BufferAll {
            max_bytes: 1 << 20,
            on_overflow: Fallback::FailClosed,
        },
    ];
    for policy in policies {
        let layer = || {
            StreamingGuardrailBodyLayer::new(Guardrails::new([
                words("g", vec![("secret", None)]).stream_policy(policy)
            ]))
        };
        let clean = stream("the tool said hello");
        let run = run_stream(CallType::Responses, layer(), per_event(&clean)).await;
        assert_eq!(
            (run.status, run.body.as_str()),
            (200, clean.as_str()),
            "{policy:?}"
        );
        let run = run_stream(CallType::Responses, layer(), per_event(&stream("a secret"))).await;
        assert!(!run.body.contains("a secret"), "{policy:?}: {}", run.body);
        assert!(
            run.body.contains("blocked word: secret"),
            "{policy:?}: {}",
            run.body
        );
        // Several texts in one `.done` event (the tools an MCP server lists, their schemas)
        // each pass as they are, not merged.
        let listed = concat!(
            "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\",\"output_index\":0,",
            "\"item\":{\"type\":\"mcp_list_tools\",\"id\":\"t\",\"server_label\":\"s\",\"tools\":[",
            "{\"name\":\"a\",\"description\":\"tool a\",\"input_schema\":{\"properties\":{\"x\":{\"description\":\"x of a\"}}}},",
            "{\"name\":\"b\",\"description\":\"tool b\",\"input_schema\":{\"properties\":{\"y\":{\"description\":\"y of b\"}}}}]}}\n\n",
        );
        let run = run_stream(CallType::Responses, layer(), per_event(listed)).await;
        assert_eq!((run.status, run.body.as_str()), (200, listed), "{policy:?}");
    }
}

/// A stream line that is no server-sent-events field (a JSON document sent as an event stream,
/// a field of another name) and an event whose data is not JSON hold text nothing reads: under
/// every policy the client gets none of it, and the stream ends with the in-band error.
#[tokio::test]
async fn lines_and_data_the_guardrails_cannot_read_never_pass() {
    let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"all \"}}]}\n\n";
    let cases = [
        (
            "{\"choices\":[{\"message\":{\"content\":\"marks the spot\"}}]}\n\n",
            "not a server-sent events field",
        ),
        ("note: marks the spot\n\n", "not a server-sent events field"),
        ("data: marks the spot\n\n", "not JSON"),
    ];
    let policies = [
        StreamPolicy::Exact,
        StreamPolicy::DEFAULT_WINDOW,
        StreamPolicy::EndOfStream,
        StreamPolicy::BufferAll {
            max_bytes: 1 << 20,
            on_overflow: Fallback::FailClosed,
        },
    ];
    for (bad, error) in cases {
        for policy in policies {
            let stream = format!("{head}{bad}data: [DONE]\n\n");
            let layer =
                StreamingGuardrailBodyLayer::new(Guardrails::new([
                    words("g", vec![("x", None)]).stream_policy(policy)
                ]));
            let run = run_stream(CallType::ChatCompletions, layer, per_event(&stream)).await;
            assert!(
                !run.body.contains("marks the spot"),
                "{policy:?} {bad}: {}",
                run.body
            );
            assert!(run.body.contains(error), "{policy:?} {bad}: {}", run.body);
        }
    }
}
