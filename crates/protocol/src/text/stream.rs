//! Stream events through the same text view as bodies: what one server-sent event of a call
//! type carries (new text, complete texts repeated, the end of a text or of the stream, usage,
//! an upstream error), and the event rewritten with new texts.
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_protocol::CallType;
//! use guardrail_tower_protocol::json::JsonView;
//! use guardrail_tower_protocol::text::{Role, TextKind};
//! use guardrail_tower_sse::SseDecoder;
//!
//! let mut decoder = SseDecoder::new();
//! decoder.push(Bytes::from_static(
//!     b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"q\\\":\"}}]}}]}\n\n",
//! ));
//! let event = decoder.next_event().unwrap().unwrap();
//! let view = JsonView::parse(event.data().unwrap()).unwrap();
//! let read = CallType::ChatCompletions.read_event(event.event_type(), &view).unwrap();
//! let (key, role, text) = &read.texts[0];
//! assert_eq!((key.kind, *role, &**text), (TextKind::Arguments, Role::Delta, "{\"q\":"));
//! ```

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use guardrail_tower_sse::SseEvent;
use serde_json::Value;
use smallvec::SmallVec;

use super::walk::Path;
use super::{Role, ShapeError, TextKey, first_problem_and_media, view, write};
use crate::CallType;
use crate::json::JsonView;

/// A text that ends with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// Every text with this index (a chat choice finished, a Responses output item or an
    /// Anthropic content block is done).
    Index(u64),
    /// One text.
    Key(TextKey),
}

impl End {
    /// Whether this end covers `key`.
    pub fn covers(&self, key: &TextKey) -> bool {
        match self {
            End::Index(i) => key.index == *i,
            End::Key(k) => k == key,
        }
    }
}

/// What one stream event carries for the guardrails and the spend log.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventRead<'a> {
    /// Its texts in order, each new ([`Role::Delta`]) or complete ([`Role::Full`]). Most
    /// events carry one, kept inline.
    pub texts: SmallVec<[(TextKey, Role, Cow<'a, str>); 1]>,
    /// The texts that end with it.
    pub ends: Vec<End>,
    /// The stream's text ends with it (`[DONE]`, `response.completed`, `message_stop`).
    pub terminal: bool,
    /// It may carry usage (read it from the full value).
    pub has_usage: bool,
    /// It announces the Responses API response object (`response.created`).
    pub announces_response: bool,
    /// It is an error event from the upstream.
    pub upstream_error: bool,
    /// The Responses API `sequence_number`.
    pub sequence_number: Option<u64>,
    /// It carries an image the model made (a Responses `image_generation_call` item, or a
    /// partial image of one), which no text guardrail reads.
    pub media: bool,
}

impl EventRead<'_> {
    /// Whether it carries any text.
    pub fn has_text(&self) -> bool {
        !self.texts.is_empty()
    }
}

/// The type of an event: its data's `type` when that is a string, else its `event:` field.
fn kind_of<'a>(event_type: Option<&'a str>, view: &'a JsonView<'_>) -> Option<&'a str> {
    view.get("type").and_then(JsonView::as_str).or(event_type)
}

impl CallType {
    /// Reads one event whose data parsed as `view` (`event_type` is its `event:` field).
    /// Events whose data is not JSON are read by [`CallType::read_non_json_event`].
    ///
    /// A text field of a shape no client would read as text, or a `*.delta` event or delta
    /// type this view does not know, is an error: the stream cannot be checked past it.
    pub fn read_event<'v>(
        self,
        event_type: Option<&str>,
        view: &'v JsonView<'v>,
    ) -> Result<EventRead<'v>, ShapeError> {
        let mut out = EventRead::default();
        let kind = kind_of(event_type, view);
        let mut problem = None;
        let mut media = false;
        {
            let mut emit = |k: TextKey, role: Role, t: Cow<'v, str>| out.texts.push((k, role, t));
            let mut bad = first_problem_and_media(&mut problem, |_| media = true);
            view::event(self, kind, view, &mut emit, &mut bad);
        }
        out.media = media;
        if let Some(problem) = problem {
            return Err(problem);
        }
        let index = |name: &str| view.get(name).and_then(JsonView::as_u64).unwrap_or(0);
        match self {
            CallType::Responses => {
                out.sequence_number = view.get("sequence_number").and_then(JsonView::as_u64);
                let (output, content) = (index("output_index"), index("content_index"));
                let key = |kind| TextKey {
                    index: output,
                    kind,
                    sub: content,
                };
                use super::TextKind::*;
                match kind.unwrap_or("") {
                    "response.output_text.done" => out.ends.push(End::Key(key(Content))),
                    "response.refusal.done" => out.ends.push(End::Key(key(Refusal))),
                    "response.reasoning_text.done" => {
                        out.ends.push(End::Key(key(ReasoningContent)))
                    }
                    "response.reasoning_summary_text.done" => out.ends.push(End::Key(TextKey {
                        index: output,
                        kind: Reasoning,
                        sub: index("summary_index"),
                    })),
                    "response.function_call_arguments.done"
                    | "response.custom_tool_call_input.done"
                    | "response.mcp_call_arguments.done"
                    | "response.code_interpreter_call_code.done"
                    | "response.apply_patch_call_operation_diff.done" => {
                        out.ends.push(End::Key(TextKey {
                            index: output,
                            kind: Arguments,
                            sub: 0,
                        }))
                    }
                    "response.shell_call_command.done" => out.ends.push(End::Key(TextKey {
                        index: output,
                        kind: Arguments,
                        sub: index("command_index"),
                    })),
                    "response.output_item.done" => out.ends.push(End::Index(output)),
                    "response.completed" | "response.incomplete" | "response.failed" => {
                        out.terminal = true;
                        out.has_usage = true;
                    }
                    "response.created" | "response.in_progress" | "response.queued" => {
                        out.announces_response = true
                    }
                    "error" => out.upstream_error = true,
                    _ => {}
                }
            }
            CallType::AnthropicMessages => match kind.unwrap_or("") {
                "content_block_stop" => out.ends.push(End::Index(index("index"))),
                "message_stop" => out.terminal = true,
                "message_start" | "message_delta" => out.has_usage = true,
                "error" => out.upstream_error = true,
                _ => {}
            },
            _ => {
                out.upstream_error = view.get("error").is_some_and(|e| *e != JsonView::Null);
                out.has_usage = view.get("usage").is_some_and(|u| *u != JsonView::Null);
                if let Some(JsonView::Array(choices)) = view.get("choices") {
                    for (i, choice) in choices.iter().enumerate() {
                        let finished = choice
                            .get("finish_reason")
                            .is_some_and(|f| *f != JsonView::Null);
                        if finished {
                            let index = choice
                                .get("index")
                                .and_then(JsonView::as_u64)
                                .unwrap_or(i as u64);
                            out.ends.push(End::Index(index));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads an event whose data is not JSON: `[DONE]` (which ends a chat or completions
    /// stream) and blank data carry no text. Anything else is `None`: a client may still read
    /// text in it (JavaScript's and Python's parsers take `1e400` as infinity and keep a lone
    /// surrogate, which `serde_json` refuses; plain text is text), so it cannot be checked.
    pub fn read_non_json_event<'a>(self, data: &[u8]) -> Option<EventRead<'a>> {
        let trimmed = data.trim_ascii();
        if !trimmed.is_empty() && trimmed != b"[DONE]" {
            return None;
        }
        Some(EventRead {
            terminal: data == b"[DONE]"
                && matches!(
                    self,
                    CallType::ChatCompletions | CallType::TextCompletions | CallType::Other
                ),
            ..EventRead::default()
        })
    }

    /// The event with its texts rewritten: `f` gets the position (in the order
    /// [`CallType::read_event`] returns them), key and role of each text, and may change it.
    /// Its `event:` and `id:` fields are kept. `None` when the data is not JSON.
    pub fn rewrite_event(
        self,
        event: &SseEvent,
        mut f: impl FnMut(usize, TextKey, Role, &mut String),
    ) -> Option<Bytes> {
        let mut data: Value = crate::json::from_slice(event.data()?).ok()?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event_type())
            .map(str::to_owned);
        let mut position = 0;
        let mut emit = |k: TextKey, role: Role, s: &mut String| {
            f(position, k, role, s);
            position += 1;
        };
        let mut ignore = |_: &Path<'_>, _: &'static str| {};
        write::event(self, kind.as_deref(), &mut data, &mut emit, &mut ignore);
        Some(encode_event(event, &data))
    }
}

/// Writes `event` with new data, keeping its `event:` and `id:` fields.
pub fn encode_event(event: &SseEvent, data: &Value) -> Bytes {
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
