//! What each SSE event of a call type carries for the guardrails, read with borrowed typed views
//! (no `serde_json::Value` per event), and the rewriting of an event whose text changed.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use guardrail_tower_core::CallType;
use guardrail_tower_core::sse::SseEvent;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// A text channel of a stream: a chat choice `(index, 0)`, a Responses
/// `(output_index, content_index)`, an Anthropic content block `(index, 0)`.
pub(crate) type ChannelKey = (u64, u64);

fn responses_key(output_index: u64, content_index: u64) -> ChannelKey {
    (output_index, content_index)
}

/// Which channels' complete text a summary event repeats (Responses `*.done` and
/// `response.completed` events carry the whole text again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Summary {
    Channel(ChannelKey),
    Output(u64),
    All,
}

/// What one event means for the guardrails.
#[derive(Debug, Default)]
pub(crate) struct Classified<'a> {
    /// New text per channel, in order.
    pub(crate) texts: Vec<(ChannelKey, Cow<'a, str>)>,
    /// Channels whose text ends with this event.
    pub(crate) ends: Vec<ChannelKey>,
    /// Complete texts this event repeats.
    pub(crate) summary: Option<Summary>,
    /// The stream's text ends here (`[DONE]`, `response.completed`, `message_stop`).
    pub(crate) terminal: bool,
    /// The Responses `sequence_number`.
    pub(crate) sequence_number: Option<u64>,
    /// The event may carry usage; parse it fully to read it.
    pub(crate) has_usage: bool,
    /// The event announces the Responses response object (`response.created`).
    pub(crate) announces_response: bool,
    /// An error event from the upstream, passed through as is.
    pub(crate) upstream_error: bool,
}

/// A JSON string borrowed from the event's bytes when it has no escapes. (`#[serde(borrow)]`
/// does not borrow through `Option<Cow<str>>`; through this newtype it does.)
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> Str<'a> {
    fn into_cow(self) -> Cow<'a, str> {
        self.0
    }
}

#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<ChatDelta<'a>>,
    /// Text completions carry the text here.
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    content_index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<AnthropicDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
}

/// Classifies one event. Data that is not JSON (comments, keep-alives, `[DONE]`) has no text a
/// client could read and passes as it came.
///
/// Well-formed events go through borrowed typed views. JSON that the strict views reject but a
/// client still reads (a `null` index, a duplicated key, a number given as a string) is read
/// again as a `Value`, with the lenient rules clients apply, so no text can slip past the
/// guardrails unchecked.
pub(crate) fn classify<'a>(call_type: CallType, event: &'a SseEvent) -> Classified<'a> {
    let Some(data) = event.data() else {
        return Classified::default();
    };
    if let Some(classified) = classify_typed(call_type, data) {
        return classified;
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(value) => classify_value(call_type, &value),
        Err(_) => Classified::default(),
    }
}

fn classify_typed(call_type: CallType, data: &[u8]) -> Option<Classified<'_>> {
    let mut out = Classified::default();
    match call_type {
        CallType::Responses => {
            let e = serde_json::from_slice::<ResponsesEvent<'_>>(data).ok()?;
            out.sequence_number = e.sequence_number;
            let key = responses_key(e.output_index.unwrap_or(0), e.content_index.unwrap_or(0));
            match &*e.kind.0 {
                "response.output_text.delta" => {
                    if let Some(delta) = e.delta {
                        out.texts.push((key, delta.into_cow()));
                    }
                }
                "response.output_text.done" => {
                    out.ends.push(key);
                    out.summary = Some(Summary::Channel(key));
                }
                "response.content_part.done" => out.summary = Some(Summary::Channel(key)),
                "response.output_item.done" => {
                    out.summary = Some(Summary::Output(e.output_index.unwrap_or(0)));
                }
                "response.completed" | "response.incomplete" | "response.failed" => {
                    out.terminal = true;
                    out.summary = Some(Summary::All);
                    out.has_usage = true;
                }
                "response.created" | "response.in_progress" => out.announces_response = true,
                "error" => out.upstream_error = true,
                _ => {}
            }
        }
        CallType::AnthropicMessages => {
            let e = serde_json::from_slice::<AnthropicEvent<'_>>(data).ok()?;
            let index = e.index.unwrap_or(0);
            match &*e.kind.0 {
                "content_block_delta" => {
                    if let Some(AnthropicDelta {
                        kind: Some(kind),
                        text: Some(text),
                    }) = e.delta
                    {
                        if kind.0 == "text_delta" {
                            out.texts.push(((index, 0), text.into_cow()));
                        }
                    }
                }
                "content_block_stop" => out.ends.push((index, 0)),
                "message_stop" => out.terminal = true,
                "message_start" | "message_delta" => out.has_usage = true,
                "error" => out.upstream_error = true,
                _ => {}
            }
        }
        _ => {
            if data == b"[DONE]" {
                out.terminal = true;
                return Some(out);
            }
            let chunk = serde_json::from_slice::<ChatChunk<'_>>(data).ok()?;
            out.upstream_error = chunk.error.is_some();
            out.has_usage = chunk.usage.is_some();
            for choice in chunk.choices {
                let text = choice.delta.and_then(|d| d.content).or(choice.text);
                if let Some(text) = text {
                    out.texts.push(((choice.index, 0), text.into_cow()));
                }
                if choice.finish_reason.is_some() {
                    out.ends.push((choice.index, 0));
                }
            }
        }
    }
    Some(out)
}

/// The lenient reading of an event the typed views rejected: what a client that reads it as
/// loose JSON would take from it.
fn classify_value(call_type: CallType, v: &Value) -> Classified<'static> {
    let mut out = Classified::default();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| Cow::Owned(s.to_owned()));
    let index = |v: &Value, name: &str| v.get(name).and_then(Value::as_u64).unwrap_or(0);
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match call_type {
        CallType::Responses => {
            out.sequence_number = v.get("sequence_number").and_then(Value::as_u64);
            let key = responses_key(index(v, "output_index"), index(v, "content_index"));
            match kind {
                "response.output_text.delta" => {
                    if let Some(delta) = text(v.get("delta")) {
                        out.texts.push((key, delta));
                    }
                }
                "response.output_text.done" => {
                    out.ends.push(key);
                    out.summary = Some(Summary::Channel(key));
                }
                "response.content_part.done" => out.summary = Some(Summary::Channel(key)),
                "response.output_item.done" => {
                    out.summary = Some(Summary::Output(index(v, "output_index")));
                }
                "response.completed" | "response.incomplete" | "response.failed" => {
                    out.terminal = true;
                    out.summary = Some(Summary::All);
                    out.has_usage = true;
                }
                "response.created" | "response.in_progress" => out.announces_response = true,
                "error" => out.upstream_error = true,
                _ => {}
            }
        }
        CallType::AnthropicMessages => {
            let key = (index(v, "index"), 0);
            match kind {
                "content_block_delta" => {
                    let delta = v.get("delta");
                    let is_text = delta.and_then(|d| d.get("type")).and_then(Value::as_str)
                        == Some("text_delta");
                    if let (true, Some(t)) = (is_text, text(delta.and_then(|d| d.get("text")))) {
                        out.texts.push((key, t));
                    }
                }
                "content_block_stop" => out.ends.push(key),
                "message_stop" => out.terminal = true,
                "message_start" | "message_delta" => out.has_usage = true,
                "error" => out.upstream_error = true,
                _ => {}
            }
        }
        _ => {
            out.upstream_error = v.get("error").is_some_and(|e| !e.is_null());
            out.has_usage = v.get("usage").is_some_and(|u| !u.is_null());
            for choice in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let key = (index(choice, "index"), 0);
                let t = text(choice.get("delta").and_then(|d| d.get("content")))
                    .or_else(|| text(choice.get("text")));
                if let Some(t) = t {
                    out.texts.push((key, t));
                }
                if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    out.ends.push(key);
                }
            }
        }
    }
    out
}

/// Parses an event's data as JSON (for the rare events that need the full value: usage, the
/// announced response, rewriting).
pub(crate) fn data_value(event: &SseEvent) -> Option<Value> {
    serde_json::from_slice(event.data()?).ok()
}

/// Writes an event with new data, keeping its `event:` and `id:` fields.
pub(crate) fn encode(event: &SseEvent, data: &Value) -> Bytes {
    let json = serde_json::to_string(data).expect("a serde_json::Value always serializes");
    let mut buf = BytesMut::with_capacity(json.len() + 64);
    if let Some(kind) = event.event_type() {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = event.id() {
        buf.put_slice(b"id: ");
        buf.put_slice(id);
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    buf.put_slice(json.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// Replaces the text a delta event carries for `key` with `text`.
pub(crate) fn set_delta_text(call_type: CallType, data: &mut Value, key: ChannelKey, text: &str) {
    let text = Value::String(text.to_owned());
    match call_type {
        CallType::Responses => {
            if let Some(slot) = data.get_mut("delta") {
                *slot = text;
            }
        }
        CallType::AnthropicMessages => {
            if let Some(slot) = data.get_mut("delta").and_then(|d| d.get_mut("text")) {
                *slot = text;
            }
        }
        _ => {
            let Some(Value::Array(choices)) = data.get_mut("choices") else {
                return;
            };
            for choice in choices {
                if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != key.0 {
                    continue;
                }
                if let Some(slot) = choice.get_mut("delta").and_then(|d| d.get_mut("content")) {
                    *slot = text;
                    return;
                }
                if let Some(slot) = choice.get_mut("text") {
                    *slot = text;
                    return;
                }
            }
        }
    }
}

/// Replaces the complete texts a Responses summary event repeats, with `text_of(key)` giving
/// each channel's complete (masked) text.
pub(crate) fn set_summary_texts(data: &mut Value, text_of: &dyn Fn(ChannelKey) -> Option<String>) {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let index = |name: &str, v: &Value| v.get(name).and_then(Value::as_u64).unwrap_or(0);
    match kind.as_str() {
        "response.output_text.done" => {
            let key = responses_key(index("output_index", data), index("content_index", data));
            if let (Some(text), Some(slot)) = (text_of(key), data.get_mut("text")) {
                *slot = Value::String(text);
            }
        }
        "response.content_part.done" => {
            let key = responses_key(index("output_index", data), index("content_index", data));
            if let (Some(text), Some(slot)) = (
                text_of(key),
                data.get_mut("part").and_then(|p| p.get_mut("text")),
            ) {
                *slot = Value::String(text);
            }
        }
        "response.output_item.done" => {
            let output = index("output_index", data);
            if let Some(item) = data.get_mut("item") {
                set_item_texts(item, output, text_of);
            }
        }
        _ => {
            if let Some(Value::Array(items)) =
                data.get_mut("response").and_then(|r| r.get_mut("output"))
            {
                for (output, item) in items.iter_mut().enumerate() {
                    set_item_texts(item, output as u64, text_of);
                }
            }
        }
    }
}

fn set_item_texts(item: &mut Value, output: u64, text_of: &dyn Fn(ChannelKey) -> Option<String>) {
    let Some(Value::Array(parts)) = item.get_mut("content") else {
        return;
    };
    for (content, part) in parts.iter_mut().enumerate() {
        if let (Some(text), Some(slot)) = (
            text_of(responses_key(output, content as u64)),
            part.get_mut("text"),
        ) {
            *slot = Value::String(text);
        }
    }
}

/// Whether a summary event covers `key`.
pub(crate) fn summary_covers(summary: &Summary, key: ChannelKey) -> bool {
    match summary {
        Summary::Channel(k) => *k == key,
        Summary::Output(o) => key.0 == *o,
        Summary::All => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardrail_tower_core::sse::SseDecoder;

    fn events(stream: &str) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        d.push(Bytes::copy_from_slice(stream.as_bytes()));
        let mut out = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    fn text_of(call_type: CallType, stream: &str) -> (String, usize, usize) {
        let mut text = String::new();
        let (mut ends, mut terminals) = (0, 0);
        for e in events(stream) {
            let c = classify(call_type, &e);
            for (_, t) in c.texts {
                text.push_str(&t);
            }
            ends += c.ends.len();
            terminals += usize::from(c.terminal);
        }
        (text, ends, terminals)
    }

    #[test]
    fn recorded_streams() {
        let (text, ends, terminals) = text_of(
            CallType::ChatCompletions,
            include_str!("../../protocol/testdata/openai_chat.sse"),
        );
        assert_eq!(
            text,
            "Hello! The café on the corner serves ☕ and 🥐, and its Wi-Fi password is \"guest\"."
        );
        assert_eq!((ends, terminals), (1, 1));
        let (text, ends, terminals) = text_of(
            CallType::Responses,
            include_str!("../../protocol/testdata/openai_responses.sse"),
        );
        assert_eq!(text, "Hi! Naïve résumé tips — keep it short 📝.");
        assert_eq!((ends, terminals), (1, 1));
        let (text, ends, terminals) = text_of(
            CallType::AnthropicMessages,
            include_str!("../../protocol/testdata/anthropic_messages.sse"),
        );
        assert_eq!(text, "Hello! Grüße aus Zürich 🇨🇭. How can I help?");
        assert_eq!((ends, terminals), (1, 1));
    }

    #[test]
    fn text_is_borrowed_from_the_event_when_it_can_be() {
        let e = &events(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"plain\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"line\\nbreak\"}}]}\n\n",
        );
        let c = classify(CallType::ChatCompletions, &e[0]);
        assert!(matches!(c.texts[0].1, Cow::Borrowed("plain")));
        let c = classify(CallType::ChatCompletions, &e[1]);
        assert!(matches!(&c.texts[0].1, Cow::Owned(s) if s == "line\nbreak"));
    }

    #[test]
    fn rewriting_keeps_other_fields() {
        let e = &events(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"secret\"},\"logprobs\":null}]}\n\n",
        )[0];
        let mut v = data_value(e).unwrap();
        set_delta_text(CallType::ChatCompletions, &mut v, (1, 0), "[X]");
        assert_eq!(
            encode(e, &v),
            "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"[X]\"},\"logprobs\":null}]}\n\n"
        );
        let e = &events(
            "event: content_block_delta\nid: 7\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
        )[0];
        let mut v = data_value(e).unwrap();
        set_delta_text(CallType::AnthropicMessages, &mut v, (0, 0), "b");
        assert_eq!(
            encode(e, &v),
            "event: content_block_delta\nid: 7\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n"
        );
    }

    #[test]
    fn summary_rewrites() {
        let mut v: Value = serde_json::from_str(
            r#"{"type":"response.completed","response":{"output":[{"type":"message","content":[{"type":"output_text","text":"a secret"}]}]}}"#,
        )
        .unwrap();
        set_summary_texts(&mut v, &|k| {
            (k == responses_key(0, 0)).then(|| "a [X]".to_owned())
        });
        assert_eq!(v["response"]["output"][0]["content"][0]["text"], "a [X]");
        assert!(summary_covers(&Summary::Output(0), responses_key(0, 3)));
        assert!(!summary_covers(&Summary::Output(1), responses_key(0, 3)));
        assert_ne!(responses_key(1 << 32, 0), responses_key(0, 0));
    }

    #[test]
    fn json_the_strict_views_reject_is_still_checked() {
        // Each reaches a client with the text "a secret"; none may bypass the guardrails.
        let cases = [
            (
                CallType::ChatCompletions,
                "data: {\"choices\":[{\"index\":null,\"delta\":{\"content\":\"a secret\"}}]}\n\n",
            ),
            (
                CallType::ChatCompletions,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\",\"content\":\"a secret\"}}]}\n\n",
            ),
            (
                CallType::ChatCompletions,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a secret\"},\"finish_reason\":7}]}\n\n",
            ),
            (
                CallType::AnthropicMessages,
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":\"0\",\"delta\":{\"type\":\"text_delta\",\"text\":\"a secret\"}}\n\n",
            ),
            (
                CallType::Responses,
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":-1,\"output_index\":0,\"content_index\":0,\"delta\":\"a secret\"}\n\n",
            ),
        ];
        for (call_type, stream) in cases {
            let e = &events(stream)[0];
            let c = classify(call_type, e);
            let texts: Vec<&str> = c.texts.iter().map(|(_, t)| &**t).collect();
            assert_eq!(texts, ["a secret"], "{stream}");
        }
    }

    #[test]
    fn garbage_is_passed_as_no_text() {
        for call_type in [
            CallType::ChatCompletions,
            CallType::Responses,
            CallType::AnthropicMessages,
        ] {
            for stream in [
                "data: not json\n\n",
                ": ping\n\n",
                "data: {\"choices\": 7}\n\n",
                "data: \u{FFFD}\n\n",
            ] {
                let e = &events(stream)[0];
                let c = classify(call_type, e);
                assert!(
                    c.texts.is_empty() && c.ends.is_empty() && !c.terminal,
                    "{stream:?}"
                );
            }
        }
    }
}
