//! `guarded_sse_body`: SSE bodies through [`StreamingGuardrailBodyLayer`] with a content filter
//! that blocks the keyword `secret` and masks emails (exact stream policy), on the chat
//! completions, Responses and Anthropic messages endpoints.
//!
//! Input: a path byte (`/v1/chat/completions`, `/chat/completions`, `/v1/responses`,
//! `/v1/messages`), a mode byte (low 2 bits: the stream; bit 2: a 2 KiB maximum event size
//! instead of 1 MiB; bit 3: in mode 1, the recorded stream of another endpoint), split points,
//! then by mode:
//!
//! - 0: the rest is the stream, as is;
//! - 1: the recorded stream of `crates/protocol/testdata` for the endpoint, with up to 4 splices
//!   (a `u16` position, a byte: how many bytes to delete (`% 16`), a byte: how many to insert
//!   (`% 32`), the inserted bytes);
//! - 2 and 3: text deltas made for the endpoint, then its final event: per delta a control byte
//!   (`% 3`: the channel; bit 7: a piece from [`TOKENS`] chosen by the next byte, else the next
//!   `b % 24` bytes as text).
//!
//! Checks: no panic; the response is the upstream's 200; its body ends (polled to completion,
//! no hang) without an error; it decodes as SSE, every event ends with a blank line (only a
//! final event the upstream itself left unterminated may not); an in-band error the layer
//! added is an event of its own whose data is JSON; and no text delta channel the client
//! receives contains the keyword on word boundaries (in any letter case). Channels are read as a
//! client reads them (`serde_json::Value`: a duplicate key's last value wins). One exception: a
//! block cuts the stream, so a channel may end with the keyword's letters where, upstream, a word
//! character followed (`secret` of `secrets`, released before another channel's block).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::sse::{SseDecoder, SseEvent};
use guardrail_tower_core::{CallType, ConfiguredGuardrail, GuardrailMode, Guardrails};
use guardrail_tower_guardrails::content_filter::{
    BlockedWord, ContentFilter, ContentFilterConfig, FilterAction, PatternConfig,
};
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::body::{TestBody, chunks};
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

use super::common::{Input, drive, show, split};

/// The blocked keyword.
pub const KEYWORD: &str = "secret";

/// The filter's block message, as it appears in an in-band error.
const BLOCK_MESSAGE: &str = "keyword 'secret' detected";

const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/responses",
    "/v1/messages",
];

/// Pieces of text that form keywords, emails and word boundaries.
pub const TOKENS: &[&str] = &[
    "secret",
    "SeCrEt",
    "sec",
    "ret",
    "s",
    "ecret",
    "secre",
    "t",
    " ",
    ".",
    "_",
    "x",
    "é",
    "ß",
    "a@b.com",
    "john.doe@example.org",
    "@",
    "\n",
    "\"",
    "secrets",
    "—",
    "1",
];

const CHAT: &[u8] = include_bytes!("../../crates/protocol/testdata/openai_chat.sse");
const RESPONSES: &[u8] = include_bytes!("../../crates/protocol/testdata/openai_responses.sse");
const ANTHROPIC: &[u8] = include_bytes!("../../crates/protocol/testdata/anthropic_messages.sse");

thread_local! {
    static LAYERS: [StreamingGuardrailBodyLayer; 2] = {
        let filter = ContentFilter::new(ContentFilterConfig {
            blocked_words: vec![BlockedWord::new(KEYWORD, FilterAction::Block)],
            patterns: vec![PatternConfig::prebuilt("email", FilterAction::Mask)],
            ..Default::default()
        })
        .expect("a valid content filter");
        let guardrail = ConfiguredGuardrail::new("content-filter", GuardrailMode::PostCall, filter)
            .default_on(true);
        let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([guardrail]));
        [layer.clone(), layer.max_event_size(2048)]
    };
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let path = PATHS[usize::from(input.byte()) % PATHS.len()];
    let call_type = CallType::from_path(path);
    let mode = input.byte();
    let small_events = mode & 4 != 0;
    let points = input.points();
    let stream = match mode % 4 {
        0 => input.rest().to_vec(),
        1 => spliced(recorded(call_type, mode & 8 != 0), &mut input),
        _ => synthesized(call_type, &mut input),
    };
    check(path, small_events, &stream, &points);
}

/// Runs `stream`, cut at `points`, through the layer on `path`, and checks the response.
pub fn check(path: &str, small_events: bool, stream: &[u8], points: &[usize]) {
    let call_type = CallType::from_path(path);
    let layer = LAYERS.with(|layers| layers[usize::from(small_events)].clone());
    let upstream = Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(chunks(split(stream, points)))
        .expect("a valid response");
    let slot = Arc::new(Mutex::new(Some(upstream)));
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let response: Response<TestBody> = slot
            .lock()
            .expect("not poisoned")
            .take()
            .expect("one request");
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let service = layer.layer(inner);
    let request = Request::post(path)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(request_body(call_type))))
        .expect("a valid request");

    let response = match drive(service.oneshot(request)) {
        Ok(response) => response,
        Err(never) => match never {},
    };
    assert_eq!(response.status(), StatusCode::OK);
    let out = drive(response.into_body().collect())
        .unwrap_or_else(|e| panic!("the guarded body fails: {e}; upstream {:?}", show(stream)))
        .to_bytes();

    let events = decode_all(&out);
    let ends_open = decode_all(stream).last().is_some_and(|e| !e.is_complete());
    for (i, event) in events.iter().enumerate() {
        assert!(
            event.is_complete() || (i + 1 == events.len() && ends_open),
            "event {i} of the output is not terminated: {:?}\noutput {:?}\nupstream {:?}",
            show(event.raw()),
            show(&out),
            show(stream)
        );
    }
    let added = count(&out, BLOCK_MESSAGE) > count(stream, BLOCK_MESSAGE);
    if added {
        let intact = events.iter().any(|e| {
            e.data()
                .and_then(|d| serde_json::from_slice::<Value>(d).ok())
                .is_some_and(|v| v.to_string().contains(BLOCK_MESSAGE))
        });
        assert!(
            intact,
            "the in-band error is not an event of its own: {:?}",
            show(&out)
        );
    }

    let received = channels_of(call_type, &events);
    let sent = channels_of(call_type, &decode_all(stream));
    for (channel, text) in &received {
        for end in keyword_ends(text) {
            // A block cuts the stream: the last text a channel got before it may end with the
            // keyword's letters although, upstream, a letter followed (`secret` of `secrets`).
            // That is no keyword on word boundaries. (With a mask in the channel the offsets
            // differ from the upstream's; such a cut is let pass.)
            let cut_inside_word = added
                && end == text.chars().count()
                && (text.contains("[EMAIL_REDACTED]")
                    || sent
                        .iter()
                        .find(|(c, _)| c == channel)
                        .is_some_and(|(_, up)| {
                            up.starts_with(text.as_str())
                                && up[text.len()..].chars().next().is_some_and(word)
                        }));
            assert!(
                cut_inside_word,
                "{path}: channel {channel} sends the keyword: {text:?}\noutput {:?}\nupstream {:?}",
                show(&out),
                show(stream)
            );
        }
    }
}

/// The text of each channel, in order of first appearance.
fn channels_of(call_type: CallType, events: &[SseEvent]) -> Vec<(String, String)> {
    let mut channels: Vec<(String, String)> = Vec::new();
    for event in events {
        let Some(value) = event.data().and_then(|d| serde_json::from_slice(d).ok()) else {
            continue;
        };
        for (channel, text) in deltas(call_type, &value) {
            match channels.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, all)) => all.push_str(&text),
                None => channels.push((channel, text)),
            }
        }
    }
    channels
}

fn decode_all(stream: &[u8]) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::with_max_event_size(usize::MAX);
    decoder.push(Bytes::copy_from_slice(stream));
    let mut events = Vec::new();
    while let Some(event) = decoder.finish().expect("no size limit") {
        events.push(event);
    }
    events
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// The text deltas of one event as a client reads them (`serde_json::Value`, so a duplicate
/// key's last value wins, and fields the client does not read may hold anything), with their
/// channel.
fn deltas(call_type: CallType, value: &Value) -> Vec<(String, String)> {
    let index = |v: &Value, key: &str| match v.get(key) {
        None => String::from("0"),
        Some(i) => i.to_string(),
    };
    let mut out = Vec::new();
    match call_type {
        CallType::Responses => {
            if value["type"] == "response.output_text.delta" {
                if let Some(text) = value["delta"].as_str() {
                    let channel = format!(
                        "{}/{}",
                        index(value, "output_index"),
                        index(value, "content_index")
                    );
                    out.push((channel, text.to_owned()));
                }
            }
        }
        CallType::AnthropicMessages => {
            if value["type"] == "content_block_delta" && value["delta"]["type"] == "text_delta" {
                if let Some(text) = value["delta"]["text"].as_str() {
                    out.push((index(value, "index"), text.to_owned()));
                }
            }
        }
        _ => {
            if let Some(choices) = value["choices"].as_array() {
                for choice in choices {
                    if let Some(text) = choice["delta"]["content"].as_str() {
                        out.push((index(choice, "index"), text.to_owned()));
                    }
                }
            }
        }
    }
    out
}

fn word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where (in chars) each occurrence of the keyword on word boundaries in `text` ends, matched
/// as the content filter does (ASCII case, and single-character lower case of other letters).
pub fn keyword_ends(text: &str) -> Vec<usize> {
    let lower = |c: char| {
        let mut l = c.to_lowercase();
        match (l.next(), l.next()) {
            (Some(one), None) => one,
            _ => c,
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let keyword: Vec<char> = KEYWORD.chars().collect();
    let n = keyword.len();
    (0..chars.len())
        .filter(|&i| {
            chars.len() - i >= n
                && chars[i..i + n]
                    .iter()
                    .zip(&keyword)
                    .all(|(c, k)| lower(*c) == *k)
                && (i == 0 || !word(chars[i - 1]))
                && chars.get(i + n).is_none_or(|c| !word(*c))
        })
        .map(|i| i + n)
        .collect()
}

fn request_body(call_type: CallType) -> Vec<u8> {
    let body = match call_type {
        CallType::Responses => json!({"model": "m", "stream": true, "input": "hi"}),
        CallType::AnthropicMessages => json!({
            "model": "m", "stream": true, "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]
        }),
        _ => json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    };
    serde_json::to_vec(&body).expect("JSON")
}

fn recorded(call_type: CallType, other: bool) -> &'static [u8] {
    let streams = [CHAT, RESPONSES, ANTHROPIC];
    let own = match call_type {
        CallType::Responses => 1,
        CallType::AnthropicMessages => 2,
        _ => 0,
    };
    streams[if other { (own + 1) % 3 } else { own }]
}

fn spliced(stream: &[u8], input: &mut Input<'_>) -> Vec<u8> {
    let mut out = stream.to_vec();
    for _ in 0..4 {
        if input.is_empty() {
            break;
        }
        let at = usize::from(input.u16()) % (out.len() + 1);
        let delete = usize::from(input.byte() % 16).min(out.len() - at);
        let insert = usize::from(input.byte() % 32);
        let bytes = input.take(insert);
        out.splice(at..at + delete, bytes.iter().copied());
    }
    out
}

fn synthesized(call_type: CallType, input: &mut Input<'_>) -> Vec<u8> {
    let mut out = String::new();
    let mut seq = 0;
    while !input.is_empty() {
        let ctl = input.byte();
        let channel = ctl % 3;
        let text = if ctl & 0x80 != 0 {
            TOKENS[usize::from(input.byte()) % TOKENS.len()].to_owned()
        } else {
            let n = usize::from(input.byte() % 24);
            String::from_utf8_lossy(input.take(n)).into_owned()
        };
        seq += 1;
        let event = match call_type {
            CallType::Responses => format!(
                "event: response.output_text.delta\ndata: {}\n\n",
                json!({"type": "response.output_text.delta", "sequence_number": seq,
                       "item_id": "msg_1", "output_index": channel, "content_index": 0,
                       "delta": text})
            ),
            CallType::AnthropicMessages => format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": channel,
                       "delta": {"type": "text_delta", "text": text}})
            ),
            _ => format!(
                "data: {}\n\n",
                json!({"choices": [{"index": channel, "delta": {"content": text}}]})
            ),
        };
        out.push_str(&event);
    }
    out.push_str(match call_type {
        CallType::Responses => {
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n"
        }
        CallType::AnthropicMessages => "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        _ => "data: [DONE]\n\n",
    });
    out.into_bytes()
}
