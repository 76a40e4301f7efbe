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
//! | `structured_messages` | the request's messages: chat `messages`, Responses `input` (when an array), Anthropic `messages`; else `null` |
//! | `images` | request side: image URLs in those messages (`data:` URLs for inline images); else `null` |
//! | `tools` | request side: the request's `tools`; else `null` |
//! | `texts` | the texts to check |
//! | `request_data` | the request body (a JSON object); `{}` when there is none |
//! | `request_headers` | the client's headers, LiteLLM-sanitized (below); `null` when none |
//! | `litellm_version` | `null` (this is not LiteLLM) |
//! | `additional_provider_specific_params` | from the config; `{}` when not set |
//! | `tool_calls` | request side: tool calls in the messages; else `null` |
//! | `model` | the model the client asked for |
//!
//! `request_headers` follows LiteLLM: the values of `host`, `accept`, `accept-encoding`,
//! `connection`, `content-type`, `content-length`, `user-agent`, `x-stainless-*`, `x-litellm-*`
//! and of the names listed in [`extra_headers`](GenericGuardrailApiConfig::extra_headers) are
//! sent; any other header is sent as `"[present]"`. Credentials never reach this guardrail.
//!
//! Headers: `content-type: application/json`, then the configured `headers`, then
//! `x-api-key: {api_key}` when an `api_key` is set.
//!
//! # The answer
//!
//! `{"action": "BLOCKED" | "NONE" | "GUARDRAIL_INTERVENED", "blocked_reason": ..., "texts": [...]}`
//! (a missing `action` counts as `NONE`, as in LiteLLM):
//!
//! - `BLOCKED`: a block, with `blocked_reason` as the message (default: "Content violates policy").
//! - `NONE` or `GUARDRAIL_INTERVENED` with a non-empty `texts` that differs from the input: a
//!   rewrite. `texts` must then have one entry per input text, or the check fails.
//! - otherwise: allow.
//! - any other `action`: the check fails.
//!
//! The service's JSON answer is recorded as the verdict's detail (`guardrail_response`).
//!
//! # Failures
//!
//! Connect/DNS errors, timeouts and HTTP 502/503/504 are *unreachable* (they go to the
//! guardrail's `unreachable_fallback`); other statuses and bad answers are *failed*. See
//! [`crate::http`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::{
    CallType, Guardrail, GuardrailError, GuardrailInput, RequestMeta, Verdict,
};
use http::HeaderMap;
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::{
    ConfigError, HttpClient, JsonPost, parse_base_url, parse_header, parse_timeout, shared_client,
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
        let wire = WireRequest::new(input, &self.additional_params, &self.extra_headers);
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
        let wire = WireRequest::new(input, &self.additional_params, &self.extra_headers);
        let body = serde_json::to_vec(&wire).map_err(|e| {
            GuardrailError::failed(format!("could not encode the guardrail request: {e}"))
        })?;
        let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
        interpret(answer, input.texts())
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

/// Turns the service's answer into a verdict.
fn interpret(answer: Value, inputs: &[String]) -> Result<Verdict, GuardrailError> {
    let Value::Object(fields) = &answer else {
        return Err(GuardrailError::failed(format!(
            "the guardrail answered {}, not a JSON object",
            kind_of(&answer)
        )));
    };
    let action = match fields.get("action") {
        None | Some(Value::Null) => "NONE",
        Some(Value::String(action)) => action.as_str(),
        Some(other) => {
            return Err(GuardrailError::failed(format!(
                "the guardrail's `action` is {}, not a string",
                kind_of(other)
            )));
        }
    };
    match action {
        "BLOCKED" => {
            let reason = match fields.get("blocked_reason") {
                Some(Value::String(reason)) if !reason.is_empty() => reason.clone(),
                _ => DEFAULT_BLOCKED_REASON.to_owned(),
            };
            Ok(Verdict::block(reason).with_detail(answer))
        }
        "NONE" | "GUARDRAIL_INTERVENED" => {
            let texts = match fields.get("texts") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) if items.is_empty() => None,
                Some(Value::Array(items)) => {
                    let mut texts = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::String(s) => texts.push(s.clone()),
                            other => {
                                return Err(GuardrailError::failed(format!(
                                    "the guardrail's `texts` holds {}, not only strings",
                                    kind_of(other)
                                )));
                            }
                        }
                    }
                    Some(texts)
                }
                Some(other) => {
                    return Err(GuardrailError::failed(format!(
                        "the guardrail's `texts` is {}, not an array",
                        kind_of(other)
                    )));
                }
            };
            match texts {
                Some(texts) if texts.len() != inputs.len() => Err(GuardrailError::failed(format!(
                    "the guardrail returned {} texts for {} inputs",
                    texts.len(),
                    inputs.len()
                ))),
                Some(texts) if texts != inputs => Ok(Verdict::rewrite(texts).with_detail(answer)),
                _ => Ok(Verdict::allow().with_detail(answer)),
            }
        }
        other => Err(GuardrailError::failed(format!(
            "the guardrail answered an unknown action '{other}' \
             (expected BLOCKED, NONE or GUARDRAIL_INTERVENED)"
        ))),
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

/// The request body, borrowing from the input. Field order follows LiteLLM's
/// `GenericGuardrailAPIRequest`; `None` is serialized as `null`, never omitted.
#[derive(Serialize)]
struct WireRequest<'a> {
    input_type: &'static str,
    litellm_call_id: &'a str,
    litellm_trace_id: &'a str,
    structured_messages: Option<&'a Value>,
    images: Option<Vec<String>>,
    tools: Option<&'a Value>,
    texts: &'a [String],
    request_data: RequestData<'a>,
    request_headers: Option<Map<String, Value>>,
    litellm_version: Option<&'a str>,
    additional_provider_specific_params: &'a Value,
    tool_calls: Option<Vec<&'a Value>>,
    model: Option<&'a str>,
}

/// The request body, or `{}`.
enum RequestData<'a> {
    Body(&'a Value),
    Empty,
}

impl Serialize for RequestData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RequestData::Body(body) => body.serialize(serializer),
            RequestData::Empty => Map::new().serialize(serializer),
        }
    }
}

impl<'a> WireRequest<'a> {
    fn new(
        input: &'a GuardrailInput,
        additional_params: &'a Value,
        extra_headers: &[String],
    ) -> Self {
        let meta = input.meta();
        let body = meta.body().filter(|b| b.is_object());
        let messages = body.and_then(|b| structured_messages(meta.call_type(), b));
        let request_side = input.side() == guardrail_tower_core::text::Side::Request;
        let (images, tools, tool_calls) = match (request_side, body) {
            (true, Some(body)) => (
                messages.and_then(images_in),
                body.get("tools").filter(|t| !t.is_null()),
                messages.and_then(tool_calls_in),
            ),
            _ => (None, None, None),
        };
        WireRequest {
            input_type: input.side().as_str(),
            litellm_call_id: input.request_id(),
            litellm_trace_id: body
                .and_then(trace_id_in)
                .unwrap_or_else(|| input.request_id()),
            structured_messages: messages,
            images,
            tools,
            texts: input.texts(),
            request_data: body.map_or(RequestData::Empty, RequestData::Body),
            request_headers: sanitized_headers(meta, extra_headers),
            litellm_version: None,
            additional_provider_specific_params: additional_params,
            tool_calls,
            model: input.model(),
        }
    }
}

/// The messages of the request, as an array value.
fn structured_messages(call_type: CallType, body: &Value) -> Option<&Value> {
    let messages = match call_type {
        CallType::ChatCompletions | CallType::AnthropicMessages => body.get("messages"),
        CallType::Responses => body.get("input"),
        _ => None,
    }?;
    messages.is_array().then_some(messages)
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

/// Tool calls in the messages: chat `tool_calls`, Responses `function_call` items, Anthropic
/// `tool_use` blocks.
fn tool_calls_in(messages: &Value) -> Option<Vec<&Value>> {
    let mut calls = Vec::new();
    for message in messages.as_array().into_iter().flatten() {
        if let Some(Value::Array(tool_calls)) = message.get("tool_calls") {
            calls.extend(tool_calls);
        }
        if message.get("type").and_then(Value::as_str) == Some("function_call") {
            calls.push(message);
        }
        if let Some(Value::Array(content)) = message.get("content") {
            calls.extend(
                content
                    .iter()
                    .filter(|part| part.get("type").and_then(Value::as_str) == Some("tool_use")),
            );
        }
    }
    (!calls.is_empty()).then_some(calls)
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
    if headers.is_empty() {
        return None;
    }
    let mut out = Map::new();
    for name in headers.keys() {
        let name = name.as_str();
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

    #[test]
    fn answers_are_interpreted() {
        let inputs = ["a".to_owned(), "b".to_owned()];
        let v = interpret(json!({"action": "BLOCKED"}), &inputs).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Block {
                message: DEFAULT_BLOCKED_REASON.into()
            }
        );
        let v = interpret(json!({}), &inputs).unwrap();
        assert_eq!(v.decision(), &Decision::Allow);
        let v = interpret(json!({"action": "NONE", "texts": ["a", "b"]}), &inputs).unwrap();
        assert_eq!(v.decision(), &Decision::Allow);
        let v = interpret(json!({"action": "NONE", "texts": ["a", "c"]}), &inputs).unwrap();
        assert_eq!(
            v.decision(),
            &Decision::Rewrite {
                texts: vec!["a".into(), "c".into()]
            }
        );
        let v = interpret(
            json!({"action": "GUARDRAIL_INTERVENED", "texts": []}),
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
        ] {
            assert!(interpret(bad.clone(), &inputs).is_err(), "{bad}");
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
        let calls = tool_calls_in(&messages).unwrap();
        let ids: Vec<_> = calls
            .iter()
            .map(|c| c.get("id").or(c.get("call_id")).unwrap().as_str().unwrap())
            .collect();
        assert_eq!(ids, ["t1", "c1", "c2"]);
        assert_eq!(images_in(&json!([{"role": "user", "content": "x"}])), None);
    }

    #[test]
    fn header_allowlist_matches_litellm() {
        assert!(value_allowed("user-agent", &[]));
        assert!(value_allowed("x-stainless-lang", &[]));
        assert!(value_allowed("x-litellm-tags", &[]));
        assert!(!value_allowed("x-team", &[]));
        assert!(value_allowed("x-team", &["x-team".into()]));
    }
}
