//! The chat chunk most streams are made of, read straight from its bytes; and the common chat
//! completion response and request.
//!
//! Nearly every event of a chat completions stream is the same small object: an id, a model,
//! some bookkeeping, and one choice whose `delta` carries at most a piece of `content`.
//! [`CallType::read_event`] reads any event through a [`JsonView`](crate::json::JsonView) tree;
//! this reader gets what that one shape carries in one `serde_json` pass with no tree, and gives
//! up (returns `None`) at anything else, so the general reader reads it:
//!
//! - a `delta` field other than `role` and `content` that is not `null` (tool calls,
//!   refusals, reasoning, audio, a `name`, anything unknown), or a `content` that is not a
//!   string or `null`;
//! - a choice's legacy `text` or `logprobs` that is not `null` (the general reader refuses log
//!   probabilities), an `index` that is not a non-negative integer
//!   or `null`, a `delta` or a choice that is not an object, `choices` that is not an array or
//!   `null`, a top-level value that is not an object;
//! - any member it reads written twice (the general reader takes the last, as an upstream's
//!   client does);
//! - anything `serde_json` does not accept as a value (the members it skips are checked as a
//!   whole-document parse checks them: numbers in range, no lone surrogates).
//!
//! When it returns `Some`, the result equals `read_event`'s for the same data (a property test
//! holds the two equal over generated and damaged chunks).
//!
//! A whole chat completion response is read the same way: one choice or more whose `message`
//! carries at most a string `content`, and the `usage` counts
//! ([`CallType::response_texts_and_usage`] tries this reader first). It gives up at a
//! `message` member other than `content` that is not `null`, unless it is one known to hold no
//! text (`role`, `tool_call_id`, an empty `annotations`: the general reader reads `name`, `refusal`,
//! reasoning, `thinking_blocks`, `audio`, `tool_calls`, `function_call`, and a member nobody
//! here knows may hold text too), a `content` that is not a string or `null`, a choice's legacy
//! `text` or `logprobs`, a `usage` that is not an object or `null`, a member it reads written
//! twice, a shape the general reader refuses, and anything `serde_json` does not accept. A
//! choice's and the response's other members (`finish_reason`, `id`, ...) are skipped, as the
//! general reader skips them.
//!
//! A chat completion request is read the same way ([`CallType::read_common_request`], tried
//! first by the gateway's request parser): `messages` whose messages carry at most a string
//! `content` (the same message reader), and the `model`, `stream`, `user` and
//! `metadata.user_id` the gateway reads, skipping the members known to hold no text (sampling,
//! limits, output options). It gives up at any other member that is not `null` (`tools`,
//! `functions`, `prediction`, `response_format`, one nobody here knows), a guardrail selection
//! (`guardrails`, `metadata.guardrails`), `litellm_metadata`, a missing `messages`, a message
//! that is not an object, a member it reads written twice, and anything the general path
//! refuses; so a request whose shape is wrong gets the general path's error.
//!
//! Each of the three is first read by hand ([`Plain`]) when the document is plain JSON (no
//! escape in a name or a skipped string, numbers `serde_json` reads without overflowing), with
//! the same rules; the `serde_json` visitor reads anything else. Property tests hold the hand
//! readers to the visitors.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::stream::{End, EventRead};
use super::walk::key;
use super::{Role, TextKey, TextKind};
use crate::json::{MemberName, Skip, read_object, skip_numbers_and_null};
use crate::plain::{Plain, plain_string_end};
use crate::usage::Counts;
use crate::{CallType, Usage};

impl CallType {
    /// Reads a stream event of the common chat chunk shape straight from its data, without
    /// building a view: its `content` deltas, the choices it finishes, and whether it carries
    /// usage or an error. `None` when the event has any other shape (tool calls, refusals,
    /// reasoning, a member written twice, data that is not JSON, another call type): read it
    /// with [`CallType::read_event`]. When this returns `Some`, `read_event` returns the same.
    ///
    /// ```
    /// use guardrail_tower_protocol::CallType;
    /// use guardrail_tower_protocol::text::{Role, TextKind};
    ///
    /// let data = br#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#;
    /// let read = CallType::ChatCompletions.read_common_event(data).unwrap();
    /// let (key, role, text) = &read.texts[0];
    /// assert_eq!((key.kind, *role, &**text), (TextKind::Content, Role::Delta, "Hel"));
    ///
    /// // A tool call is read by the general reader.
    /// let data = br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#;
    /// assert!(CallType::ChatCompletions.read_common_event(data).is_none());
    /// ```
    pub fn read_common_event(self, data: &[u8]) -> Option<EventRead<'_>> {
        if !matches!(self, CallType::ChatCompletions | CallType::Other) {
            return None;
        }
        read_plain_event(data).or_else(|| read_object(data, ChunkVisitor))
    }

    /// Reads a chat completion response of the common shape (see the module's documentation)
    /// straight from its bytes: its texts in document order and its usage, as
    /// [`CallType::response_texts_and_usage`] returns them. `None` for any other shape or call
    /// type, and for bytes that are not JSON.
    pub(crate) fn read_common_response(self, body: &[u8]) -> Option<(Vec<String>, Option<Usage>)> {
        if self != CallType::ChatCompletions {
            return None;
        }
        let (texts, counts) =
            read_plain_response(body).or_else(|| read_object(body, ResponseVisitor))?;
        Some((texts, counts.and_then(|counts| counts.usage(self))))
    }

    /// Reads a chat completion request of the common shape (see the module's documentation)
    /// straight from its bytes: its `model`, `stream` and `user`, and its guardrail texts in
    /// the order [`CallType::read_texts`] gives them. `None` for any other shape or call type,
    /// for a request that selects guardrails (`guardrails`, `metadata.guardrails`) or carries
    /// `litellm_metadata`, and for bytes that are not JSON: read those through a view.
    ///
    /// ```
    /// use guardrail_tower_protocol::CallType;
    ///
    /// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"user":"u1"}"#;
    /// let read = CallType::ChatCompletions.read_common_request(body).unwrap();
    /// assert_eq!((read.model.as_deref(), read.user.as_deref()), (Some("gpt-4o"), Some("u1")));
    /// assert_eq!(read.texts, ["Hi"]);
    ///
    /// // Content parts are read by the general reader.
    /// let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#;
    /// assert!(CallType::ChatCompletions.read_common_request(body).is_none());
    /// ```
    pub fn read_common_request(self, body: &[u8]) -> Option<CommonRequest<'_>> {
        if self != CallType::ChatCompletions {
            return None;
        }
        read_plain_request(body).or_else(|| read_object(body, RequestVisitor))
    }
}

/// Reads the events of one stream as [`CallType::read_common_event`] does, remembering the
/// last chunk it read by hand: the chunks of a chat completions stream are the same bytes but
/// for the piece of `content` each carries (the same id, timestamp, model and bookkeeping), so
/// a chunk whose bytes before and after its content string are those of the last one is the
/// same chunk with another string in that place, and only that string is read (about 250
/// instructions instead of 3,800 for the bench's chunks).
///
/// That holds because JSON is read left to right: the bytes before the string put a reader in
/// the same place as they did in the last chunk (inside the content string), the string ends at
/// its first unescaped quote, which must be where the same closing bytes begin, and those bytes
/// then read as they did. So what it returns is what `read_common_event` returns for the same
/// data. A member whose value changes from chunk to chunk (OpenAI's `obfuscation` padding) makes
/// every chunk a new one, read in full.
///
/// ```
/// use guardrail_tower_protocol::CallType;
/// use guardrail_tower_protocol::text::ChunkReader;
///
/// let mut reader = ChunkReader::default();
/// for (data, text) in [
///     (&br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#[..], "Hel"),
///     (br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"lo \"you\""},"finish_reason":null}]}"#, "lo \"you\""),
/// ] {
///     let read = reader.read(CallType::ChatCompletions, data).unwrap();
///     assert_eq!(read, CallType::ChatCompletions.read_common_event(data).unwrap());
///     assert_eq!(read.texts[0].2, text);
/// }
/// ```
#[derive(Debug, Default)]
pub struct ChunkReader {
    /// The bytes of the last chunk read by hand that had exactly one content string, before
    /// and after that string: up to its opening quote, then from its closing quote (empty when
    /// the last chunk had none, or more than [`MAX_REMEMBERED`] bytes of them).
    last: Vec<u8>,
    /// Where in `last` the bytes after the string begin.
    split: usize,
    /// What that chunk read as, but for its text: the text's key (`None` when nothing is
    /// remembered), and the rest.
    key: Option<TextKey>,
    ends: Vec<End>,
    has_usage: bool,
    upstream_error: bool,
}

/// The most bytes [`ChunkReader`] keeps of a chunk (all but its content string): chat chunks
/// have a few hundred; a stream that sends more keeps nothing.
const MAX_REMEMBERED: usize = 4096;

impl ChunkReader {
    /// The event `data` holds, as [`CallType::read_common_event`] reads it.
    pub fn read<'a>(&mut self, call_type: CallType, data: &'a [u8]) -> Option<EventRead<'a>> {
        if !matches!(call_type, CallType::ChatCompletions | CallType::Other) {
            return None;
        }
        if let Some(read) = self.read_like_last(data) {
            return Some(read);
        }
        self.last.clear();
        self.key = None;
        let mut at = ContentAt::None;
        let Some(read) = read_plain_event_at(data, &mut at) else {
            return read_object(data, ChunkVisitor);
        };
        if let (ContentAt::One(open, close), [(key, _, _)]) = (at, &read.texts[..])
            && open + 1 + data.len() - close <= MAX_REMEMBERED
        {
            self.last.extend_from_slice(&data[..=open]);
            self.last.extend_from_slice(&data[close..]);
            self.split = open + 1;
            self.key = Some(*key);
            self.ends.clone_from(&read.ends);
            self.has_usage = read.has_usage;
            self.upstream_error = read.upstream_error;
        }
        Some(read)
    }

    /// The event, when `data` is the last chunk with another content string.
    fn read_like_last<'a>(&self, data: &'a [u8]) -> Option<EventRead<'a>> {
        let key = self.key?;
        let (before, after) = self.last.split_at(self.split);
        if data.len() < before.len() + after.len()
            || !data.starts_with(before)
            || !data.ends_with(after)
        {
            return None;
        }
        let close = data.len() - after.len();
        let string = &data[before.len()..close];
        // One string: no quote before `close` but escaped ones, no control character.
        let mut escaped = false;
        let mut i = 0;
        while let Some(at) = plain_string_end(string.get(i..)?) {
            if string[i + at] != b'\\' {
                return None;
            }
            escaped = true;
            i += at + 2;
        }
        let content = if escaped {
            // With its quotes, for `serde_json` to decode.
            let quoted = crate::utf8(&data[before.len() - 1..=close])?;
            Cow::Owned(serde_json::from_str::<String>(quoted).ok()?)
        } else {
            Cow::Borrowed(crate::utf8(string)?)
        };
        Some(EventRead {
            texts: smallvec::smallvec![(key, Role::Delta, content)],
            ends: self.ends.clone(),
            has_usage: self.has_usage,
            upstream_error: self.upstream_error,
            ..EventRead::default()
        })
    }
}

/// What a chat completion request of the common shape holds for the gateway, read by
/// [`CallType::read_common_request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonRequest<'a> {
    /// `model`, when it is a string.
    pub model: Option<Cow<'a, str>>,
    /// Whether `stream` is `true`.
    pub stream: bool,
    /// `user` when it is a string, else `metadata.user_id` when that is one.
    pub user: Option<Cow<'a, str>>,
    /// The guardrail texts (each message's `content`), in order; borrowed from the body unless
    /// they had escapes.
    pub texts: Vec<Cow<'a, str>>,
}

/// The common chunk read by hand ([`Plain`]) when it is plain JSON: what [`ChunkVisitor`] reads,
/// with the same rules, without `serde_json`'s visitors (about 3,800 instructions for the
/// bench's 240-byte chunk, against the visitor's 5,900). `None` at anything outside the plain
/// subset (an escape in a member name, a `\u` escape of a surrogate in a skipped string, a
/// number beyond the plain range, ...) as at anything the visitor gives up at: the visitor then
/// reads the data.
fn read_plain_event(data: &[u8]) -> Option<EventRead<'_>> {
    read_plain_event_at(data, &mut ContentAt::default())
}

/// Where the one `content` string of a chunk lies in its data: the indexes of its opening and
/// closing quotes. `Many` when the chunk has more than one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ContentAt {
    #[default]
    None,
    One(usize, usize),
    Many,
}

/// [`read_plain_event`], noting where the chunk's content string lies.
fn read_plain_event_at<'a>(data: &'a [u8], at: &mut ContentAt) -> Option<EventRead<'a>> {
    let mut chunk = Plain::new(data)?;
    let mut out = EventRead::default();
    let mut seen = [false; 3];
    chunk.object(|chunk, name| match name {
        "choices" => {
            plain_once(&mut seen[0])?;
            if !chunk.null()? {
                let mut position = 0;
                chunk.array(|choice| {
                    read_plain_choice(choice, &mut out, position, at)?;
                    position += 1;
                    Some(())
                })?;
            }
            Some(())
        }
        "error" => {
            plain_once(&mut seen[1])?;
            out.upstream_error = chunk.non_null()?;
            Some(())
        }
        "usage" => {
            plain_once(&mut seen[2])?;
            out.has_usage = chunk.non_null()?;
            Some(())
        }
        _ => chunk.skip(),
    })?;
    chunk.end()?;
    Some(out)
}

/// One choice, as [`Choice`] reads it.
fn read_plain_choice<'a>(
    choice: &mut Plain<'a>,
    out: &mut EventRead<'a>,
    position: u64,
    at: &mut ContentAt,
) -> Option<()> {
    let mut seen = [false; 4];
    let (mut index, mut content, mut finished) = (None, None, false);
    choice.object(|choice, name| {
        match name {
            "index" => {
                plain_once(&mut seen[0])?;
                index = if choice.null()? {
                    None
                } else {
                    Some(choice.u64()?)
                };
            }
            "delta" => {
                plain_once(&mut seen[1])?;
                if !choice.null()? {
                    content = read_plain_delta(choice, at)?;
                }
            }
            "text" => {
                plain_once(&mut seen[2])?;
                if choice.non_null()? {
                    return None;
                }
            }
            "finish_reason" => {
                plain_once(&mut seen[3])?;
                finished = choice.non_null()?;
            }
            // The tokens of the text, which the general reader refuses.
            "logprobs" => {
                if choice.non_null()? {
                    return None;
                }
            }
            _ => choice.skip()?,
        }
        Some(())
    })?;
    let index = index.unwrap_or(position);
    if let Some(content) = content {
        out.texts
            .push((key(index, TextKind::Content, 0), Role::Delta, content));
    }
    if finished {
        out.ends.push(End::Index(index));
    }
    Some(())
}

/// A choice's `delta` object, as [`DeltaContent`] reads it: its `content`.
fn read_plain_delta<'a>(delta: &mut Plain<'a>, at: &mut ContentAt) -> Option<Option<Cow<'a, str>>> {
    read_plain_content(delta, at, |member, name| match name {
        "role" => member.skip(),
        // Every other field of a delta may be text the general reader reads.
        _ => (!member.non_null()?).then_some(()),
    })
}

/// An object's `content` (a string or `null`, once), noting where it lies; `other` reads each
/// other member.
fn read_plain_content<'a>(
    object: &mut Plain<'a>,
    at: &mut ContentAt,
    other: impl Fn(&mut Plain<'a>, &str) -> Option<()>,
) -> Option<Option<Cow<'a, str>>> {
    let mut seen = false;
    let mut content = None;
    object.object(|member, name| {
        if name != "content" {
            return other(member, name);
        }
        plain_once(&mut seen)?;
        if !member.null()? {
            let open = member.position();
            content = Some(member.text()?);
            let close = member.position() - 1;
            *at = match at {
                ContentAt::None => ContentAt::One(open, close),
                _ => ContentAt::Many,
            };
        }
        Some(())
    })?;
    Some(content)
}

/// A whole response read by hand when it is plain JSON, as [`ResponseVisitor`] reads it (about
/// 5,000 instructions for an 800-byte response through the visitor).
fn read_plain_response(body: &[u8]) -> Option<(Vec<String>, Option<Counts>)> {
    let mut response = Plain::new(body)?;
    let mut texts = Vec::new();
    let mut counts = None;
    let mut seen = [false; 2];
    response.object(|response, name| match name {
        "choices" => {
            plain_once(&mut seen[0])?;
            if !response.null()? {
                response.array(|choice| {
                    texts.extend(read_plain_response_choice(choice)?);
                    Some(())
                })?;
            }
            Some(())
        }
        "usage" => {
            plain_once(&mut seen[1])?;
            if !response.null()? {
                counts = Some(Counts::read_plain_value(response)?);
            }
            Some(())
        }
        _ => response.skip(),
    })?;
    response.end()?;
    Some((texts, counts))
}

/// One choice of a response, as [`ResponseChoice`] reads it.
fn read_plain_response_choice(choice: &mut Plain<'_>) -> Option<Option<String>> {
    let mut seen = [false; 2];
    let mut content = None;
    choice.object(|choice, name| match name {
        "message" => {
            plain_once(&mut seen[0])?;
            if !choice.null()? {
                content = read_plain_message(choice)?.map(Cow::into_owned);
            }
            Some(())
        }
        "text" => {
            plain_once(&mut seen[1])?;
            (!choice.non_null()?).then_some(())
        }
        // The tokens of the text, which the general reader refuses.
        "logprobs" => (!choice.non_null()?).then_some(()),
        _ => choice.skip(),
    })?;
    Some(content)
}

/// The members of a chat message (a request's or a response's) that [`MessageContent`] and
/// [`read_plain_message`] know: `content`, then the ones that hold no text the general reader
/// reads, which they skip (`annotations` only when `null` or empty: the general reader reads
/// the titles of cited pages). Any other member that is not `null` gives up, so a member is
/// skipped only when it is known to hold no text: one the general reader reads (`name`,
/// `refusal`, reasoning, `thinking_blocks`, `audio`, `tool_calls`, `function_call`) or one
/// nobody here knows goes to the general reader.
const MESSAGE_MEMBERS: &[&str] = &["content", "role", "annotations", "tool_call_id"];

/// A response's message or a request's, as [`MessageContent`] reads it: its `content`.
fn read_plain_message<'a>(message: &mut Plain<'a>) -> Option<Option<Cow<'a, str>>> {
    read_plain_content(message, &mut ContentAt::None, |member, name| {
        if name == "annotations" {
            // `null` or an empty list only: the general reader reads the titles of cited
            // pages, and refuses another shape.
            if member.peek()? == b'[' {
                member.array(|_| None)
            } else {
                (!member.non_null()?).then_some(())
            }
        } else if MESSAGE_MEMBERS[1..].contains(&name) {
            member.skip()
        } else {
            (!member.non_null()?).then_some(())
        }
    })
}

/// The top-level members of a chat completion request that [`RequestVisitor`] and
/// [`read_plain_request`] know: the five they read (`messages`, `model`, `stream`, `user`,
/// `metadata`), two that select guardrails or that the gateway removes (they give up at
/// those), then the ones that hold no text a guardrail reads (sampling, limits, output
/// options), which they skip. Any other member that is not `null` gives up: `tools`,
/// `functions`, `prediction` and `response_format` hold texts the general reader reads, and a
/// member nobody here knows may.
const REQUEST_MEMBERS: &[&str] = &[
    "messages",
    "model",
    "stream",
    "user",
    "metadata",
    "guardrails",
    "litellm_metadata",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "n",
    "stop",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "tool_choice",
    "function_call",
    "parallel_tool_calls",
    "reasoning_effort",
    "verbosity",
    "service_tier",
    "store",
    "prompt_cache_key",
    "safety_identifier",
    "top_k",
];

/// Where the members [`REQUEST_MEMBERS`] lists as holding no text start.
const REQUEST_NO_TEXT: usize = 7;

/// A whole request read by hand when it is plain JSON, as [`RequestVisitor`] reads it (about
/// 6,000 instructions for the bench's 1,200-byte request through the visitor).
fn read_plain_request(body: &[u8]) -> Option<CommonRequest<'_>> {
    let mut request = Plain::new(body)?;
    let mut out = CommonRequest::default();
    let mut seen = [false; 5];
    let mut user_id = None;
    request.object(|request, name| {
        match name {
            "messages" => {
                plain_once(&mut seen[0])?;
                request.array(|message| {
                    out.texts.extend(read_plain_message(message)?);
                    Some(())
                })?;
            }
            "model" => {
                plain_once(&mut seen[1])?;
                out.model = plain_string_or_none(request)?;
            }
            "stream" => {
                plain_once(&mut seen[2])?;
                // `true` (checked by `skip`), or any other value.
                out.stream = request.peek()? == b't';
                request.skip()?;
            }
            "user" => {
                plain_once(&mut seen[3])?;
                out.user = plain_string_or_none(request)?;
            }
            "metadata" => {
                plain_once(&mut seen[4])?;
                if request.peek()? == b'{' {
                    let mut seen = false;
                    request.object(|metadata, name| match name {
                        "user_id" => {
                            plain_once(&mut seen)?;
                            user_id = plain_string_or_none(metadata)?;
                            Some(())
                        }
                        "guardrails" => None,
                        _ => metadata.skip(),
                    })?;
                } else {
                    request.skip()?;
                }
            }
            "guardrails" | "litellm_metadata" => return None,
            _ if REQUEST_MEMBERS[REQUEST_NO_TEXT..].contains(&name) => request.skip()?,
            // Texts the hand reader does not collect (`tools`, `prediction`, ...), or a
            // member it does not know: the general reader reads them.
            _ => {
                if request.non_null()? {
                    return None;
                }
            }
        }
        Some(())
    })?;
    request.end()?;
    if !seen[0] {
        return None;
    }
    if out.user.is_none() {
        out.user = user_id;
    }
    Some(out)
}

/// Any plain value: the string, when it is one, as [`StringOrNone`] reads it.
fn plain_string_or_none<'a>(value: &mut Plain<'a>) -> Option<Option<Cow<'a, str>>> {
    if value.peek()? == b'"' {
        return value.text().map(Some);
    }
    value.skip()?;
    Some(None)
}

/// Marks a member as read; `None` (not the common shape) when it is written twice.
fn plain_once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// Why the reader gave up; never shown (the general reader reads the event instead).
fn not_common<E: de::Error>() -> E {
    E::custom("not the common chunk shape")
}

/// Marks a member as read, giving up when it is written twice.
fn once<E: de::Error>(seen: &mut bool) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(not_common());
    }
    Ok(())
}

/// Whether a member's value is anything but `null` (the value is checked and skipped).
fn non_null<'de, A: MapAccess<'de>>(map: &mut A) -> Result<bool, A::Error> {
    Ok(map.next_value::<Option<Skip>>()?.is_some())
}

/// The chunk: `choices`, `error` and `usage` are read, every other member skipped.
struct ChunkVisitor;

impl<'de> Visitor<'de> for ChunkVisitor {
    type Value = EventRead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a chat completion chunk")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventRead<'de>, A::Error> {
        const NAMES: &[&str] = &["choices", "error", "usage"];
        let mut out = EventRead::default();
        let mut seen = [false; 3];
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen[0])?;
                    map.next_value_seed(OrNull(Choices(&mut out)))?;
                }
                Some(1) => {
                    once(&mut seen[1])?;
                    out.upstream_error = non_null(&mut map)?;
                }
                Some(2) => {
                    once(&mut seen[2])?;
                    out.has_usage = non_null(&mut map)?;
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(out)
    }
}

/// `choices` (when not `null`): an array of choices, each read into the event.
struct Choices<'r, 'de>(&'r mut EventRead<'de>);

impl<'de> DeserializeSeed<'de> for Choices<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Choices<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of choices")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0;
        while seq
            .next_element_seed(Choice {
                out: self.0,
                position,
            })?
            .is_some()
        {
            position += 1;
        }
        Ok(())
    }
}

/// One choice: its `content` delta is text at its `index` (its position when it has none),
/// and a `finish_reason` that is not `null` ends its texts.
struct Choice<'r, 'de> {
    out: &'r mut EventRead<'de>,
    position: u64,
}

impl<'de> DeserializeSeed<'de> for Choice<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Choice<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a choice")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const NAMES: &[&str] = &["index", "delta", "text", "finish_reason", "logprobs"];
        let mut seen = [false; 4];
        let (mut index, mut content, mut finished) = (None, None, false);
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen[0])?;
                    index = map.next_value::<Option<u64>>()?;
                }
                Some(1) => {
                    once(&mut seen[1])?;
                    content = map.next_value_seed(OrNull(DeltaContent))?.flatten();
                }
                Some(2) => {
                    once(&mut seen[2])?;
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
                Some(3) => {
                    once(&mut seen[3])?;
                    finished = non_null(&mut map)?;
                }
                // The tokens of the text, which the general reader refuses.
                Some(_) => {
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        let index = index.unwrap_or(self.position);
        if let Some(content) = content {
            let text_key = key(index, TextKind::Content, 0);
            self.out.texts.push((text_key, Role::Delta, content));
        }
        if finished {
            self.out.ends.push(End::Index(index));
        }
        Ok(())
    }
}

/// A choice's `delta` (when not `null`): an object whose only members other than `null` are
/// `role` and a string `content`; its value is that content.
struct DeltaContent;

impl<'de> DeserializeSeed<'de> for DeltaContent {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DeltaContent {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a delta")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: &[&str] = &["content", "role"];
        let mut seen = false;
        let mut content = None;
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen)?;
                    content = map.next_value_seed(OrNull(Text))?;
                }
                Some(_) => {
                    map.next_value::<Skip>()?;
                }
                // Every other field of a delta may be text the general reader reads.
                None => {
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
            }
        }
        Ok(content)
    }
}

/// A whole response: `choices` and `usage` are read, every other member skipped.
struct ResponseVisitor;

impl<'de> Visitor<'de> for ResponseVisitor {
    type Value = (Vec<String>, Option<Counts>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a chat completion")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: &[&str] = &["choices", "usage"];
        let mut texts = Vec::new();
        let mut counts = None;
        let mut seen = [false; 2];
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen[0])?;
                    map.next_value_seed(OrNull(EachText(ResponseChoice, &mut texts)))?;
                }
                Some(_) => {
                    once(&mut seen[1])?;
                    // Taken as text and read by `Counts::read` (by hand when plain). `RawValue`
                    // passes over the value as laxly as `IgnoredAny` does, so a usage the
                    // plain reader leaves is parsed strictly, and the whole read fails with it.
                    counts = map
                        .next_value::<Option<&RawValue>>()?
                        .map(|raw| Counts::read(raw.get().as_bytes()).map_err(de::Error::custom))
                        .transpose()?;
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok((texts, counts))
    }
}

/// An array whose elements `S` reads, each giving at most one text, collected in order: a
/// response's `choices` ([`ResponseChoice`]) and a request's `messages` ([`MessageContent`]).
struct EachText<'r, S, T>(S, &'r mut Vec<T>);

impl<'de, S, T> DeserializeSeed<'de> for EachText<'_, S, T>
where
    S: DeserializeSeed<'de, Value = Option<T>> + Copy,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, S, T> Visitor<'de> for EachText<'_, S, T>
where
    S: DeserializeSeed<'de, Value = Option<T>> + Copy,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(text) = seq.next_element_seed(self.0)? {
            self.1.extend(text);
        }
        Ok(())
    }
}

/// One choice of a response: its `message`'s content, if any; a legacy `text` that is not
/// `null` is left to the general reader.
#[derive(Clone, Copy)]
struct ResponseChoice;

impl<'de> DeserializeSeed<'de> for ResponseChoice {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResponseChoice {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a choice")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: &[&str] = &["message", "text", "logprobs"];
        let mut seen = [false; 2];
        let mut content = None;
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen[0])?;
                    content = map
                        .next_value_seed(OrNull(MessageContent))?
                        .flatten()
                        .map(Cow::into_owned);
                }
                Some(1) => {
                    once(&mut seen[1])?;
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
                // The tokens of the text, which the general reader refuses.
                Some(_) => {
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(content)
    }
}

/// A response's `message` (when not `null`) or a request's message: an object whose members
/// that may hold text are `null`, but for a string `content`; its value is that content.
#[derive(Clone, Copy)]
struct MessageContent;

impl<'de> DeserializeSeed<'de> for MessageContent {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageContent {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = false;
        let mut content = None;
        while let Some(name) = map.next_key_seed(MemberName(MESSAGE_MEMBERS))? {
            match name {
                Some(0) => {
                    once(&mut seen)?;
                    content = map.next_value_seed(OrNull(Text))?;
                }
                // `annotations`: only an empty list (the general reader reads the titles of
                // cited pages).
                Some(2) => {
                    if map
                        .next_value::<Option<Vec<Skip>>>()?
                        .is_some_and(|a| !a.is_empty())
                    {
                        return Err(not_common());
                    }
                }
                // `role`, `tool_call_id`: no text.
                Some(_) => {
                    map.next_value::<Skip>()?;
                }
                // A member the general reader reads text from, or one nobody here knows.
                None => {
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
            }
        }
        Ok(content)
    }
}

/// A whole chat completion request: `messages`, `model`, `stream`, `user` and `metadata` are
/// read, and the members known to hold no text ([`REQUEST_MEMBERS`]) skipped; a member that
/// selects guardrails gives up, and so does any other that is not `null` (`tools`,
/// `functions`, `prediction`, `response_format`, an unknown one), which the general reader
/// reads.
struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = CommonRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a chat completion request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = CommonRequest::default();
        let mut seen = [false; 5];
        let mut user_id = None;
        while let Some(name) = map.next_key_seed(MemberName(REQUEST_MEMBERS))? {
            match name {
                Some(i @ 0..5) => {
                    once(&mut seen[i])?;
                    match i {
                        // Each message with at most a string `content` among the members the
                        // general reader reads text from.
                        0 => map.next_value_seed(EachText(MessageContent, &mut out.texts))?,
                        1 => out.model = map.next_value_seed(StringOrNone)?,
                        2 => out.stream = map.next_value_seed(IsTrue)?,
                        3 => out.user = map.next_value_seed(StringOrNone)?,
                        _ => user_id = map.next_value_seed(Metadata)?,
                    }
                }
                // A guardrail selection, or keys the gateway removes before forwarding.
                Some(5 | 6) => return Err(not_common()),
                // Sampling, limits, output options: no text.
                Some(_) => {
                    map.next_value::<Skip>()?;
                }
                // `tools`, `functions`, `prediction`, `response_format` (unless `null`) hold
                // texts the general reader reads; a member nobody here knows may.
                None => {
                    if non_null(&mut map)? {
                        return Err(not_common());
                    }
                }
            }
        }
        // `messages` is required: its absence is an error the general reader reports.
        if !seen[0] {
            return Err(not_common());
        }
        if out.user.is_none() {
            out.user = user_id;
        }
        Ok(out)
    }
}

/// A request's `metadata`: its `user_id` when the metadata is an object and that is a string;
/// a `guardrails` member in it gives up. Any other value is skipped.
struct Metadata;

impl<'de> DeserializeSeed<'de> for Metadata {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Metadata {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const NAMES: &[&str] = &["user_id", "guardrails"];
        let mut seen = false;
        let mut user_id = None;
        while let Some(name) = map.next_key_seed(MemberName(NAMES))? {
            match name {
                Some(0) => {
                    once(&mut seen)?;
                    user_id = map.next_value_seed(StringOrNone)?;
                }
                Some(_) => return Err(not_common()),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(user_id)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Skip.visit_seq(seq).map(|_| None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    skip_numbers_and_null!(None);
}

/// Any value: the string, when it is one (borrowed unless it had escapes), else `None`.
struct StringOrNone;

impl<'de> DeserializeSeed<'de> for StringOrNone {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringOrNone {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Skip.visit_map(map).map(|_| None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Skip.visit_seq(seq).map(|_| None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    skip_numbers_and_null!(None);
}

/// Any value: whether it is `true`.
struct IsTrue;

impl<'de> DeserializeSeed<'de> for IsTrue {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsTrue {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        Skip.visit_map(map).map(|_| false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        Skip.visit_seq(seq).map(|_| false)
    }

    skip_numbers_and_null!(false);
}

/// A string, borrowed unless it has escapes.
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// `null` (`None`), or what `S` reads.
struct OrNull<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for OrNull<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for OrNull<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests;
