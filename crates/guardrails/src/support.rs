//! Helpers the provider guardrails share: character offsets (the Python services answer in
//! characters, Rust strings index bytes), span masking that respects a stream window's context,
//! the role of each text in the request, config checks and lenient config values, reading
//! settings from the environment, and keeping secrets out of error messages.

use std::borrow::Cow;
use std::time::Duration;

use guardrail_tower_core::text::Side;
use guardrail_tower_core::{CallType, GuardrailError, GuardrailErrorKind, GuardrailInput};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::http::{ConfigError, parse_timeout};

/// Maps the character offsets of a text (Unicode scalar values, as Python and the services
/// written in it count) to byte offsets and back.
#[derive(Debug)]
pub(crate) struct CharOffsets {
    /// The byte offset of every character, then the text's length; `None` for ASCII text,
    /// where the two are the same.
    bytes: Option<Vec<usize>>,
    len: usize,
    chars: usize,
}

impl CharOffsets {
    pub(crate) fn new(text: &str) -> Self {
        if text.is_ascii() {
            return CharOffsets {
                bytes: None,
                len: text.len(),
                chars: text.len(),
            };
        }
        let mut bytes: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let chars = bytes.len();
        bytes.push(text.len());
        CharOffsets {
            bytes: Some(bytes),
            len: text.len(),
            chars,
        }
    }

    /// The number of characters.
    pub(crate) fn chars(&self) -> usize {
        self.chars
    }

    /// The byte offset of character `index` (`chars()` maps to the text's length).
    pub(crate) fn byte(&self, index: usize) -> Option<usize> {
        match &self.bytes {
            None => (index <= self.len).then_some(index),
            Some(bytes) => bytes.get(index).copied(),
        }
    }

    /// The character index at byte offset `byte` (a `char` boundary).
    pub(crate) fn char_at(&self, byte: usize) -> usize {
        match &self.bytes {
            None => byte,
            Some(bytes) => bytes.partition_point(|&b| b < byte),
        }
    }
}

/// A byte range of a text to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) replacement: String,
}

/// `text` with `spans` replaced. Spans are taken by start; one that overlaps an earlier one is
/// dropped (the earlier, or on a tie the longer, wins). Returns the text and how many spans were
/// applied, by index into `spans`.
pub(crate) fn replace_spans(text: &str, spans: &[Span]) -> (String, Vec<usize>) {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| {
        spans[a]
            .start
            .cmp(&spans[b].start)
            .then(spans[b].end.cmp(&spans[a].end))
    });
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut applied = Vec::new();
    for i in order {
        let span = &spans[i];
        if span.start < pos || span.end > text.len() || span.start > span.end {
            continue;
        }
        out.push_str(&text[pos..span.start]);
        out.push_str(&span.replacement);
        pos = span.end;
        applied.push(i);
    }
    out.push_str(&text[pos..]);
    (out, applied)
}

/// The context length (bytes already sent, not to be rewritten) of text `index`: 0 unless the
/// input is a window of a streamed response.
pub(crate) fn context_len(input: &GuardrailInput, index: usize) -> usize {
    let text_len = input.texts().get(index).map_or(0, String::len);
    input
        .stream_window()
        .map_or(0, |w| w.context_len(index))
        .min(text_len)
}

/// A text's role in the conversation, for services that read chat messages.
pub(crate) fn roles(input: &GuardrailInput) -> Vec<Cow<'static, str>> {
    let n = input.texts().len();
    if input.side() == Side::Response {
        return vec![Cow::Borrowed("assistant"); n];
    }
    let meta = input.meta();
    let found = meta
        .body()
        .and_then(|body| request_roles(meta.call_type(), body))
        .filter(|roles| roles.len() == n);
    found.unwrap_or_else(|| vec![Cow::Borrowed("user"); n])
}

/// The role of each guardrail text of a request body, in the order the texts are read: each
/// message's texts are counted by reading that message alone. `None` for call types without
/// roles.
fn request_roles(call_type: CallType, body: &Value) -> Option<Vec<Cow<'static, str>>> {
    let mut roles = Vec::new();
    let mut add = |role: Cow<'static, str>, part: Value| {
        let count = call_type.texts(Side::Request, &part).len();
        roles.extend(std::iter::repeat_n(role, count));
    };
    match call_type {
        CallType::ChatCompletions => {
            for message in body.get("messages")?.as_array()? {
                add(role_of(message, "user"), json!({ "messages": [message] }));
            }
        }
        CallType::AnthropicMessages => {
            if let Some(system) = body.get("system") {
                add(Cow::Borrowed("system"), json!({ "system": system }));
            }
            for message in body.get("messages")?.as_array()? {
                add(role_of(message, "user"), json!({ "messages": [message] }));
            }
        }
        CallType::Responses => {
            if let Some(instructions) = body.get("instructions") {
                add(
                    Cow::Borrowed("system"),
                    json!({ "instructions": instructions }),
                );
            }
            match body.get("input") {
                Some(input @ Value::String(_)) => {
                    add(Cow::Borrowed("user"), json!({ "input": input }))
                }
                Some(Value::Array(items)) => {
                    for item in items {
                        let default = match item.get("type").and_then(Value::as_str) {
                            Some("function_call_output" | "custom_tool_call_output") => "tool",
                            Some("function_call" | "custom_tool_call" | "reasoning") => "assistant",
                            _ => "user",
                        };
                        add(role_of(item, default), json!({ "input": [item] }));
                    }
                }
                _ => {}
            }
        }
        _ => return None,
    }
    Some(roles)
}

/// A message's `role`, or `default`.
fn role_of(message: &Value, default: &'static str) -> Cow<'static, str> {
    match message.get("role").and_then(Value::as_str) {
        Some("user") => Cow::Borrowed("user"),
        Some("assistant") => Cow::Borrowed("assistant"),
        Some("system") => Cow::Borrowed("system"),
        Some("developer") => Cow::Borrowed("developer"),
        Some("tool") => Cow::Borrowed("tool"),
        Some("function") => Cow::Borrowed("function"),
        Some(other) => Cow::Owned(other.to_owned()),
        None => Cow::Borrowed(default),
    }
}

/// A required string setting: present and not blank.
pub(crate) fn required(field: &str, value: Option<&str>) -> Result<String, ConfigError> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        Some(_) => Err(ConfigError::new(field, "must not be empty")),
        None => Err(ConfigError::new(field, "is required")),
    }
}

/// The configured timeout, or `default_secs`.
pub(crate) fn timeout_or(seconds: Option<f64>, default_secs: f64) -> Result<Duration, ConfigError> {
    match seconds {
        Some(secs) => parse_timeout("timeout", secs),
        None => Ok(Duration::from_secs_f64(default_secs)),
    }
}

/// What stands in for a secret in an error message.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Reads an environment variable; an empty value counts as unset.
pub(crate) fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// The process environment, as [`env_var`] reads it.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `error` with every occurrence of a secret in its text replaced by [`REDACTED`].
///
/// A service may quote what it received in an error body (AWS quotes the canonical request,
/// which carries the session token); the error's text reaches logs and the guardrail log entry,
/// so it must never carry a credential. An error without a secret is returned unchanged (with
/// its source); one with a secret is rebuilt from its redacted text, keeping its kind.
pub(crate) fn scrub(error: GuardrailError, secrets: &[String]) -> GuardrailError {
    let text = error.to_string();
    let secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty() && text.contains(*s))
        .collect();
    if secrets.is_empty() {
        return error;
    }
    let mut redacted = text;
    for secret in secrets {
        redacted = redacted.replace(secret, REDACTED);
    }
    match error.kind() {
        GuardrailErrorKind::Unreachable | GuardrailErrorKind::Timeout => {
            GuardrailError::unreachable(redacted)
        }
        _ => GuardrailError::failed(redacted),
    }
}

/// Deserializes an optional string that YAML may have written as a number (`guardrailVersion: 1`).
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(serde::de::Error::custom("expected a string")),
    }
}

/// A short name for a JSON value's kind, for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use guardrail_tower_core::{GuardrailMode, RequestId, RequestMeta};

    use super::*;

    #[test]
    fn char_offsets_map_both_ways() {
        let ascii = CharOffsets::new("hello");
        assert_eq!(
            (ascii.byte(0), ascii.byte(5), ascii.byte(6)),
            (Some(0), Some(5), None)
        );
        let text = "Zoë écrit à zoë@x.fr";
        let offsets = CharOffsets::new(text);
        assert_eq!(offsets.chars(), text.chars().count());
        let start = offsets.byte(12).unwrap();
        assert_eq!(&text[start..], "zoë@x.fr");
        assert_eq!(offsets.char_at(start), 12);
        assert_eq!(offsets.byte(offsets.chars()), Some(text.len()));
        assert_eq!(offsets.byte(offsets.chars() + 1), None);
    }

    #[test]
    fn spans_replace_left_to_right_and_overlaps_are_dropped() {
        let span = |start, end, r: &str| Span {
            start,
            end,
            replacement: r.into(),
        };
        let (out, applied) = replace_spans(
            "call 555 1234 or mail a@b.c",
            &[span(22, 27, "<E>"), span(5, 13, "<P>"), span(9, 13, "<X>")],
        );
        assert_eq!(out, "call <P> or mail <E>");
        assert_eq!(applied, [1, 0]);
    }

    #[test]
    fn roles_follow_the_messages_their_texts_come_from() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "result"}
        ]});
        let meta = RequestMeta::new(RequestId::from("r"), CallType::ChatCompletions)
            .with_body(Some(Arc::new(body.clone())));
        let texts = CallType::ChatCompletions.texts(Side::Request, &body);
        let input =
            GuardrailInput::new(texts, Side::Request, GuardrailMode::PreCall, Arc::new(meta));
        let roles = roles(&input);
        assert_eq!(roles.len(), input.texts().len());
        assert_eq!(roles[0], "system");
        assert_eq!(roles[1], "user");
        assert_eq!(roles[2], "user");
        assert_eq!(roles.last().unwrap(), "tool");
        assert!(roles.iter().any(|r| r == "assistant"));

        // Texts that do not match the body (rewritten by an earlier guardrail into fewer texts)
        // fall back to "user".
        let meta = input.meta().clone();
        let other = GuardrailInput::new(
            vec!["x".into()],
            Side::Request,
            GuardrailMode::PreCall,
            Arc::new(meta),
        );
        assert_eq!(roles_of(&other), ["user"]);
    }

    fn roles_of(input: &GuardrailInput) -> Vec<String> {
        roles(input).into_iter().map(Cow::into_owned).collect()
    }

    // Secrets, the environment and lenient values.

    #[test]
    fn scrub_removes_secrets_and_keeps_the_kind() {
        let secrets = vec!["s3cr3t".to_owned(), String::new()];
        let err = scrub(
            GuardrailError::failed("HTTP 403: token s3cr3t rejected"),
            &secrets,
        );
        assert_eq!(err.kind(), GuardrailErrorKind::Failed);
        assert_eq!(err.to_string(), "HTTP 403: token [REDACTED] rejected");
        let err = scrub(GuardrailError::unreachable("503 s3cr3t"), &secrets);
        assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);
        assert_eq!(err.to_string(), "503 [REDACTED]");
        let clean = scrub(GuardrailError::timeout(Duration::from_millis(5)), &secrets);
        assert_eq!(clean.kind(), GuardrailErrorKind::Timeout);
    }
}
