//! The walkers: one definition of where every text of every wire format lies, generated for
//! three kinds of node (a borrowed `&Value`, a `&mut Value` to write texts back, and a borrowed
//! [`JsonView`]), so that reading, validating and rewriting can never disagree about a field.
//!
//! A walker visits the texts of a request body, a response body or one stream event in a fixed
//! order, calling `emit` with each text's [`TextKey`] and [`Role`], and `bad` with each
//! text-bearing field whose shape the protocol does not allow.

use std::borrow::Cow;

use serde_json::Value;

use super::{Role, TextKey, TextKind};
use crate::json::JsonView;

/// Where a field lies in a document, for error messages (`messages[2].content[0].text`).
/// Built on the stack as the walkers descend; formatted only when a problem is reported.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
    /// A member a document names (a JSON Schema's property).
    Member(&'a Path<'a>, &'a str),
}

impl<'a> Path<'a> {
    pub(crate) fn member<'b>(&'b self, name: &'b str) -> Path<'b> {
        Path::Member(self, name)
    }

    pub(crate) fn key(&'a self, key: &'static str) -> Path<'a> {
        Path::Key(self, key)
    }

    pub(crate) fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Member(Path::Root, name) => f.write_str(name),
            Path::Member(parent, name) => write!(f, "{parent}.{name}"),
        }
    }
}

pub(crate) const MUST_BE_STRING: &str = "must be a string";
pub(crate) const MUST_BE_STRING_OR_NULL: &str = "must be a string or null";
pub(crate) const MUST_BE_ARRAY: &str = "must be an array";
pub(crate) const MUST_BE_OBJECT: &str = "must be an object";
pub(crate) const REQUIRED: &str = "is required";
pub(crate) const CONTENT_SHAPE: &str = "must be a string, an array of content parts, or null";
pub(crate) const STRING_OR_ARRAY: &str = "must be a string or an array";
pub(crate) const UNKNOWN_PART: &str = "is not a content part type this gateway can read";
/// Not a problem: what the walk reports through its problem sink at a part the model reads
/// that carries no text (an image, audio, a file, inline or by URL or id), so that a request's
/// reader can tell where such a part is ([`crate::CallType::read_request_texts`]). Every other
/// reader of problems passes over it ([`is_media`]).
pub(crate) const MEDIA: &str = "is an image, audio or a file, which text guardrails cannot read";

/// Whether a problem the walk reported is [`MEDIA`], which is none.
pub(crate) fn is_media(problem: &'static str) -> bool {
    problem == MEDIA
}
pub(crate) const UNKNOWN_ITEM: &str = "is not an item type this gateway can read";
pub(crate) const UNKNOWN_BLOCK: &str = "is not a content block type this gateway can read";
pub(crate) const UNKNOWN_DELTA: &str = "is not a delta type this gateway can read";
pub(crate) const UNKNOWN_EVENT: &str = "is a text event type this gateway cannot read";
pub(crate) const AUDIO_DATA: &str = "speaks the text, where no guardrail hears it (its \
     transcript is read; a block or a mask would not hold for the audio): spoken answers are \
     refused where guardrails read the text";
pub(crate) const LOGPROBS: &str = "holds the text's tokens, which no guardrail reads (they would \
     repeat what a guardrail blocks or masks): log probabilities are refused where guardrails \
     read the text";
pub(crate) const TYPE_MUST_BE_STRING: &str = "must be a string naming the type";
pub(crate) const NAMED_TWICE: &str =
    "is named twice in its object: which of the two a model reads is its parser's choice";
pub(crate) const VARIABLE_SHAPE: &str = "must be a string or an input part";
pub(crate) const PROMPT_SHAPE: &str =
    "must be a string, an array of strings, or an array of token ids";
pub(crate) const REWRITE_NOT_JSON: &str =
    "was rewritten by a guardrail into text that is not valid JSON";

/// What a part, item or block of a known protocol carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Its `text` field is text.
    Text,
    /// Its `refusal` field is text.
    Refusal,
    /// A known type that carries no text a guardrail reads (images, audio, files).
    NoText,
    /// A type this gateway does not know: it may carry text it cannot find.
    Unknown,
    /// `type` is absent.
    Untyped,
    /// `type` is not a string.
    BadType,
}

/// Chat completions content parts (`messages[].content[]`).
pub(crate) fn chat_part_kind(kind: Option<&str>, present: bool) -> Part {
    part_of(kind, present, |t| match t {
        "text" => Part::Text,
        "refusal" => Part::Refusal,
        "image_url" | "input_audio" | "file" | "audio" => Part::NoText,
        _ => Part::Unknown,
    })
}

/// Responses API content parts (`input[].content[]`, `output[].content[]`).
pub(crate) fn responses_part_kind(kind: Option<&str>, present: bool) -> Part {
    part_of(kind, present, |t| match t {
        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => Part::Text,
        "refusal" => Part::Refusal,
        "input_image" | "input_file" | "input_audio" | "output_audio" => Part::NoText,
        _ => Part::Unknown,
    })
}

pub(crate) fn part_of(kind: Option<&str>, present: bool, known: impl Fn(&str) -> Part) -> Part {
    match kind {
        Some(t) => known(t),
        None if present => Part::BadType,
        None => Part::Untyped,
    }
}

/// What an Anthropic `document` block's `source` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Text,
    Content,
    NoText,
    Unknown,
}

pub(crate) fn document_source_kind(kind: Option<&str>) -> Source {
    match kind {
        Some("text") => Source::Text,
        Some("content") => Source::Content,
        Some("base64" | "url" | "file") => Source::NoText,
        _ => Source::Unknown,
    }
}

/// What an Anthropic `content_block_delta` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delta {
    Text,
    Json,
    Thinking,
    Citation,
    NoText,
    Unknown,
}

pub(crate) fn anthropic_delta_kind(kind: Option<&str>) -> Delta {
    match kind {
        Some("text_delta") => Delta::Text,
        Some("input_json_delta") => Delta::Json,
        Some("thinking_delta") => Delta::Thinking,
        Some("citations_delta") => Delta::Citation,
        Some("signature_delta") => Delta::NoText,
        _ => Delta::Unknown,
    }
}

/// A Responses API item type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    Message,
    FunctionCall,
    ToolOutput,
    CustomToolCall,
    Reasoning,
    McpCall,
    McpApprovalRequest,
    McpApprovalResponse,
    McpListTools,
    CodeInterpreterCall,
    WebSearchCall,
    FileSearchCall,
    LocalShellCall,
    ShellCall,
    ShellCallOutput,
    ApplyPatchCall,
    ComputerCall,
    NoText,
    Unknown,
    BadType,
}

pub(crate) fn responses_item_kind(kind: Option<&str>, present: bool) -> Item {
    match kind {
        None if present => Item::BadType,
        None | Some("message") => Item::Message,
        Some("function_call") => Item::FunctionCall,
        Some(
            "function_call_output"
            | "custom_tool_call_output"
            | "local_shell_call_output"
            | "apply_patch_call_output",
        ) => Item::ToolOutput,
        Some("custom_tool_call") => Item::CustomToolCall,
        Some("reasoning") => Item::Reasoning,
        Some("mcp_call") => Item::McpCall,
        Some("mcp_approval_request") => Item::McpApprovalRequest,
        Some("mcp_approval_response") => Item::McpApprovalResponse,
        Some("mcp_list_tools") => Item::McpListTools,
        Some("code_interpreter_call") => Item::CodeInterpreterCall,
        Some("web_search_call") => Item::WebSearchCall,
        Some("file_search_call") => Item::FileSearchCall,
        Some("local_shell_call") => Item::LocalShellCall,
        Some("shell_call") => Item::ShellCall,
        Some("shell_call_output") => Item::ShellCallOutput,
        Some("apply_patch_call") => Item::ApplyPatchCall,
        Some("computer_call") => Item::ComputerCall,
        Some("item_reference" | "computer_call_output" | "image_generation_call") => Item::NoText,
        Some(_) => Item::Unknown,
    }
}

/// An Anthropic content block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    Text,
    ToolUse,
    ToolResult,
    Thinking,
    Document,
    SearchResult,
    WebSearchResult,
    NoText,
    Unknown,
    Untyped,
    BadType,
}

pub(crate) fn anthropic_block_kind(kind: Option<&str>, present: bool) -> Block {
    match kind {
        None if present => Block::BadType,
        None => Block::Untyped,
        Some("text") => Block::Text,
        Some("tool_use" | "server_tool_use" | "mcp_tool_use") => Block::ToolUse,
        Some("tool_result" | "mcp_tool_result") => Block::ToolResult,
        Some("thinking") => Block::Thinking,
        Some("document") => Block::Document,
        Some("search_result") => Block::SearchResult,
        Some("web_search_tool_result") => Block::WebSearchResult,
        Some(
            "image"
            | "redacted_thinking"
            | "web_fetch_tool_result"
            | "code_execution_tool_result"
            | "container_upload",
        ) => Block::NoText,
        Some(_) => Block::Unknown,
    }
}

/// A key for text `kind` at `index`/`sub`.
pub(crate) fn key(index: u64, kind: TextKind, sub: u64) -> TextKey {
    TextKey { index, kind, sub }
}

/// The sub-key of the legacy `function_call.arguments`, apart from every tool call's.
pub(crate) const FUNCTION_CALL_SUB: u64 = u64::MAX;

/// The `sub` of a chat message's `reasoning` string (its `reasoning_content` is sub 0).
pub(crate) const REASONING_SUB: u64 = 1;

/// The `sub` of a chat message's first thinking block (`thinking_blocks[j]` is this plus `j`).
pub(crate) const THINKING_SUB: u64 = 2;

/// The `sub` of a chat message's first `reasoning_details` entry (entry `i` is this plus its
/// `index`), apart from its thinking blocks'.
pub(crate) const REASONING_DETAILS_SUB: u64 = 1 << 32;

/// The `index` of the strings of a chat request's `documents` and `chat_template_kwargs`
/// (vLLM's, SGLang's), apart from the tools' (a tool's index) and the response format's
/// (`u64::MAX`).
pub(crate) const TEMPLATE_INPUTS: u64 = u64::MAX - 1;

/// The `sub` of a chat message's audio transcript (its content is sub 0).
pub(crate) const AUDIO_SUB: u64 = u64::MAX - 1;

/// The `sub` of the titles of the pages a chat message cites (`annotations[].url_citation`),
/// all under one key, as a stream's deltas may bring them.
pub(crate) const ANNOTATIONS_SUB: u64 = u64::MAX - 2;

/// Added to `content_index << 16` plus an annotation's position for the title of a page a
/// Responses text part cites (`annotations[].title`): each under a key of its own, as a
/// stream's `response.output_text.annotation.added` names it by `annotation_index`.
pub(crate) const PART_ANNOTATIONS_SUB: u64 = 1 << 40;

/// The key of annotation `j`'s title in the Responses text part `sub` of item `index`.
pub(crate) fn part_annotation(index: u64, sub: u64, j: u64) -> TextKey {
    key(
        index,
        TextKind::Content,
        PART_ANNOTATIONS_SUB + (sub << 16) + j,
    )
}

/// Added to an Anthropic text block's `sub` for the texts its citations quote (`cited_text`),
/// all under one key: a stream's `citations_delta` events carry them one by one, with no
/// position of their own.
pub(crate) const CITATIONS_SUB: u64 = 1 << 48;

// JSON texts (an Anthropic `tool_use` input is an object; its text is its compact JSON, as a
// stream sends it in `input_json_delta` pieces).

pub(crate) fn json_text_value<'v>(
    v: &'v Value,
    k: TextKey,
    role: Role,
    _path: &Path<'_>,
    emit: &mut dyn FnMut(TextKey, Role, Cow<'v, str>),
    _bad: &mut dyn FnMut(&Path<'_>, &'static str),
) {
    emit(k, role, Cow::Owned(v.to_string()));
}

pub(crate) fn json_text_view<'v>(
    v: &'v JsonView<'v>,
    k: TextKey,
    role: Role,
    _path: &Path<'_>,
    emit: &mut dyn FnMut(TextKey, Role, Cow<'v, str>),
    _bad: &mut dyn FnMut(&Path<'_>, &'static str),
) {
    emit(k, role, Cow::Owned(v.to_json_string()));
}

pub(crate) fn json_text_mut(
    v: &mut Value,
    k: TextKey,
    role: Role,
    path: &Path<'_>,
    emit: &mut dyn FnMut(TextKey, Role, &mut String),
    bad: &mut dyn FnMut(&Path<'_>, &'static str),
) {
    let before = v.to_string();
    let mut text = before.clone();
    emit(k, role, &mut text);
    if text != before {
        match serde_json::from_str::<Value>(&text) {
            Ok(new) => *v = new,
            Err(_) => bad(path, REWRITE_NOT_JSON),
        }
    }
}

// The walker's macro matches `Value::String(s)`, so a slot is a `&String`.
#[allow(clippy::ptr_arg)]
pub(crate) fn slot_value(s: &String) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

pub(crate) fn slot_view<'v>(s: &'v Cow<'v, str>) -> Cow<'v, str> {
    Cow::Borrowed(&**s)
}

pub(crate) fn slot_mut(s: &mut String) -> &mut String {
    s
}

pub(crate) fn kind_str_value(v: Option<&Value>) -> (Option<&str>, bool) {
    (v.and_then(Value::as_str), v.is_some_and(|v| !v.is_null()))
}

pub(crate) fn kind_str_view<'a>(v: Option<&'a JsonView<'_>>) -> (Option<&'a str>, bool) {
    (
        v.and_then(JsonView::as_str),
        v.is_some_and(|v| *v != JsonView::Null),
    )
}

pub(crate) fn index_value(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}

pub(crate) fn index_view(v: &JsonView<'_>, name: &str) -> Option<u64> {
    v.get(name).and_then(JsonView::as_u64)
}

/// Generates a walker module over node type `$V` (of enum `$E`) emitting slots of type `$S`.
macro_rules! walker {
    (
        $module:ident, $E:ident, $V:ty, $S:ty,
        get = $get:ident, iter = $iter:ident, slot = $slot:path, json = $json:path,
        kind = $kind:path, index = $index:path
    ) => {
        #[allow(dead_code)] // not every walker reads every kind of document
        pub(crate) mod $module {
            #[allow(unused_imports)] // each walker uses the names of its own node type
            use super::{Role, TextKey, TextKind};
            #[allow(unused_imports)]
            use crate::text::walk::*;
            #[allow(unused_imports)]
            use crate::CallType;
            #[allow(unused_imports)]
            use crate::json::JsonView;
            #[allow(unused_imports)]
            use serde_json::Value;
            #[allow(unused_imports)]
            use std::borrow::Cow;

            pub(crate) type Emit<'s, 'v> = &'s mut dyn FnMut(TextKey, Role, $S);
            pub(crate) type Bad<'s> = &'s mut dyn FnMut(&Path<'_>, &'static str);

            fn string<'v>(v: $V, k: TextKey, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match v {
                    $E::String(s) => emit(k, role, $slot(s)),
                    _ => bad(path, MUST_BE_STRING),
                }
            }

            /// `obj`'s member `name` when present: a string or `null` ([`opt_string`]), at
            /// `path.name`.
            fn opt_member<'v>(obj: $V, name: &'static str, k: TextKey, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if let Some(v) = obj.$get(name) {
                    opt_string(v, k, role, &path.key(name), emit, bad);
                }
            }

            fn opt_string<'v>(v: $V, k: TextKey, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match v {
                    $E::String(s) => emit(k, role, $slot(s)),
                    $E::Null => {}
                    _ => bad(path, MUST_BE_STRING_OR_NULL),
                }
            }


            // ---------------------------------------------------------------- chat completions

            /// A chat message (request), a choice's `message` (response) or its `delta`
            /// (stream): the same fields in all three.
            pub(crate) fn chat_message<'v>(m: $V, index: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(m, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                opt_member(m, "name", key(index, TextKind::Name, 0), role, path, emit, bad);
                if let Some(content) = m.$get("content") {
                    let path = path.key("content");
                    match content {
                        $E::String(s) => emit(key(index, TextKind::Content, 0), role, $slot(s)),
                        $E::Null => {}
                        $E::Array(parts) => {
                            for (j, part) in parts.$iter().enumerate() {
                                chat_part(part, index, role, &path.index(j), emit, bad);
                            }
                        }
                        _ => bad(&path, CONTENT_SHAPE),
                    }
                }
                opt_member(m, "refusal", key(index, TextKind::Refusal, 0), role, path, emit, bad);
                // Reasoning as OpenAI-compatible servers send it (DeepSeek, vLLM, LiteLLM's
                // `reasoning_content`; OpenRouter's and Ollama's `reasoning` string).
                opt_member(m, "reasoning_content", key(index, TextKind::Reasoning, 0), role, path, emit, bad);
                if let Some(reasoning @ $E::String(..)) = m.$get("reasoning") {
                    opt_string(reasoning, key(index, TextKind::Reasoning, REASONING_SUB), role, &path.key("reasoning"), emit, bad);
                }
                // LiteLLM's Anthropic-style `thinking_blocks`, on its messages and deltas: the
                // `thinking` of each is reasoning text (a redacted block's `data` is opaque).
                if let Some(blocks) = m.$get("thinking_blocks") {
                    each_object(blocks, &path.key("thinking_blocks"), bad, &mut |block, j, path, bad| {
                        let (kind, present) = $kind(block.get("type"));
                        match anthropic_block_kind(kind, present) {
                            Block::Thinking => {
                                if let Some(thinking) = block.$get("thinking") {
                                    let k = key(index, TextKind::Reasoning, THINKING_SUB + j as u64);
                                    string(thinking, k, role, &path.key("thinking"), emit, bad);
                                }
                            }
                            Block::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                            Block::Untyped => bad(&path.key("type"), REQUIRED),
                            _ if kind == Some("redacted_thinking") => {}
                            _ => bad(&path.key("type"), UNKNOWN_BLOCK),
                        }
                    });
                }
                // OpenRouter's `reasoning_details`: reasoning text and summaries (an encrypted
                // entry's `data` is opaque), each at its `index`.
                if let Some(details) = m.$get("reasoning_details") {
                    each_object(details, &path.key("reasoning_details"), bad, &mut |detail, j, path, bad| {
                        let at = $index(&*detail, "index").unwrap_or(j as u64);
                        let k = key(index, TextKind::Reasoning, REASONING_DETAILS_SUB + at);
                        let (kind, present) = $kind(detail.get("type"));
                        let member = match kind {
                            Some("reasoning.text") => "text",
                            Some("reasoning.summary") => "summary",
                            Some("reasoning.encrypted") => return,
                            Some(_) => return bad(&path.key("type"), UNKNOWN_PART),
                            None if present => return bad(&path.key("type"), TYPE_MUST_BE_STRING),
                            None => return bad(&path.key("type"), REQUIRED),
                        };
                        if let Some(text) = detail.$get(member) {
                            opt_string(text, k, role, &path.key(member), emit, bad);
                        }
                    });
                }
                // The titles of the pages an answer cites, shown with it.
                if let Some(annotations) = m.$get("annotations") {
                    let k = key(index, TextKind::Content, ANNOTATIONS_SUB);
                    each_object(annotations, &path.key("annotations"), bad, &mut |annotation, _, path, bad| {
                        object_at(annotation, "url_citation", path, bad, &mut |citation, path, bad| {
                            opt_member(citation, "title", k, role, path, emit, bad);
                        });
                    });
                }
                // The transcript of an audio answer (the audio itself, in a response, is
                // refused: [`no_audio_data`]).
                if let Some(audio) = m.$get("audio") {
                    if let Some(transcript) = audio.$get("transcript") {
                        opt_string(transcript, key(index, TextKind::Content, AUDIO_SUB), role, &path.key("audio").key("transcript"), emit, bad);
                    }
                }
                if let Some(calls) = m.$get("tool_calls") {
                    each_object(calls, &path.key("tool_calls"), bad, &mut |call, j, path, bad| {
                        let sub = $index(&*call, "index").unwrap_or(j as u64);
                        object_at(call, "function", path, bad, &mut |function, path, bad| {
                            opt_member(function, "arguments", key(index, TextKind::Arguments, sub), role, path, emit, bad);
                        });
                    });
                }
                object_at(m, "function_call", path, bad, &mut |call, path, bad| {
                    opt_member(call, "arguments", key(index, TextKind::Arguments, FUNCTION_CALL_SUB), role, path, emit, bad);
                });
            }

            fn chat_part<'v>(part: $V, index: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(part, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                let (kind, present) = $kind(part.get("type"));
                match chat_part_kind(kind, present) {
                    Part::Text | Part::Untyped => match part.$get("text") {
                        Some(text) => string(text, key(index, TextKind::Content, 0), role, &path.key("text"), emit, bad),
                        None => bad(&path.key("text"), REQUIRED),
                    },
                    Part::Refusal => match part.$get("refusal") {
                        Some(text) => string(text, key(index, TextKind::Refusal, 0), role, &path.key("refusal"), emit, bad),
                        None => bad(&path.key("refusal"), REQUIRED),
                    },
                    Part::NoText => bad(path, MEDIA),
                    Part::Unknown => bad(&path.key("type"), UNKNOWN_PART),
                    Part::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                }
            }

            /// A chat request's predicted output (`{"type": "content", "content": ...}`): text
            /// the model is given, a string or text parts.
            fn prediction<'v>(p: $V, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if matches!(p, $E::Null) {
                    return;
                }
                if !matches!(p, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                let Some(content) = p.$get("content") else {
                    return;
                };
                let path = path.key("content");
                match content {
                    $E::String(s) => emit(key(0, TextKind::Prediction, 0), Role::Full, $slot(s)),
                    $E::Null => {}
                    $E::Array(parts) => {
                        for (j, part) in parts.$iter().enumerate() {
                            let path = path.index(j);
                            if !matches!(part, $E::Object(..)) {
                                bad(&path, MUST_BE_OBJECT);
                                continue;
                            }
                            let (kind, present) = $kind(part.get("type"));
                            match chat_part_kind(kind, present) {
                                Part::Text | Part::Untyped => match part.$get("text") {
                                    Some(text) => string(text, key(0, TextKind::Prediction, j as u64), Role::Full, &path.key("text"), emit, bad),
                                    None => bad(&path.key("text"), REQUIRED),
                                },
                                Part::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                                // A prediction holds text parts only: anything else may carry
                                // text this gateway cannot find.
                                _ => bad(&path.key("type"), UNKNOWN_PART),
                            }
                        }
                    }
                    _ => bad(&path, CONTENT_SHAPE),
                }
            }

            /// A JSON Schema the model is given (a tool's parameters, a response format): the
            /// texts it reads in it, at every depth. Read: a `description` or `title` string, and
            /// every string under a `description` or `title` that is not one (a model is shown
            /// what it is given, schema or not) or under a `const`, `default`, `enum` or
            /// `examples` (`literal`). The members of a `properties`, `patternProperties`,
            /// `$defs`, `definitions` or `dependentSchemas` object are named schemas
            /// (`named`): a property called `description` is a schema, not a text. An object
            /// that names a member twice is refused (which of the two a model reads is its
            /// parser's choice); member names are not read. Each text has a key of its own: `sub`
            /// counts from `next` (a stream's `.done` event repeats each apart).
            #[allow(clippy::too_many_arguments)]
            fn schema<'v>(s: $V, index: u64, next: &mut u64, literal: bool, named: bool, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match s {
                    $E::String(text) if literal => {
                        emit(key(index, TextKind::Schema, *next), Role::Full, $slot(text));
                        *next += 1;
                    }
                    $E::Array(items) => {
                        for (i, item) in items.$iter().enumerate() {
                            schema(item, index, next, literal, false, &path.index(i), emit, bad);
                        }
                    }
                    $E::Object(members) => {
                        let mut names = std::collections::HashSet::new();
                        for (name, value) in members.$iter() {
                            let name: &str = name.as_ref();
                            let path = path.member(name);
                            if !names.insert(name) {
                                bad(&path, NAMED_TWICE);
                                return;
                            }
                            // A named schema written as a string is shown to the model too.
                            let (literal, named) = if named {
                                (literal || matches!(value, $E::String(..)), false)
                            } else {
                                (
                                    literal
                                        || matches!(name, "description" | "title" | "const" | "default" | "enum" | "examples"),
                                    matches!(name, "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"),
                                )
                            };
                            schema(value, index, next, literal, named, &path, emit, bad);
                        }
                    }
                    _ => {}
                }
            }

            /// A tool's parameters or input schema: [`schema`], every string of it read when it
            /// is not an object (no schema, but what the model is shown).
            fn tool_schema<'v>(s: $V, index: u64, next: &mut u64, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let literal = !matches!(s, $E::Object(..));
                schema(s, index, next, literal, false, path, emit, bad);
            }

            /// A chat request's `response_format` (`{"type": "json_schema", "json_schema":
            /// {"description", "schema"}}`) or a Responses request's `text.format` (`{"type":
            /// "json_schema", "description", "schema"}`): the schema the answer follows, which
            /// the model reads.
            fn response_format<'v>(f: $V, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(f, $E::Object(..)) {
                    if !matches!(f, $E::Null) {
                        bad(path, MUST_BE_OBJECT);
                    }
                    return;
                }
                // Chat nests the schema's object under `json_schema`; Responses does not.
                let (f, path) = match f.$get("json_schema") {
                    Some(inner) => (inner, path.key("json_schema")),
                    None => (f, *path),
                };
                if !matches!(f, $E::Object(..)) {
                    bad(&path, MUST_BE_OBJECT);
                    return;
                }
                schema(f, u64::MAX, &mut 0, false, false, &path, emit, bad);
            }

            /// A function's definition (a chat tool's `function`, a custom tool's `custom`, an
            /// entry of the legacy `functions`): its description and its parameters' schema,
            /// which the model reads.
            fn function_definition<'v>(d: $V, index: u64, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(d, $E::Object(..)) {
                    if !matches!(d, $E::Null) {
                        bad(path, MUST_BE_OBJECT);
                    }
                    return;
                }
                opt_member(d, "description", key(index, TextKind::ToolDescription, 0), Role::Full, path, emit, bad);
                if let Some(parameters) = d.$get("parameters") {
                    tool_schema(parameters, index, &mut 0, &path.key("parameters"), emit, bad);
                }
            }

            /// Tool definitions: their descriptions are text the model reads.
            fn tools<'v>(tools: $V, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let $E::Array(tools) = tools else {
                    if !matches!(tools, $E::Null) {
                        bad(path, MUST_BE_ARRAY);
                    }
                    return;
                };
                for (i, tool) in tools.$iter().enumerate() {
                    let path = path.index(i);
                    if !matches!(tool, $E::Object(..)) {
                        bad(&path, MUST_BE_OBJECT);
                        continue;
                    }
                    // Chat nests the definition under `function` (a custom tool's under
                    // `custom`); Responses and Anthropic do not.
                    if let Some(function) = tool.$get("function") {
                        function_definition(function, i as u64, &path.key("function"), emit, bad);
                        continue;
                    }
                    if let Some(custom) = tool.$get("custom") {
                        function_definition(custom, i as u64, &path.key("custom"), emit, bad);
                        continue;
                    }
                    opt_member(tool, "description", key(i as u64, TextKind::ToolDescription, 0), Role::Full, &path, emit, bad);
                    // What an MCP server is for (Responses' `mcp` tool), given to the model.
                    opt_member(tool, "server_description", key(i as u64, TextKind::ToolDescription, 1), Role::Full, &path, emit, bad);
                    // Responses' `parameters`, Anthropic's `input_schema`.
                    let next = &mut 0;
                    if let Some(parameters) = tool.$get("parameters") {
                        tool_schema(parameters, i as u64, next, &path.key("parameters"), emit, bad);
                    }
                    if let Some(input_schema) = tool.$get("input_schema") {
                        tool_schema(input_schema, i as u64, next, &path.key("input_schema"), emit, bad);
                    }
                    // Anthropic's example inputs of a tool: every string in them.
                    if let Some(examples) = tool.$get("input_examples") {
                        schema(examples, i as u64, next, true, false, &path.key("input_examples"), emit, bad);
                    }
                    // A web search tool's location (Responses' `web_search`, Anthropic's
                    // `web_search_20250305`): free text the search and the model are given.
                    if let Some(location) = tool.$get("user_location") {
                        schema(location, i as u64, next, true, false, &path.key("user_location"), emit, bad);
                    }
                }
            }

            // ------------------------------------------------------------------- responses

            /// A Responses API input item (request) or output item (response, stream).
            pub(crate) fn responses_item<'v>(item: $V, index: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(item, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                let (kind, present) = $kind(item.get("type"));
                match responses_item_kind(kind, present) {
                    Item::Message => {
                        if let Some(content) = item.$get("content") {
                            responses_content(content, index, role, &path.key("content"), emit, bad);
                        }
                    }
                    Item::FunctionCall | Item::McpApprovalRequest => {
                        opt_member(item, "arguments", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                    }
                    Item::McpCall => {
                        opt_member(item, "arguments", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                        opt_member(item, "output", key(index, TextKind::Content, 0), role, path, emit, bad);
                    }
                    Item::CustomToolCall => {
                        opt_member(item, "input", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                    }
                    Item::CodeInterpreterCall => {
                        opt_member(item, "code", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                        // What the code printed, which the model reads next.
                        if let Some(outputs) = item.$get("outputs") {
                            strings_of(outputs, Some("logs"), key(index, TextKind::Content, 0), role, &path.key("outputs"), emit, bad);
                        }
                    }
                    // The model's search query, and the results a file search gives it.
                    Item::WebSearchCall => {
                        object_at(item, "action", path, bad, &mut |action, path, bad| {
                            opt_member(action, "query", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                            if let Some(queries) = action.$get("queries") {
                                strings_of(queries, None, key(index, TextKind::Arguments, 1), role, &path.key("queries"), emit, bad);
                            }
                        });
                    }
                    Item::FileSearchCall => {
                        if let Some(queries) = item.$get("queries") {
                            strings_of(queries, None, key(index, TextKind::Arguments, 0), role, &path.key("queries"), emit, bad);
                        }
                        if let Some(results) = item.$get("results") {
                            strings_of(results, Some("text"), key(index, TextKind::Content, 0), role, &path.key("results"), emit, bad);
                        }
                    }
                    // The command the model runs.
                    Item::LocalShellCall => {
                        object_at(item, "action", path, bad, &mut |action, path, bad| {
                            if let Some(command) = action.$get("command") {
                                strings_of(command, None, key(index, TextKind::Arguments, 0), role, &path.key("command"), emit, bad);
                            }
                        });
                    }
                    // The commands of the shell tool, each under a key of its own (the stream's
                    // `command_index`).
                    Item::ShellCall => {
                        object_at(item, "action", path, bad, &mut |action, path, bad| {
                            if let Some(commands) = action.$get("commands") {
                                strings_of(commands, None, key(index, TextKind::Arguments, 0), role, &path.key("commands"), emit, bad);
                            }
                        });
                    }
                    // What each command printed, which the model reads next: command `j`'s
                    // standard output under sub `2j`, its standard error under `2j + 1`.
                    Item::ShellCallOutput => {
                        if let Some(output) = item.$get("output") {
                            each_object(output, &path.key("output"), bad, &mut |entry, j, path, bad| {
                                for (name, sub) in [("stdout", 2 * j as u64), ("stderr", 2 * j as u64 + 1)] {
                                    if let Some(text) = entry.$get(name) {
                                        opt_string(text, key(index, TextKind::Content, sub), role, &path.key(name), emit, bad);
                                    }
                                }
                            });
                        }
                    }
                    // The patch the model writes (streamed as `operation.diff`), and the file's
                    // path.
                    Item::ApplyPatchCall => {
                        object_at(item, "operation", path, bad, &mut |operation, path, bad| {
                            opt_member(operation, "diff", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                            opt_member(operation, "path", key(index, TextKind::Arguments, 1), role, path, emit, bad);
                        });
                    }
                    // What a computer-use model types (its other actions hold no text).
                    Item::ComputerCall => {
                        object_at(item, "action", path, bad, &mut |action, path, bad| {
                            opt_member(action, "text", key(index, TextKind::Arguments, 0), role, path, emit, bad);
                        });
                    }
                    // The tools an MCP server lists: their descriptions and input schemas, as a
                    // tool definition's (where an MCP server may hide instructions).
                    Item::McpListTools => {
                        if let Some(tools) = item.$get("tools") {
                            let next = &mut 0;
                            each_object(tools, &path.key("tools"), bad, &mut |tool, j, path, bad| {
                                opt_member(tool, "description", key(index, TextKind::ToolDescription, j as u64), role, path, emit, bad);
                                if let Some(input_schema) = tool.$get("input_schema") {
                                    tool_schema(input_schema, index, next, &path.key("input_schema"), emit, bad);
                                }
                            });
                        }
                    }
                    // Why the user declined a tool call: the model reads it.
                    Item::McpApprovalResponse => {
                        opt_member(item, "reason", key(index, TextKind::Content, 0), role, path, emit, bad);
                    }
                    Item::ToolOutput => {
                        if let Some(output) = item.$get("output") {
                            responses_content(output, index, role, &path.key("output"), emit, bad);
                        }
                    }
                    Item::Reasoning => {
                        if let Some(summary) = item.$get("summary") {
                            reasoning_parts(summary, index, TextKind::Reasoning, role, &path.key("summary"), emit, bad);
                        }
                        if let Some(content) = item.$get("content") {
                            reasoning_parts(content, index, TextKind::ReasoningContent, role, &path.key("content"), emit, bad);
                        }
                    }
                    // A computer's screenshot, and a generated image given back (which a client
                    // may write itself); a reference to a stored item carries nothing here.
                    Item::NoText
                        if matches!(kind, Some("computer_call_output" | "image_generation_call")) =>
                    {
                        bad(path, MEDIA)
                    }
                    Item::NoText => {}
                    Item::Unknown => bad(&path.key("type"), UNKNOWN_ITEM),
                    Item::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                }
            }

            /// A message's `content` or a tool output: a string or content parts.
            fn responses_content<'v>(content: $V, index: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match content {
                    $E::String(s) => emit(key(index, TextKind::Content, 0), role, $slot(s)),
                    $E::Null => {}
                    $E::Array(parts) => {
                        for (j, part) in parts.$iter().enumerate() {
                            responses_part(part, index, j as u64, role, &path.index(j), emit, bad);
                        }
                    }
                    _ => bad(path, CONTENT_SHAPE),
                }
            }

            /// One content part of a Responses item; `sub` is its `content_index`.
            pub(crate) fn responses_part<'v>(part: $V, index: u64, sub: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(part, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                let (kind, present) = $kind(part.get("type"));
                match responses_part_kind(kind, present) {
                    Part::Text | Part::Untyped => {
                        match part.$get("text") {
                            Some(text) => string(text, key(index, TextKind::Content, sub), role, &path.key("text"), emit, bad),
                            None => bad(&path.key("text"), REQUIRED),
                        }
                        // The titles of the pages the text cites, shown with it.
                        if let Some(annotations) = part.$get("annotations") {
                            each_object(annotations, &path.key("annotations"), bad, &mut |annotation, j, path, bad| {
                                opt_member(annotation, "title", part_annotation(index, sub, j as u64), role, path, emit, bad);
                            });
                        }
                    }
                    Part::Refusal => match part.$get("refusal") {
                        Some(text) => string(text, key(index, TextKind::Refusal, sub), role, &path.key("refusal"), emit, bad),
                        None => bad(&path.key("refusal"), REQUIRED),
                    },
                    Part::NoText => bad(path, MEDIA),
                    Part::Unknown => bad(&path.key("type"), UNKNOWN_PART),
                    Part::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                }
            }

            /// An array of strings (`member` `None`) or of objects whose `member` is a string or
            /// `null`: the `j`th under `first`'s key with `sub` increased by `j`, so each has a
            /// key of its own (a stream's `.done` event repeats each apart).
            fn strings_of<'v>(array: $V, member: Option<&'static str>, first: TextKey, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let k = |j: usize| key(first.index, first.kind, first.sub + j as u64);
                match (member, array) {
                    (None, $E::Array(items)) => {
                        for (j, item) in items.$iter().enumerate() {
                            string(item, k(j), role, &path.index(j), emit, bad);
                        }
                    }
                    (Some(member), array) => each_object(array, path, bad, &mut |item, j, path, bad| {
                        opt_member(item, member, k(j), role, path, emit, bad);
                    }),
                    (None, $E::Null) => {}
                    (None, _) => bad(path, MUST_BE_ARRAY),
                }
            }

            /// What an upstream sends beside a message's text that repeats it where no guardrail
            /// reads: its spoken audio (`audio.data`, not `null`) is refused. Only in responses:
            /// a request's earlier turns may carry it back, as the model ignores it.
            #[allow(clippy::extra_unused_lifetimes)]
            fn no_audio_data<'v>(message: $V, path: &Path<'_>, bad: Bad<'_>) {
                if let Some(audio) = message.$get("audio") {
                    if !matches!(audio.$get("data"), None | Some($E::Null)) {
                        bad(&path.key("audio").key("data"), AUDIO_DATA);
                    }
                }
            }

            /// [`no_logprobs`] on each text part of a Responses output item (a message's
            /// `content`): only in what the upstream sends, as [`no_audio_data`].
            #[allow(clippy::extra_unused_lifetimes)]
            fn no_item_logprobs<'v>(item: $V, path: &Path<'_>, bad: Bad<'_>) {
                if let Some($E::Array(parts)) = item.$get("content") {
                    for (j, part) in parts.$iter().enumerate() {
                        no_logprobs(part, &path.key("content").index(j), bad);
                    }
                }
            }

            /// An object's `logprobs` (a chat or completion choice's, a Responses text part's or
            /// text event's): absent, `null` or empty, or refused. The tokens repeat the text
            /// apart from it, so a guardrail's block or mask would not hold. Only in responses.
            #[allow(clippy::extra_unused_lifetimes)]
            fn no_logprobs<'v>(object: $V, path: &Path<'_>, bad: Bad<'_>) {
                match object.$get("logprobs") {
                    None | Some($E::Null) => {}
                    Some($E::Array(tokens)) if tokens.is_empty() => {}
                    Some(_) => bad(&path.key("logprobs"), LOGPROBS),
                }
            }

            /// `f` on `object`'s member `name`, with its path, when it is an object; `null` or
            /// absent: nothing; anything else is refused ([`if_object`]).
            #[allow(clippy::extra_unused_lifetimes)]
            fn object_at<'v>(object: $V, name: &'static str, path: &Path<'_>, bad: Bad<'_>, f: &mut dyn FnMut($V, &Path<'_>, Bad<'_>)) {
                if let Some(member) = object.$get(name) {
                    if_object(member, &path.key(name), bad, f);
                }
            }

            /// `f` on `value` when it is an object; `null`: nothing; anything else is refused.
            #[allow(clippy::extra_unused_lifetimes)]
            fn if_object<'v>(value: $V, path: &Path<'_>, bad: Bad<'_>, f: &mut dyn FnMut($V, &Path<'_>, Bad<'_>)) {
                if matches!(value, $E::Object(..)) {
                    f(value, path, bad);
                } else if !matches!(value, $E::Null) {
                    bad(path, MUST_BE_OBJECT);
                }
            }

            /// Each object of an array, with its position and path (`null`: none); an array
            /// member that is not an object, or anything but an array, is refused.
            // `'v` names the documents' lifetime in the walkers whose node type has one.
            #[allow(clippy::extra_unused_lifetimes)]
            fn each_object<'v>(array: $V, path: &Path<'_>, bad: Bad<'_>, f: &mut dyn FnMut($V, usize, &Path<'_>, Bad<'_>)) {
                match array {
                    $E::Array(items) => {
                        for (j, item) in items.$iter().enumerate() {
                            let path = path.index(j);
                            if matches!(item, $E::Object(..)) {
                                f(item, j, &path, bad);
                            } else {
                                bad(&path, MUST_BE_OBJECT);
                            }
                        }
                    }
                    $E::Null => {}
                    _ => bad(path, MUST_BE_ARRAY),
                }
            }

            /// A reasoning item's `summary` or `content` parts.
            fn reasoning_parts<'v>(parts: $V, index: u64, kind: TextKind, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match parts {
                    $E::Array(parts) => {
                        for (j, part) in parts.$iter().enumerate() {
                            let path = path.index(j);
                            if !matches!(part, $E::Object(..)) {
                                bad(&path, MUST_BE_OBJECT);
                                continue;
                            }
                            if let Some(text) = part.$get("text") {
                                string(text, key(index, kind, j as u64), role, &path.key("text"), emit, bad);
                            }
                        }
                    }
                    $E::Null => {}
                    _ => bad(path, MUST_BE_ARRAY),
                }
            }

            // ------------------------------------------------------------------- anthropic

            /// Anthropic `system`, message `content` or a `tool_result`'s content.
            fn anthropic_content<'v>(content: $V, index: u64, kind: TextKind, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match content {
                    $E::String(s) => emit(key(index, kind, 0), role, $slot(s)),
                    $E::Array(blocks) => {
                        for (j, block) in blocks.$iter().enumerate() {
                            anthropic_block(block, index, kind, j as u64, role, &path.index(j), emit, bad);
                        }
                    }
                    $E::Null => {}
                    _ => bad(path, STRING_OR_ARRAY),
                }
            }

            /// One Anthropic content block. In a response or stream, `index` is the block's
            /// index and `sub` 0; in a request, `index` is the message's and `sub` the block's.
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn anthropic_block<'v>(block: $V, index: u64, text_kind: TextKind, sub: u64, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if !matches!(block, $E::Object(..)) {
                    bad(path, MUST_BE_OBJECT);
                    return;
                }
                let (kind, present) = $kind(block.get("type"));
                match anthropic_block_kind(kind, present) {
                    Block::Text => {
                        match block.$get("text") {
                            Some(text) => string(text, key(index, text_kind, sub), role, &path.key("text"), emit, bad),
                            None => bad(&path.key("text"), REQUIRED),
                        }
                        // What the text's citations quote (a document's or a web page's words),
                        // which the client shows with it.
                        if let Some(citations) = block.$get("citations") {
                            let k = key(index, text_kind, CITATIONS_SUB + sub);
                            each_object(citations, &path.key("citations"), bad, &mut |citation, _, path, bad| {
                                opt_member(citation, "cited_text", k, role, path, emit, bad);
                            });
                        }
                    }
                    Block::ToolUse => {
                        if let Some(input) = block.$get("input") {
                            let path = path.key("input");
                            if matches!(input, $E::Object(..)) {
                                $json(input, key(index, TextKind::Arguments, sub), role, &path, emit, bad);
                            } else {
                                bad(&path, MUST_BE_OBJECT);
                            }
                        }
                    }
                    Block::ToolResult => {
                        if let Some(content) = block.$get("content") {
                            anthropic_content(content, index, TextKind::Content, role, &path.key("content"), emit, bad);
                        }
                    }
                    Block::Thinking => {
                        if let Some(thinking) = block.$get("thinking") {
                            string(thinking, key(index, TextKind::Reasoning, sub), role, &path.key("thinking"), emit, bad);
                        }
                    }
                    Block::Document => {
                        // A document's title and context are given to the model with it.
                        for member in ["title", "context"] {
                            if let Some(text) = block.$get(member) {
                                opt_string(text, key(index, TextKind::Content, sub), role, &path.key(member), emit, bad);
                            }
                        }
                        if let Some(source) = block.$get("source") {
                            let path = path.key("source");
                            if !matches!(source, $E::Object(..)) {
                                bad(&path, MUST_BE_OBJECT);
                                return;
                            }
                            let source_kind = document_source_kind($kind(source.get("type")).0);
                            match source_kind {
                                Source::Text => {
                                    if let Some(data) = source.$get("data") {
                                        string(data, key(index, TextKind::Content, sub), role, &path.key("data"), emit, bad);
                                    }
                                }
                                Source::Content => {
                                    if let Some(content) = source.$get("content") {
                                        anthropic_content(content, index, TextKind::Content, role, &path.key("content"), emit, bad);
                                    }
                                }
                                // A PDF, inline, by URL or by file id.
                                Source::NoText => bad(&path, MEDIA),
                                Source::Unknown => bad(&path.key("type"), UNKNOWN_BLOCK),
                            }
                        }
                    }
                    Block::SearchResult => {
                        opt_member(block, "title", key(index, TextKind::Content, sub), role, path, emit, bad);
                        if let Some(content) = block.$get("content") {
                            anthropic_content(content, index, TextKind::Content, role, &path.key("content"), emit, bad);
                        }
                    }
                    // A web search's results: their pages' content is encrypted, their titles
                    // are text the model reads (an error is an object, with none).
                    Block::WebSearchResult => {
                        if let Some(content @ $E::Array(..)) = block.$get("content") {
                            strings_of(content, Some("title"), key(index, TextKind::Content, sub), role, &path.key("content"), emit, bad);
                        }
                    }
                    // An image, or a file uploaded to the code execution container; the model's
                    // own redacted thinking and server tools' results are not the client's.
                    Block::NoText if matches!(kind, Some("image" | "container_upload")) => bad(path, MEDIA),
                    Block::NoText => {}
                    Block::Unknown => bad(&path.key("type"), UNKNOWN_BLOCK),
                    Block::Untyped => bad(&path.key("type"), REQUIRED),
                    Block::BadType => bad(&path.key("type"), TYPE_MUST_BE_STRING),
                }
            }

            // ------------------------------------------------------------------- documents

            /// Every text of a request body.
            pub(crate) fn request<'v>(call_type: CallType, root: $V, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let root_path = Path::Root;
                if !matches!(root, $E::Object(..)) {
                    if !matches!(call_type, CallType::Other) {
                        bad(&root_path, MUST_BE_OBJECT);
                    }
                    return;
                }
                let role = Role::Full;
                match call_type {
                    CallType::ChatCompletions => {
                        let path = root_path.key("messages");
                        match root.$get("messages") {
                            Some($E::Array(messages)) => {
                                for (i, m) in messages.$iter().enumerate() {
                                    chat_message(m, i as u64, role, &path.index(i), emit, bad);
                                }
                            }
                            Some(_) => bad(&path, MUST_BE_ARRAY),
                            None => bad(&path, REQUIRED),
                        }
                        if let Some(t) = root.$get("tools") {
                            tools(t, &root_path.key("tools"), emit, bad);
                        }
                        // The legacy `functions`, which OpenAI still accepts: the definitions
                        // `tools[].function` replaced.
                        if let Some(functions) = root.$get("functions") {
                            let path = root_path.key("functions");
                            match functions {
                                $E::Array(functions) => {
                                    for (i, function) in functions.$iter().enumerate() {
                                        function_definition(function, i as u64, &path.index(i), emit, bad);
                                    }
                                }
                                $E::Null => {}
                                _ => bad(&path, MUST_BE_ARRAY),
                            }
                        }
                        if let Some(p) = root.$get("prediction") {
                            prediction(p, &root_path.key("prediction"), emit, bad);
                        }
                        if let Some(f) = root.$get("response_format") {
                            response_format(f, &root_path.key("response_format"), emit, bad);
                        }
                        // vLLM's and SGLang's: documents a template writes into the prompt, and
                        // the values a template is given. Every string in them.
                        let next = &mut 0;
                        for name in ["documents", "chat_template_kwargs"] {
                            if let Some(value) = root.$get(name) {
                                schema(value, TEMPLATE_INPUTS, next, true, false, &root_path.key(name), emit, bad);
                            }
                        }
                        // The web search's location: free text the search and the model are
                        // given.
                        if let Some(options) = root.$get("web_search_options") {
                            let path = root_path.key("web_search_options");
                            if let Some(location) = options.$get("user_location") {
                                schema(location, TEMPLATE_INPUTS, next, true, false, &path.key("user_location"), emit, bad);
                            }
                        }
                    }
                    CallType::Responses => {
                        if let Some(instructions) = root.$get("instructions") {
                            let path = root_path.key("instructions");
                            match instructions {
                                $E::String(s) => emit(key(0, TextKind::Instructions, 0), role, $slot(s)),
                                $E::Array(items) => {
                                    for (i, item) in items.$iter().enumerate() {
                                        responses_item(item, i as u64, role, &path.index(i), emit, bad);
                                    }
                                }
                                $E::Null => {}
                                _ => bad(&path, STRING_OR_ARRAY),
                            }
                        }
                        if let Some(input) = root.$get("input") {
                            let path = root_path.key("input");
                            match input {
                                $E::String(s) => emit(key(0, TextKind::Content, 0), role, $slot(s)),
                                $E::Array(items) => {
                                    for (i, item) in items.$iter().enumerate() {
                                        responses_item(item, i as u64, role, &path.index(i), emit, bad);
                                    }
                                }
                                _ => bad(&path, STRING_OR_ARRAY),
                            }
                        }
                        if let Some(t) = root.$get("tools") {
                            tools(t, &root_path.key("tools"), emit, bad);
                        }
                        // A stored prompt's variables: text the prompt is filled with.
                        if let Some(prompt) = root.$get("prompt") {
                            if_object(prompt, &root_path.key("prompt"), bad, &mut |prompt, path, bad| {
                                object_at(prompt, "variables", path, bad, &mut |variables, path, bad| {
                                    let $E::Object(members) = variables else {
                                        return;
                                    };
                                    for (j, (name, value)) in members.$iter().enumerate() {
                                        let name: &str = name.as_ref();
                                        let path = path.member(name);
                                        match value {
                                            $E::String(s) => emit(key(u64::MAX, TextKind::Content, j as u64), role, $slot(s)),
                                            $E::Object(..) => responses_part(value, u64::MAX, j as u64, role, &path, emit, bad),
                                            _ => bad(&path, VARIABLE_SHAPE),
                                        }
                                    }
                                });
                            });
                        }
                        if let Some(text) = root.$get("text") {
                            if_object(text, &root_path.key("text"), bad, &mut |text, path, bad| {
                                if let Some(format) = text.$get("format") {
                                    response_format(format, &path.key("format"), emit, bad);
                                }
                            });
                        }
                    }
                    CallType::AnthropicMessages => {
                        if let Some(system) = root.$get("system") {
                            anthropic_content(system, 0, TextKind::Instructions, role, &root_path.key("system"), emit, bad);
                        }
                        let path = root_path.key("messages");
                        match root.$get("messages") {
                            Some($E::Array(messages)) => {
                                for (i, m) in messages.$iter().enumerate() {
                                    let path = path.index(i);
                                    if !matches!(m, $E::Object(..)) {
                                        bad(&path, MUST_BE_OBJECT);
                                        continue;
                                    }
                                    match m.$get("content") {
                                        Some(content) => anthropic_content(content, i as u64, TextKind::Content, role, &path.key("content"), emit, bad),
                                        None => bad(&path.key("content"), REQUIRED),
                                    }
                                }
                            }
                            Some(_) => bad(&path, MUST_BE_ARRAY),
                            None => bad(&path, REQUIRED),
                        }
                        if let Some(t) = root.$get("tools") {
                            tools(t, &root_path.key("tools"), emit, bad);
                        }
                    }
                    CallType::TextCompletions => match root.$get("prompt") {
                        Some(prompt) => strings_or_tokens(prompt, &root_path.key("prompt"), emit, bad),
                        None => bad(&root_path.key("prompt"), REQUIRED),
                    },
                    CallType::Embeddings => match root.$get("input") {
                        Some(input) => strings_or_tokens(input, &root_path.key("input"), emit, bad),
                        None => bad(&root_path.key("input"), REQUIRED),
                    },
                    CallType::Other => {}
                }
            }

            /// A prompt or embedding input: a string, strings, token ids, or arrays of them.
            fn strings_or_tokens<'v>(v: $V, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match v {
                    $E::String(s) => emit(key(0, TextKind::Content, 0), Role::Full, $slot(s)),
                    $E::Array(items) => {
                        for (i, item) in items.$iter().enumerate() {
                            match item {
                                $E::String(s) => emit(key(i as u64, TextKind::Content, 0), Role::Full, $slot(s)),
                                $E::Number(..) => {}
                                $E::Array(tokens) => {
                                    if !tokens.iter().all(|t| matches!(t, $E::Number(..))) {
                                        bad(&path.index(i), PROMPT_SHAPE);
                                    }
                                }
                                _ => bad(&path.index(i), PROMPT_SHAPE),
                            }
                        }
                    }
                    _ => bad(path, PROMPT_SHAPE),
                }
            }

            /// Every text of a (non-streamed) response body.
            pub(crate) fn response<'v>(call_type: CallType, root: $V, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let root_path = Path::Root;
                if !matches!(root, $E::Object(..)) {
                    if !matches!(call_type, CallType::Other | CallType::Embeddings) {
                        bad(&root_path, MUST_BE_OBJECT);
                    }
                    return;
                }
                let role = Role::Full;
                match call_type {
                    CallType::ChatCompletions | CallType::TextCompletions => {
                        if let Some(choices) = root.$get("choices") {
                            choices_of(call_type, choices, role, &root_path.key("choices"), "message", emit, bad);
                        }
                    }
                    CallType::Responses => {
                        if let Some(output) = root.$get("output") {
                            output_items(output, role, &root_path.key("output"), emit, bad);
                        }
                    }
                    CallType::AnthropicMessages => {
                        if let Some(content) = root.$get("content") {
                            blocks_by_index(content, role, &root_path.key("content"), emit, bad);
                        }
                    }
                    CallType::Embeddings | CallType::Other => {}
                }
            }

            /// Chat `choices`, each with its `message` (`field`, in a body) or `delta` (in a
            /// stream); text completions carry `text` on the choice itself.
            pub(crate) fn choices_of<'v>(call_type: CallType, choices: $V, role: Role, path: &Path<'_>, field: &'static str, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let $E::Array(choices) = choices else {
                    if !matches!(choices, $E::Null) {
                        bad(path, MUST_BE_ARRAY);
                    }
                    return;
                };
                for (i, choice) in choices.$iter().enumerate() {
                    let path = path.index(i);
                    if !matches!(choice, $E::Object(..)) {
                        bad(&path, MUST_BE_OBJECT);
                        continue;
                    }
                    let index = $index(&*choice, "index").unwrap_or(i as u64);
                    no_logprobs(choice, &path, bad);
                    if call_type == CallType::TextCompletions {
                        opt_member(choice, "text", key(index, TextKind::Content, 0), role, &path, emit, bad);
                        continue;
                    }
                    if let Some(message) = choice.$get(field) {
                        match message {
                            $E::Null => {}
                            message => {
                                no_audio_data(message, &path.key(field), bad);
                                chat_message(message, index, role, &path.key(field), emit, bad)
                            }
                        }
                    }
                    // Some servers stream legacy completions through the chat route.
                    opt_member(choice, "text", key(index, TextKind::Content, 0), role, &path, emit, bad);
                }
            }

            /// Responses `output` items, keyed by position (their `output_index`).
            pub(crate) fn output_items<'v>(output: $V, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match output {
                    $E::Array(items) => {
                        for (i, item) in items.$iter().enumerate() {
                            no_item_logprobs(item, &path.index(i), bad);
                            responses_item(item, i as u64, role, &path.index(i), emit, bad);
                        }
                    }
                    $E::Null => {}
                    _ => bad(path, MUST_BE_ARRAY),
                }
            }

            /// Anthropic response blocks, keyed by position (their stream `index`).
            pub(crate) fn blocks_by_index<'v>(content: $V, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match content {
                    $E::Array(blocks) => {
                        for (i, block) in blocks.$iter().enumerate() {
                            anthropic_block(block, i as u64, TextKind::Content, 0, role, &path.index(i), emit, bad);
                        }
                    }
                    $E::Null => {}
                    _ => bad(path, MUST_BE_ARRAY),
                }
            }

            // ---------------------------------------------------------------------- events

            /// Every text of one stream event: new text (deltas, and the initial text of an
            /// item, part or block a stream announces) as [`Role::Delta`], and the complete
            /// texts that summary events repeat as [`Role::Full`]. `kind` is the event's type
            /// (`type` in its data, else its `event:` field).
            pub(crate) fn event<'v>(call_type: CallType, kind: Option<&str>, root: $V, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                let root_path = Path::Root;
                if !matches!(root, $E::Object(..)) {
                    return;
                }
                let d = Role::Delta;
                let f = Role::Full;
                match call_type {
                    CallType::ChatCompletions | CallType::TextCompletions | CallType::Other => {
                        if let Some(choices) = root.$get("choices") {
                            choices_of(call_type, choices, d, &root_path.key("choices"), "delta", emit, bad);
                        }
                    }
                    CallType::Responses => {
                        let output = $index(&*root, "output_index").unwrap_or(0);
                        let content = $index(&*root, "content_index").unwrap_or(0);
                        let kind = kind.unwrap_or("");
                        match kind {
                            "response.output_text.delta" => {
                                no_logprobs(root, &root_path, bad);
                                delta(root, "delta", key(output, TextKind::Content, content), &root_path.key("delta"), emit, bad)
                            }
                            "response.refusal.delta" => delta(root, "delta", key(output, TextKind::Refusal, content), &root_path.key("delta"), emit, bad),
                            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" | "response.mcp_call_arguments.delta" | "response.code_interpreter_call_code.delta" => {
                                delta(root, "delta", key(output, TextKind::Arguments, 0), &root_path.key("delta"), emit, bad)
                            }
                            "response.reasoning_summary_text.delta" => {
                                let sub = $index(&*root, "summary_index").unwrap_or(0);
                                delta(root, "delta", key(output, TextKind::Reasoning, sub), &root_path.key("delta"), emit, bad)
                            }
                            "response.reasoning_text.delta" => delta(root, "delta", key(output, TextKind::ReasoningContent, content), &root_path.key("delta"), emit, bad),
                            "response.output_text.annotation.added" => {
                                let j = $index(&*root, "annotation_index").unwrap_or(0);
                                object_at(root, "annotation", &root_path, bad, &mut |annotation, path, bad| {
                                    opt_member(annotation, "title", part_annotation(output, content, j), d, path, emit, bad);
                                });
                            }
                            "response.apply_patch_call_operation_diff.delta" => delta(root, "delta", key(output, TextKind::Arguments, 0), &root_path.key("delta"), emit, bad),
                            // A shell command as it is written: announced, then its deltas.
                            "response.shell_call_command.added" | "response.shell_call_command.delta" => {
                                let command = $index(&*root, "command_index").unwrap_or(0);
                                let name = if kind.ends_with("added") { "command" } else { "delta" };
                                delta(root, name, key(output, TextKind::Arguments, command), &root_path.key(name), emit, bad)
                            }
                            "response.output_item.added" | "response.output_item.done" => {
                                let role = if kind.ends_with("added") { d } else { f };
                                if let Some(item) = root.$get("item") {
                                    no_item_logprobs(item, &root_path.key("item"), bad);
                                    responses_item(item, output, role, &root_path.key("item"), emit, bad);
                                }
                            }
                            "response.content_part.added" | "response.content_part.done" => {
                                let role = if kind.ends_with("added") { d } else { f };
                                if let Some(part) = root.$get("part") {
                                    no_logprobs(part, &root_path.key("part"), bad);
                                    responses_part(part, output, content, role, &root_path.key("part"), emit, bad);
                                }
                            }
                            "response.reasoning_summary_part.added" | "response.reasoning_summary_part.done" => {
                                let role = if kind.ends_with("added") { d } else { f };
                                let sub = $index(&*root, "summary_index").unwrap_or(0);
                                if let Some(part) = root.$get("part") {
                                    if let $E::Object(..) = part {
                                        if let Some(t) = part.$get("text") {
                                            string(t, key(output, TextKind::Reasoning, sub), role, &root_path.key("part").key("text"), emit, bad);
                                        }
                                    }
                                }
                            }
                            "response.output_text.done" => {
                                no_logprobs(root, &root_path, bad);
                                full(root, "text", key(output, TextKind::Content, content), emit, bad)
                            }
                            "response.refusal.done" => full(root, "refusal", key(output, TextKind::Refusal, content), emit, bad),
                            "response.function_call_arguments.done" | "response.mcp_call_arguments.done" => full(root, "arguments", key(output, TextKind::Arguments, 0), emit, bad),
                            "response.custom_tool_call_input.done" => full(root, "input", key(output, TextKind::Arguments, 0), emit, bad),
                            "response.code_interpreter_call_code.done" => full(root, "code", key(output, TextKind::Arguments, 0), emit, bad),
                            "response.apply_patch_call_operation_diff.done" => full(root, "diff", key(output, TextKind::Arguments, 0), emit, bad),
                            "response.shell_call_command.done" => {
                                let command = $index(&*root, "command_index").unwrap_or(0);
                                full(root, "command", key(output, TextKind::Arguments, command), emit, bad)
                            }
                            "response.reasoning_summary_text.done" => {
                                let sub = $index(&*root, "summary_index").unwrap_or(0);
                                full(root, "text", key(output, TextKind::Reasoning, sub), emit, bad)
                            }
                            "response.reasoning_text.done" => full(root, "text", key(output, TextKind::ReasoningContent, content), emit, bad),
                            "response.created" | "response.in_progress" | "response.queued" | "response.completed" | "response.incomplete" | "response.failed" => {
                                if let Some(response) = root.$get("response") {
                                    if let $E::Object(..) = response {
                                        if let Some(output) = response.$get("output") {
                                            output_items(output, f, &root_path.key("response").key("output"), emit, bad);
                                        }
                                    }
                                }
                            }
                            // A generated image, in part: no text guardrail reads it.
                            "response.image_generation_call.partial_image" => bad(&root_path.key("partial_image_b64"), MEDIA),
                            other if other.ends_with(".delta") => bad(&root_path.key("type"), UNKNOWN_EVENT),
                            _ => {}
                        }
                    }
                    CallType::AnthropicMessages => {
                        let index = $index(&*root, "index").unwrap_or(0);
                        match kind.unwrap_or("") {
                            "message_start" => {
                                if let Some(message) = root.$get("message") {
                                    if let $E::Object(..) = message {
                                        if let Some(content) = message.$get("content") {
                                            blocks_by_index(content, d, &root_path.key("message").key("content"), emit, bad);
                                        }
                                    }
                                }
                            }
                            "content_block_start" => {
                                if let Some(block) = root.$get("content_block") {
                                    // A tool_use block starts with an empty `input` that the
                                    // `input_json_delta`s replace; only a non-empty one is
                                    // text a client could read.
                                    let placeholder = block.get("input").is_some_and(|i| matches!(i, $E::Object(o) if o.is_empty()));
                                    if !placeholder {
                                        anthropic_block(block, index, TextKind::Content, 0, d, &root_path.key("content_block"), emit, bad);
                                    }
                                }
                            }
                            "content_block_delta" => {
                                let path = root_path.key("delta");
                                let Some(delta) = root.$get("delta") else { return };
                                if !matches!(delta, $E::Object(..)) {
                                    bad(&path, MUST_BE_OBJECT);
                                    return;
                                }
                                let delta_kind = anthropic_delta_kind($kind(delta.get("type")).0);
                                match delta_kind {
                                    Delta::Text => field(delta, "text", key(index, TextKind::Content, 0), d, &path, emit, bad),
                                    Delta::Json => field(delta, "partial_json", key(index, TextKind::Arguments, 0), d, &path, emit, bad),
                                    Delta::Thinking => field(delta, "thinking", key(index, TextKind::Reasoning, 0), d, &path, emit, bad),
                                    Delta::Citation => match delta.$get("citation") {
                                        Some(citation) => if_object(citation, &path.key("citation"), bad, &mut |citation, path, bad| {
                                            opt_member(citation, "cited_text", key(index, TextKind::Content, CITATIONS_SUB), d, path, emit, bad);
                                        }),
                                        None => bad(&path.key("citation"), REQUIRED),
                                    },
                                    Delta::NoText => {}
                                    Delta::Unknown => bad(&path.key("type"), UNKNOWN_DELTA),
                                }
                            }
                            _ => {}
                        }
                    }
                    CallType::Embeddings => {}
                }
            }

            /// The string `name` of an event object, as new text.
            fn delta<'v>(root: $V, name: &'static str, k: TextKey, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match root.$get(name) {
                    Some(v) => string(v, k, Role::Delta, path, emit, bad),
                    None => bad(path, REQUIRED),
                }
            }

            /// The string `name` of an event object, as a complete text.
            fn full<'v>(root: $V, name: &'static str, k: TextKey, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                if let Some(v) = root.$get(name) {
                    string(v, k, Role::Full, &Path::Root.key(name), emit, bad);
                }
            }

            fn field<'v>(obj: $V, name: &'static str, k: TextKey, role: Role, path: &Path<'_>, emit: Emit<'_, 'v>, bad: Bad<'_>) {
                match obj.$get(name) {
                    Some(v) => string(v, k, role, &path.key(name), emit, bad),
                    None => bad(&path.key(name), REQUIRED),
                }
            }
        }
    };
}

pub(crate) use walker;
