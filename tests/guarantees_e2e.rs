//! The no-bypass guarantees end to end, over real sockets: the gateway started from a config
//! string in front of the mock upstream, driven with a real HTTP client.
//!
//! - A blocked word planted in every field the text view reads, in chat completions, Responses
//!   and Anthropic requests, is blocked before the call: 400 with the exact body, nothing
//!   forwarded.
//! - The same word in the model's tool-call arguments (JSON responses and streams: chat
//!   `tool_calls` argument deltas, Responses `function_call_arguments.delta`, Anthropic
//!   `input_json_delta`) is blocked after the call.
//! - A request whose `messages` has a shape the protocol does not allow is a 400 naming the
//!   field, never forwarded, with one spend-log row.
//! - A response the post-call guardrails cannot read (compressed, not an event stream) is a 502,
//!   never an unchecked pass; the gateway asks upstreams for `identity`.
//! - A route the gateway does not serve is refused, guardrails or not, and never forwarded.
//! - A stream event with an address to mask before a blocked word: the text released before the
//!   in-band error has the address masked.

use std::path::PathBuf;

use guardrail_gateway::app::{Gateway, RunningGateway};
use guardrail_tower::spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::{MockUpstream, ScriptedReply};
use guardrail_tower_testkit::{post_json, send};
use serde_json::{Value, json};

/// The mock upstream and a gateway in front of it, with one guardrail: by default the content
/// filter blocking `forbidden`, `default_on`, before and after the call.
struct Harness {
    upstream: MockUpstream,
    gateway: String,
    db: PathBuf,
    _dir: tempfile::TempDir,
    running: Option<RunningGateway>,
}

/// [`Harness::start`]'s guardrail.
const BLOCK_WORDS: &str = r#"
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: [pre_call, post_call]
      default_on: true
      blocked_words: [{keyword: forbidden, action: BLOCK}]
"#;

impl Harness {
    async fn start() -> Harness {
        Harness::with_guardrails(BLOCK_WORDS).await
    }

    /// The gateway with `guardrails` (YAML list items) instead.
    async fn with_guardrails(guardrails: &str) -> Harness {
        let upstream = MockUpstream::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("spend.db");
        let config = format!(
            r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant}}
guardrails:
{guardrails}
general_settings:
  spend_logs: "sqlite://{db}"
  request_timeout: 5
"#,
            base = upstream.base_url(),
            origin = upstream.origin(),
            db = db.display(),
        );
        let gateway = Gateway::from_config_str(&config).await.unwrap();
        let running = gateway
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        Harness {
            upstream,
            gateway: running.url(""),
            db,
            _dir: dir,
            running: Some(running),
        }
    }

    /// POSTs `body` to `path`: the status, the content type and the body.
    async fn post(&self, path: &str, body: &Value) -> (u16, String, String) {
        let resp = send(post_json(
            &format!("{}{path}", self.gateway),
            &body.to_string(),
        ))
        .await;
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (
            resp.status().as_u16(),
            content_type,
            String::from_utf8(resp.body().to_vec()).unwrap(),
        )
    }

    /// Stops the gateway (which flushes the spend log) and returns its rows, asserting there
    /// are exactly `n`.
    async fn spend_rows(&mut self, n: usize) -> Vec<Value> {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        let store = SqliteSink::open(&self.db).await.unwrap();
        let rows = store.query(&SpendLogFilter::new()).await.unwrap();
        let rows = serde_json::to_value(rows).unwrap();
        let rows = rows.as_array().unwrap().clone();
        assert_eq!(rows.len(), n, "exactly one row per request: {rows:#?}");
        rows
    }
}

const MESSAGE: &str = "Content blocked: keyword 'forbidden' detected";

/// The block, in the OpenAI shape.
fn openai_block() -> Value {
    json!({"error": {"message": MESSAGE, "type": "invalid_request_error", "param": null,
                     "code": "content_policy_violation"}})
}

/// The block, in the Anthropic shape.
fn anthropic_block() -> Value {
    json!({"type": "error", "error": {"type": "invalid_request_error", "message": MESSAGE}})
}

/// `data` as a server-sent event named after its `type`, as Responses and Anthropic streams
/// write them.
fn typed_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

/// A Responses stream the content filter ended: a 200 whose body never shows the word and
/// ends with `response.failed`, never `response.completed`.
fn assert_responses_stream_blocked(status: u16, body: &str) {
    assert_eq!(status, 200);
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    assert!(!body.contains("response.completed"), "{body}");
    assert_eq!(
        events(body).last().unwrap().0.as_deref(),
        Some("response.failed"),
        "{body}"
    );
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A tool-call round trip in chat messages, with `arguments` and the tool's `result`.
fn chat_tool_round(arguments: &str, result: Value) -> Value {
    json!([
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ])
}

#[tokio::test]
async fn a_blocked_word_in_any_request_field_is_blocked_before_the_call() {
    let mut h = Harness::start().await;
    let chat = |messages: Value| json!({"model": "gpt", "messages": messages});
    let hi = json!({"role": "user", "content": "hi"});
    let chat_cases = [
        (
            "content string",
            chat(json!([{"role": "user", "content": "a forbidden plan"}])),
        ),
        (
            "content parts",
            chat(json!([{"role": "user", "content": [
            {"type": "text", "text": "look at this"},
            {"type": "text", "text": "a forbidden plan"}]}])),
        ),
        (
            "name",
            chat(json!([{"role": "user", "name": "forbidden", "content": "hi"}])),
        ),
        (
            "system message",
            chat(json!([{"role": "system", "content": "a forbidden plan"}, hi])),
        ),
        (
            "system message parts",
            chat(
                json!([{"role": "system", "content": [{"type": "text", "text": "a forbidden plan"}]}, hi]),
            ),
        ),
        (
            "developer message",
            chat(json!([{"role": "developer", "content": "a forbidden plan"}, hi])),
        ),
        (
            "tool message",
            chat(chat_tool_round("{}", json!("a forbidden result"))),
        ),
        (
            "tool message parts",
            chat(chat_tool_round(
                "{}",
                json!([{"type": "text", "text": "a forbidden result"}]),
            )),
        ),
        (
            "tool-call arguments",
            chat(chat_tool_round(r#"{"q": "forbidden"}"#, json!("ok"))),
        ),
        (
            "legacy function_call arguments",
            chat(json!([
                {"role": "user", "content": "look it up"},
                {"role": "assistant", "content": null,
                 "function_call": {"name": "search", "arguments": "{\"q\": \"forbidden\"}"}},
                {"role": "function", "name": "search", "content": "ok"},
            ])),
        ),
        (
            "assistant content",
            chat(json!([hi, {"role": "assistant", "content": "a forbidden answer"}, hi])),
        ),
        (
            "tool description",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "function", "function": {"name": "search", "description": "a forbidden tool"}}]}),
        ),
        (
            "tool parameter description",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "a forbidden query"}}}}}]}),
        ),
        (
            "tool parameter enum",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string", "enum": ["forbidden"]}}}}}]}),
        ),
        (
            "tool parameter description as an array",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": ["a forbidden query"]}}}}}]}),
        ),
        (
            "tool parameters as a string",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "function", "function": {"name": "search", "parameters": "a forbidden schema"}}]}),
        ),
        (
            "response format schema",
            json!({"model": "gpt", "messages": [hi], "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string", "description": "a forbidden field"}}}}}}),
        ),
        (
            "predicted output",
            json!({"model": "gpt", "messages": [hi], "prediction": {"type": "content", "content": "a forbidden draft"}}),
        ),
        (
            "vLLM documents",
            json!({"model": "gpt", "messages": [hi], "documents": [{"title": "notes", "text": "a forbidden plan"}]}),
        ),
        (
            "web search location",
            json!({"model": "gpt", "messages": [hi], "web_search_options": {"user_location": {"type": "approximate", "approximate": {"city": "a forbidden town"}}}}),
        ),
        (
            "vLLM chat_template_kwargs",
            json!({"model": "gpt", "messages": [hi], "chat_template_kwargs": {"enable_thinking": false, "persona": "a forbidden persona"}}),
        ),
        (
            "predicted output parts",
            json!({"model": "gpt", "messages": [hi], "prediction": {"type": "content", "content": [{"type": "text", "text": "a forbidden draft"}]}}),
        ),
        (
            "custom tool description",
            json!({"model": "gpt", "messages": [hi], "tools": [{"type": "custom", "custom": {"name": "sql", "description": "a forbidden tool"}}]}),
        ),
        (
            "legacy functions description",
            json!({"model": "gpt", "messages": [hi], "functions": [{"name": "search", "description": "a forbidden tool"}]}),
        ),
        (
            "legacy functions parameter description",
            json!({"model": "gpt", "messages": [hi], "functions": [{"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "a forbidden query"}}}}]}),
        ),
        (
            "reasoning details",
            chat(
                json!([hi, {"role": "assistant", "content": "ok", "reasoning_details": [{"type": "reasoning.text", "text": "a forbidden thought", "index": 0}]}, hi]),
            ),
        ),
        (
            "thinking blocks",
            chat(
                json!([hi, {"role": "assistant", "content": "ok", "thinking_blocks": [{"type": "thinking", "thinking": "a forbidden thought", "signature": "s"}]}, hi]),
            ),
        ),
    ];
    let responses = |fields: Value| {
        let mut body = json!({"model": "gpt"});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        body
    };
    let function_round = |arguments: &str, output: &str| {
        json!({"input": [
            {"role": "user", "content": "look it up"},
            {"type": "function_call", "call_id": "call_1", "name": "search", "arguments": arguments},
            {"type": "function_call_output", "call_id": "call_1", "output": output},
        ]})
    };
    let responses_cases = [
        (
            "web search tool location",
            responses(
                json!({"input": "hi", "tools": [{"type": "web_search", "user_location": {"type": "approximate", "city": "a forbidden town"}}]}),
            ),
        ),
        (
            "instructions",
            responses(json!({"instructions": "a forbidden plan", "input": "hi"})),
        ),
        (
            "input string",
            responses(json!({"input": "a forbidden plan"})),
        ),
        (
            "input message item",
            responses(json!({"input": [{"role": "user", "content": "a forbidden plan"}]})),
        ),
        (
            "input_text part",
            responses(json!({"input": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "a forbidden plan"}]}]})),
        ),
        (
            "function_call arguments",
            responses(function_round(r#"{"q": "forbidden"}"#, "ok")),
        ),
        (
            "function_call_output",
            responses(function_round("{}", "a forbidden result")),
        ),
        (
            "tool parameter schema",
            responses(
                json!({"input": "hi", "tools": [{"type": "function", "name": "search",
            "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "a forbidden query"}}}}]}),
            ),
        ),
        (
            "prompt variable",
            responses(
                json!({"input": "hi", "prompt": {"id": "pmpt_1", "variables": {"topic": "a forbidden plan"}}}),
            ),
        ),
        (
            "prompt variable input_text",
            responses(
                json!({"input": "hi", "prompt": {"id": "pmpt_1", "variables": {"topic": {"type": "input_text", "text": "a forbidden plan"}}}}),
            ),
        ),
        (
            "mcp server description",
            responses(
                json!({"input": "hi", "tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp.example", "server_description": "a forbidden server"}]}),
            ),
        ),
        (
            "mcp_list_tools description",
            responses(
                json!({"input": [{"type": "mcp_list_tools", "id": "t", "server_label": "s", "tools": [{"name": "t", "description": "a forbidden tool", "input_schema": {}}]}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "mcp_list_tools input schema",
            responses(
                json!({"input": [{"type": "mcp_list_tools", "id": "t", "server_label": "s", "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"q": {"type": "string", "description": "a forbidden query"}}}}]}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "computer_call typed text",
            responses(
                json!({"input": [{"type": "computer_call", "id": "cc", "call_id": "c", "status": "completed", "action": {"type": "type", "text": "forbidden"}, "pending_safety_checks": []}]}),
            ),
        ),
        (
            "file_search_call results",
            responses(
                json!({"input": [{"type": "file_search_call", "id": "f", "status": "completed", "queries": ["q"], "results": [{"file_id": "a", "text": "a forbidden passage"}]}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "web_search_call query",
            responses(
                json!({"input": [{"type": "web_search_call", "id": "w", "status": "completed", "action": {"type": "search", "query": "forbidden"}}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "local_shell_call command",
            responses(
                json!({"input": [{"type": "local_shell_call", "id": "l", "call_id": "c", "status": "completed", "action": {"type": "exec", "command": ["echo", "forbidden"]}}, {"type": "local_shell_call_output", "call_id": "c", "output": "ok"}]}),
            ),
        ),
        (
            "shell_call command",
            responses(
                json!({"input": [{"type": "shell_call", "id": "s", "call_id": "c", "status": "completed", "action": {"commands": ["ls", "echo forbidden"]}}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "shell_call_output stderr",
            responses(
                json!({"input": [{"type": "shell_call_output", "call_id": "c", "output": [{"stdout": "", "stderr": "a forbidden error", "outcome": {"type": "exit", "exit_code": 1}}]}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "apply_patch_call diff",
            responses(
                json!({"input": [{"type": "apply_patch_call", "id": "p", "call_id": "c", "status": "completed", "operation": {"type": "create_file", "path": "a.txt", "diff": "+a forbidden line"}}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "apply_patch_call_output",
            responses(
                json!({"input": [{"type": "apply_patch_call_output", "call_id": "c", "status": "completed", "output": "a forbidden result"}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "code_interpreter_call logs",
            responses(
                json!({"input": [{"type": "code_interpreter_call", "id": "ci", "code": "print(1)", "container_id": "x", "status": "completed", "outputs": [{"type": "logs", "logs": "a forbidden log"}]}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "mcp_approval_response reason",
            responses(
                json!({"input": [{"type": "mcp_approval_response", "approval_request_id": "a", "approve": false, "reason": "a forbidden reason"}, {"role": "user", "content": "hi"}]}),
            ),
        ),
        (
            "text.format schema",
            responses(
                json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "answer",
            "schema": {"type": "object", "properties": {"a": {"type": "string", "enum": ["forbidden"]}}}}}}),
            ),
        ),
    ];
    let anthropic = |fields: Value| {
        let mut body = json!({"model": "claude", "max_tokens": 16});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        body
    };
    let tool_round = |input: Value, result: Value| {
        json!({"messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": result}]},
        ]})
    };
    let anthropic_cases = [
        (
            "web search tool location",
            anthropic(
                json!({"messages": [hi], "tools": [{"type": "web_search_20250305", "name": "web_search",
            "user_location": {"type": "approximate", "city": "a forbidden town"}}]}),
            ),
        ),
        (
            "tool input_schema",
            anthropic(json!({"messages": [hi], "tools": [{"name": "search",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string", "description": "a forbidden query"}}}}]})),
        ),
        (
            "system string",
            anthropic(json!({"system": "a forbidden plan", "messages": [hi]})),
        ),
        (
            "system blocks",
            anthropic(
                json!({"system": [{"type": "text", "text": "a forbidden plan"}], "messages": [hi]}),
            ),
        ),
        (
            "content string",
            anthropic(json!({"messages": [{"role": "user", "content": "a forbidden plan"}]})),
        ),
        (
            "text block",
            anthropic(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "text", "text": "a forbidden plan"}]}]})),
        ),
        (
            "a citation's cited_text",
            anthropic(
                json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
            {"type": "text", "text": "it says so", "citations": [{"type": "char_location", "cited_text": "a forbidden plan",
                "document_index": 0, "document_title": "d", "start_char_index": 0, "end_char_index": 16}]}]},
            {"role": "user", "content": "and?"}]}),
            ),
        ),
        (
            "tool_use input",
            anthropic(tool_round(json!({"q": "forbidden"}), json!("ok"))),
        ),
        (
            "tool_result string",
            anthropic(tool_round(json!({}), json!("a forbidden result"))),
        ),
        (
            "tool_result blocks",
            anthropic(tool_round(
                json!({}),
                json!([{"type": "text", "text": "a forbidden result"}]),
            )),
        ),
        (
            "document title",
            anthropic(
                json!({"messages": [{"role": "user", "content": [{"type": "document", "title": "a forbidden file",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}]}]}),
            ),
        ),
        (
            "document context",
            anthropic(
                json!({"messages": [{"role": "user", "content": [{"type": "document", "context": "a forbidden note",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}]}]}),
            ),
        ),
        (
            "search_result title",
            anthropic(
                json!({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "https://example.com",
            "title": "a forbidden page", "content": [{"type": "text", "text": "text"}]}]}]}),
            ),
        ),
        (
            "tool input_examples",
            anthropic(
                json!({"messages": [hi], "tools": [{"name": "search", "input_schema": {"type": "object"},
            "input_examples": [{"q": "forbidden"}]}]}),
            ),
        ),
    ];
    let mut n = 0;
    for (path, cases, want) in [
        ("/v1/chat/completions", &chat_cases[..], openai_block()),
        ("/v1/responses", &responses_cases[..], openai_block()),
        ("/v1/messages", &anthropic_cases[..], anthropic_block()),
    ] {
        for (field, body) in cases {
            let (status, _, got) = h.post(path, body).await;
            assert_eq!(
                (status, json_of(&got)),
                (400, want.clone()),
                "{path} {field}"
            );
            assert!(
                h.upstream.requests().is_empty(),
                "{path} {field}: forwarded"
            );
            n += 1;
            // And the same request without the word goes through: the field is readable, the
            // block was the word.
            let clean: Value =
                serde_json::from_str(&body.to_string().replace("forbidden", "fine")).unwrap();
            let (status, _, got) = h.post(path, &clean).await;
            assert_eq!(status, 200, "{path} {field} without the word: {got}");
            assert_eq!(h.upstream.requests().len(), 1, "{path} {field}");
            h.upstream.clear_requests();
            n += 1;
        }
    }
    let rows = h.spend_rows(n).await;
    let blocked = rows
        .iter()
        .filter(|r| r["status"] == "failure" && r["metadata"]["http_status"] == 400)
        .count();
    assert_eq!(blocked, n / 2);
}

/// Chat completion chunks with these tool-call argument pieces.
fn chat_tool_stream(pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1",
               "type": "function", "function": {"name": "search", "arguments": ""}}]}),
        Value::Null,
    )];
    for piece in pieces {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            Value::Null,
        ));
    }
    events.push(chunk(json!({}), json!("tool_calls")));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// The `data:` values of an SSE body, with their event names.
fn events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body[..body.len() - 2]
        .split("\n\n")
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_owned);
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap()
                .to_owned();
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn a_blocked_word_in_tool_call_arguments_is_blocked_after_the_call() {
    let h = Harness::start().await;
    let chat = json!({"model": "gpt", "messages": [{"role": "user", "content": "look it up"}]});
    let chat_stream = json!({"model": "gpt", "stream": true,
                             "messages": [{"role": "user", "content": "look it up"}]});

    // Chat, JSON: tool-call arguments and legacy function_call arguments.
    for message in [
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
               "function": {"name": "search", "arguments": "{\"q\": \"forbidden\"}"}}]}),
        json!({"role": "assistant", "content": null,
               "function_call": {"name": "search", "arguments": "{\"q\": \"forbidden\"}"}}),
    ] {
        h.upstream.push_reply(ScriptedReply::json(&json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})));
        let (status, _, body) = h.post("/v1/chat/completions", &chat).await;
        assert_eq!((status, json_of(&body)), (400, openai_block()), "{message}");
    }

    // Chat, streamed: the word split across two argument deltas.
    h.upstream.push_reply(ScriptedReply::sse(chat_tool_stream(&[
        "{\"q\": \"the for",
        "bidden plan\"}",
    ])));
    let (status, content_type, body) = h.post("/v1/chat/completions", &chat_stream).await;
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"));
    assert!(
        body.ends_with(&format!("data: {}\n\ndata: [DONE]\n\n", openai_block())),
        "{body}"
    );
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    let args: String = events(&body)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(args, "{\"q\": \"the ");

    // Responses, JSON: a function_call output item.
    let call = |arguments: &str, status: &str| {
        json!({"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "search",
               "arguments": arguments, "status": status})
    };
    h.upstream.push_reply(ScriptedReply::json(&json!({
        "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
        "model": "gpt-4o-mini", "output": [call("{\"q\": \"forbidden\"}", "completed")],
        "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}})));
    let responses = json!({"model": "gpt", "input": "look it up"});
    let (status, _, body) = h.post("/v1/responses", &responses).await;
    assert_eq!((status, json_of(&body)), (400, openai_block()));

    // Responses, streamed: response.function_call_arguments.delta.
    let mut seq = 0;
    let mut ev = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {name}\ndata: {data}\n\n")
    };
    let response = |status: &str, output: Value| {
        json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status,
               "model": "gpt-4o-mini", "output": output})
    };
    let stream = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]))}),
        ),
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": call("", "in_progress")}),
        ),
        ev(
            "response.function_call_arguments.delta",
            json!({"item_id": "fc_1", "output_index": 0, "delta": "{\"q\": \"the for"}),
        ),
        ev(
            "response.function_call_arguments.delta",
            json!({"item_id": "fc_1", "output_index": 0, "delta": "bidden plan\"}"}),
        ),
        ev(
            "response.function_call_arguments.done",
            json!({"item_id": "fc_1", "output_index": 0, "arguments": "{\"q\": \"the forbidden plan\"}"}),
        ),
        ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": call("{\"q\": \"the forbidden plan\"}", "completed")}),
        ),
        ev(
            "response.completed",
            json!({"response": response("completed", json!([call("{\"q\": \"the forbidden plan\"}", "completed")]))}),
        ),
    ];
    h.upstream.push_reply(ScriptedReply::sse(stream));
    let responses_stream = json!({"model": "gpt", "stream": true, "input": "look it up"});
    let (status, _, body) = h.post("/v1/responses", &responses_stream).await;
    assert_eq!(status, 200);
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    let got = events(&body);
    let n = got.len();
    assert_eq!(
        got[n - 2],
        (
            Some("error".to_owned()),
            json!({"type": "error", "code": "content_policy_violation", "message": MESSAGE,
                   "param": null, "sequence_number": n - 2})
            .to_string()
        ),
        "{body}"
    );
    let failed: Value = serde_json::from_str(&got[n - 1].1).unwrap();
    assert_eq!(got[n - 1].0.as_deref(), Some("response.failed"));
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(
        failed["response"]["error"],
        json!({"code": "content_policy_violation", "message": MESSAGE})
    );

    // Anthropic, JSON: tool_use input.
    h.upstream.push_reply(ScriptedReply::json(&json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "forbidden"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 5}})));
    let messages = json!({"model": "claude", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "look it up"}]});
    let (status, _, body) = h.post("/v1/messages", &messages).await;
    assert_eq!((status, json_of(&body)), (400, anthropic_block()));

    // Anthropic, streamed: input_json_delta.
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    h.upstream.push_reply(ScriptedReply::sse([
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4", "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{\"q\": \"the for"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "bidden plan\"}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
            "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]));
    let messages_stream = json!({"model": "claude", "max_tokens": 16, "stream": true,
                                 "messages": [{"role": "user", "content": "look it up"}]});
    let (status, _, body) = h.post("/v1/messages", &messages_stream).await;
    assert_eq!(status, 200);
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    assert!(
        body.ends_with(&format!("event: error\ndata: {}\n\n", anthropic_block())),
        "{body}"
    );
    assert!(!body.contains("message_stop"), "{body}");
    assert_eq!(h.upstream.request_count(), 7, "every one was forwarded");
}

/// What an answer cites, which the client shows with it, is checked after the call: what a
/// Claude answer's citations quote (`cited_text`: a web page's words, say) and the titles of
/// the pages a chat or Responses answer cites. A word there blocks the JSON response, and ends
/// a stream (`citations_delta`, `response.output_text.annotation.added`) with the in-band
/// error before it is sent.
#[tokio::test]
async fn what_an_answer_cites_is_checked_after_the_call() {
    let h = Harness::start().await;
    // Chat, JSON: a cited page's title.
    h.upstream.push_reply(ScriptedReply::json(&json!({"id": "c", "object": "chat.completion",
        "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Here it is.", "annotations": [
                {"type": "url_citation", "url_citation": {"url": "https://a", "title": "The forbidden plan",
                    "start_index": 0, "end_index": 4}}]}}]})));
    let chat = json!({"model": "gpt", "messages": [{"role": "user", "content": "look it up"}]});
    let (status, _, body) = h.post("/v1/chat/completions", &chat).await;
    assert_eq!((status, json_of(&body)), (400, openai_block()));
    // Responses, streamed: the title arrives in its own event.
    h.upstream.push_reply(ScriptedReply::sse([
        typed_event(json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1",
            "object": "response", "status": "in_progress", "output": []}})),
        typed_event(json!({"type": "response.output_text.delta", "sequence_number": 1, "output_index": 0,
            "content_index": 0, "item_id": "m", "delta": "Here it is."})),
        typed_event(json!({"type": "response.output_text.annotation.added", "sequence_number": 2,
            "output_index": 0, "content_index": 0, "annotation_index": 0, "item_id": "m",
            "annotation": {"type": "url_citation", "url": "https://a", "title": "The forbidden plan",
                "start_index": 0, "end_index": 4}})),
        typed_event(json!({"type": "response.completed", "sequence_number": 3, "response": {"id": "resp_1",
            "object": "response", "status": "completed", "output": []}})),
    ]));
    let responses = json!({"model": "gpt", "stream": true, "input": "look it up"});
    let (status, _, body) = h.post("/v1/responses", &responses).await;
    assert_responses_stream_blocked(status, &body);

    let cited = json!({"type": "web_search_result_location", "url": "https://a", "title": "a",
        "encrypted_index": "e", "cited_text": "the forbidden plan, in full"});
    h.upstream.push_reply(ScriptedReply::json(&json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "text", "text": "Here it is.", "citations": [cited]}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 3, "output_tokens": 5}})));
    let messages = json!({"model": "claude", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "look it up"}]});
    let (status, _, body) = h.post("/v1/messages", &messages).await;
    assert_eq!((status, json_of(&body)), (400, anthropic_block()));

    h.upstream.push_reply(ScriptedReply::sse([
        typed_event(
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4", "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ),
        typed_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": "", "citations": []}})),
        typed_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "citations_delta", "citation": cited}})),
        typed_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Here it is."}})),
        typed_event(json!({"type": "content_block_stop", "index": 0})),
        typed_event(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
            "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        typed_event(json!({"type": "message_stop"})),
    ]));
    let stream = json!({"model": "claude", "max_tokens": 16, "stream": true,
                        "messages": [{"role": "user", "content": "look it up"}]});
    let (status, _, body) = h.post("/v1/messages", &stream).await;
    assert_eq!(status, 200);
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    assert!(
        body.ends_with(&format!("event: error\ndata: {}\n\n", anthropic_block())),
        "{body}"
    );
}

/// A coding agent's patch, streamed as `response.apply_patch_call_operation_diff.delta` events,
/// and its shell commands (`response.shell_call_command.*`): checked as they arrive, passed
/// byte for byte when clean, and ended with the in-band error when the word arrives split
/// across two deltas.
#[tokio::test]
async fn a_streamed_patch_and_shell_command_are_checked() {
    let h = Harness::start().await;
    let stream = |first: &str, second: &str| {
        let diff = format!("{first}{second}");
        let patch = |diff: &str, status: &str| {
            json!({"type": "apply_patch_call", "id": "p", "call_id": "c1",
            "status": status, "operation": {"type": "create_file", "path": "a.txt", "diff": diff}})
        };
        let shell = json!({"type": "shell_call", "id": "s", "call_id": "c2", "status": "completed",
            "action": {"commands": ["ls"]}});
        let response = |status: &str, output: Value| {
            json!({"id": "resp_1", "object": "response",
            "created_at": 1, "status": status, "model": "gpt-4o-mini", "output": output})
        };
        vec![
            typed_event(
                json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]))}),
            ),
            typed_event(
                json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": patch("", "in_progress")}),
            ),
            typed_event(
                json!({"type": "response.apply_patch_call_operation_diff.delta", "sequence_number": 2, "item_id": "p", "output_index": 0, "delta": first}),
            ),
            typed_event(
                json!({"type": "response.apply_patch_call_operation_diff.delta", "sequence_number": 3, "item_id": "p", "output_index": 0, "delta": second}),
            ),
            typed_event(
                json!({"type": "response.apply_patch_call_operation_diff.done", "sequence_number": 4, "item_id": "p", "output_index": 0, "diff": diff}),
            ),
            typed_event(
                json!({"type": "response.output_item.done", "sequence_number": 5, "output_index": 0, "item": patch(&diff, "completed")}),
            ),
            typed_event(
                json!({"type": "response.output_item.added", "sequence_number": 6, "output_index": 1,
                "item": {"type": "shell_call", "id": "s", "call_id": "c2", "status": "in_progress"}}),
            ),
            typed_event(
                json!({"type": "response.shell_call_command.added", "sequence_number": 7, "output_index": 1, "command_index": 0, "command": ""}),
            ),
            typed_event(
                json!({"type": "response.shell_call_command.delta", "sequence_number": 8, "output_index": 1, "command_index": 0, "delta": "ls"}),
            ),
            typed_event(
                json!({"type": "response.shell_call_command.done", "sequence_number": 9, "output_index": 1, "command_index": 0, "command": "ls"}),
            ),
            typed_event(
                json!({"type": "response.output_item.done", "sequence_number": 10, "output_index": 1, "item": shell}),
            ),
            typed_event(json!({"type": "response.completed", "sequence_number": 11,
                "response": response("completed", json!([patch(&diff, "completed"), shell]))})),
        ]
    };
    let request = json!({"model": "gpt", "stream": true, "input": "write the file",
                         "tools": [{"type": "apply_patch"}, {"type": "shell"}]});

    let clean = stream("+a line", " of text");
    h.upstream.push_reply(ScriptedReply::sse(clean.clone()));
    let (status, _, body) = h.post("/v1/responses", &request).await;
    assert_eq!(
        (status, body),
        (200, clean.concat()),
        "passed byte for byte"
    );

    h.upstream
        .push_reply(ScriptedReply::sse(stream("+a line for", "bidden here")));
    let (status, _, body) = h.post("/v1/responses", &request).await;
    assert_responses_stream_blocked(status, &body);
    let got = events(&body);
    assert_eq!(got[got.len() - 2].0.as_deref(), Some("error"), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&got[got.len() - 2].1).unwrap()["code"],
        "content_policy_violation"
    );

    // A command, written in two deltas, is checked too.
    let mut commands = stream("+a", " line");
    commands[8] = typed_event(
        json!({"type": "response.shell_call_command.delta", "sequence_number": 8, "output_index": 1, "command_index": 0, "delta": "echo forb"}),
    );
    commands.insert(9, typed_event(json!({"type": "response.shell_call_command.delta", "sequence_number": 9, "output_index": 1, "command_index": 0, "delta": "idden"})));
    h.upstream.push_reply(ScriptedReply::sse(commands));
    let (status, _, body) = h.post("/v1/responses", &request).await;
    assert_responses_stream_blocked(status, &body);
}

#[tokio::test]
async fn messages_of_the_wrong_shape_are_refused_before_any_guardrail_or_upstream() {
    let mut h = Harness::start().await;
    let cases = [
        json!("a forbidden plan"),
        json!({"role": "user", "content": "a forbidden plan"}),
        Value::Null,
        json!(42),
    ];
    for messages in &cases {
        let body = json!({"model": "gpt", "messages": messages});
        let (status, _, got) = h.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{messages}: {got}");
        let got = json_of(&got);
        assert_eq!(
            got,
            json!({"error": {"message": "'messages' must be an array", "type": "invalid_request_error",
                             "param": "messages", "code": "invalid_request_shape"}}),
            "{messages}"
        );
    }
    // The same in the Anthropic shape on /v1/messages.
    let body = json!({"model": "claude", "max_tokens": 16, "messages": "a forbidden plan"});
    let (status, _, got) = h.post("/v1/messages", &body).await;
    assert_eq!(
        (status, json_of(&got)),
        (
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "'messages' must be an array"}})
        )
    );
    assert_eq!(h.upstream.request_count(), 0, "nothing forwarded");
    let rows = h.spend_rows(cases.len() + 1).await;
    for row in &rows {
        assert_eq!(row["status"], "failure", "{row}");
        assert_eq!(row["metadata"]["http_status"], 400, "{row}");
        // No guardrail ran: the request was refused before any.
        assert_eq!(
            row["metadata"]["guardrail_information"]
                .as_array()
                .map_or(0, Vec::len),
            0,
            "{row}"
        );
    }
}

/// An image in a request is what the model reads and the content filter does not (the words
/// of a forbidden request in a screenshot): while the filter applies before the call, the
/// request is a 400 naming the part and the guardrail, never forwarded, with its spend-log
/// row. With `media_fallback: fail_open` on the guardrail, the texts are checked and the
/// image passes.
#[tokio::test]
async fn an_image_the_guardrail_cannot_read_is_refused_unless_it_lets_media_pass() {
    let image = json!({"model": "gpt", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "do what the picture says"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    let mut h = Harness::start().await;
    let (status, _, got) = h.post("/v1/chat/completions", &image).await;
    assert_eq!(
        (status, json_of(&got)),
        (
            400,
            json!({"error": {"message": "guardrails apply to this request, but its 'messages[0].content[1]' is an image, audio or a file, which guardrail 'block-words' cannot read; send text, or set media_fallback: fail_open on the guardrail to let media pass unchecked",
                             "type": "invalid_request_error", "param": "messages[0].content[1]",
                             "code": "unreadable_content"}})
        )
    );
    assert_eq!(h.upstream.request_count(), 0, "nothing forwarded");
    let rows = h.spend_rows(1).await;
    assert_eq!(rows[0]["status"], "failure", "{}", rows[0]);
    assert_eq!(rows[0]["metadata"]["http_status"], 400, "{}", rows[0]);

    let mut h =
        Harness::with_guardrails(&format!("{BLOCK_WORDS}      media_fallback: fail_open\n")).await;
    let (status, _, got) = h.post("/v1/chat/completions", &image).await;
    assert_eq!(status, 200, "{got}");
    let forwarded = h.upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(
        forwarded[0].json().unwrap()["messages"],
        image["messages"],
        "the image went on as sent"
    );
    let mut blocked = image.clone();
    blocked["messages"][0]["content"][0]["text"] = json!("a forbidden plan");
    let (status, _, got) = h.post("/v1/chat/completions", &blocked).await;
    assert_eq!(
        (status, json_of(&got)["error"]["message"].clone()),
        (400, json!(MESSAGE))
    );
    assert_eq!(
        h.upstream.request_count(),
        1,
        "the blocked one was not forwarded"
    );
    h.spend_rows(2).await;
}

/// Log probabilities and spoken audio carry the response's text a second time, as tokens or
/// sound, where no guardrail reads it (a blocked word's tokens would reach the client beside
/// the block, a masked address unmasked): a request that asks for them is a 400 before the
/// upstream while a post-call guardrail applies, and an upstream that sends them unasked is
/// refused like any response the guardrails cannot read.
#[tokio::test]
async fn log_probabilities_and_audio_are_refused_where_post_call_guardrails_read_the_text() {
    let h = Harness::start().await;
    let refused = |param: &str| {
        let what = if param == "audio" || param == "modalities" {
            "spoken audio"
        } else {
            "log probabilities"
        };
        let message = format!(
            "post-call guardrails apply to this request, but '{param}' asks for {what}, which \
             would repeat the response's text where no guardrail reads it; ask without it"
        );
        json!({"error": {"message": message, "type": "invalid_request_error", "param": param,
                         "code": "unreadable_content"}})
    };
    let chat = |extra: Value| {
        let mut body = json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true})),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 3, "stream": true})),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 3})),
            "top_logprobs",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt", "input": "hi", "include": ["message.output_text.logprobs"]}),
            "include",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt", "input": "hi", "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(
                json!({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}),
            ),
            "audio",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"modalities": ["text", "audio"]})),
            "modalities",
        ),
    ] {
        let (status, _, got) = h.post(path, &body).await;
        assert_eq!((status, json_of(&got)), (400, refused(param)), "{body}");
    }
    assert_eq!(h.upstream.request_count(), 0, "nothing forwarded");
    // Asking for none passes.
    let (status, _, _) = h
        .post(
            "/v1/chat/completions",
            &chat(json!({"logprobs": false, "top_logprobs": null, "modalities": ["text"], "audio": null})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(h.upstream.request_count(), 1);

    // An upstream that sends them unasked: the chunk with the first half of the word and its
    // token ends the stream with the in-band error; neither half reaches the client.
    let with_logprobs = |content: &str| {
        json!({"index": 0, "delta": {"content": content}, "finish_reason": null,
            "logprobs": {"content": [{"token": content, "logprob": -0.1, "bytes": null, "top_logprobs": []}]}})
    };
    sent_unasked_ends_the_stream(&h, &with_logprobs, "choices[0].logprobs", "forb").await;
    // The same in a JSON response: refused whole.
    h.upstream.push_reply(ScriptedReply::json(&json!({"id": "c", "object": "chat.completion",
        "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "an answer"},
            "logprobs": {"content": [{"token": "an", "logprob": -0.1, "bytes": null, "top_logprobs": []}]}}]})));
    let (status, _, body) = h.post("/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("an answer"), "{body}");
    let error = &json_of(&body)["error"];
    assert_eq!(
        (error["code"].as_str(), error["type"].as_str()),
        (Some("upstream_error"), Some("bad_gateway_error")),
        "{body}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("logprobs"),
        "{body}"
    );

    // Spoken audio sent unasked, in a stream: refused at its first chunk, before the
    // transcript's word is complete.
    let with_audio = |transcript: &str| {
        json!({"index": 0, "finish_reason": null,
            "delta": {"audio": {"id": "audio_1", "data": "UklGRg==", "transcript": transcript}}})
    };
    sent_unasked_ends_the_stream(&h, &with_audio, "choices[0].delta.audio.data", "UklGRg").await;
}

/// A stream of two chat chunks whose choices `choice` makes from "the forb" and "idden plan",
/// sent to a streaming request that asked for neither log probabilities nor audio: it ends
/// with the in-band error naming `field`, and neither half of the word, nor `unsent`, reaches
/// the client.
async fn sent_unasked_ends_the_stream(
    h: &Harness,
    choice: &dyn Fn(&str) -> Value,
    field: &str,
    unsent: &str,
) {
    let chunk = |text: &str| {
        let data = json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                          "choices": [choice(text)]});
        format!("data: {data}\n\n")
    };
    h.upstream.push_reply(ScriptedReply::sse([
        chunk("the forb"),
        chunk("idden plan"),
        "data: [DONE]\n\n".to_owned(),
    ]));
    let request =
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = h.post("/v1/chat/completions", &request).await;
    assert_eq!(status, 200);
    for word in ["forb", "idden", unsent] {
        assert!(!body.contains(word), "{word}: {body}");
    }
    assert!(body.contains(field), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
}

/// `data` gzip-compressed, as an upstream that ignores `accept-encoding` would send it.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn compressed_responses_are_decoded_and_checked_and_unreadable_ones_are_a_502() {
    let h = Harness::start().await;
    let chat = |stream: bool| json!({"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let compressed = |content_type: &str, body: &str| {
        let bytes = gzip(body.as_bytes());
        ScriptedReply::new(200)
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .header("content-length", &bytes.len().to_string())
            .chunk(bytes)
    };
    let unreadable = |message: &str| {
        json!({"error": {"message": message, "type": "bad_gateway_error", "param": null,
                         "code": "unreadable_upstream_response"}})
    };
    // A gzip JSON response carrying the blocked word: decoded, checked, blocked.
    let json_body = json!({"id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "a forbidden answer"}}]});
    h.upstream
        .push_reply(compressed("application/json", &json_body.to_string()));
    let (status, _, body) = h.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!((status, json_of(&body)), (400, openai_block()));
    // The gateway asked for no coding at all.
    assert_eq!(
        h.upstream.requests()[0].header("accept-encoding"),
        Some("identity")
    );

    // A gzip stream: decoded and checked; the word never reaches the client.
    let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a forbidden answer\"}}]}\n\ndata: [DONE]\n\n";
    h.upstream
        .push_reply(compressed("text/event-stream", stream));
    let (status, _, body) = h.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(status, 200);
    assert!(!body.replace(MESSAGE, "").contains("forbidden"), "{body}");
    assert!(
        body.ends_with(&format!("data: {}\n\ndata: [DONE]\n\n", openai_block())),
        "{body}"
    );

    // A stream whose content type is not an event stream.
    for content_type in ["text/plain", "application/octet-stream"] {
        h.upstream.push_reply(
            ScriptedReply::new(200)
                .header("content-type", content_type)
                .chunk(stream),
        );
        let (status, _, body) = h.post("/v1/chat/completions", &chat(true)).await;
        assert_eq!(
            (status, json_of(&body)),
            (
                502,
                unreadable(&format!(
                    "the upstream response has a content type the post-call guardrails cannot read ({content_type})"
                ))
            )
        );
    }
    // And none at all.
    h.upstream.push_reply(ScriptedReply::new(200).chunk(stream));
    let (status, _, body) = h.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(
        (status, json_of(&body)),
        (
            502,
            unreadable(
                "the upstream response has a content type the post-call guardrails cannot read (none)"
            )
        )
    );
    assert_eq!(h.upstream.request_count(), 5);
}

#[tokio::test]
async fn a_route_the_gateway_does_not_serve_is_refused_and_never_forwarded() {
    let h = Harness::start().await;
    for (path, body) in [
        (
            "/v1/completions",
            json!({"model": "gpt", "prompt": "a forbidden plan", "guardrails": ["block-words"]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "gpt", "input": "a forbidden plan", "guardrails": ["block-words"]}),
        ),
        (
            "/openai/v1/chat/completions",
            json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
                   "guardrails": ["block-words"]}),
        ),
    ] {
        let (status, _, got) = h.post(path, &body).await;
        assert_eq!(
            (status, json_of(&got)),
            (
                404,
                json!({"error": {"message": format!("no route for POST {path}"),
                             "type": "not_found_error", "param": null, "code": "not_found"}})
            ),
            "{path}"
        );
    }
    assert_eq!(h.upstream.request_count(), 0);
}

/// The layers as a library, over real sockets, on a route no text view knows (an image
/// generation request): with guardrails selected it is refused before any call, by whichever
/// layer they apply in; with none it passes through to the upstream.
#[tokio::test]
async fn a_route_no_text_view_knows_is_refused_when_guardrails_apply() {
    use bytes::Bytes;
    use guardrail_tower::core::{ConfiguredGuardrail, GuardrailMode, Guardrails};
    use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
    use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
    use guardrail_tower::pre_call::PreCallGuardrailLayer;
    use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
    use http::Request;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{ServiceBuilder, service_fn};

    let mock = MockUpstream::start().await.unwrap();
    let origin = mock.origin();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let forward = service_fn(move |mut req: Request<Full<Bytes>>| {
        *req.uri_mut() = format!("{origin}{}", req.uri().path()).parse().unwrap();
        client.request(req)
    });
    let filter = || {
        let config: ContentFilterConfig =
            serde_yaml_ng::from_str("blocked_words: [{keyword: forbidden, action: BLOCK}]")
                .unwrap();
        ContentFilter::new(config).unwrap()
    };
    // Neither is on by default: a request selects them in its body.
    let guardrails = Guardrails::new([
        ConfiguredGuardrail::new("in-words", GuardrailMode::PreCall, filter()),
        ConfiguredGuardrail::new("out-words", GuardrailMode::PostCall, filter()),
    ]);
    let server = guardrail_tower_testkit::serve(
        ServiceBuilder::new()
            .layer(ModelGuardrailMergeLayer::new())
            .layer(PreCallGuardrailLayer::new(guardrails.clone()))
            .layer(StreamingGuardrailBodyLayer::new(guardrails))
            .service(forward),
    )
    .await;
    let path = "/v1/images/generations";
    let request = |guardrails: Value| {
        json!({"model": "dall-e-3", "prompt": "a forbidden picture", "guardrails": guardrails})
            .to_string()
    };
    let refused = |message: String| {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null,
                         "code": "unsupported_endpoint"}})
    };
    let cases = [
        (
            json!(["in-words"]),
            refused(format!(
                "guardrails apply to this request, but requests to {path} are not a format they \
                 can read; refused (serve this route without guardrails to pass it through)"
            )),
        ),
        (
            json!(["out-words"]),
            refused(format!(
                "post-call guardrails apply to this request, but responses of {path} are not a \
                 format they can read; refused (serve this route without guardrails to pass it \
                 through)"
            )),
        ),
    ];
    for (selected, want) in cases {
        let resp = send(post_json(&server.url(path), &request(selected.clone()))).await;
        assert_eq!(resp.status(), 400, "{selected}");
        let body: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(body, want, "{selected}");
        assert_eq!(mock.request_count(), 0, "{selected}: forwarded");
    }
    // No guardrail applies: a passthrough (the mock has no such route and says so).
    let resp = send(post_json(&server.url(path), &request(json!([])))).await;
    assert_eq!(resp.status(), 404);
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(
        body["error"]["message"],
        format!("Unknown request URL: POST {path}")
    );
    assert_eq!(mock.request_count(), 1);
}

/// The content filter in exact mode, masking e-mail addresses and blocking a word, on a stream
/// whose one event holds both: the text the client gets before the in-band error has the
/// address masked (it went out as it was when the mask and the block were found in one scan).
#[tokio::test]
async fn a_masked_address_before_a_blocked_word_in_one_event_goes_out_masked() {
    let mut h = Harness::with_guardrails(
        r#"
  - guardrail_name: filter
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      default_on: true
      blocked_words: [{keyword: forbidden, action: BLOCK}]
      patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]
"#,
    )
    .await;
    let chunk = |text: &str| {
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    };
    h.upstream.push_reply(ScriptedReply::sse([
        format!(
            "data: {}\n\n",
            chunk("Write to jane.doe@example.com about the forbidden plan.")
        ),
        "data: [DONE]\n\n".to_owned(),
    ]));
    let request = json!({"model": "gpt", "stream": true,
                         "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = h.post("/v1/chat/completions", &request).await;
    assert_eq!(status, 200);
    assert!(!body.contains("jane.doe"), "{body}");
    let text: String = events(&body)
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Write to [EMAIL_REDACTED] about the ");
    assert!(
        body.ends_with(&format!("data: {}\n\ndata: [DONE]\n\n", openai_block())),
        "{body}"
    );
    // The stop flushes the spend log: the blocked stream is one row.
    h.spend_rows(1).await;
}
