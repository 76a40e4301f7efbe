//! The reply text, and the JSON bodies and SSE events of each API.

use bytes::{Bytes, BytesMut};
use guardrail_tower_core::sse::write_event;
use serde_json::{Value, json};

use super::{EMAIL_SENTENCE, SECRET_SENTENCE};

/// Words used to pad a reply to the length `x-mock-events` asks for.
const FILLER: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];

/// The fixed vector every embedding gets.
const EMBEDDING: [f64; 8] = [0.0125, -0.25, 0.5, 0.0, -0.0625, 0.75, -1.0, 0.375];

/// The API a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Chat,
    Responses,
    Messages,
}

/// The reply for `prompt`: `"You said: {prompt}."` plus the sentences the prompt triggers, padded
/// or cut to `words` words when asked.
pub(super) fn reply_text(prompt: &str, words: Option<usize>) -> String {
    let prompt = prompt.trim();
    let mut text = format!("You said: {prompt}.");
    let lower = prompt.to_lowercase();
    if lower.contains("project") {
        text.push_str(SECRET_SENTENCE);
    }
    if lower.contains("email") {
        text.push_str(EMAIL_SENTENCE);
    }
    match words {
        Some(n) => fit_to_words(text, n),
        None => text,
    }
}

fn fit_to_words(mut text: String, n: usize) -> String {
    let have = word_pieces(&text).count();
    if have >= n {
        let end = word_pieces(&text).take(n).map(str::len).sum();
        text.truncate(end);
    } else {
        for filler in FILLER.iter().cycle().take(n - have) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(filler);
        }
    }
    text
}

/// Splits `text` into words, each with the whitespace before it, so the pieces concatenate to
/// `text` (trailing whitespace aside, which a reply never has).
pub(super) fn word_pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.len() - rest.trim_start().len();
        if start == rest.len() {
            return None;
        }
        let word_len = rest[start..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - start);
        let (piece, tail) = rest.split_at(start + word_len);
        rest = tail;
        Some(piece)
    })
}

/// Whitespace-separated words: the mock's token count.
pub(super) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The text of a content value: a string, or the `text` of its parts (chat `text` parts,
/// Responses `input_text` items, Anthropic `text` blocks), joined by spaces.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(s) => Some(s.as_str()),
                Value::Object(obj) => {
                    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("text");
                    if matches!(kind, "text" | "input_text" | "output_text") {
                        obj.get("text").and_then(Value::as_str)
                    } else {
                        None
                    }
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn last_user_message(messages: Option<&Value>) -> String {
    messages
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

/// The prompt of a request: the text of its last user message.
pub(super) fn prompt_of(api: Api, request: &Value) -> String {
    match api {
        Api::Chat | Api::Messages => last_user_message(request.get("messages")),
        Api::Responses => match request.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => {
                let item = items
                    .iter()
                    .rev()
                    .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
                    .or_else(|| items.last());
                match item {
                    Some(item) => match item.get("content") {
                        Some(content) => content_text(content),
                        None => content_text(&Value::Array(vec![item.clone()])),
                    },
                    None => String::new(),
                }
            }
            _ => String::new(),
        },
    }
}

/// Everything a response is built from.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) api: Api,
    /// The request's 1-based number: makes the ids unique.
    pub(super) number: u64,
    /// Epoch seconds.
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) text: String,
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    /// Chat streams: `stream_options.include_usage`.
    pub(super) include_usage: bool,
}

impl Reply {
    pub(super) fn new(api: Api, number: u64, request: &Value, words: Option<usize>) -> Reply {
        let prompt = prompt_of(api, request);
        let text = reply_text(&prompt, words);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Reply {
            api,
            number,
            created,
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock-model")
                .to_owned(),
            prompt_tokens: count_words(&prompt),
            completion_tokens: count_words(&text),
            text,
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    fn chat_id(&self) -> String {
        format!("chatcmpl-mock{:06}", self.number)
    }

    fn response_id(&self) -> String {
        format!("resp_mock{:06}", self.number)
    }

    fn message_id(&self) -> String {
        format!("msg_mock{:06}", self.number)
    }

    /// The whole non-streaming JSON body.
    pub(super) fn json(&self) -> Bytes {
        let value = match self.api {
            Api::Chat => json!({
                "id": self.chat_id(),
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.text,
                        "refusal": null,
                        "annotations": [],
                    },
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": self.chat_usage(),
                "service_tier": "default",
                "system_fingerprint": "fp_mock",
            }),
            Api::Responses => self.response_object("completed", true),
            Api::Messages => json!({
                "id": self.message_id(),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": self.text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {
                    "input_tokens": self.prompt_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": self.completion_tokens,
                },
            }),
        };
        Bytes::from(value.to_string())
    }

    fn chat_usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    fn output_item(&self, status: &str, with_text: bool) -> Value {
        let content = if with_text {
            json!([{"type": "output_text", "annotations": [], "text": self.text}])
        } else {
            json!([])
        };
        json!({
            "id": self.message_id(),
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        })
    }

    /// A Responses API `response` object; `done` adds the output and the usage.
    fn response_object(&self, status: &str, done: bool) -> Value {
        let (output, usage) = if done {
            (
                json!([self.output_item("completed", true)]),
                json!({
                    "input_tokens": self.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": self.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": self.total_tokens(),
                }),
            )
        } else {
            (json!([]), Value::Null)
        };
        json!({
            "id": self.response_id(),
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "max_output_tokens": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }
}

/// The embeddings response for `request`: one fixed vector per input.
pub(super) fn embeddings_json(request: &Value) -> Bytes {
    let inputs = match request.get("input") {
        Some(Value::Array(inputs)) if !inputs.is_empty() => {
            // An array of token ids is one input; an array of strings (or of arrays) is many.
            if inputs.iter().all(Value::is_number) {
                1
            } else {
                inputs.len()
            }
        }
        _ => 1,
    };
    let tokens = request
        .get("input")
        .map_or(0, |input| count_words(&content_text(input)));
    let data: Vec<Value> = (0..inputs)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": EMBEDDING}))
        .collect();
    let value = json!({
        "object": "list",
        "data": data,
        "model": request.get("model").and_then(Value::as_str).unwrap_or("mock-model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Bytes::from(value.to_string())
}

/// A JSON string literal for `s`.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// Writes one API's stream events, one `Bytes` per event, out of one reused buffer.
#[derive(Debug)]
pub(super) struct SseWriter {
    reply: Reply,
    buf: BytesMut,
    /// Responses API `sequence_number` of the next event.
    seq: u64,
    /// Chat: the chunk JSON up to the `delta` value.
    chunk_head: String,
    /// Chat: the chunk JSON after the `delta` value, for a content chunk.
    chunk_tail: String,
    /// Responses: the JSON-quoted item id.
    item_id: String,
}

impl SseWriter {
    pub(super) fn new(reply: Reply) -> SseWriter {
        let (chunk_head, chunk_tail) = if reply.api == Api::Chat {
            (
                format!(
                    r#"{{"id":{},"object":"chat.completion.chunk","created":{},"model":{},"service_tier":"default","system_fingerprint":"fp_mock","choices":[{{"index":0,"delta":"#,
                    json_str(&reply.chat_id()),
                    reply.created,
                    json_str(&reply.model),
                ),
                format!(
                    r#","logprobs":null,"finish_reason":null}}]{}}}"#,
                    if reply.include_usage {
                        r#","usage":null"#
                    } else {
                        ""
                    },
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let item_id = json_str(&reply.message_id());
        SseWriter {
            reply,
            buf: BytesMut::with_capacity(4096),
            seq: 0,
            chunk_head,
            chunk_tail,
            item_id,
        }
    }

    /// Every event of the stream for the whole reply.
    pub(super) fn all_events(mut self) -> Vec<Bytes> {
        let text = std::mem::take(&mut self.reply.text);
        let mut out = Vec::with_capacity(text.len() / 4 + 12);
        self.prelude(&mut out);
        for piece in word_pieces(&text) {
            out.push(self.delta(piece));
        }
        self.reply.text = text;
        self.finale(&mut out);
        out
    }

    fn event(&mut self, event: Option<&str>, data: &str) -> Bytes {
        write_event(&mut self.buf, event, data);
        self.buf.split().freeze()
    }

    fn typed(&mut self, event: &str, value: Value) -> Bytes {
        self.event(Some(event), &value.to_string())
    }

    fn responses_event(&mut self, event: &str, fields: Value) -> Bytes {
        let mut value = json!({"type": event, "sequence_number": self.seq});
        if let (Some(obj), Value::Object(fields)) = (value.as_object_mut(), fields) {
            obj.extend(fields);
        }
        self.seq += 1;
        self.typed(event, value)
    }

    /// The events before the first content delta.
    pub(super) fn prelude(&mut self, out: &mut Vec<Bytes>) {
        match self.reply.api {
            Api::Chat => {
                let data = format!(
                    r#"{}{{"role":"assistant","content":"","refusal":null}}{}"#,
                    self.chunk_head, self.chunk_tail
                );
                out.push(self.event(None, &data));
            }
            Api::Responses => {
                let response = self.reply.response_object("in_progress", false);
                out.push(
                    self.responses_event("response.created", json!({"response": response.clone()})),
                );
                out.push(
                    self.responses_event("response.in_progress", json!({"response": response})),
                );
                let item = self.reply.output_item("in_progress", false);
                out.push(self.responses_event(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": item}),
                ));
                let item_id = self.reply.message_id();
                out.push(self.responses_event(
                    "response.content_part.added",
                    json!({
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "part": {"type": "output_text", "annotations": [], "text": ""},
                    }),
                ));
            }
            Api::Messages => {
                let start = json!({
                    "type": "message_start",
                    "message": {
                        "id": self.reply.message_id(),
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": self.reply.model,
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": {
                            "input_tokens": self.reply.prompt_tokens,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                            "output_tokens": 1,
                        },
                    },
                });
                out.push(self.typed("message_start", start));
                out.push(self.typed(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                out.push(self.typed("ping", json!({"type": "ping"})));
            }
        }
    }

    /// One content delta carrying `piece`.
    pub(super) fn delta(&mut self, piece: &str) -> Bytes {
        let text = json_str(piece);
        match self.reply.api {
            Api::Chat => {
                let data = format!(
                    r#"{}{{"content":{text}}}{}"#,
                    self.chunk_head, self.chunk_tail
                );
                self.event(None, &data)
            }
            Api::Responses => {
                let data = format!(
                    r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":{},"output_index":0,"content_index":0,"delta":{text}}}"#,
                    self.seq, self.item_id
                );
                self.seq += 1;
                self.event(Some("response.output_text.delta"), &data)
            }
            Api::Messages => {
                let data = format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{text}}}}}"#
                );
                self.event(Some("content_block_delta"), &data)
            }
        }
    }

    /// The events after the last content delta.
    fn finale(&mut self, out: &mut Vec<Bytes>) {
        match self.reply.api {
            Api::Chat => {
                let usage_null = if self.reply.include_usage {
                    r#","usage":null"#
                } else {
                    ""
                };
                let data = format!(
                    r#"{}{{}},"logprobs":null,"finish_reason":"stop"}}]{usage_null}}}"#,
                    self.chunk_head
                );
                out.push(self.event(None, &data));
                if self.reply.include_usage {
                    let usage = json!({
                        "id": self.reply.chat_id(),
                        "object": "chat.completion.chunk",
                        "created": self.reply.created,
                        "model": self.reply.model,
                        "service_tier": "default",
                        "system_fingerprint": "fp_mock",
                        "choices": [],
                        "usage": self.reply.chat_usage(),
                    });
                    out.push(self.event(None, &usage.to_string()));
                }
                out.push(self.event(None, "[DONE]"));
            }
            Api::Responses => {
                let item_id = self.reply.message_id();
                let text = self.reply.text.clone();
                out.push(self.responses_event(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
                ));
                out.push(self.responses_event(
                    "response.content_part.done",
                    json!({
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "part": {"type": "output_text", "annotations": [], "text": text},
                    }),
                ));
                let item = self.reply.output_item("completed", true);
                out.push(self.responses_event(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item}),
                ));
                let response = self.reply.response_object("completed", true);
                out.push(self.responses_event("response.completed", json!({"response": response})));
            }
            Api::Messages => {
                out.push(self.typed(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ));
                out.push(self.typed(
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                        "usage": {"output_tokens": self.reply.completion_tokens},
                    }),
                ));
                out.push(self.typed("message_stop", json!({"type": "message_stop"})));
            }
        }
    }
}

/// An endless supply of filler deltas, for the `never-end` fault.
#[derive(Debug)]
pub(super) struct EndlessDeltas {
    writer: SseWriter,
    next: usize,
}

impl EndlessDeltas {
    /// The prelude events, and the generator of the deltas that follow them.
    pub(super) fn new(reply: Reply) -> (Vec<Bytes>, EndlessDeltas) {
        let mut writer = SseWriter::new(reply);
        let mut prelude = Vec::new();
        writer.prelude(&mut prelude);
        (prelude, EndlessDeltas { writer, next: 0 })
    }

    pub(super) fn next_delta(&mut self) -> Bytes {
        let word = FILLER[self.next % FILLER.len()];
        self.next = self.next.wrapping_add(1);
        let piece = format!(" {word}");
        self.writer.delta(&piece)
    }
}
