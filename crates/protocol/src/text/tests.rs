//! Tests of the text view: what each wire format's readers find, that the three walkers agree,
//! that writing back changes exactly the texts, that requests of a shape the protocol does not
//! allow are refused naming the field, and that a stream yields the texts of its JSON response.

use std::collections::BTreeMap;

use bytes::Bytes;
use guardrail_tower_sse::{SseDecoder, SseEvent};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::stream::End;
use super::*;

/// Reads `body` with every reader and writes it back uppercased: they must all agree.
fn roundtrip(call_type: CallType, side: Side, mut body: Value, want: &[&str]) {
    let got = call_type.texts(side, &body);
    assert_eq!(got, want, "{call_type:?} {side:?}");
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        call_type.texts_from_slice(side, &bytes).unwrap(),
        want,
        "{call_type:?} {side:?} through the borrowed view"
    );
    let view = JsonView::parse(&bytes).unwrap();
    let mut strict = Vec::new();
    call_type
        .read_texts(side, &view, |_, t| strict.push(t.into_owned()))
        .unwrap_or_else(|e| panic!("{call_type:?} {side:?}: {e}"));
    assert_eq!(strict, want, "{call_type:?} {side:?} strictly");
    let keys: Vec<TextKey> = call_type
        .keyed_texts(side, &body)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), want.len());
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
                {"role": "developer", "content": "dev"},
                {"role": "user", "name": "mallory", "content": [
                    {"type": "text", "text": "part one"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    {"type": "text", "text": "part two"}
                ]},
                {"role": "assistant", "content": null, "refusal": "no way", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "tool out"},
                {"role": "assistant", "function_call": {"name": "g", "arguments": "legacy"}},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "part refusal"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "description": "look things up"}}]
        }),
        &[
            "sys",
            "dev",
            "mallory",
            "part one",
            "part two",
            "no way",
            "{\"q\":\"args\"}",
            "tool out",
            "legacy",
            "part refusal",
            "look things up",
        ],
    );
}

/// A predicted output is text the model is given: read, and rewritten, as a string or as text
/// parts.
#[test]
fn chat_request_prediction() {
    for (content, want) in [
        (
            json!("predicted text"),
            &["rewrite this", "predicted text"][..],
        ),
        (
            json!([{"type": "text", "text": "first part"}, {"type": "text", "text": "second part"}]),
            &["rewrite this", "first part", "second part"][..],
        ),
    ] {
        roundtrip(
            CallType::ChatCompletions,
            Side::Request,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "rewrite this"}],
                "prediction": {"type": "content", "content": content}
            }),
            want,
        );
    }
}

/// A web search's location is free text the search and the model are given: chat's
/// `web_search_options.user_location`, a Responses or Anthropic web search tool's
/// `user_location`, every string of it (the chat request with one goes to the general reader).
#[test]
fn a_web_search_location_is_text() {
    let location = json!({"type": "approximate",
        "approximate": {"city": "Lisbon", "region": "Lisboa", "country": "PT"}});
    roundtrip(
        CallType::ChatCompletions,
        Side::Request,
        json!({"model": "m", "messages": [{"role": "user", "content": "news?"}],
            "web_search_options": {"search_context_size": "low", "user_location": location}}),
        &["news?", "approximate", "Lisbon", "Lisboa", "PT"],
    );
    assert!(
        CallType::ChatCompletions
            .read_common_request(
                br#"{"model": "m", "messages": [], "web_search_options": {"user_location": {"approximate": {"city": "x"}}}}"#
            )
            .is_none()
    );
    let mut flat = location["approximate"].clone();
    flat["type"] = json!("approximate");
    roundtrip(
        CallType::Responses,
        Side::Request,
        json!({"model": "m", "input": "news?",
            "tools": [{"type": "web_search", "user_location": flat.clone()}]}),
        &["news?", "Lisbon", "Lisboa", "PT", "approximate"],
    );
    roundtrip(
        CallType::AnthropicMessages,
        Side::Request,
        json!({"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "news?"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "user_location": flat}]}),
        &["news?", "Lisbon", "Lisboa", "PT", "approximate"],
    );
}

/// The JSON Schemas a model is given are read at every depth: their descriptions, titles and
/// the strings of their enums, consts, defaults and examples, not their member names or types.
#[test]
fn schemas_the_model_reads_are_text() {
    let parameters = json!({
        "type": "object",
        "title": "search input",
        "properties": {
            "q": {"type": "string", "description": "the query"},
            "mode": {"type": "string", "enum": ["fast", "deep"], "default": "fast"},
            "filters": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string", "description": "a field", "examples": ["title"]}
            }}},
            "description": {"type": "string", "const": "fixed"},
            "notes": {"type": "string", "description": ["first line", "second line"]},
            "meta": {"type": "object", "description": {"text": "an object"}, "properties": {
                "title": "a schema written as a string"
            }}
        }
    });
    let texts = [
        "search input",
        "the query",
        "fast",
        "deep",
        "fast",
        "a field",
        "title",
        "fixed",
        "first line",
        "second line",
        "an object",
        "a schema written as a string",
    ];
    // The answer's schema: chat nests it under `json_schema`, Responses does not.
    let answer = json!({"name": "answer", "description": "the answer's shape", "schema": {
        "type": "object", "properties": {"verdict": {"type": "string", "description": "yes or no"}}
    }});
    let mut answer_format = answer.clone();
    answer_format["type"] = json!("json_schema");
    let with_answer = [
        &["hi", "look up"][..],
        &texts[..],
        &["the answer's shape", "yes or no"][..],
    ]
    .concat();
    roundtrip(
        CallType::ChatCompletions,
        Side::Request,
        json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "search", "description": "look up", "parameters": parameters}}],
            "response_format": {"type": "json_schema", "json_schema": answer}
        }),
        &with_answer,
    );
    roundtrip(
        CallType::Responses,
        Side::Request,
        json!({
            "model": "m",
            "input": "hi",
            "tools": [{"type": "function", "name": "search", "description": "look up", "parameters": parameters}],
            "text": {"format": answer_format}
        }),
        &with_answer,
    );
    roundtrip(
        CallType::AnthropicMessages,
        Side::Request,
        json!({
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "search", "description": "look up", "input_schema": parameters}]
        }),
        &[&["hi", "look up"][..], &texts[..]].concat(),
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
                {"index": 1, "message": {"role": "assistant", "content": null, "refusal": "sorry", "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ]}}
            ]
        }),
        &["first", "sorry", "{}"],
    );
}

#[test]
fn chat_reasoning_and_audio_transcripts_are_text() {
    roundtrip(
        CallType::ChatCompletions,
        Side::Response,
        json!({
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "answer",
                    "reasoning_content": "thought one", "reasoning": "thought two",
                    "audio": {"id": "a", "expires_at": 1, "transcript": "spoken"}}}
            ]
        }),
        &["answer", "thought one", "thought two", "spoken"],
    );
    // A `reasoning` that is not a string (a provider's settings object) is not text.
    roundtrip(
        CallType::ChatCompletions,
        Side::Request,
        json!({"messages": [{"role": "user", "content": "hi", "reasoning": {"effort": "low"}}]}),
        &["hi"],
    );
    // The stream's deltas carry the same texts under the same keys.
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant",
        "content": "ab", "reasoning_content": "cd", "audio": {"transcript": "ef"}}}]});
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "reasoning_content": "c"})),
        chunk(json!({"reasoning_content": "d"})),
        chunk(json!({"content": "a", "audio": {"transcript": "e"}})),
        chunk(json!({"content": "b", "audio": {"transcript": "f"}})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    assert_stream_is_body(CallType::ChatCompletions, &body, &stream);
}

/// What a chat request gives the model beyond its messages and `tools[].function`: a custom
/// tool's description, the legacy `functions`, and LiteLLM's `thinking_blocks` (on a request's
/// messages, a response's message and a stream's deltas).
#[test]
fn chat_custom_tools_legacy_functions_and_thinking_blocks_are_text() {
    roundtrip(
        CallType::ChatCompletions,
        Side::Request,
        json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "sure", "thinking_blocks": [
                    {"type": "thinking", "thinking": "first thought", "signature": "s"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "thinking", "thinking": "second thought", "signature": "t"}
                ]},
                {"role": "user", "content": "go on"}
            ],
            "tools": [
                {"type": "custom", "custom": {"name": "sql", "description": "runs a query",
                    "format": {"type": "text"}}},
                {"type": "function", "function": {"name": "f", "description": "calls f"}}
            ],
            "functions": [
                {"name": "legacy", "description": "an old definition", "parameters": {
                    "type": "object", "properties": {"q": {"type": "string", "description": "the query"}}
                }},
                {"name": "bare"}
            ]
        }),
        &[
            "hi",
            "sure",
            "first thought",
            "second thought",
            "go on",
            "runs a query",
            "calls f",
            "an old definition",
            "the query",
        ],
    );
    roundtrip(
        CallType::ChatCompletions,
        Side::Response,
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "answer",
        "reasoning_content": "thought", "thinking_blocks": [
            {"type": "thinking", "thinking": "thought", "signature": "s"}
        ]}}]}),
        &["answer", "thought", "thought"],
    );
    // A stream's deltas carry each block's text under the same key.
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ab",
        "thinking_blocks": [{"type": "thinking", "thinking": "cd"}]}}]});
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "thinking_blocks": [{"type": "thinking", "thinking": "c"}]})),
        chunk(json!({"thinking_blocks": [{"type": "thinking", "thinking": "d", "signature": "s"}]})),
        chunk(json!({"content": "a"})),
        chunk(json!({"content": "b"})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    assert_stream_is_body(CallType::ChatCompletions, &body, &stream);
}

/// OpenRouter's `reasoning_details`: its reasoning text and summaries are reasoning, in a
/// message and in a stream's deltas (entries at their `index`); an encrypted entry has none.
#[test]
fn chat_reasoning_details_are_text() {
    roundtrip(
        CallType::ChatCompletions,
        Side::Response,
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "answer",
        "reasoning_details": [
            {"type": "reasoning.summary", "summary": "in short", "index": 0},
            {"type": "reasoning.encrypted", "data": "opaque", "index": 1},
            {"type": "reasoning.text", "text": "at length", "index": 2}
        ]}}]}),
        &["answer", "in short", "at length"],
    );
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ab",
        "reasoning_details": [{"type": "reasoning.text", "text": "cd", "index": 0}]}}]});
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "reasoning_details": [{"type": "reasoning.text", "text": "c", "index": 0}]})),
        chunk(json!({"reasoning_details": [{"type": "reasoning.text", "text": "d", "index": 0}]})),
        chunk(json!({"content": "ab"})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    assert_stream_is_body(CallType::ChatCompletions, &body, &stream);
}

/// What the Responses API gives the model besides messages: a stored prompt's variables, an
/// MCP server's description, the tools an MCP server lists, and the tool items of earlier turns
/// (a web search's query, a file search's queries and results, a shell command, a code
/// interpreter's logs, the reason a tool call was declined). The same items in a response.
#[test]
fn responses_tool_items_and_prompt_variables_are_text() {
    roundtrip(
        CallType::Responses,
        Side::Request,
        json!({
            "model": "m",
            "prompt": {"id": "pmpt_1", "variables": {
                "city": "Lisbon", "note": {"type": "input_text", "text": "a note"},
                "photo": {"type": "input_image", "image_url": "https://x/y.png"}
            }},
            "tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp",
                "server_description": "a weather server"}],
            "input": [
                {"type": "web_search_call", "id": "w", "status": "completed",
                    "action": {"type": "search", "query": "weather lisbon", "queries": ["rain lisbon"]}},
                {"type": "file_search_call", "id": "f", "status": "completed",
                    "queries": ["policy"], "results": [{"file_id": "a", "text": "the policy says"}, {"file_id": "b"}]},
                {"type": "local_shell_call", "id": "l", "call_id": "c", "status": "completed",
                    "action": {"type": "exec", "command": ["ls", "-la"]}},
                {"type": "code_interpreter_call", "id": "ci", "code": "print(1)", "container_id": "x",
                    "outputs": [{"type": "logs", "logs": "1"}, {"type": "image", "url": "https://x"}]},
                {"type": "mcp_list_tools", "id": "t", "server_label": "s",
                    "tools": [{"name": "forecast", "description": "gives a forecast", "input_schema": {
                        "type": "object", "properties": {"city": {"type": "string", "description": "a city"}}
                    }}]},
                {"type": "mcp_approval_response", "approval_request_id": "a", "approve": false,
                    "reason": "not now"},
                {"type": "computer_call", "id": "cc", "call_id": "c2", "status": "completed",
                    "action": {"type": "type", "text": "typed text"}, "pending_safety_checks": []},
                {"type": "computer_call", "id": "cd", "call_id": "c3", "status": "completed",
                    "action": {"type": "click", "x": 1, "y": 2, "button": "left"}, "pending_safety_checks": []},
                {"role": "user", "content": "hi"}
            ]
        }),
        &[
            "weather lisbon",
            "rain lisbon",
            "policy",
            "the policy says",
            "ls",
            "-la",
            "print(1)",
            "1",
            "gives a forecast",
            "a city",
            "not now",
            "typed text",
            "hi",
            "a weather server",
            "Lisbon",
            "a note",
        ],
    );
    roundtrip(
        CallType::Responses,
        Side::Response,
        json!({"object": "response", "output": [
            {"type": "web_search_call", "id": "w", "status": "completed",
                "action": {"type": "search", "query": "weather lisbon"}},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "sunny"}]}
        ]}),
        &["weather lisbon", "sunny"],
    );
    // A stream brings a search's query only in the item's `.done` event; `response.completed`
    // repeats it.
    let body = json!({"output": [{"type": "web_search_call", "id": "w",
        "action": {"type": "search", "query": "weather lisbon"}}]});
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let stream = [
        event("response.output_item.added", json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "web_search_call", "id": "w", "status": "in_progress"}})),
        event("response.output_item.done", json!({"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "web_search_call", "id": "w", "status": "completed",
                "action": {"type": "search", "query": "weather lisbon"}}})),
        event("response.completed", json!({"type": "response.completed", "response": {"output": [
            {"type": "web_search_call", "id": "w", "action": {"type": "search", "query": "weather lisbon"}}
        ]}})),
    ]
    .concat();
    let read = read_stream(CallType::Responses, &stream);
    assert_eq!(read.fulls.len(), 2, "{stream}");
    for (key, full) in &read.fulls {
        assert_eq!(
            (key.kind, full.as_str()),
            (TextKind::Arguments, "weather lisbon")
        );
    }
    assert_eq!(body_texts(CallType::Responses, &body).len(), 1);
    // The tools an MCP server lists, only in the item's `.done` event: each text under a key
    // of its own, the schemas' too, so the event's texts are not merged into one.
    let item = json!({"type": "mcp_list_tools", "id": "t", "server_label": "s", "tools": [
        {"name": "a", "description": "tool a", "input_schema": {"properties": {"x": {"description": "x of a"}}}},
        {"name": "b", "description": "tool b", "input_schema": {"properties": {"y": {"description": "y of b"}}}}
    ]});
    let stream = event(
        "response.output_item.done",
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    );
    let read = read_stream(CallType::Responses, &stream);
    let keys: std::collections::BTreeSet<TextKey> = read.fulls.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), 4, "{:?}", read.fulls);
    let texts: Vec<&str> = read.fulls.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["tool a", "x of a", "tool b", "y of b"]);
}

/// A coding agent's tools (the shell tool and `apply_patch`): the commands, what they printed,
/// the patch and its file, and what applying it said, in a request; in a response; and in a
/// stream, whose deltas add up to the response's texts.
#[test]
fn responses_shell_and_apply_patch_items_are_text() {
    roundtrip(
        CallType::Responses,
        Side::Request,
        json!({"model": "m", "tools": [{"type": "shell"}, {"type": "apply_patch"}], "input": [
            {"type": "shell_call", "id": "s", "call_id": "c1", "status": "completed",
                "action": {"commands": ["ls", "cat notes.txt"], "timeout_ms": 1000}},
            {"type": "shell_call_output", "call_id": "c1", "max_output_length": 100, "output": [
                {"stdout": "notes.txt", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
                {"stdout": "the notes", "stderr": "a warning", "outcome": {"type": "timeout"}}
            ]},
            {"type": "apply_patch_call", "id": "p", "call_id": "c2", "status": "completed",
                "operation": {"type": "update_file", "path": "notes.txt", "diff": "-old\n+new"}},
            {"type": "apply_patch_call", "id": "q", "call_id": "c3", "status": "completed",
                "operation": {"type": "delete_file", "path": "old.txt"}},
            {"type": "apply_patch_call_output", "call_id": "c2", "status": "completed", "output": "patched"},
            {"type": "apply_patch_call_output", "call_id": "c3", "status": "failed", "output": null},
            {"role": "user", "content": "hi"}
        ]}),
        &[
            "ls",
            "cat notes.txt",
            "notes.txt",
            "",
            "the notes",
            "a warning",
            "-old\n+new",
            "notes.txt",
            "old.txt",
            "patched",
            "hi",
        ],
    );
    let body = json!({"object": "response", "output": [
        {"type": "shell_call", "id": "s", "call_id": "c1", "status": "completed",
            "action": {"commands": ["ls -la", "pwd"]}},
        {"type": "apply_patch_call", "id": "p", "call_id": "c2", "status": "completed",
            "operation": {"type": "create_file", "path": "a.txt", "diff": "+hello world"}}
    ]});
    roundtrip(
        CallType::Responses,
        Side::Response,
        body.clone(),
        &["ls -la", "pwd", "+hello world", "a.txt"],
    );
    let stream = [
        typed_event(json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "shell_call", "id": "s", "call_id": "c1", "status": "in_progress"}})),
        typed_event(json!({"type": "response.shell_call_command.added", "output_index": 0, "command_index": 0, "command": "ls"})),
        typed_event(json!({"type": "response.shell_call_command.delta", "output_index": 0, "command_index": 0, "delta": " -la"})),
        typed_event(json!({"type": "response.shell_call_command.done", "output_index": 0, "command_index": 0, "command": "ls -la"})),
        typed_event(json!({"type": "response.shell_call_command.added", "output_index": 0, "command_index": 1, "command": ""})),
        typed_event(json!({"type": "response.shell_call_command.delta", "output_index": 0, "command_index": 1, "delta": "pwd"})),
        typed_event(json!({"type": "response.shell_call_command.done", "output_index": 0, "command_index": 1, "command": "pwd"})),
        typed_event(json!({"type": "response.output_item.done", "output_index": 0, "item": body["output"][0]})),
        typed_event(json!({"type": "response.output_item.added", "output_index": 1,
            "item": {"type": "apply_patch_call", "id": "p", "call_id": "c2", "status": "in_progress",
                "operation": {"type": "create_file", "path": "a.txt", "diff": ""}}})),
        typed_event(json!({"type": "response.apply_patch_call_operation_diff.delta", "output_index": 1, "delta": "+hello"})),
        typed_event(json!({"type": "response.apply_patch_call_operation_diff.delta", "output_index": 1, "delta": " world"})),
        typed_event(json!({"type": "response.apply_patch_call_operation_diff.done", "output_index": 1, "diff": "+hello world"})),
        typed_event(json!({"type": "response.output_item.done", "output_index": 1, "item": body["output"][1]})),
        typed_event(json!({"type": "response.completed", "response": body})),
    ]
    .concat();
    assert_stream_is_body(CallType::Responses, &body, &stream);
}

/// Log probabilities in a response repeat its text as tokens: a chat or completion choice's
/// and a Responses text part's or text event's are refused (`null` or an empty list passes),
/// and a request that asks for them is named. So is spoken audio, which speaks its transcript.
#[test]
fn log_probabilities_and_audio_are_refused_and_asking_for_them_is_named() {
    let token = json!([{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]);
    let check = |call_type: CallType, body: &Value| {
        let bytes = body.to_string();
        let view = JsonView::parse(bytes.as_bytes()).unwrap();
        call_type
            .read_texts(Side::Response, &view, |_, _| {})
            .map_err(|e| e.param().to_owned())
    };
    for (call_type, body, path) in [
        (
            CallType::ChatCompletions,
            json!({"choices": [{"index": 0, "message": {"content": "a"}, "logprobs": {"content": token}}]}),
            "choices[0].logprobs",
        ),
        (
            CallType::TextCompletions,
            json!({"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-0.1]}}]}),
            "choices[0].logprobs",
        ),
        (
            CallType::Responses,
            json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "a", "logprobs": token}]}]}),
            "output[0].content[0].logprobs",
        ),
    ] {
        assert_eq!(check(call_type, &body), Err(path.to_owned()), "{body}");
    }
    for (call_type, body) in [
        (
            CallType::ChatCompletions,
            json!({"choices": [{"index": 0, "message": {"content": "a"}, "logprobs": null}]}),
        ),
        (
            CallType::Responses,
            json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "a", "logprobs": []}]}]}),
        ),
    ] {
        assert_eq!(check(call_type, &body), Ok(()), "{body}");
    }
    for kind in ["response.output_text.delta", "response.output_text.done"] {
        let data = json!({"type": kind, "output_index": 0, "content_index": 0, "delta": "a",
                          "text": "a", "logprobs": token});
        let data = data.to_string();
        let view = JsonView::parse(data.as_bytes()).unwrap();
        assert!(
            CallType::Responses.read_event(Some(kind), &view).is_err(),
            "{kind}"
        );
        let data = json!({"type": kind, "output_index": 0, "content_index": 0, "delta": "a",
                          "text": "a", "logprobs": []});
        let data = data.to_string();
        let view = JsonView::parse(data.as_bytes()).unwrap();
        assert!(
            CallType::Responses.read_event(Some(kind), &view).is_ok(),
            "{kind}"
        );
    }
    for (call_type, body, want) in [
        (
            CallType::ChatCompletions,
            r#"{"logprobs": true}"#,
            Some("logprobs"),
        ),
        (
            CallType::ChatCompletions,
            r#"{"logprobs": false, "top_logprobs": 2}"#,
            Some("top_logprobs"),
        ),
        (
            CallType::ChatCompletions,
            r#"{"logprobs": false, "top_logprobs": 0}"#,
            None,
        ),
        (CallType::ChatCompletions, r#"{"logprobs": null}"#, None),
        // Named twice: the last counts, as in the upstream's JSON parser.
        (
            CallType::ChatCompletions,
            r#"{"logprobs": false, "logprobs": true}"#,
            Some("logprobs"),
        ),
        (
            CallType::ChatCompletions,
            r#"{"logprobs": true, "logprobs": false}"#,
            None,
        ),
        (
            CallType::ChatCompletions,
            r#"{"logprobs": "yes"}"#,
            Some("logprobs"),
        ),
        (
            CallType::TextCompletions,
            r#"{"logprobs": 0}"#,
            Some("logprobs"),
        ),
        (CallType::TextCompletions, r#"{"logprobs": null}"#, None),
        (
            CallType::Responses,
            r#"{"top_logprobs": 5}"#,
            Some("top_logprobs"),
        ),
        (
            CallType::Responses,
            r#"{"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]}"#,
            Some("include"),
        ),
        (
            CallType::Responses,
            r#"{"include": ["reasoning.encrypted_content"]}"#,
            None,
        ),
        (CallType::AnthropicMessages, r#"{"logprobs": true}"#, None),
    ] {
        let view = JsonView::parse(body.as_bytes()).unwrap();
        assert_eq!(
            call_type.logprobs_field(&view),
            want,
            "{call_type:?} {body}"
        );
    }
    // Spoken audio: asked for, and refused in a message or a delta (its transcript is read).
    for (call_type, body, want) in [
        (
            CallType::ChatCompletions,
            r#"{"audio": {"voice": "alloy"}}"#,
            Some("audio"),
        ),
        (
            CallType::ChatCompletions,
            r#"{"modalities": ["audio", "text"]}"#,
            Some("modalities"),
        ),
        (
            CallType::ChatCompletions,
            r#"{"modalities": ["text"], "audio": null}"#,
            None,
        ),
        (
            CallType::Responses,
            r#"{"audio": {"voice": "alloy"}}"#,
            None,
        ),
    ] {
        let view = JsonView::parse(body.as_bytes()).unwrap();
        assert_eq!(
            call_type.audio_output_field(&view),
            want,
            "{call_type:?} {body}"
        );
    }
    let spoken = json!({"choices": [{"index": 0, "message": {"content": null,
        "audio": {"id": "a", "data": "UklGRg==", "transcript": "hello"}}}]});
    assert_eq!(
        check(CallType::ChatCompletions, &spoken),
        Err("choices[0].message.audio.data".to_owned())
    );
    let transcript = json!({"choices": [{"index": 0, "message": {"content": null,
        "audio": {"id": "a", "transcript": "hello"}}}]});
    assert_eq!(check(CallType::ChatCompletions, &transcript), Ok(()));
    // A request's earlier turns that carry them back are read as before: only what the
    // upstream sends is refused (a request is parsed whether or not a guardrail applies).
    let replayed = |call_type: CallType, body: &Value| {
        let bytes = body.to_string();
        let view = JsonView::parse(bytes.as_bytes()).unwrap();
        let mut texts = Vec::new();
        call_type
            .read_texts(Side::Request, &view, |_, t| texts.push(t.into_owned()))
            .map(|()| texts)
            .map_err(|e| e.param().to_owned())
    };
    let earlier = json!({"model": "m", "input": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a", "logprobs": token}]},
        {"role": "user", "content": "more"}
    ]});
    assert_eq!(
        replayed(CallType::Responses, &earlier),
        Ok(vec!["a".to_owned(), "more".to_owned()])
    );
    let earlier = json!({"model": "m", "messages": [
        {"role": "assistant", "content": null, "audio": {"id": "a", "data": "UklGRg==", "transcript": "hello"}},
        {"role": "user", "content": "more"}
    ]});
    assert_eq!(
        replayed(CallType::ChatCompletions, &earlier),
        Ok(vec!["hello".to_owned(), "more".to_owned()])
    );
}

#[test]
fn responses_request() {
    roundtrip(
        CallType::Responses,
        Side::Request,
        json!({"model": "m", "instructions": "be nice", "input": "plain input",
               "tools": [{"type": "function", "name": "f", "description": "tool doc"}]}),
        &["be nice", "plain input", "tool doc"],
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
            {"type": "function_call_output", "call_id": "d", "output": [{"type": "input_text", "text": "parts result"}]},
            {"type": "custom_tool_call", "call_id": "e", "name": "g", "input": "custom input"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {"type": "mcp_call", "name": "m", "arguments": "{\"m\":1}", "output": "mcp out"},
            {"type": "item_reference", "id": "x"}
        ]}),
        &[
            "string content",
            "input text",
            "{\"a\":1}",
            "result",
            "parts result",
            "custom input",
            "thought",
            "{\"m\":1}",
            "mcp out",
        ],
    );
}

#[test]
fn responses_response() {
    roundtrip(
        CallType::Responses,
        Side::Response,
        json!({"id": "resp_1", "object": "response", "output": [
            {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "why"}]},
            {"type": "message", "id": "msg", "role": "assistant", "content": [
                {"type": "output_text", "text": "answer", "annotations": []},
                {"type": "refusal", "refusal": "not that"}
            ]},
            {"type": "function_call", "arguments": "{}", "call_id": "c", "name": "f"},
            {"type": "web_search_call", "id": "ws", "status": "completed"}
        ]}),
        &["why", "answer", "not that", "{}"],
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
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "thinking out loud"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "tool arg"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "tool string"},
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "tool block"}]},
                {"type": "image", "source": {"type": "base64", "data": "..."}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}}
            ]}
        ],
        "tools": [{"name": "f", "description": "fn doc", "input_schema": {}}]}),
        &[
            "sys block",
            "plain",
            "hmm",
            "thinking out loud",
            "{\"q\":\"tool arg\"}",
            "tool string",
            "tool block",
            "doc text",
            "fn doc",
        ],
    );
    roundtrip(
        CallType::AnthropicMessages,
        Side::Request,
        json!({"system": "sys string", "messages": []}),
        &["sys string"],
    );
}

/// What else an Anthropic request gives the model: a document's title and context, a search
/// result's title, the titles of a web search's results, and a tool's example inputs.
#[test]
fn anthropic_titles_contexts_and_tool_examples_are_text() {
    roundtrip(
        CallType::AnthropicMessages,
        Side::Request,
        json!({"model": "claude", "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "title": "the doc", "context": "about it",
                    "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
                {"type": "search_result", "source": "https://x", "title": "a result",
                    "content": [{"type": "text", "text": "result text"}]}
            ]},
            {"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "s", "content": [
                    {"type": "web_search_result", "url": "https://a", "title": "page a", "encrypted_content": "e"},
                    {"type": "web_search_result", "url": "https://b", "title": "page b", "encrypted_content": "e"}
                ]},
                {"type": "web_search_tool_result", "tool_use_id": "s",
                    "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"}}
            ]}
        ],
        "tools": [{"name": "f", "input_schema": {}, "input_examples": [{"q": "an example", "n": 1}]}]}),
        &[
            "the doc",
            "about it",
            "doc text",
            "a result",
            "result text",
            "{\"query\":\"q\"}",
            "page a",
            "page b",
            "an example",
        ],
    );
}

#[test]
fn anthropic_response() {
    roundtrip(
        CallType::AnthropicMessages,
        Side::Response,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "content": [
            {"type": "text", "text": "hello"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"city": "Paris", "n": 1.5}}
        ]}),
        &["hello", "{\"city\":\"Paris\",\"n\":1.5}"],
    );
}

/// What a text block's citations quote (`cited_text`: a document's or a web page's words,
/// which the client shows with the answer) is text: in a request's earlier turns, in a
/// response, and in a stream's `citations_delta` events, whose quotes add up to the
/// response's.
#[test]
fn anthropic_citations_are_text() {
    let cited = |quote: &str| {
        json!({"type": "web_search_result_location", "url": "https://a",
        "title": "page a", "encrypted_index": "e", "cited_text": quote})
    };
    roundtrip(
        CallType::AnthropicMessages,
        Side::Request,
        json!({"model": "claude", "max_tokens": 10, "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "it rains", "citations": [cited("rain all day")]},
                {"type": "text", "text": "plain", "citations": null}
            ]},
            {"role": "user", "content": "thanks"}
        ]}),
        &["q", "it rains", "rain all day", "plain", "thanks"],
    );
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "Lisbon is sunny", "citations": [cited("sunny in Lisbon"), cited("no rain")]}
    ]});
    roundtrip(
        CallType::AnthropicMessages,
        Side::Response,
        body.clone(),
        &["Lisbon is sunny", "sunny in Lisbon", "no rain"],
    );
    let delta = |delta: Value| {
        typed_event(json!({"type": "content_block_delta", "index": 0, "delta": delta}))
    };
    let stream = [
        typed_event(
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": []}}),
        ),
        typed_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": "", "citations": []}})),
        delta(json!({"type": "citations_delta", "citation": cited("sunny in Lisbon")})),
        delta(json!({"type": "text_delta", "text": "Lisbon is "})),
        delta(json!({"type": "citations_delta", "citation": cited("no rain")})),
        delta(json!({"type": "text_delta", "text": "sunny"})),
        typed_event(json!({"type": "content_block_stop", "index": 0})),
        typed_event(json!({"type": "message_stop"})),
    ]
    .concat();
    assert_stream_is_body(CallType::AnthropicMessages, &body, &stream);
}

/// The titles of the pages an answer cites (chat `annotations[].url_citation.title`, a
/// Responses text part's `annotations[].title`), which a client shows with the answer, are
/// text: in responses, and in streams (a chat delta's `annotations`, Responses'
/// `response.output_text.annotation.added`), where they add up to the response's.
#[test]
fn cited_page_titles_are_text() {
    let url = |title: &str| {
        json!({"type": "url_citation", "url_citation": {"url": "https://a",
        "title": title, "start_index": 0, "end_index": 3}})
    };
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "sunny",
        "annotations": [url("Weather in Lisbon"), url("Forecast")]}}]});
    roundtrip(
        CallType::ChatCompletions,
        Side::Response,
        body.clone(),
        &["sunny", "Weather in Lisbon", "Forecast"],
    );
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "content": "sun"})),
        chunk(json!({"content": "ny"})),
        chunk(json!({"annotations": [url("Weather in Lisbon"), url("Forecast")]})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    assert_stream_is_body(CallType::ChatCompletions, &body, &stream);

    let cited = |title: &str| {
        json!({"type": "url_citation", "url": "https://a", "title": title,
        "start_index": 0, "end_index": 3})
    };
    let part = json!({"type": "output_text", "text": "sunny",
        "annotations": [cited("Weather in Lisbon"), {"type": "file_citation", "file_id": "f", "index": 0}]});
    let body = json!({"output": [{"type": "message", "role": "assistant", "content": [part]}]});
    roundtrip(
        CallType::Responses,
        Side::Response,
        body.clone(),
        &["sunny", "Weather in Lisbon"],
    );
    let stream = [
        typed_event(json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "message", "role": "assistant", "content": []}})),
        typed_event(json!({"type": "response.content_part.added", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}})),
        typed_event(json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "sunny"})),
        typed_event(json!({"type": "response.output_text.annotation.added", "output_index": 0,
            "content_index": 0, "annotation_index": 0, "annotation": cited("Weather in Lisbon")})),
        typed_event(json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "sunny"})),
        typed_event(json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": part})),
        typed_event(json!({"type": "response.completed", "response": body})),
    ]
    .concat();
    assert_stream_is_body(CallType::Responses, &body, &stream);
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
fn a_rewritten_tool_input_must_stay_json() {
    let mut body = json!({"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"email": "a@b.co"}}
    ]}]});
    CallType::AnthropicMessages
        .set_texts(
            Side::Request,
            &mut body,
            &["{\"email\":\"[EMAIL]\"}".into()],
        )
        .unwrap();
    assert_eq!(
        body["messages"][0]["content"][0]["input"]["email"],
        "[EMAIL]"
    );
    let err = CallType::AnthropicMessages
        .set_texts(Side::Request, &mut body, &["{\"email\":".into()])
        .unwrap_err();
    assert!(
        matches!(&err, SetTextsError::Shape(e) if e.param() == "messages[0].content[0].input"),
        "{err:?}"
    );
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
        SetTextsError::Count(TextCountMismatch {
            expected: 2,
            got: 1
        })
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

/// The strict reader's verdict on a request body: `Ok(texts)` or the `param` and message.
fn strict(call_type: CallType, body: &str) -> Result<Vec<String>, (String, String)> {
    let view = JsonView::parse(body.as_bytes()).unwrap();
    let mut texts = Vec::new();
    call_type
        .read_texts(Side::Request, &view, |_, t| texts.push(t.into_owned()))
        .map(|()| texts)
        .map_err(|e| (e.param().to_owned(), e.to_string()))
}

#[test]
fn requests_no_guardrail_could_read_are_refused_naming_the_field() {
    use CallType::*;
    let cases: &[(CallType, &str, &str)] = &[
        (ChatCompletions, r#"{"messages": "forbidden"}"#, "messages"),
        (
            ChatCompletions,
            r#"{"messages": {"content": "forbidden"}}"#,
            "messages",
        ),
        (ChatCompletions, r#"{"messages": null}"#, "messages"),
        (ChatCompletions, r#"{"messages": 7}"#, "messages"),
        (ChatCompletions, r#"{"model": "m"}"#, "messages"),
        (
            ChatCompletions,
            r#"{"messages": ["forbidden"]}"#,
            "messages[0]",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": 7}]}"#,
            "messages[0].content",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": {"text": "forbidden"}}]}"#,
            "messages[0].content",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": ["forbidden"]}]}"#,
            "messages[0].content[0]",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": ["forbidden"]}]}]}"#,
            "messages[0].content[0].text",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": [{"type": "txt", "text": "forbidden"}]}]}"#,
            "messages[0].content[0].type",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "content": [{"type": 1, "text": "forbidden"}]}]}"#,
            "messages[0].content[0].type",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "user", "name": ["forbidden"], "content": "hi"}]}"#,
            "messages[0].name",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "tool_calls": {"function": {"arguments": "forbidden"}}}]}"#,
            "messages[0].tool_calls",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": {"q": "forbidden"}}}]}]}"#,
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "function_call": "forbidden"}]}"#,
            "messages[0].function_call",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "tools": [{"function": {"description": ["forbidden"]}}]}"#,
            "tools[0].function.description",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "prediction": "forbidden"}"#,
            "prediction",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "tools": [{"type": "function", "function": "forbidden"}]}"#,
            "tools[0].function",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "tools": [{"type": "custom", "custom": ["forbidden"]}]}"#,
            "tools[0].custom",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "functions": {"description": "forbidden"}}"#,
            "functions",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "functions": ["forbidden"]}"#,
            "functions[0]",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "thinking_blocks": "forbidden"}]}"#,
            "messages[0].thinking_blocks",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "reasoning_details": [{"type": "reasoning.thought", "text": "forbidden"}]}]}"#,
            "messages[0].reasoning_details[0].type",
        ),
        (
            Responses,
            r#"{"input": "hi", "prompt": {"id": "p", "variables": {"x": ["forbidden"]}}}"#,
            "prompt.variables.x",
        ),
        (
            Responses,
            r#"{"input": "hi", "prompt": {"id": "p", "variables": {"x": {"type": "input_txt", "text": "forbidden"}}}}"#,
            "prompt.variables.x.type",
        ),
        (
            Responses,
            r#"{"input": [{"type": "web_search_call", "action": "forbidden"}]}"#,
            "input[0].action",
        ),
        (
            Responses,
            r#"{"input": [{"type": "file_search_call", "results": {"text": "forbidden"}}]}"#,
            "input[0].results",
        ),
        (
            Responses,
            r#"{"input": [{"type": "local_shell_call", "action": {"command": "forbidden"}}]}"#,
            "input[0].action.command",
        ),
        (
            Responses,
            r#"{"input": [{"type": "mcp_list_tools", "tools": [{"description": ["forbidden"]}]}]}"#,
            "input[0].tools[0].description",
        ),
        (
            Responses,
            r#"{"input": [{"type": "shell_call", "action": {"commands": "forbidden"}}]}"#,
            "input[0].action.commands",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x", "citations": {"cited_text": "forbidden"}}]}]}"#,
            "messages[0].content[0].citations",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x", "citations": [{"cited_text": ["forbidden"]}]}]}]}"#,
            "messages[0].content[0].citations[0].cited_text",
        ),
        (
            Responses,
            r#"{"input": [{"type": "shell_call_output", "output": [{"stdout": ["forbidden"]}]}]}"#,
            "input[0].output[0].stdout",
        ),
        (
            Responses,
            r#"{"input": [{"type": "shell_call_output", "output": "forbidden"}]}"#,
            "input[0].output",
        ),
        (
            Responses,
            r#"{"input": [{"type": "apply_patch_call", "operation": "forbidden"}]}"#,
            "input[0].operation",
        ),
        (
            Responses,
            r#"{"input": [{"type": "apply_patch_call", "operation": {"type": "update_file", "diff": {"text": "forbidden"}}}]}"#,
            "input[0].operation.diff",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user", "content": [{"type": "document", "title": ["forbidden"], "source": {"type": "text", "data": "x"}}]}]}"#,
            "messages[0].content[0].title",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "assistant", "content": [{"type": "web_search_tool_result", "content": [{"title": 1}]}]}]}"#,
            "messages[0].content[0].content[0].title",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "thinking_blocks": [{"type": "thought", "thinking": "forbidden"}]}]}"#,
            "messages[0].thinking_blocks[0].type",
        ),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "thinking_blocks": [{"thinking": "forbidden"}]}]}"#,
            "messages[0].thinking_blocks[0].type",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "tools": [{"function": {"parameters": {"properties": {"q": {"description": "ok", "description": "forbidden"}}}}}]}"#,
            "tools[0].function.parameters.properties.q.description",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "response_format": "forbidden"}"#,
            "response_format",
        ),
        (
            Responses,
            r#"{"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"title": "a", "title": "forbidden"}}}}"#,
            "text.format.schema.title",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "prediction": {"content": {"text": "forbidden"}}}"#,
            "prediction.content",
        ),
        (
            ChatCompletions,
            r#"{"messages": [], "prediction": {"content": [{"type": "image_url", "text": "forbidden"}]}}"#,
            "prediction.content[0].type",
        ),
        (Responses, r#"{"input": 7}"#, "input"),
        (Responses, r#"{"input": {"content": "forbidden"}}"#, "input"),
        (
            Responses,
            r#"{"instructions": {"text": "forbidden"}, "input": "hi"}"#,
            "instructions",
        ),
        (
            Responses,
            r#"{"input": [{"type": "message", "content": [{"type": "input_txt", "text": "forbidden"}]}]}"#,
            "input[0].content[0].type",
        ),
        (
            Responses,
            r#"{"input": [{"type": "brand_new_item", "text": "forbidden"}]}"#,
            "input[0].type",
        ),
        (
            Responses,
            r#"{"input": [{"type": "function_call_output", "output": {"text": "forbidden"}}]}"#,
            "input[0].output",
        ),
        (
            AnthropicMessages,
            r#"{"messages": "forbidden"}"#,
            "messages",
        ),
        (
            AnthropicMessages,
            r#"{"system": {"text": "forbidden"}, "messages": []}"#,
            "system",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user"}]}"#,
            "messages[0].content",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user", "content": [{"type": "texty", "text": "forbidden"}]}]}"#,
            "messages[0].content[0].type",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user", "content": [{"text": "forbidden"}]}]}"#,
            "messages[0].content[0].type",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": "forbidden"}]}]}"#,
            "messages[0].content[0].input",
        ),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "plain", "data": "forbidden"}}]}]}"#,
            "messages[0].content[0].source.type",
        ),
        (
            TextCompletions,
            r#"{"prompt": {"text": "forbidden"}}"#,
            "prompt",
        ),
        (
            TextCompletions,
            r#"{"prompt": [["forbidden"]]}"#,
            "prompt[0]",
        ),
        (Embeddings, r#"{"input": {"text": "forbidden"}}"#, "input"),
        (Embeddings, r#"{"model": "m"}"#, "input"),
        (ChatCompletions, r#"["forbidden"]"#, ""),
        (ChatCompletions, r#""forbidden""#, ""),
    ];
    for (call_type, body, param) in cases {
        match strict(*call_type, body) {
            Ok(texts) => panic!("{call_type:?} {body} was accepted with texts {texts:?}"),
            Err((got, message)) => {
                assert_eq!(got, *param, "{call_type:?} {body}: {message}");
                if !param.is_empty() {
                    assert!(message.contains(param), "{message}");
                }
            }
        }
    }
    // Shapes the protocols allow are accepted.
    for (call_type, body) in [
        (ChatCompletions, r#"{"messages": []}"#),
        (
            ChatCompletions,
            r#"{"messages": [{"role": "assistant", "content": null, "tool_calls": null, "name": null}]}"#,
        ),
        (Responses, r#"{"input": "hi", "instructions": null}"#),
        (
            AnthropicMessages,
            r#"{"messages": [{"role": "user", "content": "hi"}], "system": null}"#,
        ),
        (TextCompletions, r#"{"prompt": [1, 2, 3]}"#),
        (Embeddings, r#"{"input": [[1, 2], [3]]}"#),
        (Other, r#"["anything"]"#),
    ] {
        assert!(strict(call_type, body).is_ok(), "{call_type:?} {body}");
    }
    let err = ShapeError {
        param: "messages".into(),
        problem: walk::MUST_BE_ARRAY,
    }
    .to_request_error();
    assert_eq!(err.status(), 400);
    assert_eq!(err.param(), Some("messages"));
    assert_eq!(err.kind(), "invalid_request_error");
    assert_eq!(err.message(), "'messages' must be an array");
}

// ----------------------------------------------------------------------- streams and bodies

fn decode(stream: &str) -> Vec<SseEvent> {
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::copy_from_slice(stream.as_bytes()));
    let mut out = Vec::new();
    while let Some(event) = decoder.next_event().unwrap() {
        out.push(event);
    }
    out
}

/// What a stream says, read event by event: new text per key, and the complete texts that
/// summary events repeat.
#[derive(Debug, Default)]
struct StreamTexts {
    deltas: BTreeMap<TextKey, String>,
    fulls: Vec<(TextKey, String)>,
    ends: Vec<End>,
    terminals: usize,
}

/// `data` as a server-sent event named after its `type`, as Responses and Anthropic streams
/// write them.
fn typed_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

fn read_stream(call_type: CallType, stream: &str) -> StreamTexts {
    let mut out = StreamTexts::default();
    for event in decode(stream) {
        let Some(data) = event.data() else { continue };
        let Ok(view) = JsonView::parse(data) else {
            let read = call_type.read_non_json_event(data);
            out.terminals += usize::from(read.expect("[DONE] or blank").terminal);
            continue;
        };
        let read = call_type
            .read_event(event.event_type(), &view)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(data)));
        for (key, role, text) in read.texts {
            match role {
                Role::Delta => out.deltas.entry(key).or_default().push_str(&text),
                Role::Full => out.fulls.push((key, text.into_owned())),
            }
        }
        out.ends.extend(read.ends);
        out.terminals += usize::from(read.terminal);
    }
    out
}

/// A body's texts grouped by key (empty texts dropped: a stream need not send them).
fn body_texts(call_type: CallType, body: &Value) -> BTreeMap<TextKey, String> {
    let mut out: BTreeMap<TextKey, String> = BTreeMap::new();
    for (key, text) in call_type.keyed_texts(Side::Response, body) {
        out.entry(key).or_default().push_str(&text);
    }
    out.retain(|_, t| !t.is_empty());
    out
}

fn assert_stream_is_body(call_type: CallType, body: &Value, stream: &str) {
    let read = read_stream(call_type, stream);
    let mut deltas = read.deltas.clone();
    deltas.retain(|_, t| !t.is_empty());
    let want = body_texts(call_type, body);
    assert_eq!(deltas, want, "{call_type:?}\n{stream}");
    for (key, full) in &read.fulls {
        assert_eq!(
            full,
            want.get(key).map_or("", String::as_str),
            "{call_type:?} summary of {key:?}"
        );
    }
    assert_eq!(read.terminals, 1, "{call_type:?} terminal events");
}

#[test]
fn recorded_streams() {
    for (call_type, stream, want) in [
        (
            CallType::ChatCompletions,
            include_str!("../../testdata/openai_chat.sse"),
            "Hello! The café on the corner serves ☕ and 🥐, and its Wi-Fi password is \"guest\".",
        ),
        (
            CallType::Responses,
            include_str!("../../testdata/openai_responses.sse"),
            "Hi! Naïve résumé tips — keep it short 📝.",
        ),
        (
            CallType::AnthropicMessages,
            include_str!("../../testdata/anthropic_messages.sse"),
            "Hello! Grüße aus Zürich 🇨🇭. How can I help?",
        ),
    ] {
        let read = read_stream(call_type, stream);
        let text: String = read.deltas.values().cloned().collect();
        assert_eq!(text, want, "{call_type:?}");
        assert_eq!(read.terminals, 1);
        assert!(!read.ends.is_empty());
        for (key, full) in &read.fulls {
            assert_eq!(full, &read.deltas[key], "{call_type:?} {key:?}");
        }
    }
}

#[test]
fn text_in_every_stream_field_is_read() {
    // Each event carries "a secret" where a client reads text; the view must find it.
    let cases = [
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"content":"a secret"}}]}"#,
            TextKind::Content,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"refusal":"a secret"}}]}"#,
            TextKind::Refusal,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"a secret"}}]}}]}"#,
            TextKind::Arguments,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"function_call":{"arguments":"a secret"}}}]}"#,
            TextKind::Arguments,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":null,"delta":{"content":"a secret"}}]}"#,
            TextKind::Content,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"content":"x","content":"a secret"}}]}"#,
            TextKind::Content,
        ),
        (
            CallType::TextCompletions,
            r#"{"choices":[{"index":0,"text":"a secret"}]}"#,
            TextKind::Content,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"a secret"}"#,
            TextKind::Content,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.refusal.delta","output_index":0,"content_index":0,"delta":"a secret"}"#,
            TextKind::Refusal,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"a secret"}"#,
            TextKind::Arguments,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.reasoning_summary_text.delta","output_index":0,"summary_index":0,"delta":"a secret"}"#,
            TextKind::Reasoning,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","content":[{"type":"output_text","text":"a secret"}]}}"#,
            TextKind::Content,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.content_part.added","output_index":0,"content_index":0,"part":{"type":"output_text","text":"a secret"}}"#,
            TextKind::Content,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a secret"}}"#,
            TextKind::Content,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"a secret"}}"#,
            TextKind::Arguments,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"a secret"}}"#,
            TextKind::Reasoning,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"a secret"}}"#,
            TextKind::Content,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"message_start","message":{"content":[{"type":"text","text":"a secret"}]}}"#,
            TextKind::Content,
        ),
    ];
    for (call_type, data, kind) in cases {
        let view = JsonView::parse(data.as_bytes()).unwrap();
        let read = call_type.read_event(None, &view).unwrap();
        let texts: Vec<(TextKind, Role, &str)> = read
            .texts
            .iter()
            .map(|(k, r, t)| (k.kind, *r, &**t))
            .collect();
        assert_eq!(texts, [(kind, Role::Delta, "a secret")], "{data}");
    }
    // A tool_use block starts with an empty input, which is no text; a non-empty one is.
    let view = JsonView::parse(br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#).unwrap();
    assert!(
        !CallType::AnthropicMessages
            .read_event(None, &view)
            .unwrap()
            .has_text()
    );
    let view = JsonView::parse(br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"q":"a secret"}}}"#).unwrap();
    let read = CallType::AnthropicMessages.read_event(None, &view).unwrap();
    assert_eq!(read.texts[0].2, "{\"q\":\"a secret\"}");
}

#[test]
fn stream_events_no_client_could_read_as_checked_fail() {
    for (call_type, data) in [
        (
            CallType::Responses,
            r#"{"type":"response.brand_new.delta","delta":"a secret"}"#,
        ),
        (
            CallType::Responses,
            r#"{"type":"response.output_text.delta","output_index":0,"delta":["a secret"]}"#,
        ),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"brand_new_delta","text":"a secret"}}"#,
        ),
        (
            CallType::ChatCompletions,
            r#"{"choices":[{"index":0,"delta":{"content":{"text":"a secret"}}}]}"#,
        ),
    ] {
        let view = JsonView::parse(data.as_bytes()).unwrap();
        assert!(call_type.read_event(None, &view).is_err(), "{data}");
    }
    // Non-text events of a known kind, and unknown events that are not deltas, pass.
    for (call_type, data) in [
        (
            CallType::Responses,
            r#"{"type":"response.web_search_call.searching","output_index":0}"#,
        ),
        (CallType::AnthropicMessages, r#"{"type":"ping"}"#),
        (
            CallType::AnthropicMessages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}"#,
        ),
    ] {
        let view = JsonView::parse(data.as_bytes()).unwrap();
        assert!(
            !call_type.read_event(None, &view).unwrap().has_text(),
            "{data}"
        );
    }
}

#[test]
fn rewriting_an_event_changes_its_texts_by_position() {
    let events = decode(
        "event: response.completed\nid: 9\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"one\"},{\"type\":\"output_text\",\"text\":\"two\"}]}]}}\n\n",
    );
    let out = CallType::Responses
        .rewrite_event(&events[0], |i, key, role, text| {
            assert_eq!(role, Role::Full);
            assert_eq!(key.sub, i as u64);
            *text = format!("[{i}]");
        })
        .unwrap();
    assert_eq!(
        out,
        "event: response.completed\nid: 9\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"[0]\"},{\"type\":\"output_text\",\"text\":\"[1]\"}]}]}}\n\n"
    );
    let events = decode(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"secret\"},\"logprobs\":null}]}\n\n",
    );
    let out = CallType::ChatCompletions
        .rewrite_event(&events[0], |_, _, _, t| *t = "[X]".into())
        .unwrap();
    assert_eq!(
        out,
        "data: {\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{\"content\":\"[X]\"},\"logprobs\":null}]}\n\n"
    );
}

// ---------------------------------------------------------------- generated bodies and streams

/// Texts with the characters that trouble a stream: multi-byte UTF-8, quotes, escapes.
fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z é☕🥐\"\\\\\n{}]{0,24}").unwrap()
}

/// Splits `text` into pieces at char boundaries chosen by `cuts`.
fn pieces(text: &str, cuts: &[usize]) -> Vec<String> {
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
    let mut at: Vec<usize> = cuts
        .iter()
        .filter(|_| !bounds.is_empty())
        .map(|c| bounds[c % bounds.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in at {
        out.push(text[start..cut].to_owned());
        start = cut;
    }
    out.push(text[start..].to_owned());
    out
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

#[derive(Debug, Clone)]
struct ChatChoice {
    content: Option<String>,
    refusal: Option<String>,
    tools: Vec<String>,
}

fn chat_choice() -> impl Strategy<Value = ChatChoice> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::collection::vec(text(), 0..3),
    )
        .prop_map(|(content, refusal, tools)| ChatChoice {
            content,
            refusal,
            tools,
        })
}

fn chat_body_and_stream(choices: &[ChatChoice], cuts: &[usize]) -> (Value, String) {
    let mut body_choices = Vec::new();
    let mut stream = String::new();
    for (i, c) in choices.iter().enumerate() {
        let tool_calls: Vec<Value> = c
            .tools
            .iter()
            .map(|a| json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": a}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": c.content});
        if let Some(r) = &c.refusal {
            message["refusal"] = json!(r);
        }
        if !tool_calls.is_empty() {
            message["tool_calls"] = json!(tool_calls);
        }
        body_choices.push(json!({"index": i, "message": message, "finish_reason": "stop"}));
        stream += &sse(
            None,
            &json!({"choices": [{"index": i, "delta": {"role": "assistant"}}]}),
        );
        for piece in pieces(c.content.as_deref().unwrap_or(""), cuts) {
            stream += &sse(
                None,
                &json!({"choices": [{"index": i, "delta": {"content": piece}}]}),
            );
        }
        for piece in pieces(c.refusal.as_deref().unwrap_or(""), cuts) {
            stream += &sse(
                None,
                &json!({"choices": [{"index": i, "delta": {"refusal": piece}}]}),
            );
        }
        for (j, args) in c.tools.iter().enumerate() {
            for (n, piece) in pieces(args, cuts).into_iter().enumerate() {
                let call = if n == 0 {
                    json!({"index": j, "id": "c", "type": "function", "function": {"name": "f", "arguments": piece}})
                } else {
                    json!({"index": j, "function": {"arguments": piece}})
                };
                stream += &sse(
                    None,
                    &json!({"choices": [{"index": i, "delta": {"tool_calls": [call]}}]}),
                );
            }
        }
        stream += &sse(
            None,
            &json!({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]}),
        );
    }
    stream += "data: [DONE]\n\n";
    (
        json!({"object": "chat.completion", "choices": body_choices}),
        stream,
    )
}

#[derive(Debug, Clone)]
enum OutputItem {
    Message(Vec<(bool, String)>),
    FunctionCall(String),
    Reasoning(Vec<String>),
}

fn output_item() -> impl Strategy<Value = OutputItem> {
    prop_oneof![
        proptest::collection::vec((any::<bool>(), text()), 1..3).prop_map(OutputItem::Message),
        text().prop_map(OutputItem::FunctionCall),
        proptest::collection::vec(text(), 1..3).prop_map(OutputItem::Reasoning),
    ]
}

fn responses_body_and_stream(items: &[OutputItem], cuts: &[usize]) -> (Value, String) {
    let mut stream = String::new();
    let mut seq = 0;
    let mut emit = |stream: &mut String, kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        *stream += &sse(Some(kind), &data);
    };
    let full_items: Vec<Value> = items
        .iter()
        .map(|item| match item {
            OutputItem::Message(parts) => json!({"type": "message", "role": "assistant", "content": parts.iter().map(|(refusal, t)| if *refusal {
                json!({"type": "refusal", "refusal": t})
            } else {
                json!({"type": "output_text", "text": t, "annotations": []})
            }).collect::<Vec<_>>()}),
            OutputItem::FunctionCall(args) => json!({"type": "function_call", "name": "f", "call_id": "c", "arguments": args}),
            OutputItem::Reasoning(summary) => json!({"type": "reasoning", "summary": summary.iter().map(|t| json!({"type": "summary_text", "text": t})).collect::<Vec<_>>()}),
        })
        .collect();
    emit(
        &mut stream,
        "response.created",
        json!({"response": {"id": "r", "output": []}}),
    );
    for (o, item) in items.iter().enumerate() {
        match item {
            OutputItem::Message(parts) => {
                emit(
                    &mut stream,
                    "response.output_item.added",
                    json!({"output_index": o, "item": {"type": "message", "role": "assistant", "content": []}}),
                );
                for (c, (refusal, t)) in parts.iter().enumerate() {
                    let empty = if *refusal {
                        json!({"type": "refusal", "refusal": ""})
                    } else {
                        json!({"type": "output_text", "text": ""})
                    };
                    emit(
                        &mut stream,
                        "response.content_part.added",
                        json!({"output_index": o, "content_index": c, "part": empty}),
                    );
                    let (delta, done, field) = if *refusal {
                        ("response.refusal.delta", "response.refusal.done", "refusal")
                    } else {
                        (
                            "response.output_text.delta",
                            "response.output_text.done",
                            "text",
                        )
                    };
                    for piece in pieces(t, cuts) {
                        emit(
                            &mut stream,
                            delta,
                            json!({"output_index": o, "content_index": c, "delta": piece}),
                        );
                    }
                    emit(
                        &mut stream,
                        done,
                        json!({"output_index": o, "content_index": c, field: t}),
                    );
                    emit(
                        &mut stream,
                        "response.content_part.done",
                        json!({"output_index": o, "content_index": c, "part": full_items[o]["content"][c]}),
                    );
                }
            }
            OutputItem::FunctionCall(args) => {
                emit(
                    &mut stream,
                    "response.output_item.added",
                    json!({"output_index": o, "item": {"type": "function_call", "name": "f", "call_id": "c", "arguments": ""}}),
                );
                for piece in pieces(args, cuts) {
                    emit(
                        &mut stream,
                        "response.function_call_arguments.delta",
                        json!({"output_index": o, "delta": piece}),
                    );
                }
                emit(
                    &mut stream,
                    "response.function_call_arguments.done",
                    json!({"output_index": o, "arguments": args}),
                );
            }
            OutputItem::Reasoning(summary) => {
                emit(
                    &mut stream,
                    "response.output_item.added",
                    json!({"output_index": o, "item": {"type": "reasoning", "summary": []}}),
                );
                for (s, t) in summary.iter().enumerate() {
                    emit(
                        &mut stream,
                        "response.reasoning_summary_part.added",
                        json!({"output_index": o, "summary_index": s, "part": {"type": "summary_text", "text": ""}}),
                    );
                    for piece in pieces(t, cuts) {
                        emit(
                            &mut stream,
                            "response.reasoning_summary_text.delta",
                            json!({"output_index": o, "summary_index": s, "delta": piece}),
                        );
                    }
                    emit(
                        &mut stream,
                        "response.reasoning_summary_text.done",
                        json!({"output_index": o, "summary_index": s, "text": t}),
                    );
                    emit(
                        &mut stream,
                        "response.reasoning_summary_part.done",
                        json!({"output_index": o, "summary_index": s, "part": {"type": "summary_text", "text": t}}),
                    );
                }
            }
        }
        emit(
            &mut stream,
            "response.output_item.done",
            json!({"output_index": o, "item": full_items[o]}),
        );
    }
    let body = json!({"id": "r", "object": "response", "output": full_items});
    emit(&mut stream, "response.completed", json!({"response": body}));
    (body, stream)
}

#[derive(Debug, Clone)]
enum Block {
    Text(String),
    ToolUse(BTreeMap<String, String>),
    Thinking(String),
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        text().prop_map(Block::Text),
        proptest::collection::btree_map("[a-z]{1,4}", text(), 0..3).prop_map(Block::ToolUse),
        text().prop_map(Block::Thinking),
    ]
}

fn anthropic_body_and_stream(blocks: &[Block], cuts: &[usize]) -> (Value, String) {
    let mut stream = String::new();
    let ev = |stream: &mut String, data: Value| {
        let kind = data["type"].as_str().unwrap().to_owned();
        *stream += &sse(Some(&kind), &data);
    };
    ev(
        &mut stream,
        json!({"type": "message_start", "message": {"id": "m", "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
    );
    let mut content = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(t) => {
                content.push(json!({"type": "text", "text": t}));
                ev(
                    &mut stream,
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
                );
                for piece in pieces(t, cuts) {
                    ev(
                        &mut stream,
                        json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}}),
                    );
                }
            }
            Block::ToolUse(input) => {
                let input = json!(input);
                content.push(json!({"type": "tool_use", "id": "t", "name": "f", "input": input}));
                ev(
                    &mut stream,
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
                );
                for piece in pieces(&input.to_string(), cuts) {
                    ev(
                        &mut stream,
                        json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": piece}}),
                    );
                }
            }
            Block::Thinking(t) => {
                content.push(json!({"type": "thinking", "thinking": t, "signature": "s"}));
                ev(
                    &mut stream,
                    json!({"type": "content_block_start", "index": i, "content_block": {"type": "thinking", "thinking": ""}}),
                );
                for piece in pieces(t, cuts) {
                    ev(
                        &mut stream,
                        json!({"type": "content_block_delta", "index": i, "delta": {"type": "thinking_delta", "thinking": piece}}),
                    );
                }
                ev(
                    &mut stream,
                    json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": "s"}}),
                );
            }
        }
        ev(
            &mut stream,
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    ev(
        &mut stream,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
    );
    ev(&mut stream, json!({"type": "message_stop"}));
    (
        json!({"id": "m", "type": "message", "role": "assistant", "content": content}),
        stream,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A stream yields, key by key, exactly the texts of its JSON response, and every complete
    /// text a summary event repeats is that text.
    #[test]
    fn a_stream_yields_the_texts_of_its_body(
        chat in proptest::collection::vec(chat_choice(), 1..3),
        items in proptest::collection::vec(output_item(), 1..4),
        blocks in proptest::collection::vec(block(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let (body, stream) = chat_body_and_stream(&chat, &cuts);
        assert_stream_is_body(CallType::ChatCompletions, &body, &stream);
        let (body, stream) = responses_body_and_stream(&items, &cuts);
        assert_stream_is_body(CallType::Responses, &body, &stream);
        let (body, stream) = anthropic_body_and_stream(&blocks, &cuts);
        assert_stream_is_body(CallType::AnthropicMessages, &body, &stream);
    }
}
