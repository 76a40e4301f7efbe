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
use guardrail_tower_core::json::JsonView;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Guardrail, GuardrailError, GuardrailInput, RequestMeta, Verdict,
};
use http::HeaderMap;
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
        let mut written = None;
        let sent = Sent::new(input, &mut written);
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
        let mut written = None;
        let sent = Sent::new(input, &mut written);
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

    /// The service is sent the request's messages as they are (`structured_messages`), their
    /// images, audio and files with them, and the images' URLs (`images`).
    fn reads_media(&self) -> bool {
        true
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
                .filter(|m| sent.messages().is_none_or(|sent| sent != **m));
            let tool_calls = list(fields, "tool_calls")?.filter(|calls| {
                calls.len() != sent.tool_calls.len()
                    || calls.iter().zip(&sent.tool_calls).any(|(call, (_, text))| {
                        serde_json::from_str::<Value>(text.get()).ok().as_ref() != Some(call)
                    })
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

/// What a check sends of the request's own body (its messages, tools, tool calls, images,
/// trace id and end user), borrowed from a JSON text of the body: the client's bytes as they
/// came when they say exactly what the parsed body says, else the parsed body written out (see
/// [`Sent::of`]). Kept to compare with and apply the answer's structural rewrites.
struct Sent<'a> {
    /// The body field holding the messages (`messages`, or `input` for Responses), when it is
    /// an array and this is a request-side check.
    key: Option<&'static str>,
    /// The messages as sent (JSON text).
    messages: Option<&'a RawValue>,
    /// The request's `tools`, unless absent or `null` (request side).
    tools: Option<&'a RawValue>,
    /// Image URLs in the messages.
    images: Option<Vec<String>>,
    /// The tool calls in the messages, in the order sent, with their JSON text.
    tool_calls: Vec<(ToolCallAt, Box<RawValue>)>,
    /// The client's `litellm_trace_id` (at the top level, or in `metadata`), if not empty.
    trace_id: Option<String>,
    /// The body's `user`, if a non-empty string.
    user: Option<String>,
}

/// The members of a request body a check reads, borrowed from its JSON text. A member named
/// twice fails the parse: the check then reads the parsed body, where the last one counts.
#[derive(Deserialize)]
struct BodyMembers<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    input: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    tools: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    litellm_trace_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    user: Option<&'a RawValue>,
}

/// A member that is present, `null` included (`Option`'s own deserializer reads `null` as
/// absent, where `Value::get` finds it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A JSON text the parsed body was written out to, for a check whose body cannot be sent
/// from the client's bytes; `structure` is false when the checked texts do not fit the body
/// (its messages and tools are then not sent).
struct WrittenBody {
    bytes: Vec<u8>,
    structure: bool,
}

impl<'a> Sent<'a> {
    /// Nothing from the body.
    fn none() -> Sent<'a> {
        Sent {
            key: None,
            messages: None,
            tools: None,
            images: None,
            tool_calls: Vec::new(),
            trace_id: None,
            user: None,
        }
    }

    /// The check's view of the body: from the client's bytes when the texts checked are
    /// still the body's own and no member the check reads, nor any key inside the messages
    /// and tools, is repeated (so the bytes say what the parsed body says); otherwise `None`,
    /// and [`written`](Sent::written) says what to read instead.
    fn of(input: &'a GuardrailInput) -> Option<Sent<'a>> {
        let meta = input.meta();
        let bytes = meta.body_bytes()?;
        if input.side() == Side::Request && !meta.body_has_texts(input.texts()) {
            return None;
        }
        Sent::read(input, bytes, true, true)
    }

    /// The parsed body written out, with the checked texts in it for a request-side check
    /// (an earlier guardrail may have masked them: what is sent is the body with these texts,
    /// never the original); `None` without a JSON object body.
    fn written(input: &GuardrailInput) -> Option<WrittenBody> {
        let meta = input.meta();
        let original = meta.body().filter(|b| b.is_object())?;
        let write = |body: &Value, structure| {
            Some(WrittenBody {
                bytes: serde_json::to_vec(body).ok()?,
                structure,
            })
        };
        match sent_body(input) {
            Some(body) => write(&body, true),
            None => write(original, false),
        }
    }

    /// The check's view of the body: [`of`](Sent::of) the client's bytes, or else of the
    /// parsed body [`written`](Sent::written) out into `written`.
    fn new(input: &'a GuardrailInput, written: &'a mut Option<WrittenBody>) -> Sent<'a> {
        if let Some(sent) = Sent::of(input) {
            return sent;
        }
        *written = Sent::written(input);
        written
            .as_ref()
            .and_then(|w| Sent::read(input, &w.bytes, w.structure, false))
            .unwrap_or_else(Sent::none)
    }

    /// Reads `bytes`, a JSON text of the body; `None` when it repeats a member the check
    /// reads, or (with `check_repeats`) a key inside the messages or tools.
    fn read(
        input: &GuardrailInput,
        bytes: &'a [u8],
        structure: bool,
        check_repeats: bool,
    ) -> Option<Sent<'a>> {
        let members: BodyMembers<'a> = guardrail_tower_core::json::from_slice(bytes).ok()?;
        let view = |raw: &'a RawValue| JsonView::parse(raw.get().as_bytes()).ok();
        let string = |view: Option<&JsonView<'_>>| {
            view.and_then(JsonView::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let mut sent = Sent::none();
        sent.trace_id = match members.litellm_trace_id {
            Some(id) => string(view(id).as_ref()),
            None => members
                .metadata
                .and_then(view)
                .and_then(|metadata| string(metadata.get("litellm_trace_id"))),
        };
        sent.user = string(members.user.and_then(view).as_ref());
        if input.side() != Side::Request || !structure {
            return Some(sent);
        }
        if let Some(tools) = members.tools.filter(|t| t.get() != "null") {
            if check_repeats && view(tools).is_none_or(|t| repeats_a_key(&t)) {
                return None;
            }
            sent.tools = Some(tools);
        }
        let key = messages_key(input.meta().call_type());
        let raw = key.and_then(|key| match key {
            "input" => members.input,
            _ => members.messages,
        });
        let Some((key, raw)) = key.zip(raw).filter(|(_, m)| m.get().starts_with('[')) else {
            return Some(sent);
        };
        let messages = view(raw)?;
        if check_repeats && repeats_a_key(&messages) {
            return None;
        }
        sent.key = Some(key);
        sent.messages = Some(raw);
        sent.images = images_in(&messages);
        sent.tool_calls = tool_calls_in(&messages)
            .into_iter()
            .filter_map(|at| {
                let call = tool_call(&messages, at)?;
                Some((at, RawValue::from_string(call.to_json_string()).ok()?))
            })
            .collect();
        Some(sent)
    }

    /// The messages sent, parsed (to compare with an answer's `structured_messages`).
    fn messages(&self) -> Option<Vec<Value>> {
        serde_json::from_str(self.messages?.get()).ok()
    }

    /// The texts of the request rebuilt with the rewritten messages and tool calls, read with
    /// the layers' text view; an error when the rewrite changes more than text.
    fn apply(
        &self,
        input: &GuardrailInput,
        messages: Option<&Vec<Value>>,
        tool_calls: Option<&Vec<Value>>,
    ) -> Result<Vec<String>, String> {
        // The body as sent, with the checked texts in it (built only now: rewrites are rare).
        let Some((key, body)) = self.key.zip(sent_body(input)) else {
            return Err(if input.side() == Side::Response {
                "a `structured_messages`/`tool_calls` rewrite, which cannot be applied to a \
                 response (none was sent)"
                    .to_owned()
            } else {
                "a `structured_messages`/`tool_calls` rewrite, but no messages were sent".to_owned()
            });
        };
        let call_type = input.meta().call_type();
        let mut rebuilt = Value::clone(&body);
        if let Some(messages) = messages {
            let sent = body.get(key).and_then(Value::as_array).map_or(0, Vec::len);
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
            for (call, (at, _)) in calls.iter().zip(&self.tool_calls) {
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
        let mut expected = Value::clone(&body);
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

/// The request body with the checked texts written in, for a request-side check (the body
/// itself, borrowed, while they are its own texts); `None` on the response side, without a
/// JSON object body, or when the texts do not fit the body's text view.
fn sent_body(input: &GuardrailInput) -> Option<Cow<'_, Value>> {
    if input.side() != Side::Request {
        return None;
    }
    let meta = input.meta();
    let original = meta.body().filter(|b| b.is_object())?;
    let call_type = meta.call_type();
    if has_texts(call_type, original, input.texts()) {
        return Some(Cow::Borrowed(original));
    }
    let mut body = original.clone();
    call_type
        .set_texts(Side::Request, &mut body, input.texts())
        .ok()?;
    Some(Cow::Owned(body))
}

/// Whether an object anywhere in `view` names a key twice.
fn repeats_a_key(view: &JsonView<'_>) -> bool {
    match view {
        JsonView::Array(items) => items.iter().any(repeats_a_key),
        JsonView::Object(entries) => {
            let repeated = if entries.len() <= 16 {
                entries
                    .iter()
                    .enumerate()
                    .any(|(i, (key, _))| entries[..i].iter().any(|(k, _)| k == key))
            } else {
                let mut keys: Vec<&str> = entries.iter().map(|(k, _)| &**k).collect();
                keys.sort_unstable();
                keys.windows(2).any(|w| w[0] == w[1])
            };
            repeated || entries.iter().any(|(_, value)| repeats_a_key(value))
        }
        _ => false,
    }
}

/// The request body sent to the service, borrowing from the input. Field order follows
/// LiteLLM's `GenericGuardrailAPIRequest`; `None` is serialized as `null`, never omitted.
#[derive(Serialize)]
struct WireRequest<'a> {
    input_type: &'static str,
    litellm_call_id: &'a str,
    litellm_trace_id: &'a str,
    structured_messages: Option<&'a RawValue>,
    images: Option<&'a [String]>,
    tools: Option<&'a RawValue>,
    texts: &'a [String],
    request_data: Map<String, Value>,
    request_headers: Option<Map<String, Value>>,
    litellm_version: Option<&'a str>,
    additional_provider_specific_params: &'a Value,
    tool_calls: Option<Vec<&'a RawValue>>,
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
        WireRequest {
            input_type: input.side().as_str(),
            litellm_call_id: input.request_id(),
            litellm_trace_id: sent
                .trace_id
                .as_deref()
                .unwrap_or_else(|| input.request_id()),
            structured_messages: sent.messages,
            images: sent.images.as_deref(),
            tools: sent.tools,
            texts: input.texts(),
            request_data: caller_metadata(meta, sent.user.as_deref()),
            request_headers: sanitized_headers(meta, extra_headers),
            litellm_version: None,
            additional_provider_specific_params: additional_params,
            tool_calls: (!sent.tool_calls.is_empty())
                .then(|| sent.tool_calls.iter().map(|(_, call)| &**call).collect()),
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
fn caller_metadata(meta: &RequestMeta, user: Option<&str>) -> Map<String, Value> {
    let mut out = match meta.caller().map(serde_json::to_value) {
        Some(Ok(Value::Object(map))) => map,
        _ => Map::new(),
    };
    out.retain(|_, v| !v.is_null());
    if let Some(user) = user {
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

/// The items of an array (none for anything else).
fn items<'v, 'a>(view: &'v JsonView<'a>) -> &'v [JsonView<'a>] {
    match view {
        JsonView::Array(items) => items,
        _ => &[],
    }
}

/// The content parts of each message (or, for Responses input items, the item itself).
fn parts<'v, 'a>(messages: &'v JsonView<'a>) -> impl Iterator<Item = &'v JsonView<'a>> {
    items(messages)
        .iter()
        .flat_map(|message| match message.get("content") {
            Some(JsonView::Array(parts)) => parts.iter().collect::<Vec<_>>(),
            _ => vec![message],
        })
}

/// Image URLs in the messages: chat `image_url` parts, Responses `input_image` parts, Anthropic
/// `image` blocks (a `url` source, or a `data:` URL for a base64 source).
fn images_in(messages: &JsonView<'_>) -> Option<Vec<String>> {
    let text = |view: Option<&JsonView<'_>>| view.and_then(JsonView::as_str).map(str::to_owned);
    let mut images = Vec::new();
    for part in parts(messages) {
        let url = match part.get("type").and_then(JsonView::as_str) {
            Some("image_url") => match part.get("image_url") {
                Some(JsonView::String(url)) => Some(url.to_string()),
                Some(obj) => text(obj.get("url")),
                None => None,
            },
            Some("input_image") => text(part.get("image_url")),
            Some("image") => part.get("source").and_then(|source| {
                match source.get("type").and_then(JsonView::as_str) {
                    Some("url") => text(source.get("url")),
                    Some("base64") => {
                        let media = source
                            .get("media_type")
                            .and_then(JsonView::as_str)
                            .unwrap_or("application/octet-stream");
                        let data = source.get("data").and_then(JsonView::as_str)?;
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
fn tool_calls_in(messages: &JsonView<'_>) -> Vec<ToolCallAt> {
    let mut calls = Vec::new();
    for (m, message) in items(messages).iter().enumerate() {
        if let Some(JsonView::Array(tool_calls)) = message.get("tool_calls") {
            calls.extend((0..tool_calls.len()).map(|index| ToolCallAt::Chat { message: m, index }));
        }
        if message.get("type").and_then(JsonView::as_str) == Some("function_call") {
            calls.push(ToolCallAt::Item { message: m });
        }
        if let Some(JsonView::Array(content)) = message.get("content") {
            calls.extend(content.iter().enumerate().filter_map(|(index, part)| {
                (part.get("type").and_then(JsonView::as_str) == Some("tool_use"))
                    .then_some(ToolCallAt::Block { message: m, index })
            }));
        }
    }
    calls
}

/// The tool call at `at` in the messages.
fn tool_call<'v, 'a>(messages: &'v JsonView<'a>, at: ToolCallAt) -> Option<&'v JsonView<'a>> {
    let message = |m: usize| items(messages).get(m);
    match at {
        ToolCallAt::Chat { message: m, index } => items(message(m)?.get("tool_calls")?).get(index),
        ToolCallAt::Item { message: m } => message(m),
        ToolCallAt::Block { message: m, index } => items(message(m)?.get("content")?).get(index),
    }
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
    use guardrail_tower_core::text::Side;
    use guardrail_tower_core::{ConfiguredGuardrail, Decision, GuardrailMode};
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

    /// The service is sent the messages with their images, audio and files, so a request with
    /// media may pass it (the pre-call layer refuses one only for guardrails that read none).
    #[test]
    fn the_service_reads_media() {
        let guardrail =
            GenericGuardrailApi::new(GenericGuardrailApiConfig::new("http://h")).unwrap();
        assert!(Guardrail::reads_media(&guardrail));
        let configured = ConfiguredGuardrail::new("g", GuardrailMode::PreCall, guardrail);
        assert!(configured.passes_media(Side::Request));
        // On the response side it is sent the texts only, as in LiteLLM.
        assert!(!configured.passes_media(Side::Response));
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
        let mut written = None;
        let sent = Sent::new(&input, &mut written);
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
        let text = messages.to_string();
        let messages = JsonView::parse(text.as_bytes()).unwrap();
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
        let text = json!([{"role": "user", "content": "x"}]).to_string();
        assert_eq!(images_in(&JsonView::parse(text.as_bytes()).unwrap()), None);
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
