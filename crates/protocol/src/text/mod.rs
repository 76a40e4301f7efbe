//! The one text view per wire format: where every text a guardrail must read lies in a request
//! body, a JSON response and each stream event, and how a rewritten (masked) text is written
//! back.
//!
//! Every reader and writer is generated from one definition (see the walkers), for a borrowed
//! `serde_json::Value`, a mutable one and a borrowed [`JsonView`]; request bodies, response
//! bodies and stream events share the per-protocol pieces (a chat message and a chat `delta`
//! are read by the same code, so are a Responses output item and the item a stream announces).
//! So a text that a JSON response carries in a field is read from the same field of a stream
//! event, and what a guardrail checks is what the upstream or the client reads. The two
//! exceptions are the plain chat chunk most streams are made of (`content` deltas only,
//! [`CallType::read_common_event`]) and the plain chat completion (a string `content` per
//! choice, tried first by [`CallType::response_texts_and_usage`]): each is read in one pass
//! without a view, and anything else is left to the walkers; a property test each holds their
//! reads equal to the walkers'.
//!
//! What is read, per wire format:
//!
//! | format | request | response and stream |
//! |---|---|---|
//! | chat completions | message `content` (string or `text`/`refusal` parts), the titles of the pages it cites (`annotations`), `name`, `refusal`, `reasoning_content`, `reasoning`, LiteLLM's `thinking_blocks`, OpenRouter's `reasoning_details`, an audio answer's transcript, `tool_calls[].function.arguments`, legacy `function_call.arguments` (every role: system, developer, user, assistant, tool); the descriptions and parameter schemas of `tools[].function`, `tools[].custom` and the legacy `functions`; `response_format`'s schema; `prediction.content`; every string of `web_search_options.user_location`, and of vLLM's `documents` and `chat_template_kwargs` | the same fields of each choice's `message`, and of each chunk's `delta` |
//! | Responses | `instructions`, `input` (a string, or items: messages (and the titles of the pages their text parts cite), function calls and their outputs, custom tool calls, reasoning summaries, MCP calls, listed MCP tools (descriptions and input schemas) and approval reasons, code interpreter code and logs, web search queries, file search queries and results, shell commands, the shell tool's commands and what they printed, `apply_patch` diffs, paths and results, a computer-use model's typed text); `tools[]` descriptions, parameter schemas, MCP server descriptions and a web search tool's `user_location`; `text.format`'s schema; `prompt.variables` | `output` items (the same), the `*.delta` events, items and parts a stream announces, and the complete texts `*.done` and `response.completed` repeat (a text only a `.done` event carries is new text) |
//! | Anthropic messages | `system`, message `content` (a string or blocks: `text` and what its citations quote, `tool_use` input as JSON text, `tool_result`, `thinking`, text documents with their title and context, search results with their title, the titles of web search results); tools' `description`, `input_schema`, `input_examples` and a web search tool's `user_location` | `content` blocks (the same); `text_delta`, `input_json_delta`, `thinking_delta`, `citations_delta`, and blocks a stream announces |
//! | text completions | `prompt` | `choices[].text` |
//! | embeddings | `input` | — |
//!
//! A request whose text-bearing fields have a shape the protocol does not allow, or that carries
//! a content part, item or block type this view does not know, is refused by the strict reader
//! ([`CallType::read_texts`]) with a [`ShapeError`] naming the field: nothing can reach the
//! upstream that a guardrail could not read.
//!
//! Log probabilities repeat a response's text as tokens, where no guardrail reads them: a
//! choice's `logprobs` and a Responses text part's or text event's that is not `null` or empty
//! is refused the same way, and [`CallType::logprobs_field`] names the field of a request that
//! asks for them. So is an answer's spoken audio (a chat message's or delta's `audio.data`),
//! which speaks the text its transcript gives ([`CallType::audio_output_field`]).

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::json::JsonView;
use crate::{CallType, Error, Usage};

mod chunk;
mod walk;

pub mod stream;

pub use chunk::{ChunkReader, CommonRequest};

#[cfg(test)]
mod tests;

use walk::{Path, walker};

walker!(
    read,
    Value,
    &'v Value,
    Cow<'v, str>,
    get = get,
    iter = iter,
    slot = crate::text::walk::slot_value,
    json = crate::text::walk::json_text_value,
    kind = crate::text::walk::kind_str_value,
    index = crate::text::walk::index_value
);
walker!(
    write,
    Value,
    &mut Value,
    &mut String,
    get = get_mut,
    iter = iter_mut,
    slot = crate::text::walk::slot_mut,
    json = crate::text::walk::json_text_mut,
    kind = crate::text::walk::kind_str_value,
    index = crate::text::walk::index_value
);
walker!(
    view,
    JsonView,
    &'v JsonView<'v>,
    Cow<'v, str>,
    get = get,
    iter = iter,
    slot = crate::text::walk::slot_view,
    json = crate::text::walk::json_text_view,
    kind = crate::text::walk::kind_str_view,
    index = crate::text::walk::index_view
);

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

/// What kind of text a [`TextKey`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TextKind {
    /// Message content, output text, a tool result, a prompt.
    Content,
    /// A refusal.
    Refusal,
    /// Tool-call or function-call arguments (JSON text), custom tool input, code.
    Arguments,
    /// Reasoning summaries and thinking.
    Reasoning,
    /// Reasoning content (the Responses API's `reasoning_text`).
    ReasoningContent,
    /// A message's `name`.
    Name,
    /// System instructions (Responses `instructions`, Anthropic `system`).
    Instructions,
    /// A tool definition's `description`.
    ToolDescription,
    /// A chat request's predicted output (`prediction.content`).
    Prediction,
    /// A text of a JSON Schema the model is given (a tool's parameters, a response format): a
    /// `description`, a `title`, a string of an `enum`, `const`, `default` or `examples`.
    Schema,
}

/// Which text a piece of text belongs to: in a response, a choice (chat), an output item and
/// content part (Responses) or a content block (Anthropic), and the kind of text in it. A
/// stream's deltas for one key, concatenated, are the text its JSON response has under the same
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TextKey {
    /// The choice index, output index or block index (in a request: the message or item).
    pub index: u64,
    /// The kind of text.
    pub kind: TextKind,
    /// The tool call, content part or summary part within it.
    pub sub: u64,
}

/// Whether a text in a stream event is new text or a complete text repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// New text, to append to its key's text (a delta, or the initial text of an item, part or
    /// block a stream announces). Every text of a body is new text too.
    Delta,
    /// The complete text of its key, repeated by a summary event (Responses `*.done`,
    /// `response.completed`).
    Full,
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

/// A text-bearing field whose shape the protocol does not allow, or whose type this view does
/// not know: it could carry text no guardrail would read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    param: String,
    problem: &'static str,
}

impl ShapeError {
    fn new(path: &Path<'_>, problem: &'static str) -> Self {
        ShapeError {
            param: path.to_string(),
            problem,
        }
    }

    /// The field, as `messages[2].content[0].type` (empty for the document itself).
    pub fn param(&self) -> &str {
        &self.param
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        self.problem
    }

    /// The 400 `invalid_request_error` for a request with this problem, naming the field in
    /// `param`.
    pub fn to_request_error(&self) -> Error {
        let err = Error::new(http::StatusCode::BAD_REQUEST, self.to_string())
            .with_code("invalid_request_shape");
        if self.param.is_empty() {
            err
        } else {
            err.with_param(self.param.clone())
        }
    }
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.param.is_empty() {
            write!(f, "the body {}", self.problem)
        } else {
            write!(f, "'{}' {}", self.param, self.problem)
        }
    }
}

impl std::error::Error for ShapeError {}

/// Why a response body could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// It is not JSON.
    Json(serde_json::Error),
    /// A text-bearing field has a shape the view cannot read.
    Shape(ShapeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Json(e) => write!(f, "invalid JSON: {e}"),
            ReadError::Shape(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

/// Keeps the first problem a walker reports; a part that carries no text ([`walk::MEDIA`]),
/// which is none, it passes over.
fn first_problem(slot: &mut Option<ShapeError>) -> impl FnMut(&Path<'_>, &'static str) + '_ {
    first_problem_and_media(slot, |_| {})
}

/// [`first_problem`], handing each part that carries no text to `media` (with its path).
fn first_problem_and_media<'a>(
    slot: &'a mut Option<ShapeError>,
    mut media: impl FnMut(&Path<'_>) + 'a,
) -> impl FnMut(&Path<'_>, &'static str) + 'a {
    move |path, problem| {
        if walk::is_media(problem) {
            media(path);
        } else if slot.is_none() {
            *slot = Some(ShapeError::new(path, problem));
        }
    }
}

impl CallType {
    /// The guardrail texts of a request or response body, in document order. Lenient: a field
    /// of the wrong shape is skipped (use [`CallType::read_texts`] to refuse it).
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, text::Side};
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
        self.for_each_text(side, body, |t| out.push(t.to_owned()));
        out
    }

    /// The guardrail texts of a body with their keys, in document order.
    pub fn keyed_texts(self, side: Side, body: &Value) -> Vec<(TextKey, String)> {
        let mut out = Vec::new();
        let mut emit = |k: TextKey, _: Role, t: Cow<'_, str>| out.push((k, t.into_owned()));
        let mut ignore = |_: &Path<'_>, _: &'static str| {};
        match side {
            Side::Request => read::request(self, body, &mut emit, &mut ignore),
            Side::Response => read::response(self, body, &mut emit, &mut ignore),
        }
        out
    }

    /// Calls `f` with each guardrail text of a body, in document order.
    pub fn for_each_text(self, side: Side, body: &Value, mut f: impl FnMut(&str)) {
        let mut emit = |_: TextKey, _: Role, t: Cow<'_, str>| f(&t);
        let mut ignore = |_: &Path<'_>, _: &'static str| {};
        match side {
            Side::Request => read::request(self, body, &mut emit, &mut ignore),
            Side::Response => read::response(self, body, &mut emit, &mut ignore),
        }
    }

    /// Reads every guardrail text of a parsed body through a borrowed view, strictly: `f` gets
    /// each text with its key, in document order (borrowed from the view where it can be), and
    /// the first text-bearing field of a shape the protocol does not allow is an error.
    pub fn read_texts<'v>(
        self,
        side: Side,
        view: &'v JsonView<'v>,
        mut f: impl FnMut(TextKey, Cow<'v, str>),
    ) -> Result<(), ShapeError> {
        let mut problem = None;
        {
            let mut emit = |k: TextKey, _: Role, t: Cow<'v, str>| f(k, t);
            let mut bad = first_problem(&mut problem);
            match side {
                Side::Request => view::request(self, view, &mut emit, &mut bad),
                Side::Response => view::response(self, view, &mut emit, &mut bad),
            }
        }
        match problem {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// [`read_texts`](CallType::read_texts) of a request, and where its first part that carries
    /// no text is (`messages[1].content[0]`): an image, audio or a file the model reads, inline
    /// or by URL or id, which no text guardrail reads (chat `image_url`, `input_audio` and
    /// `file` parts; Responses `input_image`, `input_file` and audio parts, a
    /// `computer_call_output`'s screenshot and an `image_generation_call`'s image; Anthropic
    /// `image` and `container_upload` blocks, and `document` blocks whose source is not text).
    /// `None` when it has none.
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"messages": [{"role": "user", "content": [
    ///     {"type": "text", "text": "what does it say?"},
    ///     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    /// ]}]}"#)?;
    /// let mut texts = Vec::new();
    /// let media = CallType::ChatCompletions.read_request_texts(&view, |_, t| texts.push(t));
    /// assert_eq!(media.unwrap().as_deref(), Some("messages[0].content[1]"));
    /// assert_eq!(texts, ["what does it say?"]);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn read_request_texts<'v>(
        self,
        view: &'v JsonView<'v>,
        mut f: impl FnMut(TextKey, Cow<'v, str>),
    ) -> Result<Option<String>, ShapeError> {
        let mut problem = None;
        let mut media = None;
        {
            let mut emit = |k: TextKey, _: Role, t: Cow<'v, str>| f(k, t);
            let mut bad = first_problem_and_media(&mut problem, |path| {
                media.get_or_insert_with(|| path.to_string());
            });
            view::request(self, view, &mut emit, &mut bad);
        }
        match problem {
            Some(problem) => Err(problem),
            None => Ok(media),
        }
    }

    /// The field of a request that gives text as token ids, which no guardrail can read: a
    /// text completion's `prompt` or an embedding's `input` that is an array of numbers or
    /// holds one (`[1, 2]`, `[[1, 2], "text"]`). `None` for any other request.
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"model": "m", "prompt": [[9906, 1917], "hi"]}"#)?;
    /// assert_eq!(CallType::TextCompletions.token_ids_field(&view), Some("prompt"));
    /// let view = JsonView::parse(br#"{"model": "m", "prompt": ["hi"]}"#)?;
    /// assert_eq!(CallType::TextCompletions.token_ids_field(&view), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn token_ids_field(self, view: &JsonView<'_>) -> Option<&'static str> {
        let field = match self {
            CallType::TextCompletions => "prompt",
            CallType::Embeddings => "input",
            _ => return None,
        };
        let JsonView::Array(items) = view.get(field)? else {
            return None;
        };
        items
            .iter()
            .any(|item| matches!(item, JsonView::Number(..) | JsonView::Array(..)))
            .then_some(field)
    }

    /// The field of a request that gives its own prompt template, which can write any text
    /// into the prompt where no guardrail reads it: a chat completion's `chat_template`
    /// (vLLM's, SGLang's) that is not `null`. `None` for any other request. (The strings a
    /// template is given, `chat_template_kwargs` and `documents`, are read as texts.)
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"messages": [], "chat_template": "{{ 'hi' }}"}"#)?;
    /// assert_eq!(CallType::ChatCompletions.template_field(&view), Some("chat_template"));
    /// let view = JsonView::parse(br#"{"messages": [], "chat_template_kwargs": {"enable_thinking": false}}"#)?;
    /// assert_eq!(CallType::ChatCompletions.template_field(&view), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn template_field(self, view: &JsonView<'_>) -> Option<&'static str> {
        (self == CallType::ChatCompletions
            && !matches!(view.get("chat_template"), None | Some(JsonView::Null)))
        .then_some("chat_template")
    }

    /// The field of a request that asks for log probabilities: a chat completion's `logprobs`
    /// (`true`) or `top_logprobs`, a text completion's `logprobs`, a Responses request's
    /// `top_logprobs` or an `include` of `message.output_text.logprobs`. The response then
    /// carries its text's tokens beside the text, where no guardrail reads them: a post-call
    /// guardrail's block or mask would not hold. `None` for any other request, and where the
    /// field asks for none (`false`, `null`, `0` top log probabilities; a text completion's
    /// `logprobs: 0` asks for the chosen tokens).
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"model": "m", "logprobs": true, "messages": []}"#)?;
    /// assert_eq!(CallType::ChatCompletions.logprobs_field(&view), Some("logprobs"));
    /// let view = JsonView::parse(br#"{"model": "m", "include": ["message.output_text.logprobs"]}"#)?;
    /// assert_eq!(CallType::Responses.logprobs_field(&view), Some("include"));
    /// let view = JsonView::parse(br#"{"model": "m", "logprobs": false, "messages": []}"#)?;
    /// assert_eq!(CallType::ChatCompletions.logprobs_field(&view), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn logprobs_field(self, view: &JsonView<'_>) -> Option<&'static str> {
        // `0` top log probabilities is none; a text completion's `logprobs: 0` still gives
        // the chosen tokens.
        let asks = |name: &'static str, zero_is_none: bool| match view.get(name)? {
            JsonView::Null | JsonView::Bool(false) => None,
            JsonView::Number(n) if zero_is_none && n.as_u64() == Some(0) => None,
            _ => Some(name),
        };
        match self {
            CallType::ChatCompletions => {
                asks("logprobs", false).or_else(|| asks("top_logprobs", true))
            }
            CallType::TextCompletions => asks("logprobs", false),
            CallType::Responses => asks("top_logprobs", true)
                .or_else(|| lists(view, "include", "message.output_text.logprobs")),
            _ => None,
        }
    }

    /// The field of a request that asks for spoken audio: a chat completion's `audio` (not
    /// `null`), or `modalities` with `"audio"`. The audio speaks the response's text, where no
    /// guardrail hears it (the transcript beside it is read): a post-call guardrail's block in
    /// a stream or mask would not hold. `None` for any other request.
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}"#)?;
    /// assert_eq!(CallType::ChatCompletions.audio_output_field(&view), Some("audio"));
    /// let view = JsonView::parse(br#"{"modalities": ["text"]}"#)?;
    /// assert_eq!(CallType::ChatCompletions.audio_output_field(&view), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn audio_output_field(self, view: &JsonView<'_>) -> Option<&'static str> {
        if self != CallType::ChatCompletions {
            return None;
        }
        if !matches!(view.get("audio"), None | Some(JsonView::Null)) {
            return Some("audio");
        }
        lists(view, "modalities", "audio")
    }

    /// The field of a request that asks for images in the response: a Responses request's
    /// `tools` with an `image_generation` tool, or a chat completion's `modalities` with
    /// `"image"` (the OpenAI-compatible APIs of Gemini and OpenRouter). An image the model
    /// makes can show any text, where no text guardrail reads it. `None` for any other request.
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, json::JsonView};
    /// let view = JsonView::parse(br#"{"input": "draw", "tools": [{"type": "image_generation"}]}"#)?;
    /// assert_eq!(CallType::Responses.image_output_field(&view), Some("tools"));
    /// let view = JsonView::parse(br#"{"messages": [], "modalities": ["image", "text"]}"#)?;
    /// assert_eq!(CallType::ChatCompletions.image_output_field(&view), Some("modalities"));
    /// let view = JsonView::parse(br#"{"input": "hi", "tools": [{"type": "web_search"}]}"#)?;
    /// assert_eq!(CallType::Responses.image_output_field(&view), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn image_output_field(self, view: &JsonView<'_>) -> Option<&'static str> {
        match self {
            CallType::ChatCompletions => lists(view, "modalities", "image"),
            CallType::Responses => {
                let JsonView::Array(tools) = view.get("tools")? else {
                    return None;
                };
                tools
                    .iter()
                    .any(|tool| {
                        tool.get("type").and_then(JsonView::as_str) == Some("image_generation")
                    })
                    .then_some("tools")
            }
            _ => None,
        }
    }

    /// The guardrail texts of a body given as bytes, in document order (lenient, as
    /// [`CallType::texts`]), read through a borrowed view instead of a `serde_json::Value`.
    ///
    /// Fails exactly where parsing the bytes as a `serde_json::Value` fails.
    ///
    /// ```
    /// use guardrail_tower_protocol::{CallType, text::Side};
    /// let body = br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#;
    /// assert_eq!(CallType::ChatCompletions.texts_from_slice(Side::Request, body)?, ["hi"]);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn texts_from_slice(self, side: Side, body: &[u8]) -> serde_json::Result<Vec<String>> {
        let view = JsonView::parse(body)?;
        Ok(self.texts_in_view(side, &view))
    }

    /// The guardrail texts in a parsed view (lenient).
    pub fn texts_in_view(self, side: Side, view: &JsonView<'_>) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_text_in_view(side, view, |t| out.push(String::from(&**t)));
        out
    }

    /// Calls `f` with each guardrail text in a parsed view (lenient).
    pub fn for_each_text_in_view(
        self,
        side: Side,
        view: &JsonView<'_>,
        mut f: impl FnMut(&Cow<'_, str>),
    ) {
        let mut emit = |_: TextKey, _: Role, t: Cow<'_, str>| f(&t);
        let mut ignore = |_: &Path<'_>, _: &'static str| {};
        match side {
            Side::Request => view::request(self, view, &mut emit, &mut ignore),
            Side::Response => view::response(self, view, &mut emit, &mut ignore),
        }
    }

    /// The guardrail texts and the token usage of a response body given as bytes, from one
    /// strict parse: the common chat completion (one or more choices whose `message` holds at
    /// most a string `content`) straight from the bytes, any other body through a borrowed
    /// view. The two ways accept the same bodies and read the same texts and usage.
    ///
    /// ```
    /// use guardrail_tower_protocol::CallType;
    /// let body = br#"{"choices": [{"message": {"role": "assistant", "content": "hello"}}],
    ///                 "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}"#;
    /// let (texts, usage) = CallType::ChatCompletions.response_texts_and_usage(body)?;
    /// assert_eq!(texts, ["hello"]);
    /// assert_eq!(usage.map(|u| u.total_tokens), Some(4));
    /// # Ok::<(), guardrail_tower_protocol::text::ReadError>(())
    /// ```
    pub fn response_texts_and_usage(
        self,
        body: &[u8],
    ) -> Result<(Vec<String>, Option<Usage>), ReadError> {
        self.read_response(body)
            .map(|read| (read.texts, read.usage))
    }

    /// [`response_texts_and_usage`](CallType::response_texts_and_usage), and whether the
    /// response carries an image the model made (a Responses `image_generation_call` item),
    /// which no text guardrail reads.
    pub fn read_response(self, body: &[u8]) -> Result<ResponseRead, ReadError> {
        // The common chat completion, read in one pass without a view; anything else (and
        // every error) through the view.
        if let Some((texts, usage)) = self.read_common_response(body) {
            return Ok(ResponseRead {
                texts,
                usage,
                media: false,
            });
        }
        let view = JsonView::parse(body).map_err(ReadError::Json)?;
        let usage = Usage::from_response_view(self, &view);
        let mut texts = Vec::new();
        let mut problem = None;
        let mut media = false;
        {
            let mut emit = |_: TextKey, _: Role, t: Cow<'_, str>| texts.push(t.into_owned());
            let mut bad = first_problem_and_media(&mut problem, |_| media = true);
            view::response(self, &view, &mut emit, &mut bad);
        }
        match problem {
            Some(problem) => Err(ReadError::Shape(problem)),
            None => Ok(ResponseRead {
                texts,
                usage,
                media,
            }),
        }
    }

    /// Replaces the guardrail texts of a body, in the order [`CallType::texts`] returns them.
    ///
    /// Nothing is changed when `texts` does not have exactly one entry per text in the body.
    /// A rewritten text whose field holds JSON (an Anthropic `tool_use` input) must still be
    /// JSON; if it is not, that field keeps its old value and the error says which.
    pub fn set_texts(
        self,
        side: Side,
        body: &mut Value,
        texts: &[String],
    ) -> Result<(), SetTextsError> {
        let mut expected = 0;
        self.for_each_text(side, body, |_| expected += 1);
        if expected != texts.len() {
            return Err(SetTextsError::Count(TextCountMismatch {
                expected,
                got: texts.len(),
            }));
        }
        let mut replacements = texts.iter();
        let mut emit = |_: TextKey, _: Role, s: &mut String| {
            if let Some(new) = replacements.next() {
                if s != new {
                    new.clone_into(s);
                }
            }
        };
        let mut problem = None;
        {
            let mut bad = first_problem(&mut problem);
            match side {
                Side::Request => write::request(self, body, &mut emit, &mut bad),
                Side::Response => write::response(self, body, &mut emit, &mut bad),
            }
        }
        match problem {
            // Only rewrites report problems here: the shape was read leniently above.
            Some(problem) if problem.problem == crate::text::walk::REWRITE_NOT_JSON => {
                Err(SetTextsError::Shape(problem))
            }
            _ => Ok(()),
        }
    }
}

/// A response body as [`CallType::read_response`] reads it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ResponseRead {
    /// The guardrail texts, in document order.
    pub texts: Vec<String>,
    /// The usage it reports, if any.
    pub usage: Option<Usage>,
    /// It carries an image the model made, which no text guardrail reads.
    pub media: bool,
}

/// `field` when the request's `field` is an array that holds the string `value`.
fn lists(view: &JsonView<'_>, field: &'static str, value: &str) -> Option<&'static str> {
    let JsonView::Array(items) = view.get(field)? else {
        return None;
    };
    items
        .iter()
        .any(|item| item.as_str() == Some(value))
        .then_some(field)
}

/// Why [`CallType::set_texts`] could not apply a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetTextsError {
    /// Not one replacement per text.
    Count(TextCountMismatch),
    /// A rewritten JSON text is not JSON.
    Shape(ShapeError),
}

impl fmt::Display for SetTextsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetTextsError::Count(e) => e.fmt(f),
            SetTextsError::Shape(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SetTextsError {}

impl From<TextCountMismatch> for SetTextsError {
    fn from(e: TextCountMismatch) -> Self {
        SetTextsError::Count(e)
    }
}
