//! What the spend log needs from an event stream as it passes: the usage it reports and the
//! upstream's own error events, read by whichever layer frames the stream.

use std::sync::LazyLock;

use guardrail_tower_sse::{RawEvent, SseEvent};
use http::StatusCode;
use memchr::memmem;
use serde_json::Value;

use crate::{CONTENT_POLICY_VIOLATION, CallType, Error, ErrorClass, ResponseReport, Usage};

/// Reads a stream's usage and the upstream's in-band error events into a [`ResponseReport`].
///
/// Every layer that frames a stream into events can read it: the streaming guardrail layer,
/// the error layer (which releases whole events), or the spend-log layer itself when no layer
/// inside it does. The first to see the response marks the report observed
/// ([`ResponseReport::set_observed`]) and the others leave the stream alone, so one stream is
/// framed for the log once, and the log reads the same usage and errors whichever layer read
/// them.
///
/// ```
/// use bytes::Bytes;
/// use guardrail_tower_core::sse::SseDecoder;
/// use guardrail_tower_core::{CallType, ResponseReport, StreamWatch};
///
/// let report = ResponseReport::new();
/// let mut watch = StreamWatch::new(CallType::ChatCompletions);
/// let mut decoder = SseDecoder::new();
/// decoder.push(Bytes::from_static(
///     b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
///       data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
/// ));
/// while let Some(event) = decoder.next_raw().unwrap() {
///     watch.observe_raw(&event, &report);
/// }
/// assert_eq!(report.usage().unwrap().total_tokens, 4);
/// ```
#[derive(Debug, Clone)]
pub struct StreamWatch {
    call_type: CallType,
    usage: Option<Usage>,
}

impl StreamWatch {
    /// A watch over a stream of `call_type`.
    pub fn new(call_type: CallType) -> Self {
        StreamWatch {
            call_type,
            usage: None,
        }
    }

    /// Reads one framed event. Most events are content deltas the log has no use for: only one
    /// that may name its type, report usage or carry an error is split into fields.
    pub fn observe_raw(&mut self, event: &RawEvent, report: &ResponseReport) {
        if may_matter(event.fields()) {
            self.observe(&event.clone().parse(), report);
        }
    }

    /// Whether none of the events of `chunk` matters to the log, given that they are each a
    /// single `data:` line ([`SseDecoder::is_whole_data_events`]): such an event matters only
    /// when its data mentions `"usage"` or `"error"`, so a chunk that mentions neither can pass
    /// without being framed into events.
    ///
    /// [`SseDecoder::is_whole_data_events`]: crate::sse::SseDecoder::is_whole_data_events
    pub fn ignores_data_events(&self, chunk: &[u8]) -> bool {
        !mentions_usage_or_error(chunk)
    }

    /// Reads one parsed event.
    pub fn observe(&mut self, event: &SseEvent, report: &ResponseReport) {
        let Some(bytes) = event.data() else { return };
        let kind = event.event_type();
        let mentions_error = ERROR.find(bytes).is_some();
        let interesting = matches!(
            kind,
            Some(
                "error"
                    | "response.completed"
                    | "response.incomplete"
                    | "response.failed"
                    | "message_start"
                    | "message_delta"
            )
        ) || mentions_error
            || has_usage(bytes);
        if !interesting {
            return;
        }
        let before = self.usage;
        // A chunk of the APIs whose usage is the top-level `usage` (chat, completions, ...), with
        // no error and no escape (so no key is spelled another way): the usage read from the
        // bytes, as the parsed chunk would give it, without building a `Value`. It is the last
        // chunk of every stream that asks for usage.
        let value = if kind.is_none()
            && !matches!(
                self.call_type,
                CallType::Responses | CallType::AnthropicMessages
            )
            && !mentions_error
            && memchr::memchr(b'\\', bytes).is_none()
        {
            if let Some(usage) = Usage::from_response_bytes(self.call_type, bytes) {
                self.usage = Some(usage);
            }
            None
        } else {
            let Ok(value) = crate::json::from_slice::<Value>(bytes) else {
                return;
            };
            Usage::update_from_event(&mut self.usage, self.call_type, kind, &value);
            Some(value)
        };
        if let Some(usage) = self.usage.filter(|_| self.usage != before) {
            report.set_usage(usage);
        }
        // No `Value`: the chunk was read from its bytes, and it mentions no error.
        let Some(value) = value else {
            return;
        };
        let is_error = kind == Some("error")
            || (kind.is_none() && value.get("error").is_some_and(|e| !e.is_null()));
        if is_error {
            report.set_in_band_error(upstream_error_event(&value));
        }
    }
}

/// The error an upstream's in-band error event (`{"error": {...}}`, or an `error` event of the
/// Responses or Anthropic API) stands for in the spend log: its message and code as the
/// upstream wrote them, 502, and a policy block when the code is `content_policy_violation` (an
/// upstream's own content filter), so the log counts it with the guardrails' blocks.
pub fn upstream_error_event(value: &Value) -> Error {
    let error = value.get("error").unwrap_or(value);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("error event in the stream");
    let mut err = Error::new(StatusCode::BAD_GATEWAY, message.to_owned());
    if let Some(code) = error
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| value.get("code").and_then(Value::as_str))
    {
        err = err.with_code(code.to_owned());
        if code == CONTENT_POLICY_VIOLATION {
            err = err.with_class(ErrorClass::PolicyBlock);
        }
    }
    err
}

/// Whether an event may matter to the log: anything but a single `data:` line, or data that
/// mentions `"usage"` or `"error"`.
fn may_matter(fields: &[u8]) -> bool {
    let Some(data) = fields.strip_prefix(b"data:") else {
        return true;
    };
    let end = memchr::memchr2(b'\r', b'\n', data).unwrap_or(data.len());
    let (data, rest) = data.split_at(end);
    if !rest.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return true;
    }
    mentions_usage_or_error(data)
}

/// Whether `bytes` may carry usage or an error: a `"usage"` key whose value is not `null`, or
/// any `"error"`. OpenAI sends `"usage":null` in every chunk of a stream that asked for usage
/// (`stream_options.include_usage`), and those chunks pass without being framed.
///
/// One search for both words, where a search for each went over every chunk twice: a
/// vectorized search for their shape (a quote, five bytes, a quote), each place found then
/// read. A chat chunk has a few such places (`"index"`, `"delta"`, a five-letter word), and
/// the search for two bytes at once costs less than the search for one string.
fn mentions_usage_or_error(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(finder) = QUOTED_FIVE.as_ref() {
        return quoted_usage_or_error(finder, bytes);
    }
    has_usage(bytes) || ERROR.find(bytes).is_some()
}

/// Finds where a quote is followed six bytes on by another (the shape of `"usage"` and
/// `"error"`); `None` where the CPU has no AVX2.
#[cfg(target_arch = "x86_64")]
static QUOTED_FIVE: LazyLock<Option<memchr::arch::x86_64::avx2::packedpair::Finder>> =
    LazyLock::new(|| {
        let pair = memchr::arch::all::packedpair::Pair::with_indices(b"\"usage\"", 0, 6)?;
        memchr::arch::x86_64::avx2::packedpair::Finder::with_pair(b"\"usage\"", pair)
    });

/// [`mentions_usage_or_error`] by the search for the words' shape.
#[cfg(target_arch = "x86_64")]
fn quoted_usage_or_error(
    finder: &memchr::arch::x86_64::avx2::packedpair::Finder,
    bytes: &[u8],
) -> bool {
    // Whether the shape found at `at` is one of the words, one that matters.
    let matters = |at: usize| match &bytes[at + 1..at + 6] {
        b"usage" => usage_is_not_null(&bytes[at + 7..]),
        b"error" => true,
        _ => false,
    };
    let mut from = 0;
    // The vectorized search needs a few dozen bytes; the end of the chunk is read byte by byte.
    while bytes.len() - from >= finder.min_haystack_len() {
        let Some(found) = finder.find_prefilter(&bytes[from..]) else {
            return false;
        };
        if matters(from + found) {
            return true;
        }
        from += found + 1;
    }
    (from..bytes.len().saturating_sub(6))
        .any(|at| bytes[at] == b'"' && bytes[at + 6] == b'"' && matters(at))
}

/// Whether what follows a `"usage"` key is a value other than `null`.
fn usage_is_not_null(rest: &[u8]) -> bool {
    let rest = rest.trim_ascii_start();
    let rest = rest.strip_prefix(b":").unwrap_or(rest).trim_ascii_start();
    !rest.starts_with(b"null")
}

static USAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static ERROR: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));

/// Whether a chat chunk (or several) carries usage: a `"usage"` key whose value is not `null`
/// (OpenAI-style servers send `"usage":null` in every chunk, and parsing each of them fully is
/// wasted work). Every mention counts: a later one may hold the usage (a second event of the
/// same chunk, or the same key written twice, where the last one wins).
fn has_usage(data: &[u8]) -> bool {
    USAGE
        .find_iter(data)
        .any(|at| usage_is_not_null(&data[at + b"\"usage\"".len()..]))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::{ERROR, StreamWatch, has_usage, mentions_usage_or_error};
    use crate::{CallType, ResponseReport};

    /// The one search for both words answers as a search for each, at every cut of chunks
    /// with usage (null or not, spaced or not, twice), errors in keys and in strings, words
    /// glued together, escapes, and neither, short and long.
    #[test]
    fn one_search_for_usage_and_error_answers_as_two() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(
                super::QUOTED_FIVE.is_some(),
                "the vectorized search is the one tested"
            );
        }
        let filler = r#"{"choices":[{"index":0,"delta":{"content":" the usage of error"}}]}"#;
        let texts = [
            format!(r#"{filler}"usage":null"#),
            format!(r#"{filler},"usage" : null, "usage":{{"total_tokens":3}}"#),
            format!(r#"{filler},"usage":nul"#),
            r#"{"usage"error"}"#.to_owned(),
            r#"{"usage":null,"x":""error""}"#.to_owned(),
            r#""usage""usage":null"usage"  :  {}"#.to_owned(),
            format!(
                r#"data: {filler}{0}data: {filler}{0}data: {{"error":{{"message":"x"}}}}{0}"#,
                "

"
            ),
            format!(
                "data: {filler}

"
            )
            .repeat(8),
            r#"{"err":"or","use":"age"}"#.to_owned(),
            // Five-letter quoted words that are neither, the words without their opening
            // quote, glued to another word, or escaped.
            r#"{"index":0,"delta":{},"model":"usage","usages":{},"errors":1}"#.to_owned(),
            r#"usage":{"total_tokens":3},xusage":{},"xerror":1,error""#.to_owned(),
            r#"{"usageusage":{},"errorerror":1,"usag":"erro"}"#.to_owned(),
            r#"{"\"usage\"":{},"\"error\"":1}"#.to_owned(),
        ];
        let mut answers = [0, 0];
        for text in &texts {
            let text = text.as_bytes();
            for end in 0..=text.len() {
                for start in [0, 1, 7] {
                    let part = &text[start.min(end)..end];
                    let two = has_usage(part) || ERROR.find(part).is_some();
                    assert_eq!(
                        mentions_usage_or_error(part),
                        two,
                        "{:?}",
                        String::from_utf8_lossy(part)
                    );
                    answers[usize::from(two)] += 1;
                }
            }
        }
        assert!(answers[0] > 1000 && answers[1] > 200, "{answers:?}");
    }

    #[test]
    fn usage_null_is_not_usage() {
        assert!(!has_usage(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#
        ));
        assert!(!has_usage(br#"{"usage" : null}"#));
        assert!(!has_usage(br#"{"choices":[]}"#));
        assert!(has_usage(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage(br#"{"usage" :{"total_tokens":3}}"#));
        // A later mention counts: the same key twice, or a second event of one chunk.
        assert!(has_usage(br#"{"usage":null,"usage":{"total_tokens":3}}"#));
        assert!(has_usage(
            b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n"
        ));
    }

    #[test]
    fn a_chat_chunk_usage_read_from_bytes_is_the_parsed_chunk_usage() {
        use crate::sse::SseDecoder;
        let datas = [
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            r#"{"usage":null,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":"1","completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"created":1e400}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2}} trailing"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2"#,
            r#"{"choices":[{"delta":{"usage":{"prompt_tokens":9}}}]}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#,
        ];
        for data in datas {
            let expected = serde_json::from_str::<Value>(data)
                .ok()
                .and_then(|v| crate::Usage::from_response(CallType::ChatCompletions, &v));
            let mut decoder = SseDecoder::new();
            decoder.push(bytes::Bytes::from(format!("data: {data}\n\n")));
            let event = decoder.next_event().unwrap().unwrap();
            let report = ResponseReport::new();
            StreamWatch::new(CallType::ChatCompletions).observe(&event, &report);
            assert_eq!(report.usage(), expected, "{data}");
        }
    }

    #[test]
    fn chunks_whose_usage_is_null_pass_unframed() {
        let watch = StreamWatch::new(CallType::ChatCompletions);
        let chunk = |body: &str| format!("data: {body}\n\n").into_bytes();
        assert!(watch.ignores_data_events(&chunk(
            r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null}"#
        )));
        assert!(!watch.ignores_data_events(&chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#
        )));
        assert!(
            !watch
                .ignores_data_events(&chunk(r#"{"error":{"message":"overloaded"},"usage":null}"#))
        );
    }
}
