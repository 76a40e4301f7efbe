//! `guardrail-gateway demo`: the gateway in front of the mock upstream, on loopback, in one
//! process; a few requests; what the client saw; the spend-log rows they left.
//!
//! [`run`] starts a [`MockUpstream`] and a [`Gateway`] with a master key and four
//! content-filter guardrails (a pre-call word block, a pre- and post-call email mask, a post-call
//! codename block attached to one model only, and a word block attached to a virtual key only),
//! then sends:
//!
//! 1. a chat request without a key: a 401, nothing forwarded;
//! 2. `POST /key/generate` with the master key: a virtual key for team-a, limited to two models
//!    and carrying its own guardrail (the key is shown this once);
//! 3. a request with that key for a model it may not call: a 403;
//! 4. a request with that key that its guardrail blocks, although the request asks to switch
//!    the guardrail off;
//! 5. then, all with the virtual key: a clean chat request;
//! 6. a chat request with a blocked word: a 400 `content_policy_violation`;
//! 7. a chat request with an email address: masked before the model sees it, and the email in
//!    the reply masked on the way back;
//! 8. a streamed chat request whose reply contains the codename: a 200 stream cut by the
//!    model-level guardrail, with an in-band error event and `[DONE]`;
//! 9. the same on the Responses API: an `error` event and `response.failed`;
//! 10. an Anthropic Messages stream through the email mask.
//!
//! It prints each request and response, then `GET /spend/logs`: one row per request, each with
//! its guardrail results. [`run_to`] writes the same report to any writer (the tests use it).

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use guardrail_gateway::app::Gateway;
use guardrail_tower_testkit::mock::MockUpstream;

/// The error type of [`run`].
pub(crate) type DemoError = Box<dyn std::error::Error + Send + Sync>;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long to wait for the spend-log writer to store every row.
const SPEND_LOG_WAIT: Duration = Duration::from_secs(5);

/// Width of the section rules.
const WIDTH: usize = 78;

/// Stream frames longer than this are shortened in the middle.
const MAX_FRAME_LINE: usize = 300;

/// The demo's master key.
const MASTER_KEY: &str = "sk-demo-master-key-0123456789";

/// The demo config: `{base}` is the mock's base URL, `{spend_logs}` the SQLite URL.
fn config_yaml(base: &str, spend_logs: &str) -> String {
    format!(
        r#"model_list:
  - model_name: gpt-guarded
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {base}
      api_key: sk-demo-not-a-real-key
      guardrails: [no-codenames]        # a model-level guardrail
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
  - model_name: claude-guarded
    litellm_params:
      model: anthropic/claude-sonnet-4
      api_base: {base}
      api_key: sk-ant-demo-not-a-real-key
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015

guardrails:
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{{keyword: forbidden, action: BLOCK}}]
  - guardrail_name: pii-mask
    litellm_params:
      guardrail: litellm_content_filter
      mode: [pre_call, post_call]
      default_on: true
      patterns: [{{pattern_type: prebuilt, pattern_name: email, action: MASK}}]
  - guardrail_name: no-codenames
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      default_on: false                 # runs only where a model attaches it
      blocked_words: [{{keyword: BLUEBIRD, action: BLOCK}}]
  - guardrail_name: team-secrets
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: false                 # runs only where a key attaches it
      blocked_words: [{{keyword: project-x, action: BLOCK}}]

general_settings:
  master_key: {MASTER_KEY}        # every route but the health probes needs a key
  spend_logs: "{spend_logs}"        # the spend log, and the virtual keys
"#
    )
}

/// The key a scenario sends.
#[derive(Clone, Copy, PartialEq)]
enum Auth {
    /// No key.
    None,
    /// The master key.
    Master,
    /// The virtual key generated in the demo.
    Virtual,
}

/// One scenario: a titled request.
struct Scenario {
    title: &'static str,
    note: &'static str,
    path: &'static str,
    auth: Auth,
    body: Value,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            title: "No key: refused",
            note: "With a master key configured, every route but the health probes needs a key. \
                   The request is answered 401 and never forwarded; it still leaves a spend-log \
                   row.",
            path: "/v1/chat/completions",
            auth: Auth::None,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Hello"}],
            }),
        },
        Scenario {
            title: "A virtual key, generated with the master key",
            note: "Stored as its SHA-256 hash: the key itself is shown this once. It may call two \
                   models, and it carries its own guardrail, team-secrets.",
            path: "/key/generate",
            auth: Auth::Master,
            body: json!({
                "key_alias": "team-a",
                "models": ["gpt-guarded", "claude-guarded"],
                "guardrails": ["team-secrets"],
                "duration": "30d",
                "user_id": "alice",
                "team_id": "team-a",
            }),
        },
        Scenario {
            title: "The key asks for a model it may not call",
            note: "A 403 with LiteLLM's message; nothing forwarded.",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Hello"}],
            }),
        },
        Scenario {
            title: "The key's guardrail blocks, and the request cannot switch it off",
            note: "team-secrets runs for every request made with this key; the body's attempt \
                   to turn it off changes nothing.",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Summarize project-x for me"}],
                "guardrails": {"team-secrets": false},
            }),
        },
        Scenario {
            title: "A clean chat request",
            note: "The default_on guardrails and the model's own no-codenames run and allow it; the \
                   reply passes unchanged.",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Hello, what can you do"}],
            }),
        },
        Scenario {
            title: "A blocked request (pre_call)",
            note: "block-words stops it before the model is called: a 400 the OpenAI SDKs parse.",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Tell me the forbidden recipe"}],
            }),
        },
        Scenario {
            title: "A masked request (pre_call and post_call)",
            note: "pii-mask masks the address before the model sees it (the model echoes the \
                   masked text) and masks the address the model adds to its reply.",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Hi, my email is jane@corp.com, can you confirm it"}],
            }),
        },
        Scenario {
            title: "A stream blocked mid-way by a model-level guardrail",
            note: "no-codenames is attached to gpt-guarded only (default_on: false) and runs on \
                   streams too: the 200 is already sent, so the block arrives in-band, then [DONE].",
            path: "/v1/chat/completions",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "messages": [{"role": "user", "content": "Tell me about the project"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            }),
        },
        Scenario {
            title: "The same block on the Responses API",
            note: "The Responses stream ends with its own error event and response.failed; the \
                   spend log records the guardrail result as it does for chat.",
            path: "/v1/responses",
            auth: Auth::Virtual,
            body: json!({
                "model": "gpt-guarded",
                "input": "Tell me about the project",
                "stream": true,
            }),
        },
        Scenario {
            title: "An Anthropic Messages stream through the email mask",
            note: "claude-guarded has no model-level guardrail; pii-mask masks the streamed reply.",
            path: "/v1/messages",
            auth: Auth::Virtual,
            body: json!({
                "model": "claude-guarded",
                "max_tokens": 200,
                "messages": [{"role": "user", "content": "Which email should I use"}],
                "stream": true,
            }),
        },
    ]
}

/// What the client saw.
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Set when the body failed part way.
    body_error: Option<String>,
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<Seen, DemoError> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = client.request(request.body(Full::new(body))?).await?;
    let (parts, mut incoming) = response.into_parts();
    let mut bytes = Vec::new();
    let mut body_error = None;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Ok(Seen {
        status: parts.status,
        headers: parts.headers,
        body: bytes.into(),
        body_error,
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

fn rule(out: &mut String, title: &str) {
    let head = format!("── {title} ");
    let fill = WIDTH.saturating_sub(head.chars().count());
    let _ = writeln!(out, "\n{head}{}", "─".repeat(fill));
}

/// Wraps `text` at spaces to lines of about `WIDTH` characters, each prefixed by `indent`.
fn wrap(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > WIDTH {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
}

fn shorten(line: &str, max: usize) -> String {
    let chars = line.chars().count();
    if chars <= max {
        return line.to_owned();
    }
    let keep = (max - 5) / 2;
    let head: String = line.chars().take(keep).collect();
    let tail: String = line.chars().skip(chars - keep).collect();
    format!("{head} […] {tail}")
}

/// The fields of a nested `response` or `message` object worth showing when an event is long.
const KEY_FIELDS: &[&str] = &[
    "id",
    "status",
    "error",
    "model",
    "output",
    "content",
    "stop_reason",
    "usage",
];

/// An event's data for one line: as received when short; when long, with its nested
/// `response`/`message` object cut to its key fields (and a `"…"` entry saying how many were
/// left out), then shortened in the middle if still too long.
fn data_line(data: &str) -> String {
    if data.chars().count() <= MAX_FRAME_LINE {
        return data.to_owned();
    }
    let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(data) else {
        return shorten(data, MAX_FRAME_LINE);
    };
    for key in ["response", "message"] {
        if let Some(Value::Object(nested)) = event.get_mut(key) {
            let total = nested.len();
            nested.retain(|k, _| KEY_FIELDS.contains(&k.as_str()));
            let left_out = total - nested.len();
            if left_out > 0 {
                nested.insert("…".into(), Value::from(format!("{left_out} more fields")));
            }
        }
    }
    shorten(&Value::Object(event).to_string(), MAX_FRAME_LINE)
}

/// Prints a response body: pretty JSON, one line per SSE event, or the text as is.
fn print_body(out: &mut String, seen: &Seen) {
    let content_type = header(&seen.headers, "content-type");
    if content_type.starts_with("text/event-stream") {
        let mut decoder = SseDecoder::new();
        decoder.push(seen.body.clone());
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => {
                    let data = event
                        .data()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    let data = data_line(&data);
                    let _ = match event.event_type() {
                        Some(kind) => writeln!(out, "  event: {kind}  data: {data}"),
                        None => writeln!(out, "  data: {data}"),
                    };
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = writeln!(out, "  (undecodable stream: {e})");
                    break;
                }
            }
        }
        if let Ok(Some(rest)) = decoder.finish() {
            let raw = String::from_utf8_lossy(rest.raw());
            let _ = writeln!(out, "  (incomplete last event: {raw:?})");
        }
    } else if let Ok(json) = serde_json::from_slice::<Value>(&seen.body) {
        let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
        for line in pretty.lines() {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        let _ = writeln!(out, "  {}", String::from_utf8_lossy(&seen.body));
    }
    if let Some(e) = &seen.body_error {
        let _ = writeln!(out, "  (the body failed: {e})");
    }
}

/// One spend-log row on one line.
fn spend_row(label: &str, row: &Value) -> String {
    let s = |key: &str| row.get(key).and_then(Value::as_str).unwrap_or("-");
    let n = |key: &str| row.get(key).and_then(Value::as_u64).unwrap_or(0);
    let metadata = row.get("metadata").unwrap_or(&Value::Null);
    let http_status = metadata
        .get("http_status")
        .map_or_else(|| "-".to_owned(), Value::to_string);
    let stream = if metadata.get("stream").and_then(Value::as_bool) == Some(true) {
        " stream"
    } else {
        ""
    };
    let guardrails: Vec<String> = metadata
        .get("guardrail_information")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|g| {
                    let f = |key: &str| g.get(key).and_then(Value::as_str).unwrap_or("?");
                    let mut entry = format!(
                        "{} {} {}/{}",
                        f("guardrail_name"),
                        f("guardrail_mode"),
                        f("guardrail_status"),
                        f("guardrail_action")
                    );
                    if let Some(Value::Object(counts)) = g.get("masked_entity_count")
                        && !counts.is_empty()
                    {
                        let counts: Vec<String> =
                            counts.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                        let _ = write!(entry, " masked {{{}}}", counts.join(","));
                    }
                    entry
                })
                .collect()
        })
        .unwrap_or_default();
    let error = metadata
        .get("error_information")
        .filter(|e| !e.is_null())
        .map(|e| {
            let code = e
                .get("error_code")
                .or_else(|| e.get("code"))
                .and_then(Value::as_str)
                .or_else(|| e.get("error_class").and_then(Value::as_str))
                .unwrap_or("error");
            format!("  error={code}")
        })
        .unwrap_or_default();
    format!(
        "{label} {id}  {call_type}{stream}  {status} http={http_status}  {model}  tokens={p}+{c}={t}  spend=${spend:.7}{error}\n     guardrails: {guardrails}",
        id = s("request_id"),
        call_type = s("call_type"),
        status = s("status"),
        model = s("model"),
        p = n("prompt_tokens"),
        c = n("completion_tokens"),
        t = n("total_tokens"),
        spend = row.get("spend").and_then(Value::as_f64).unwrap_or(0.0),
        guardrails = if guardrails.is_empty() {
            "none".to_owned()
        } else {
            guardrails.join("; ")
        },
    )
}

/// Runs the demo and prints the report to stdout.
pub(crate) async fn run() -> Result<(), DemoError> {
    let mut stdout = std::io::stdout();
    run_to(&mut stdout).await
}

/// Runs the demo and writes the report to `out`, section by section.
pub(crate) async fn run_to(out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    let mock = MockUpstream::start().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("spend_logs.db");
    let spend_logs = format!("sqlite://{}", db.display());
    let gateway = Gateway::from_config_str(&config_yaml(&mock.base_url(), &spend_logs)).await?;
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let running = gateway.spawn(listener)?;
    let gateway_url = running.url("");

    let result = scenarios_and_logs(out, &mock, &gateway_url, &spend_logs).await;

    match tokio::time::timeout(Duration::from_secs(5), running.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err("the gateway did not shut down within 5 s".into()),
    }
    result
}

async fn scenarios_and_logs(
    out: &mut (dyn Write + Send),
    mock: &MockUpstream,
    gateway_url: &str,
    spend_logs: &str,
) -> Result<(), DemoError> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut text = String::new();
    let _ = writeln!(text, "guardrail-gateway demo");
    let _ = writeln!(text, "{}", "═".repeat(WIDTH));
    let _ = writeln!(text, "  gateway         {gateway_url}");
    let _ = writeln!(
        text,
        "  mock upstream   {}   (replies \"You said: <prompt>.\")",
        mock.base_url()
    );
    let _ = writeln!(text, "  spend log       {spend_logs}");
    let _ = writeln!(
        text,
        "  models          gpt-guarded    -> openai/gpt-4o-mini       model guardrails: no-codenames"
    );
    let _ = writeln!(
        text,
        "                  claude-guarded -> anthropic/claude-sonnet-4"
    );
    let _ = writeln!(
        text,
        "  guardrails      block-words    pre_call             default_on   BLOCK \"forbidden\""
    );
    let _ = writeln!(
        text,
        "                  pii-mask       pre_call, post_call  default_on   MASK emails"
    );
    let _ = writeln!(
        text,
        "                  no-codenames   post_call            per model    BLOCK \"BLUEBIRD\""
    );
    let _ = writeln!(
        text,
        "                  team-secrets   pre_call             per key      BLOCK \"project-x\""
    );
    let _ = writeln!(
        text,
        "  master key      {}  (general_settings.master_key)",
        guardrail_gateway::keys::abbreviate(MASTER_KEY)
    );
    out.write_all(text.as_bytes())?;
    out.flush()?;

    let mut request_ids = Vec::new();
    let mut virtual_key: Option<String> = None;
    for (i, scenario) in scenarios().into_iter().enumerate() {
        let mut text = String::new();
        rule(&mut text, &format!("{}. {}", i + 1, scenario.title));
        wrap(&mut text, "", scenario.note);
        let key = match scenario.auth {
            Auth::None => None,
            Auth::Master => Some(MASTER_KEY.to_owned()),
            Auth::Virtual => Some(
                virtual_key
                    .clone()
                    .ok_or("the virtual key was not generated")?,
            ),
        };
        let shown = key.as_deref().map_or_else(
            || "(no key)".to_owned(),
            |k| {
                format!(
                    "Authorization: Bearer {}",
                    guardrail_gateway::keys::abbreviate(k)
                )
            },
        );
        let _ = writeln!(
            text,
            "\n> POST {}  {shown}\n  {}",
            scenario.path, scenario.body
        );
        let url = format!("{gateway_url}{}", scenario.path);
        let seen = send(
            &client,
            Method::POST,
            &url,
            key.as_deref(),
            Some(&scenario.body),
        )
        .await?;
        if scenario.path == "/key/generate" {
            let made: Value = serde_json::from_slice(&seen.body)?;
            let key = made
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("/key/generate answered {}", seen.status))?;
            virtual_key = Some(key.to_owned());
            let _ = writeln!(text, "< {}", seen.status);
        } else {
            let request_id = header(&seen.headers, "x-request-id").to_owned();
            let _ = writeln!(
                text,
                "< {}   x-request-id: {}   x-litellm-applied-guardrails: {}",
                seen.status,
                request_id,
                header(&seen.headers, "x-litellm-applied-guardrails"),
            );
            request_ids.push(request_id);
        }
        print_body(&mut text, &seen);
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }

    let rows = wait_for_spend_logs(&client, gateway_url, request_ids.len()).await?;
    let mut text = String::new();
    rule(&mut text, "Spend log: GET /spend/logs");
    let _ = writeln!(
        text,
        "One row per request, written once when its response ended (block or not).\n"
    );
    let mut printed = vec![false; rows.len()];
    for (i, id) in request_ids.iter().enumerate() {
        let found = rows
            .iter()
            .position(|row| row.get("request_id").and_then(Value::as_str) == Some(id.as_str()));
        match found {
            Some(at) => {
                printed[at] = true;
                let _ = writeln!(text, "{}", spend_row(&format!("#{}", i + 1), &rows[at]));
            }
            None => {
                let _ = writeln!(text, "#{} {id}  (no spend-log row)", i + 1);
            }
        }
    }
    for (row, _) in rows.iter().zip(&printed).filter(|(_, printed)| !**printed) {
        let _ = writeln!(text, "{}", spend_row(" -", row));
    }
    let _ = writeln!(
        text,
        "\nThe mock upstream received {} requests: the refused and blocked requests never reached it.",
        mock.request_count()
    );
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Fetches `/spend/logs` until it holds `expected` rows (the writer batches with a short
/// linger), for at most [`SPEND_LOG_WAIT`]; returns what it has then.
async fn wait_for_spend_logs(
    client: &HttpClient,
    gateway_url: &str,
    expected: usize,
) -> Result<Vec<Value>, DemoError> {
    let url = format!("{gateway_url}/spend/logs");
    let deadline = tokio::time::Instant::now() + SPEND_LOG_WAIT;
    loop {
        let seen = send(client, Method::GET, &url, Some(MASTER_KEY), None).await?;
        if seen.status != StatusCode::OK {
            return Err(format!(
                "GET /spend/logs answered {}: {}",
                seen.status,
                String::from_utf8_lossy(&seen.body)
            )
            .into());
        }
        let rows: Vec<Value> = serde_json::from_slice(&seen.body)?;
        if rows.len() >= expected || tokio::time::Instant::now() >= deadline {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_runs_to_completion() {
        let mut out = Vec::new();
        run_to(&mut out).await.expect("the demo succeeds");
        let report = String::from_utf8(out).unwrap();

        // The header, ten scenarios, the spend log.
        let sections: Vec<&str> = report.split("\n── ").collect();
        assert_eq!(sections.len(), 12, "{report}");
        // What the client saw, after the "< status" line.
        let seen = |n: usize| sections[n].split_once("\n< ").expect("a response line").1;
        assert!(seen(1).starts_with("401 Unauthorized"), "{report}");
        assert!(seen(1).contains("No api key passed in."), "{report}");
        assert!(seen(2).starts_with("200 OK"), "{report}");
        assert!(seen(2).contains("\"key\": \"sk-"), "{report}");
        assert!(seen(2).contains("\"key_alias\": \"team-a\""), "{report}");
        assert!(seen(3).starts_with("403 Forbidden"), "{report}");
        assert!(
            seen(3).contains("key not allowed to access model"),
            "{report}"
        );
        assert!(seen(4).starts_with("400 Bad Request"), "{report}");
        assert!(seen(4).contains("team-secrets"), "{report}");
        assert!(seen(5).starts_with("200 OK"), "{report}");
        assert!(seen(5).contains("You said: Hello, what can you do."));
        assert!(seen(6).starts_with("400 Bad Request"), "{report}");
        assert!(seen(6).contains("\"code\": \"content_policy_violation\""));
        assert!(seen(7).starts_with("200 OK"), "{report}");
        assert!(!seen(7).contains("jane@corp.com"), "{report}");
        assert!(!seen(7).contains("team@example.com"), "{report}");
        assert!(seen(7).contains("[EMAIL_REDACTED]"), "{report}");
        assert!(seen(8).starts_with("200 OK"), "{report}");
        assert!(seen(8).contains("data: {\"error\""), "{report}");
        assert!(seen(8).trim_end().ends_with("data: [DONE]"), "{report}");
        assert!(seen(9).contains("event: error"), "{report}");
        assert!(seen(9).contains("event: response.failed"), "{report}");
        assert!(seen(9).contains("\"status\":\"failed\""), "{report}");
        for n in [8, 9] {
            assert!(!seen(n).contains("BLUEBIRD"), "{report}");
        }
        assert!(seen(10).contains("event: message_stop"), "{report}");
        assert!(!seen(10).contains("team@example.com"), "{report}");
        // The master key is never printed whole.
        assert!(!report.contains(MASTER_KEY), "{report}");

        // One spend-log row per LLM request, each with its guardrail results.
        let log = sections[11];
        assert!(!log.contains("(no spend-log row)"), "{report}");
        for row in 1..=9 {
            assert!(log.contains(&format!("\n#{row} ")), "{report}");
        }
        assert!(log.contains("http=401"), "{report}");
        assert!(log.contains("http=403"), "{report}");
        assert!(
            log.contains("team-secrets pre_call guardrail_intervened/block"),
            "{report}"
        );
        assert!(
            log.contains("no-codenames post_call guardrail_intervened/block"),
            "{report}"
        );
        assert!(log.contains("aresponses"), "{report}");
    }

    #[test]
    fn long_events_keep_their_key_fields() {
        let filler = "x".repeat(400);
        let data = json!({
            "type": "response.failed",
            "sequence_number": 9,
            "response": {"id": "resp_1", "status": "failed", "filler": filler, "error": {"code": "c"}},
        })
        .to_string();
        let line = data_line(&data);
        assert!(line.contains(r#""status":"failed""#), "{line}");
        assert!(line.contains(r#""error":{"code":"c"}"#), "{line}");
        assert!(line.contains("1 more fields"), "{line}");
        assert_eq!(data_line("short"), "short");
        assert!(data_line(&filler).contains(" […] "));
    }
}
