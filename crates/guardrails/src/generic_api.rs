//! A client for LiteLLM's Generic Guardrail API, so guardrail services written for LiteLLM work
//! unchanged.
//!
//! A guardrail service implements one endpoint, `POST {api_base}/beta/litellm_basic_guardrail_api`,
//! and answers `BLOCKED`, `NONE` or `GUARDRAIL_INTERVENED`. [`GenericGuardrailApi`] is configured
//! from the same `litellm_params` a LiteLLM config holds:
//!
//! ```
//! use guardrail_tower_core::{ConfiguredGuardrail, Fallback, GuardrailMode};
//! use guardrail_tower_guardrails::generic_api::{GenericGuardrailApi, GenericGuardrailApiConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // litellm_params of a `guardrail: generic_guardrail_api` entry; unknown keys are ignored.
//! let config: GenericGuardrailApiConfig = serde_json::from_value(serde_json::json!({
//!     "guardrail": "generic_guardrail_api",
//!     "mode": "pre_call",
//!     "api_base": "https://guard.example.com",
//!     "api_key": "secret",
//!     "headers": {"x-team": "search"},
//!     "timeout": 2.5,
//!     "num_retries": 1,
//!     "additional_provider_specific_params": {"threshold": 0.8}
//! }))?;
//! let guardrail = ConfiguredGuardrail::new(
//!     "my-guard",
//!     GuardrailMode::PreCall,
//!     GenericGuardrailApi::new(config)?,
//! )
//! .unreachable_fallback(Fallback::FailOpen);
//! assert_eq!(guardrail.provider(), "generic_guardrail_api");
//! # Ok(())
//! # }
//! ```
//!
//! # The request
//!
//! A JSON object with every field present (JSON `null` when there is nothing to send), in the
//! order of LiteLLM's `GenericGuardrailAPIRequest`:
//!
//! | field | value |
//! | --- | --- |
//! | `input_type` | `"request"` or `"response"` |
//! | `litellm_call_id` | the request id |
//! | `litellm_trace_id` | the request body's `litellm_trace_id` (top level or in `metadata`), else the request id |
//! | `structured_messages` | request side: the request's messages (chat `messages`, Responses `input` when an array, Anthropic `messages`) as the guardrail's texts leave them; else `null` |
//! | `images` | request side: image URLs in those messages (`data:` URLs for inline images); else `null` |
//! | `tools` | request side: the request's `tools`; else `null` |
//! | `texts` | the texts to check |
//! | `request_data` | who is calling: the `user_api_key_*` metadata of the [`Caller`](guardrail_tower_core::Caller) an authentication layer put in the request (`user_api_key_hash`, `_alias`, `_user_id`, `_user_email`, `_team_id`, `_org_id`, those that are known) and `user_api_key_end_user_id` (the request's `user`); `{}` when none is known. Never the request body. |
//! | `request_headers` | the client's headers, LiteLLM-sanitized (below); `null` when none |
//! | `litellm_version` | `null` (this is not LiteLLM) |
//! | `additional_provider_specific_params` | from the config; `{}` when not set |
//! | `tool_calls` | request side: tool calls in those messages (chat `tool_calls`, Responses `function_call` items, Anthropic `tool_use` blocks); else `null` |
//! | `model` | the model the client asked for |
//!
//! The messages and tool calls are those of the request *as the guardrail's texts leave them*:
//! when an earlier guardrail masked a text, this one sees the masked message, never the
//! original (and when the texts cannot be placed back into the request's messages, the messages
//! are not sent at all). On the response side only `texts` carries the response: the request's
//! structure is not sent, as in LiteLLM.
//!
//! `request_headers` follows LiteLLM: the values of `host`, `accept`, `accept-encoding`,
//! `connection`, `content-type`, `content-length`, `user-agent`, `x-stainless-*`, `x-litellm-*`
//! and of the names listed in [`extra_headers`](GenericGuardrailApiConfig::extra_headers) are
//! sent; any other header is sent as `"[present]"`. Credentials (`authorization`,
//! `proxy-authorization`, `x-api-key`, `api-key`, `x-litellm-api-key`, `cookie`) are not sent at
//! all, whatever `extra_headers` says.
//!
//! Headers: `content-type: application/json`, then the configured `headers`, then
//! `x-api-key: {api_key}` when an `api_key` is set.
//!
//! # The answer
//!
//! `{"action": "BLOCKED" | "NONE" | "GUARDRAIL_INTERVENED", "blocked_reason": ..., "texts": [...],
//! "structured_messages": [...], "tool_calls": [...]}` (a missing `action` counts as `NONE`, as
//! in LiteLLM; `null`, absent and `[]` all mean "no rewrite" for the three lists):
//!
//! - `BLOCKED`: a block, with `blocked_reason` as the message (default: "Content violates policy").
//! - `NONE` or `GUARDRAIL_INTERVENED`: every rewrite the answer carries is applied.
//!   - `texts` that differ from the input: one entry per input text, in the same order, or the
//!     check fails.
//!   - `structured_messages` or `tool_calls` that differ from what was sent: the request is
//!     rebuilt with them (the tool calls replace the sent ones in place, after the messages) and
//!     its texts are read again with the same text view the layers use; the result is the
//!     rewrite. Only text may change this way (message contents and parts, tool-call
//!     arguments, whatever the text view reads): a rewrite that adds or removes a message, a
//!     part or a tool call, changes a role, an image, a tool name or an id, or leaves the
//!     texts with a different count, cannot be applied as a text rewrite and fails the check.
//!     So does one on the response side, where no structure was sent.
//!   - `texts` and a structural rewrite together must agree.
//! - any other `action`: the check fails.
//!
//! A failed check (an answer that cannot be applied, a bad answer) is a guardrail error: the
//! guardrail's `error_fallback` decides whether the request fails or passes unchanged. The
//! service's JSON answer is recorded as the verdict's detail (`guardrail_response`).
//!
//! # Failures
//!
//! Connect/DNS errors, timeouts and HTTP 502/503/504 are *unreachable* (they go to the
//! guardrail's `unreachable_fallback`); other statuses and bad answers are *failed*. See
//! [`crate::http`]. The [`GuardrailError`] names the service's URL, the status and an excerpt of
//! what it answered: that detail goes to the gateway's log and the guardrail's entry in the
//! request's guardrail log (the spend-log row), never to the client, whose error only names the
//! guardrail.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Guardrail, GuardrailError, GuardrailInput, RequestMeta, Verdict,
};
use http::HeaderMap;
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::{
    ConfigError, HttpClient, JsonPost, excerpt, parse_base_url, parse_header, parse_timeout,
    shared_client,
};

/// The path LiteLLM appends to `api_base`.
pub const GENERIC_GUARDRAIL_API_PATH: &str = "/beta/litellm_basic_guardrail_api";

/// The default overall timeout, in seconds, when the config sets none.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The block message when a `BLOCKED` answer gives no `blocked_reason` (LiteLLM's default).
pub const DEFAULT_BLOCKED_REASON: &str = "Content violates policy";

/// Headers whose values LiteLLM forwards in `request_headers` (a trailing `*` is a prefix).
const HEADER_VALUE_ALLOWLIST: [&str; 9] = [
    "host",
    "accept-encoding",
    "connection",
    "accept",
    "content-type",
    "user-agent",
    "x-stainless-*",
    "x-litellm-*",
    "content-length",
];

/// What LiteLLM sends for a header that is present but not on the allowlist.
const HEADER_PRESENT_PLACEHOLDER: &str = "[present]";

/// Client credentials: never sent in `request_headers`, not even as `"[present]"`.
const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-litellm-api-key",
    "cookie",
];

/// The settings of a Generic Guardrail API guardrail: LiteLLM's `litellm_params` for
/// `guardrail: generic_guardrail_api`.
///
/// Deserialized from the whole `litellm_params` map, so keys it does not know (`guardrail`,
/// `mode`, `default_on`, ...) are ignored.
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct GenericGuardrailApiConfig {
    /// The service's base URL. [`GENERIC_GUARDRAIL_API_PATH`] is appended unless the URL
    /// already ends with it (a trailing `/` is ignored either way).
    pub api_base: String,
    /// Sent as `x-api-key` when set.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Extra headers for every call. String, number and boolean values are accepted.
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    /// The longest a call may take, in seconds, retries included. Default
    /// [`DEFAULT_TIMEOUT_SECS`] (10 s).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// How many times to retry a call that failed after the connection was made (HTTP
    /// 502/503/504, a connection broken mid-answer). Default 0: LiteLLM's generic guardrail
    /// does not retry. Connect failures are never retried.
    #[serde(default)]
    pub num_retries: u32,
    /// Sent as `additional_provider_specific_params`; must be a JSON object when set.
    #[serde(default)]
    pub additional_provider_specific_params: Option<Value>,
    /// Header names whose values are forwarded in `request_headers` besides LiteLLM's
    /// allowlist (LiteLLM's `extra_headers`).
    #[serde(default)]
    pub extra_headers: Vec<String>,
}

impl GenericGuardrailApiConfig {
    /// A config for the service at `api_base`, with everything else at its default.
    pub fn new(api_base: impl Into<String>) -> Self {
        GenericGuardrailApiConfig {
            api_base: api_base.into(),
            api_key: None,
            headers: BTreeMap::new(),
            timeout: None,
            num_retries: 0,
            additional_provider_specific_params: None,
            extra_headers: Vec::new(),
        }
    }
}

impl fmt::Debug for GenericGuardrailApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericGuardrailApiConfig")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("num_retries", &self.num_retries)
            .field(
                "additional_provider_specific_params",
                &self.additional_provider_specific_params,
            )
            .field("extra_headers", &self.extra_headers)
            .finish()
    }
}

/// A guardrail that asks a service implementing LiteLLM's Generic Guardrail API. See the
/// [module docs](self) for the wire contract.
#[derive(Clone)]
pub struct GenericGuardrailApi {
    client: HttpClient,
    post: JsonPost,
    additional_params: Value,
    extra_headers: Vec<String>,
}

impl GenericGuardrailApi {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: GenericGuardrailApiConfig) -> Result<Self, ConfigError> {
        GenericGuardrailApi::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: GenericGuardrailApiConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        let url = endpoint_url(&config.api_base);
        let uri = parse_base_url("api_base", &url)?;
        let timeout = match config.timeout {
            Some(secs) => parse_timeout("timeout", secs)?,
            None => Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS),
        };
        let mut post = JsonPost::new(uri)
            .timeout(timeout)
            .retries(config.num_retries);
        for (name, value) in &config.headers {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ConfigError::new(
                        format!("headers.{name}"),
                        "expected a string, number or boolean",
                    ));
                }
            };
            let (name, value) = parse_header("headers", name, &value)?;
            post = post.header(name, value);
        }
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::try_from(key.as_str()).map_err(|_| {
                ConfigError::new("api_key", "not a valid header value (control characters?)")
            })?;
            value.set_sensitive(true);
            post = post.header(http::header::HeaderName::from_static("x-api-key"), value);
        }
        let additional_params = match config.additional_provider_specific_params {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(map)) => Value::Object(map),
            Some(_) => {
                return Err(ConfigError::new(
                    "additional_provider_specific_params",
                    "expected a map",
                ));
            }
        };
        let extra_headers = config
            .extra_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Ok(GenericGuardrailApi {
            client,
            post,
            additional_params,
            extra_headers,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &http::Uri {
        self.post.uri()
    }

    /// The JSON request body for `input` (see the [module docs](self)).
    pub fn request_body(&self, input: &GuardrailInput) -> Value {
        let sent = Sent::new(input);
        let wire = WireRequest::new(input, &sent, &self.additional_params, &self.extra_headers);
        serde_json::to_value(&wire).unwrap_or(Value::Null)
    }
}

impl fmt::Debug for GenericGuardrailApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericGuardrailApi")
            .field("endpoint", self.post.uri())
            .field("timeout", &self.post.get_timeout())
            .field("num_retries", &self.post.get_retries())
            .finish_non_exhaustive()
    }
}

impl Guardrail for GenericGuardrailApi {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let sent = Sent::new(input);
        let wire = WireRequest::new(input, &sent, &self.additional_params, &self.extra_headers);
        let body = serde_json::to_vec(&wire).map_err(|e| {
            GuardrailError::failed(format!("could not encode the guardrail request: {e}"))
        })?;
        let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
        interpret(&answer, input, &sent)
            .map(|verdict| verdict.with_detail(answer.clone()))
            .map_err(|reason| {
                GuardrailError::failed(format!(
                    "{} answered {}: {reason}",
                    self.post.uri(),
                    excerpt(answer.to_string().as_bytes())
                ))
            })
    }

    fn provider(&self) -> &str {
        "generic_guardrail_api"
    }
}

/// `api_base` with [`GENERIC_GUARDRAIL_API_PATH`] appended unless already there.
fn endpoint_url(api_base: &str) -> String {
    let base = api_base.trim().trim_end_matches('/');
    if base.ends_with(GENERIC_GUARDRAIL_API_PATH) {
        base.to_owned()
    } else {
        format!("{base}{GENERIC_GUARDRAIL_API_PATH}")
    }
}

/// Turns the service's answer into a verdict (without its detail), or says why it cannot.
fn interpret(answer: &Value, input: &GuardrailInput, sent: &Sent<'_>) -> Result<Verdict, String> {
    let Value::Object(fields) = answer else {
        return Err(format!("{}, not a JSON object", kind_of(answer)));
    };
    let action = match fields.get("action") {
        None | Some(Value::Null) => "NONE",
        Some(Value::String(action)) => action.as_str(),
        Some(other) => {
            return Err(format!(
                "an `action` that is {}, not a string",
                kind_of(other)
            ));
        }
    };
    match action {
        "BLOCKED" => {
            let reason = match fields.get("blocked_reason") {
                Some(Value::String(reason)) if !reason.is_empty() => reason.clone(),
                _ => DEFAULT_BLOCKED_REASON.to_owned(),
            };
            Ok(Verdict::block(reason))
        }
        "NONE" | "GUARDRAIL_INTERVENED" => {
            let inputs = input.texts();
            let texts = match list(fields, "texts")? {
                None => None,
                Some(items) => {
                    let mut texts = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::String(s) => texts.push(s.clone()),
                            other => {
                                return Err(format!(
                                    "`texts` holding {}, not only strings",
                                    kind_of(other)
                                ));
                            }
                        }
                    }
                    if texts.len() != inputs.len() {
                        return Err(format!("{} texts for {} inputs", texts.len(), inputs.len()));
                    }
                    Some(texts)
                }
            };
            // A structural rewrite: what differs from what was sent.
            let messages = list(fields, "structured_messages")?
                .filter(|m| sent.messages().is_none_or(|sent| sent != *m));
            let tool_calls = list(fields, "tool_calls")?.filter(|calls| {
                calls.len() != sent.tool_calls.len()
                    || calls
                        .iter()
                        .zip(&sent.tool_calls)
                        .any(|(call, at)| sent.tool_call(*at) != Some(call))
            });
            let derived = if messages.is_some() || tool_calls.is_some() {
                Some(sent.apply(input, messages, tool_calls)?)
            } else {
                None
            };
            let texts = texts.filter(|t| t.as_slice() != inputs);
            let derived = derived.filter(|t| t.as_slice() != inputs);
            match (texts, derived) {
                (Some(texts), Some(derived)) if texts != derived => Err(
                    "`texts` that disagree with the texts of its `structured_messages` or \
                     `tool_calls`"
                        .to_owned(),
                ),
                (Some(texts), _) | (None, Some(texts)) => Ok(Verdict::rewrite(texts)),
                (None, None) => Ok(Verdict::allow()),
            }
        }
        other => Err(format!(
            "an unknown action '{other}' (expected BLOCKED, NONE or GUARDRAIL_INTERVENED)"
        )),
    }
}

/// A list field of the answer: `None` for absent, `null` or `[]`.
fn list<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<Option<&'a Vec<Value>>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.is_empty() => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(format!(
            "a `{name}` that is {}, not an array",
            kind_of(other)
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a tool call sent in `tool_calls` lives in the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolCallAt {
    /// `messages[message].tool_calls[index]` (chat).
    Chat { message: usize, index: usize },
    /// `messages[message]` itself (a Responses `function_call` item).
    Item { message: usize },
    /// `messages[message].content[index]` (an Anthropic `tool_use` block).
    Block { message: usize, index: usize },
}

/// The request structure sent with a request-side check, kept to apply the answer's
/// structural rewrites.
struct Sent<'a> {
    /// The request body with the texts being checked written into it (the request's own body,
    /// borrowed, while they are its texts); `None` on the response side, without a JSON object
    /// body, or when the texts do not fit the body's text view.
    body: Option<Cow<'a, Value>>,
    /// The body field holding the messages (`messages`, or `input` for Responses), when it is
    /// an array.
    key: Option<&'static str>,
    /// The tool calls in the messages, in the order sent.
    tool_calls: Vec<ToolCallAt>,
}

impl<'a> Sent<'a> {
    fn new(input: &'a GuardrailInput) -> Sent<'a> {
        let none = Sent {
            body: None,
            key: None,
            tool_calls: Vec::new(),
        };
        if input.side() != Side::Request {
            return none;
        }
        let meta = input.meta();
        let Some(original) = meta.body().filter(|b| b.is_object()) else {
            return none;
        };
        let call_type = meta.call_type();
        // The texts may no longer be the body's own (an earlier guardrail masked them): the
        // structure sent is the body with these texts, never the original.
        let body = if has_texts(call_type, original, input.texts()) {
            Cow::Borrowed(original)
        } else {
            let mut body = original.clone();
            if call_type
                .set_texts(Side::Request, &mut body, input.texts())
                .is_err()
            {
                return none;
            }
            Cow::Owned(body)
        };
        let key = messages_key(call_type).filter(|k| body.get(*k).is_some_and(Value::is_array));
        let tool_calls = key
            .and_then(|k| body.get(k))
            .map(tool_calls_in)
            .unwrap_or_default();
        Sent {
            body: Some(body),
            key,
            tool_calls,
        }
    }

    fn messages(&self) -> Option<&Vec<Value>> {
        self.body.as_ref()?.get(self.key?)?.as_array()
    }

    fn tool_call(&self, at: ToolCallAt) -> Option<&Value> {
        let messages = self.body.as_ref()?.get(self.key?)?;
        match at {
            ToolCallAt::Chat { message, index } => {
                messages.get(message)?.get("tool_calls")?.get(index)
            }
            ToolCallAt::Item { message } => messages.get(message),
            ToolCallAt::Block { message, index } => {
                messages.get(message)?.get("content")?.get(index)
            }
        }
    }

    /// The texts of the request rebuilt with the rewritten messages and tool calls, read with
    /// the layers' text view; an error when the rewrite changes more than text.
    fn apply(
        &self,
        input: &GuardrailInput,
        messages: Option<&Vec<Value>>,
        tool_calls: Option<&Vec<Value>>,
    ) -> Result<Vec<String>, String> {
        let (Some(body), Some(key)) = (&self.body, self.key) else {
            return Err(if input.side() == Side::Response {
                "a `structured_messages`/`tool_calls` rewrite, which cannot be applied to a \
                 response (none was sent)"
                    .to_owned()
            } else {
                "a `structured_messages`/`tool_calls` rewrite, but no messages were sent".to_owned()
            });
        };
        let call_type = input.meta().call_type();
        let mut rebuilt = Value::clone(body);
        if let Some(messages) = messages {
            let sent = self.messages().map_or(0, Vec::len);
            if messages.len() != sent {
                return Err(format!(
                    "{} `structured_messages` for {sent} sent: a rewrite may change text, not \
                     add or remove messages",
                    messages.len()
                ));
            }
            if let Some(other) = messages.iter().find(|m| !m.is_object()) {
                return Err(format!(
                    "`structured_messages` holding {}, not only objects",
                    kind_of(other)
                ));
            }
            rebuilt[key] = Value::Array(messages.clone());
        }
        if let Some(calls) = tool_calls {
            if calls.len() != self.tool_calls.len() {
                return Err(format!(
                    "{} `tool_calls` for {} sent: a rewrite may change text, not add or remove \
                     tool calls",
                    calls.len(),
                    self.tool_calls.len()
                ));
            }
            let messages = &mut rebuilt[key];
            for (call, at) in calls.iter().zip(&self.tool_calls) {
                let slot = match *at {
                    ToolCallAt::Chat { message, index } => messages
                        .get_mut(message)
                        .and_then(|m| m.get_mut("tool_calls"))
                        .and_then(|c| c.get_mut(index)),
                    ToolCallAt::Item { message } => messages.get_mut(message),
                    ToolCallAt::Block { message, index } => messages
                        .get_mut(message)
                        .and_then(|m| m.get_mut("content"))
                        .and_then(|c| c.get_mut(index)),
                };
                match slot {
                    Some(slot) => *slot = call.clone(),
                    None => {
                        return Err("`tool_calls` that no longer fit the rewritten \
                                    `structured_messages`"
                            .to_owned());
                    }
                }
            }
        }
        let texts = call_type.texts(Side::Request, &rebuilt);
        if texts.len() != input.texts().len() {
            return Err(format!(
                "a rewrite that leaves {} texts for {} checked: it may change text, not add or \
                 remove it",
                texts.len(),
                input.texts().len()
            ));
        }
        // Only text may differ: the sent body with the new texts must be the rebuilt one.
        let mut expected = Value::clone(body);
        if call_type
            .set_texts(Side::Request, &mut expected, &texts)
            .is_err()
            || expected != rebuilt
        {
            return Err(
                "a `structured_messages`/`tool_calls` rewrite that changes more than text (a \
                 role, an image, a tool name or id, ...), which cannot be applied"
                    .to_owned(),
            );
        }
        Ok(texts)
    }
}

/// The request body sent to the service, borrowing from the input. Field order follows
/// LiteLLM's `GenericGuardrailAPIRequest`; `None` is serialized as `null`, never omitted.
#[derive(Serialize)]
struct WireRequest<'a> {
    input_type: &'static str,
    litellm_call_id: &'a str,
    litellm_trace_id: &'a str,
    structured_messages: Option<&'a Value>,
    images: Option<Vec<String>>,
    tools: Option<&'a Value>,
    texts: &'a [String],
    request_data: Map<String, Value>,
    request_headers: Option<Map<String, Value>>,
    litellm_version: Option<&'a str>,
    additional_provider_specific_params: &'a Value,
    tool_calls: Option<Vec<&'a Value>>,
    model: Option<&'a str>,
}

impl<'a> WireRequest<'a> {
    fn new(
        input: &'a GuardrailInput,
        sent: &'a Sent<'a>,
        additional_params: &'a Value,
        extra_headers: &[String],
    ) -> Self {
        let meta = input.meta();
        let body = meta.body().filter(|b| b.is_object());
        let messages = sent.key.and_then(|k| sent.body.as_ref()?.get(k));
        let tool_calls: Vec<&Value> = sent
            .tool_calls
            .iter()
            .filter_map(|at| sent.tool_call(*at))
            .collect();
        WireRequest {
            input_type: input.side().as_str(),
            litellm_call_id: input.request_id(),
            litellm_trace_id: body
                .and_then(trace_id_in)
                .unwrap_or_else(|| input.request_id()),
            structured_messages: messages,
            images: messages.and_then(images_in),
            tools: sent
                .body
                .as_ref()
                .and_then(|b| b.get("tools"))
                .filter(|t| !t.is_null()),
            texts: input.texts(),
            request_data: caller_metadata(meta),
            request_headers: sanitized_headers(meta, extra_headers),
            litellm_version: None,
            additional_provider_specific_params: additional_params,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            model: input.model(),
        }
    }
}

/// Whether `texts` are exactly the texts of `body` (compared in place, nothing copied).
fn has_texts(call_type: CallType, body: &Value, texts: &[String]) -> bool {
    let (mut count, mut same) = (0, true);
    call_type.for_each_text(Side::Request, body, |text| {
        same &= texts.get(count).is_some_and(|t| t == text);
        count += 1;
    });
    same && count == texts.len()
}

/// LiteLLM's `request_data`: the caller's `user_api_key_*` metadata, and the end user the
/// request names.
fn caller_metadata(meta: &RequestMeta) -> Map<String, Value> {
    let mut out = match meta.caller().map(serde_json::to_value) {
        Some(Ok(Value::Object(map))) => map,
        _ => Map::new(),
    };
    out.retain(|_, v| !v.is_null());
    if let Some(user) = meta
        .body()
        .and_then(|b| b.get("user"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        out.insert("user_api_key_end_user_id".to_owned(), Value::from(user));
    }
    out
}

/// The body field that holds the messages of a call type.
fn messages_key(call_type: CallType) -> Option<&'static str> {
    match call_type {
        CallType::ChatCompletions | CallType::AnthropicMessages => Some("messages"),
        CallType::Responses => Some("input"),
        _ => None,
    }
}

/// The content parts of each message (or, for Responses input items, the item itself).
fn parts(messages: &Value) -> impl Iterator<Item = &Value> {
    messages
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|message| match message.get("content") {
            Some(Value::Array(parts)) => parts.iter().collect::<Vec<_>>(),
            _ => vec![message],
        })
}

/// Image URLs in the messages: chat `image_url` parts, Responses `input_image` parts, Anthropic
/// `image` blocks (a `url` source, or a `data:` URL for a base64 source).
fn images_in(messages: &Value) -> Option<Vec<String>> {
    let mut images = Vec::new();
    for part in parts(messages) {
        let url = match part.get("type").and_then(Value::as_str) {
            Some("image_url") => match part.get("image_url") {
                Some(Value::String(url)) => Some(url.clone()),
                Some(obj) => obj.get("url").and_then(Value::as_str).map(str::to_owned),
                None => None,
            },
            Some("input_image") => part
                .get("image_url")
                .and_then(Value::as_str)
                .map(str::to_owned),
            Some("image") => part.get("source").and_then(|source| {
                match source.get("type").and_then(Value::as_str) {
                    Some("url") => source.get("url").and_then(Value::as_str).map(str::to_owned),
                    Some("base64") => {
                        let media = source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("application/octet-stream");
                        let data = source.get("data").and_then(Value::as_str)?;
                        Some(format!("data:{media};base64,{data}"))
                    }
                    _ => None,
                }
            }),
            _ => None,
        };
        images.extend(url);
    }
    (!images.is_empty()).then_some(images)
}

/// Where the tool calls are in the messages: chat `tool_calls`, Responses `function_call`
/// items, Anthropic `tool_use` blocks, in message order.
fn tool_calls_in(messages: &Value) -> Vec<ToolCallAt> {
    let mut calls = Vec::new();
    for (m, message) in messages.as_array().into_iter().flatten().enumerate() {
        if let Some(Value::Array(tool_calls)) = message.get("tool_calls") {
            calls.extend((0..tool_calls.len()).map(|index| ToolCallAt::Chat { message: m, index }));
        }
        if message.get("type").and_then(Value::as_str) == Some("function_call") {
            calls.push(ToolCallAt::Item { message: m });
        }
        if let Some(Value::Array(content)) = message.get("content") {
            calls.extend(content.iter().enumerate().filter_map(|(index, part)| {
                (part.get("type").and_then(Value::as_str) == Some("tool_use"))
                    .then_some(ToolCallAt::Block { message: m, index })
            }));
        }
    }
    calls
}

/// A `litellm_trace_id` the client sent, at the top level or in `metadata`.
fn trace_id_in(body: &Value) -> Option<&str> {
    body.get("litellm_trace_id")
        .or_else(|| body.get("metadata")?.get("litellm_trace_id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

/// The client's headers as LiteLLM sends them: allowlisted values, `"[present]"` for the rest.
fn sanitized_headers(meta: &RequestMeta, extra: &[String]) -> Option<Map<String, Value>> {
    let headers: &HeaderMap = meta.headers();
    if headers
        .keys()
        .all(|name| CREDENTIAL_HEADERS.contains(&name.as_str()))
    {
        return None;
    }
    let mut out = Map::new();
    for name in headers.keys() {
        let name = name.as_str();
        if CREDENTIAL_HEADERS.contains(&name) {
            continue;
        }
        let value = if value_allowed(name, extra) {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            values.join(", ")
        } else {
            HEADER_PRESENT_PLACEHOLDER.to_owned()
        };
        out.insert(name.to_owned(), Value::String(value));
    }
    Some(out)
}

/// Whether a header's value may be forwarded (`name` is lowercase, as `http` keeps it).
fn value_allowed(name: &str, extra: &[String]) -> bool {
    HEADER_VALUE_ALLOWLIST
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        })
        || extra.iter().any(|e| e == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardrail_tower_core::Decision;
    use serde_json::json;

    #[test]
    fn the_path_is_appended_once() {
        for (base, want) in [
            ("http://h:1", "http://h:1/beta/litellm_basic_guardrail_api"),
            ("http://h:1/", "http://h:1/beta/litellm_basic_guardrail_api"),
            (
                "http://h:1/guard",
                "http://h:1/guard/beta/litellm_basic_guardrail_api",
            ),
            (
                "http://h:1/beta/litellm_basic_guardrail_api",
                "http://h:1/beta/litellm_basic_guardrail_api",
            ),
            (
                "http://h:1/beta/litellm_basic_guardrail_api/",
                "http://h:1/beta/litellm_basic_guardrail_api",
            ),
        ] {
            assert_eq!(endpoint_url(base), want, "{base}");
        }
    }

    #[test]
    fn config_errors_are_clear() {
        let err = GenericGuardrailApi::new(GenericGuardrailApiConfig::new("guard.example.com"))
            .unwrap_err();
        assert_eq!(err.field(), "api_base");
        let mut config = GenericGuardrailApiConfig::new("http://h");
        config.headers.insert("bad header".into(), json!("x"));
        assert_eq!(
            GenericGuardrailApi::new(config).unwrap_err().field(),
            "headers"
        );
        let mut config = GenericGuardrailApiConfig::new("http://h");
        config.headers.insert("x-ok".into(), json!("a\r\nb"));
        assert_eq!(
            GenericGuardrailApi::new(config).unwrap_err().field(),
            "headers.x-ok"
        );
        let mut config = GenericGuardrailApiConfig::new("http://h");
        config.timeout = Some(0.0);
        assert_eq!(
            GenericGuardrailApi::new(config).unwrap_err().field(),
            "timeout"
        );
        let mut config = GenericGuardrailApiConfig::new("http://h");
        config.additional_provider_specific_params = Some(json!([1]));
        assert_eq!(
            GenericGuardrailApi::new(config).unwrap_err().field(),
            "additional_provider_specific_params"
        );
    }

    #[test]
    fn config_ignores_other_litellm_params_and_hides_the_key() {
        let config: GenericGuardrailApiConfig = serde_json::from_value(json!({
            "guardrail": "generic_guardrail_api",
            "mode": ["pre_call", "post_call"],
            "default_on": true,
            "api_base": "http://h",
            "api_key": "sk-secret",
        }))
        .unwrap();
        assert_eq!(config.timeout, None);
        assert_eq!(config.num_retries, 0);
        assert!(!format!("{config:?}").contains("sk-secret"));
    }

    fn chat_input(texts: &[&str]) -> GuardrailInput {
        let body = json!({"model": "m", "messages": texts
            .iter()
            .map(|t| json!({"role": "user", "content": t}))
            .collect::<Vec<_>>()});
        let meta = RequestMeta::new(
            guardrail_tower_core::RequestId::from("r"),
            CallType::ChatCompletions,
        )
        .with_body(Some(std::sync::Arc::new(body)));
        GuardrailInput::new(
            texts.iter().map(|t| t.to_string()).collect(),
            Side::Request,
            guardrail_tower_core::GuardrailMode::PreCall,
            std::sync::Arc::new(meta),
        )
    }

    fn interpret_for(answer: Value, texts: &[&str]) -> Result<Verdict, String> {
        let input = chat_input(texts);
        let sent = Sent::new(&input);
        interpret(&answer, &input, &sent)
    }

    #[test]
    fn answers_are_interpreted() {
        let inputs = ["a", "b"];
        let v = interpret_for(json!({"action": "BLOCKED"}), &inputs).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Block {
                message: DEFAULT_BLOCKED_REASON.into()
            }
        );
        let v = interpret_for(json!({}), &inputs).unwrap();
        assert_eq!(v.decision(), &Decision::Allow);
        let v = interpret_for(json!({"action": "NONE", "texts": ["a", "b"]}), &inputs).unwrap();
        assert_eq!(v.decision(), &Decision::Allow);
        let v = interpret_for(json!({"action": "NONE", "texts": ["a", "c"]}), &inputs).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Rewrite {
                texts: vec!["a".into(), "c".into()]
            }
        );
        let v = interpret_for(
            json!({"action": "GUARDRAIL_INTERVENED", "texts": [], "structured_messages": null, "tool_calls": []}),
            &inputs,
        )
        .unwrap();
        assert_eq!(v.decision(), &Decision::Allow);
        for bad in [
            json!([]),
            json!({"action": 1}),
            json!({"action": "MAYBE"}),
            json!({"action": "NONE", "texts": "x"}),
            json!({"action": "NONE", "texts": [1, 2]}),
            json!({"action": "NONE", "structured_messages": "x"}),
            json!({"action": "NONE", "tool_calls": {"id": 1}}),
        ] {
            assert!(interpret_for(bad.clone(), &inputs).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_and_tool_calls_are_found_in_every_shape() {
        let messages = json!([
            {"role": "user", "content": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "https://img/1.png"}},
                {"type": "input_image", "image_url": "https://img/2.png"},
                {"type": "image", "source": {"type": "url", "url": "https://img/3.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"}
        ]);
        assert_eq!(
            images_in(&messages).unwrap(),
            [
                "https://img/1.png",
                "https://img/2.png",
                "https://img/3.png",
                "data:image/png;base64,AAA"
            ]
        );
        assert_eq!(
            tool_calls_in(&messages),
            [
                ToolCallAt::Block {
                    message: 0,
                    index: 5
                },
                ToolCallAt::Chat {
                    message: 1,
                    index: 0
                },
                ToolCallAt::Item { message: 2 },
            ]
        );
        assert_eq!(images_in(&json!([{"role": "user", "content": "x"}])), None);
    }

    #[test]
    fn header_allowlist_matches_litellm() {
        assert!(value_allowed("user-agent", &[]));
        assert!(value_allowed("x-stainless-lang", &[]));
        assert!(value_allowed("x-litellm-tags", &[]));
        assert!(!value_allowed("x-team", &[]));
        assert!(value_allowed("x-team", &["x-team".into()]));
        // x-litellm-api-key is on the allowlist's prefix, but it is a credential: never sent.
        assert!(CREDENTIAL_HEADERS.contains(&"x-litellm-api-key"));
    }
}
