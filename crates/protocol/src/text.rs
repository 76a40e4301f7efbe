//! Where the guardrail text lives in each call type's request and response JSON, read and written
//! back (for masking).
//!
//! The read walk and the write walk are generated from one definition, so the i-th text read is
//! always the i-th text written.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::CallType;
use crate::json::JsonView;

/// Which side of the exchange a body belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client's request.
    Request,
    /// The model's response.
    Response,
}

impl Side {
    /// `request` or `response`, as the Generic Guardrail API's `input_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// Returned when the number of replacement texts differs from the number of texts in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCountMismatch {
    /// Texts found in the body.
    pub expected: usize,
    /// Replacement texts given.
    pub got: usize,
}

impl fmt::Display for TextCountMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {} replacement texts, got {}",
            self.expected, self.got
        )
    }
}

impl std::error::Error for TextCountMismatch {}

/// Generates a walker module over `$V` (`&Value`, `&mut Value` or a borrowed `&JsonView`, of
/// the enum `$E`, with lifetime `'v`) that calls `f` with every guardrail text (`$S`: `&String`,
/// `&mut String` or `&Cow<str>`) in document order.
macro_rules! walker {
    ($module:ident, $E:ident, $V:ty, $S:ty, $get:ident) => {
        mod $module {
            #[allow(unused_imports)] // each walker uses the names of its own value type
            use super::{CallType, Cow, JsonView, Side, Value};

            pub(super) fn walk<'v>(
                call_type: CallType,
                side: Side,
                root: $V,
                f: &mut dyn FnMut($S),
            ) {
                match (call_type, side) {
                    (CallType::ChatCompletions, Side::Request) => {
                        for message in items(root.$get("messages")) {
                            chat_message(message, f);
                        }
                    }
                    (CallType::ChatCompletions, Side::Response) => {
                        for choice in items(root.$get("choices")) {
                            if let Some(message) = choice.$get("message") {
                                chat_message(message, f);
                            }
                        }
                    }
                    (CallType::Responses, Side::Request) => {
                        if let Some(instructions) = root.$get("instructions") {
                            string(instructions, f);
                        }
                        if let Some(input) = root.$get("input") {
                            if let $E::String(s) = input {
                                f(s);
                            }
                            for item in items(Some(input)) {
                                responses_item(item, f);
                            }
                        }
                    }
                    (CallType::Responses, Side::Response) => {
                        for item in items(root.$get("output")) {
                            responses_item(item, f);
                        }
                    }
                    (CallType::AnthropicMessages, Side::Request) => {
                        if let Some(system) = root.$get("system") {
                            anthropic_content(system, f);
                        }
                        for message in items(root.$get("messages")) {
                            if let Some(content) = message.$get("content") {
                                anthropic_content(content, f);
                            }
                        }
                    }
                    (CallType::AnthropicMessages, Side::Response) => {
                        if let Some(content) = root.$get("content") {
                            anthropic_content(content, f);
                        }
                    }
                    (CallType::TextCompletions, Side::Request) => {
                        if let Some(prompt) = root.$get("prompt") {
                            strings(prompt, f);
                        }
                    }
                    (CallType::TextCompletions, Side::Response) => {
                        for choice in items(root.$get("choices")) {
                            if let Some(text) = choice.$get("text") {
                                string(text, f);
                            }
                        }
                    }
                    (CallType::Embeddings, Side::Request) => {
                        if let Some(input) = root.$get("input") {
                            strings(input, f);
                        }
                    }
                    (CallType::Embeddings, Side::Response) | (CallType::Other, _) => {}
                }
            }

            /// The elements of an array, or nothing.
            fn items<'v>(v: Option<$V>) -> impl Iterator<Item = $V> {
                let slice = match v {
                    Some($E::Array(items)) => Some(items),
                    _ => None,
                };
                slice.into_iter().flatten()
            }

            fn string<'v>(v: $V, f: &mut dyn FnMut($S)) {
                if let $E::String(s) = v {
                    f(s);
                }
            }

            /// A string, or an array of strings (token arrays are skipped).
            fn strings<'v>(v: $V, f: &mut dyn FnMut($S)) {
                match v {
                    $E::String(s) => f(s),
                    $E::Array(items) => {
                        for item in items {
                            string(item, f);
                        }
                    }
                    _ => {}
                }
            }

            /// Chat `content`: a string, or parts of which the `text` ones carry text; plus
            /// `tool_calls[].function.arguments` and the legacy `function_call.arguments`.
            fn chat_message<'v>(message: $V, f: &mut dyn FnMut($S)) {
                if let Some(content) = message.$get("content") {
                    parts(content, f);
                }
                for call in items(message.$get("tool_calls")) {
                    if let Some(arguments) = call.$get("function").and_then(|c| c.$get("arguments"))
                    {
                        string(arguments, f);
                    }
                }
                if let Some(arguments) = message
                    .$get("function_call")
                    .and_then(|c| c.$get("arguments"))
                {
                    string(arguments, f);
                }
            }

            /// A string, or an array of content parts whose type is a text type.
            fn parts<'v>(content: $V, f: &mut dyn FnMut($S)) {
                if let $E::String(s) = content {
                    f(s);
                }
                for part in items(Some(content)) {
                    let is_text = matches!(
                        part.get("type").and_then($E::as_str),
                        None | Some("text" | "input_text" | "output_text")
                    );
                    if is_text {
                        if let Some(text) = part.$get("text") {
                            string(text, f);
                        }
                    }
                }
            }

            /// A Responses API input or output item.
            fn responses_item<'v>(item: $V, f: &mut dyn FnMut($S)) {
                let kind = match item.get("type").and_then($E::as_str) {
                    Some("function_call") => 1,
                    Some("function_call_output") => 2,
                    Some("message") | None => 0,
                    Some(_) => 3,
                };
                match kind {
                    0 => {
                        if let Some(content) = item.$get("content") {
                            parts(content, f);
                        }
                    }
                    1 => {
                        if let Some(arguments) = item.$get("arguments") {
                            string(arguments, f);
                        }
                    }
                    2 => {
                        if let Some(output) = item.$get("output") {
                            string(output, f);
                        }
                    }
                    _ => {}
                }
            }

            /// Anthropic `system` or message `content`: a string or blocks; `text` blocks carry
            /// text, `tool_result` blocks carry a string or text blocks of their own.
            fn anthropic_content<'v>(content: $V, f: &mut dyn FnMut($S)) {
                if let $E::String(s) = content {
                    f(s);
                }
                for block in items(Some(content)) {
                    let kind = match block.get("type").and_then($E::as_str) {
                        Some("text") => 0,
                        Some("tool_result") => 1,
                        _ => 2,
                    };
                    match kind {
                        0 => {
                            if let Some(text) = block.$get("text") {
                                string(text, f);
                            }
                        }
                        1 => {
                            if let Some(inner) = block.$get("content") {
                                anthropic_content(inner, f);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    };
}

walker!(read, Value, &'v Value, &String, get);
walker!(write, Value, &'v mut Value, &mut String, get_mut);
walker!(view, JsonView, &'v JsonView<'v>, &Cow<'_, str>, get);

impl CallType {
    /// The guardrail texts of a request or response body, in document order.
    ///
    /// ```
    /// use guardrail_tower_core::{CallType, text::Side};
    /// let body = serde_json::json!({
    ///     "model": "gpt-4o",
    ///     "messages": [
    ///         {"role": "system", "content": "be brief"},
    ///         {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}
    ///     ]
    /// });
    /// assert_eq!(CallType::ChatCompletions.texts(Side::Request, &body), ["be brief", "hi"]);
    /// ```
    pub fn texts(self, side: Side, body: &Value) -> Vec<String> {
        let mut out = Vec::new();
        read::walk(self, side, body, &mut |s| out.push(s.clone()));
        out
    }

    /// Calls `f` with each guardrail text of a body, in document order, without copying.
    pub fn for_each_text(self, side: Side, body: &Value, mut f: impl FnMut(&str)) {
        read::walk(self, side, body, &mut |s| f(s));
    }

    /// The guardrail texts of a body given as bytes, in document order: the same texts as
    /// [`CallType::texts`] on the parsed body, read through a borrowed view instead of a
    /// `serde_json::Value` (no map, no key or string copied but the texts themselves).
    ///
    /// Fails exactly where parsing the bytes as a `serde_json::Value` fails.
    ///
    /// ```
    /// use guardrail_tower_core::{CallType, text::Side};
    /// let body = br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#;
    /// assert_eq!(CallType::ChatCompletions.texts_from_slice(Side::Request, body)?, ["hi"]);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn texts_from_slice(self, side: Side, body: &[u8]) -> serde_json::Result<Vec<String>> {
        let view = JsonView::parse(body)?;
        Ok(self.texts_in_view(side, &view))
    }

    /// The guardrail texts and the token usage of a response body given as bytes, from one
    /// parse through a borrowed view: what [`CallType::texts_from_slice`] and
    /// [`Usage::from_response`](crate::Usage::from_response) return.
    ///
    /// ```
    /// use guardrail_tower_core::{CallType, Usage};
    /// let body = br#"{"choices": [{"message": {"role": "assistant", "content": "hello"}}],
    ///                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}"#;
    /// let (texts, usage) = CallType::ChatCompletions.response_texts_and_usage(body)?;
    /// assert_eq!(texts, ["hello"]);
    /// assert_eq!(usage.map(|u| u.total_tokens), Some(4));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn response_texts_and_usage(
        self,
        body: &[u8],
    ) -> serde_json::Result<(Vec<String>, Option<crate::Usage>)> {
        let view = JsonView::parse(body)?;
        let usage = crate::Usage::from_response_view(self, &view);
        Ok((self.texts_in_view(Side::Response, &view), usage))
    }

    /// The guardrail texts in a parsed view.
    pub fn texts_in_view(self, side: Side, view: &JsonView<'_>) -> Vec<String> {
        let mut out = Vec::new();
        view::walk(self, side, view, &mut |s| out.push(String::from(&**s)));
        out
    }

    /// Calls `f` with each guardrail text in a parsed view, as it lies in the view.
    pub fn for_each_text_in_view(
        self,
        side: Side,
        view: &JsonView<'_>,
        mut f: impl FnMut(&Cow<'_, str>),
    ) {
        view::walk(self, side, view, &mut |s| f(s));
    }

    /// Replaces the guardrail texts of a body, in the order [`CallType::texts`] returns them.
    ///
    /// Nothing is changed when `texts` does not have exactly one entry per text in the body.
    pub fn set_texts(
        self,
        side: Side,
        body: &mut Value,
        texts: &[String],
    ) -> Result<(), TextCountMismatch> {
        let mut expected = 0;
        read::walk(self, side, body, &mut |_| expected += 1);
        if expected != texts.len() {
            return Err(TextCountMismatch {
                expected,
                got: texts.len(),
            });
        }
        let mut replacements = texts.iter();
        write::walk(self, side, body, &mut |s| {
            if let Some(new) = replacements.next() {
                if s != new {
                    new.clone_into(s);
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roundtrip(call_type: CallType, side: Side, mut body: Value, want: &[&str]) {
        let got = call_type.texts(side, &body);
        assert_eq!(got, want, "{call_type:?} {side:?}");
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            call_type.texts_from_slice(side, &bytes).unwrap(),
            want,
            "{call_type:?} {side:?} through the borrowed view"
        );
        let upper: Vec<String> = got.iter().map(|t| t.to_uppercase()).collect();
        call_type.set_texts(side, &mut body, &upper).unwrap();
        assert_eq!(call_type.texts(side, &body), upper);
    }

    #[test]
    fn chat_request() {
        roundtrip(
            CallType::ChatCompletions,
            Side::Request,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "part one"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                        {"type": "text", "text": "part two"}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "tool out"},
                    {"role": "assistant", "function_call": {"name": "g", "arguments": "legacy"}}
                ]
            }),
            &[
                "sys",
                "part one",
                "part two",
                "{\"q\":\"args\"}",
                "tool out",
                "legacy",
            ],
        );
    }

    #[test]
    fn chat_response() {
        roundtrip(
            CallType::ChatCompletions,
            Side::Response,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "first"}, "finish_reason": "stop"},
                    {"index": 1, "message": {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ]}}
                ]
            }),
            &["first", "{}"],
        );
    }

    #[test]
    fn responses_request() {
        roundtrip(
            CallType::Responses,
            Side::Request,
            json!({"model": "m", "instructions": "be nice", "input": "plain input"}),
            &["be nice", "plain input"],
        );
        roundtrip(
            CallType::Responses,
            Side::Request,
            json!({"model": "m", "input": [
                {"role": "user", "content": "string content"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "input text"},
                    {"type": "input_image", "image_url": "data:..."}
                ]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c", "output": "result"},
                {"type": "reasoning", "summary": []}
            ]}),
            &["string content", "input text", "{\"a\":1}", "result"],
        );
    }

    #[test]
    fn responses_response() {
        roundtrip(
            CallType::Responses,
            Side::Response,
            json!({"id": "resp_1", "object": "response", "output": [
                {"type": "reasoning", "id": "rs", "summary": []},
                {"type": "message", "id": "msg", "role": "assistant", "content": [
                    {"type": "output_text", "text": "answer", "annotations": []}
                ]},
                {"type": "function_call", "arguments": "{}", "call_id": "c", "name": "f"}
            ]}),
            &["answer", "{}"],
        );
    }

    #[test]
    fn anthropic_request() {
        roundtrip(
            CallType::AnthropicMessages,
            Side::Request,
            json!({"model": "claude", "max_tokens": 10,
            "system": [{"type": "text", "text": "sys block"}],
            "messages": [
                {"role": "user", "content": "plain"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "thinking out loud"},
                    {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "not text"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "tool string"},
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "tool block"}]},
                    {"type": "image", "source": {"type": "base64", "data": "..."}}
                ]}
            ]}),
            &[
                "sys block",
                "plain",
                "thinking out loud",
                "tool string",
                "tool block",
            ],
        );
        roundtrip(
            CallType::AnthropicMessages,
            Side::Request,
            json!({"system": "sys string", "messages": []}),
            &["sys string"],
        );
    }

    #[test]
    fn anthropic_response() {
        roundtrip(
            CallType::AnthropicMessages,
            Side::Response,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "content": [
                {"type": "text", "text": "hello"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}}
            ]}),
            &["hello"],
        );
    }

    #[test]
    fn completions_and_embeddings() {
        roundtrip(
            CallType::TextCompletions,
            Side::Request,
            json!({"prompt": ["a", "b"]}),
            &["a", "b"],
        );
        roundtrip(
            CallType::TextCompletions,
            Side::Response,
            json!({"choices": [{"text": "out"}]}),
            &["out"],
        );
        roundtrip(
            CallType::Embeddings,
            Side::Request,
            json!({"input": "embed me"}),
            &["embed me"],
        );
        roundtrip(
            CallType::Embeddings,
            Side::Request,
            json!({"input": [[1, 2, 3]]}),
            &[],
        );
        roundtrip(
            CallType::Embeddings,
            Side::Response,
            json!({"data": [{"embedding": [0.1]}]}),
            &[],
        );
        roundtrip(
            CallType::Other,
            Side::Request,
            json!({"messages": [{"content": "x"}]}),
            &[],
        );
    }

    #[test]
    fn shapes_that_are_not_objects_have_no_text() {
        for body in [
            json!(null),
            json!(1),
            json!("s"),
            json!([1, 2]),
            json!({"messages": "x"}),
        ] {
            for ct in CallType::ALL {
                assert!(ct.texts(Side::Request, &body).is_empty());
                assert!(ct.texts(Side::Response, &body).is_empty());
            }
        }
    }

    #[test]
    fn mismatched_count_changes_nothing() {
        let mut body = json!({"messages": [{"content": "a"}, {"content": "b"}]});
        let before = body.clone();
        let err = CallType::ChatCompletions
            .set_texts(Side::Request, &mut body, &["x".into()])
            .unwrap_err();
        assert_eq!(
            err,
            TextCountMismatch {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(body, before);
    }

    #[test]
    fn other_fields_untouched_by_write() {
        let mut body = json!({"model": "m", "temperature": 0.2, "messages": [{"role": "user", "content": "secret"}]});
        CallType::ChatCompletions
            .set_texts(Side::Request, &mut body, &["[MASKED]".into()])
            .unwrap();
        assert_eq!(
            body,
            json!({"model": "m", "temperature": 0.2, "messages": [{"role": "user", "content": "[MASKED]"}]})
        );
    }
}
