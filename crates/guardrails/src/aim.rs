//! Aim Security: a guardrail that calls Aim's `/fw/v1/analyze`, configured with the keys of
//! LiteLLM's `guardrail: aim`.
//!
//! ```
//! use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode};
//! use guardrail_tower_guardrails::aim::{AimGuardrail, AimGuardrailConfig};
//! use guardrail_tower_guardrails::http::HttpClient;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: AimGuardrailConfig = serde_json::from_value(serde_json::json!({
//!     "guardrail": "aim",
//!     "mode": ["pre_call", "post_call"],
//!     "api_key": "aim-key",
//! }))?;
//! let aim = AimGuardrail::with_client_and_env(config, HttpClient::new(), &|_| None)?;
//! assert_eq!(aim.endpoint().to_string(), "https://api.aim.security/fw/v1/analyze");
//! let guardrail = ConfiguredGuardrail::new(
//!     "aim",
//!     [GuardrailMode::PreCall, GuardrailMode::PostCall],
//!     aim,
//! );
//! assert_eq!(guardrail.provider(), "aim");
//! # Ok(())
//! # }
//! ```
//!
//! # Settings
//!
//! | key | meaning |
//! | --- | --- |
//! | `api_key` | else `AIM_API_KEY` (required) |
//! | `api_base` | else `AIM_API_BASE`, else `https://api.aim.security` |
//! | `timeout` | seconds per call (default 10) |
//!
//! # The call
//!
//! `POST {api_base}/fw/v1/analyze` with the headers
//!
//! | header | value |
//! | --- | --- |
//! | `authorization` | `Bearer {api_key}` |
//! | `x-aim-litellm-hook` | `pre_call`, `moderation` (during_call) or `output` (post_call) |
//! | `x-aim-call-id` | the request id (the same for the input and the output checks of one request) |
//! | `x-aim-user-email` | the caller's email from the authentication layer ([`Caller`]), else the client's `x-aim-user-email` header; absent when neither is known |
//! | `x-aim-gateway-key-alias` | the caller's key alias, when known |
//!
//! and the body `{"messages": [{"role": ..., "content": ...}, ...]}`: on the request side one
//! message per text checked, with the role of the message it comes from (`system` for a system
//! prompt or instructions; `user` when the request's shape does not say); on the response side
//! the request's messages followed by one `assistant` message per response text (for a stream:
//! the window being checked). When every text is empty (a response that only calls tools) no
//! call is made.
//!
//! LiteLLM also sends `x-aim-litellm-version`; this gateway is not LiteLLM and does not claim a
//! version.
//!
//! # The answer
//!
//! `required_action.action_type`:
//!
//! - absent (`required_action` missing or `null`): allow.
//! - `monitor_action`: allow; the answer is recorded as the guardrail's response.
//! - `block_action`: a block with `required_action.detection_message` (else a message naming the
//!   policy): HTTP 400 `content_policy_violation` before the response head, the in-band error
//!   event after it.
//! - `anonymize_action` on the request: the texts are replaced by the contents of
//!   `redacted_chat.all_redacted_messages` (one per message sent), or, when Aim did not return
//!   them aligned, by replacing each of `analysis_result.session_entities`' `content` with
//!   `[{name}]`. The entities are kept **for this request only** ([`RequestState`]) and a
//!   `post_call` check of this request's response replaces each `[{name}]` with its `content`
//!   (de-anonymization). LiteLLM keeps them on the guardrail object, shared by every request: one
//!   tenant's entities would be restored in another tenant's response.
//!   In `during_call` the request is already on its way: the rewrite is ignored (the pre-call
//!   layer logs it) and no entities are kept; use `pre_call` to anonymize.
//! - `anonymize_action` on the response: the response texts are replaced by the last
//!   `all_redacted_messages` (one per response text), and nothing is de-anonymized.
//! - anything else: the check fails (LiteLLM lets an unknown action through).
//!
//! # Streams
//!
//! Streamed responses are checked over HTTP, one call per window of the stream policy (by default
//! 200 new characters with 50 of context): no event reaches the client before the text it carries
//! was cleared. LiteLLM sends the stream to Aim over a websocket (`/fw/v1/analyze/stream`) that
//! echoes OpenAI chat chunks; that protocol only knows chat completions, so the Responses API and
//! Anthropic streams could not use it, and its failures would escape `unreachable_fallback` and
//! the timeout. The HTTP window keeps one code path, one failure classification and every call
//! type, at the cost of one call per window.
//!
//! De-anonymization applies to each window. A placeholder split across two windows is restored
//! only when it falls inside one window whole; the `buffer_all` stream policy restores every one.
//!
//! # Failures and secrets
//!
//! Connect/DNS errors, timeouts and HTTP 502/503/504 are *unreachable*, other statuses and bad
//! answers *failed* (see [`crate::http`]). The API key never appears in `Debug` output or error
//! messages.
//!
//! [`Caller`]: guardrail_tower_core::Caller
//! [`RequestState`]: guardrail_tower_core::RequestState

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Guardrail, GuardrailError, GuardrailInput, GuardrailMode, RequestMeta, StateKey,
    Verdict,
};
use http::Uri;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::{
    ConfigError, HttpClient, JsonPost, parse_base_url, parse_timeout, shared_client,
};
use crate::support::{env_var, kind_of, process_env, scrub};

/// The default `api_base`.
pub const DEFAULT_API_BASE: &str = "https://api.aim.security";

/// The environment variable an unset `api_key` is read from.
pub const API_KEY_ENV: &str = "AIM_API_KEY";

/// The environment variable an unset `api_base` is read from.
pub const API_BASE_ENV: &str = "AIM_API_BASE";

/// The path appended to `api_base`.
pub const ANALYZE_PATH: &str = "/fw/v1/analyze";

/// The default overall timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The block message when Aim gives neither a detection message nor a policy name.
pub const DEFAULT_BLOCK_MESSAGE: &str = "Blocked by the Aim guardrail policy";

const HOOK: HeaderName = HeaderName::from_static("x-aim-litellm-hook");
const CALL_ID: HeaderName = HeaderName::from_static("x-aim-call-id");
const USER_EMAIL: HeaderName = HeaderName::from_static("x-aim-user-email");
const KEY_ALIAS: HeaderName = HeaderName::from_static("x-aim-gateway-key-alias");

/// The settings of an Aim guardrail: LiteLLM's `litellm_params` for `guardrail: aim` (other keys
/// are ignored).
#[derive(Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct AimGuardrailConfig {
    /// The API key; else `AIM_API_KEY`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The API's base URL; else `AIM_API_BASE`, else [`DEFAULT_API_BASE`].
    #[serde(default)]
    pub api_base: Option<String>,
    /// The longest a call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl AimGuardrailConfig {
    /// A config with `api_key`, everything else from the environment or at its default.
    pub fn new(api_key: impl Into<String>) -> Self {
        AimGuardrailConfig {
            api_key: Some(api_key.into()),
            ..AimGuardrailConfig::default()
        }
    }
}

impl fmt::Debug for AimGuardrailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AimGuardrailConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A guardrail that asks Aim Security. See the [module docs](self).
#[derive(Clone)]
pub struct AimGuardrail {
    client: HttpClient,
    post: JsonPost,
    /// This guardrail's slot in each request's state (the anonymized entities).
    key: StateKey,
    api_key: String,
}

/// The entities one request's anonymization replaced: `([name], content)`.
#[derive(Debug, Clone, Default)]
struct Entities(Vec<(String, String)>);

impl AimGuardrail {
    /// Checks `config`, fills it from the process environment, and builds the guardrail on the
    /// [`shared_client`].
    pub fn new(config: AimGuardrailConfig) -> Result<Self, ConfigError> {
        AimGuardrail::with_client_and_env(config, shared_client(), &process_env)
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: AimGuardrailConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        AimGuardrail::with_client_and_env(config, client, &process_env)
    }

    /// Like [`with_client`](Self::with_client), reading environment variables through `env`
    /// instead of the process environment (an empty value counts as unset).
    pub fn with_client_and_env(
        config: AimGuardrailConfig,
        client: HttpClient,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let api_key = config
            .api_key
            .filter(|k| !k.trim().is_empty())
            .or_else(|| env_var(env, API_KEY_ENV))
            .ok_or_else(|| ConfigError::new("api_key", "is required (or set AIM_API_KEY)"))?;
        let mut auth = HeaderValue::try_from(format!("Bearer {api_key}")).map_err(|_| {
            ConfigError::new("api_key", "not a valid header value (control characters?)")
        })?;
        auth.set_sensitive(true);
        let base = config
            .api_base
            .filter(|b| !b.trim().is_empty())
            .or_else(|| env_var(env, API_BASE_ENV))
            .unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
        let url = format!("{}{ANALYZE_PATH}", base.trim().trim_end_matches('/'));
        let uri = parse_base_url("api_base", &url)?;
        let timeout = match config.timeout {
            Some(secs) => parse_timeout("timeout", secs)?,
            None => Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS),
        };
        Ok(AimGuardrail {
            client,
            post: JsonPost::new(uri)
                .timeout(timeout)
                .header(AUTHORIZATION, auth),
            key: StateKey::new(),
            api_key,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &Uri {
        self.post.uri()
    }

    /// The JSON request body for `input` (see the [module docs](self)).
    pub fn request_body(&self, input: &GuardrailInput) -> Value {
        serde_json::to_value(AimRequest {
            messages: messages(input),
        })
        .unwrap_or(Value::Null)
    }

    /// The post for one check: the fixed headers plus this request's.
    fn post_for(&self, input: &GuardrailInput) -> JsonPost {
        let hook = match (input.side(), input.mode()) {
            (Side::Response, _) | (_, GuardrailMode::PostCall) => "output",
            (_, GuardrailMode::DuringCall) => "moderation",
            _ => "pre_call",
        };
        let meta = input.meta();
        let mut post = self
            .post
            .clone()
            .header(HOOK, HeaderValue::from_static(hook));
        let caller = meta.caller();
        let email = caller.and_then(|c| c.user_email.clone()).or_else(|| {
            meta.headers()
                .get(&USER_EMAIL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        for (name, value) in [
            (CALL_ID, Some(input.request_id().to_owned())),
            (USER_EMAIL, email),
            (KEY_ALIAS, caller.and_then(|c| c.key_alias.clone())),
        ] {
            if let Some(value) = value.and_then(|v| HeaderValue::try_from(v).ok()) {
                post = post.header(name, value);
            }
        }
        post
    }

    /// De-anonymizes `texts` with this request's entities.
    fn restore(&self, meta: &RequestMeta, texts: &[String]) -> Option<Vec<String>> {
        let entities = meta.state().get::<Entities>(self.key)?;
        let (placeholders, originals): (Vec<&str>, Vec<&str>) = entities
            .0
            .iter()
            .map(|(p, o)| (p.as_str(), o.as_str()))
            .unzip();
        let restored = replace_all(texts, &placeholders, &originals)?;
        (restored != texts).then_some(restored)
    }
}

impl fmt::Debug for AimGuardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AimGuardrail")
            .field("endpoint", self.post.uri())
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AimRequest<'a> {
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: String,
    content: Cow<'a, str>,
}

impl Guardrail for AimGuardrail {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        if input.texts().iter().all(|t| t.trim().is_empty()) {
            return Ok(Verdict::allow());
        }
        let body = serde_json::to_vec(&AimRequest {
            messages: messages(input),
        })
        .map_err(|e| GuardrailError::failed(format!("could not encode the Aim request: {e}")))?;
        let secrets = [self.api_key.clone()];
        let answer = self
            .client
            .post_json(&self.post_for(input), Bytes::from(body))
            .await
            .map_err(|e| scrub(e, &secrets))?;
        let action = Action::of(&answer).map_err(|e| scrub(e, &secrets))?;
        let texts = input.texts();
        let meta = input.meta();
        match action {
            Action::Block(message) => Ok(Verdict::block(message).with_detail(answer)),
            Action::Monitor => {
                tracing::info!(
                    request_id = input.request_id(),
                    "Aim monitor action: recorded, not blocked"
                );
                Ok(self.after_output(meta, input.side(), texts, answer))
            }
            Action::None => Ok(self.after_output(meta, input.side(), texts, answer)),
            Action::Anonymize if input.side() == Side::Response => {
                let redacted = redacted_messages(&answer)?.ok_or_else(|| {
                    GuardrailError::failed(
                        "Aim asked to anonymize the response but sent no redacted_chat",
                    )
                })?;
                if redacted.len() < texts.len() {
                    return Err(GuardrailError::failed(format!(
                        "Aim returned {} redacted messages for {} response texts",
                        redacted.len(),
                        texts.len()
                    )));
                }
                let masked = redacted[redacted.len() - texts.len()..].to_vec();
                Ok(rewrite_or_allow(texts, masked).with_detail(answer))
            }
            Action::Anonymize => {
                let entities = session_entities(&answer)?;
                let redacted = redacted_messages(&answer)?;
                let masked = match redacted {
                    Some(redacted) if redacted.len() == texts.len() => redacted,
                    _ if !entities.is_empty() => {
                        let (originals, placeholders): (Vec<&str>, Vec<String>) = entities
                            .iter()
                            .map(|e| (e.content.as_str(), format!("[{}]", e.name)))
                            .unzip();
                        let placeholders: Vec<&str> =
                            placeholders.iter().map(String::as_str).collect();
                        replace_all(texts, &originals, &placeholders)
                            .unwrap_or_else(|| texts.to_vec())
                    }
                    Some(redacted) => {
                        return Err(GuardrailError::failed(format!(
                            "Aim returned {} redacted messages for {} texts and no entities; \
                             the anonymization cannot be applied",
                            redacted.len(),
                            texts.len()
                        )));
                    }
                    None => {
                        return Err(GuardrailError::failed(
                            "Aim asked to anonymize but sent neither redacted_chat nor entities",
                        ));
                    }
                };
                if input.mode() == GuardrailMode::PreCall && !entities.is_empty() {
                    meta.state().update::<Entities, _>(self.key, |kept| {
                        for e in &entities {
                            let placeholder = format!("[{}]", e.name);
                            if !kept.0.iter().any(|(p, _)| *p == placeholder) {
                                kept.0.push((placeholder, e.content.clone()));
                            }
                        }
                    });
                }
                let counts = entity_counts(&entities, texts);
                Ok(rewrite_or_allow(texts, masked)
                    .with_detail(answer)
                    .with_masked_entity_count(counts))
            }
        }
    }

    fn provider(&self) -> &str {
        "aim"
    }
}

impl AimGuardrail {
    /// After an answer that neither blocks nor anonymizes: on the response side, restore this
    /// request's entities.
    fn after_output(
        &self,
        meta: &RequestMeta,
        side: Side,
        texts: &[String],
        answer: Value,
    ) -> Verdict {
        let restored = match side {
            Side::Response => self.restore(meta, texts),
            Side::Request => None,
        };
        match restored {
            Some(texts) => Verdict::rewrite(texts).with_detail(answer),
            None => Verdict::allow().with_detail(answer),
        }
    }
}

fn rewrite_or_allow(texts: &[String], new: Vec<String>) -> Verdict {
    if new == texts {
        Verdict::allow()
    } else {
        Verdict::rewrite(new)
    }
}

/// What Aim asked for.
#[derive(Debug, PartialEq)]
enum Action {
    None,
    Monitor,
    Block(String),
    Anonymize,
}

impl Action {
    fn of(answer: &Value) -> Result<Action, GuardrailError> {
        if !answer.is_object() {
            return Err(GuardrailError::failed(format!(
                "Aim answered {}, not a JSON object",
                kind_of(answer)
            )));
        }
        let required = match answer.get("required_action") {
            None | Some(Value::Null) => return Ok(Action::None),
            Some(Value::Object(required)) => required,
            Some(other) => {
                return Err(GuardrailError::failed(format!(
                    "Aim's `required_action` is {}, not an object",
                    kind_of(other)
                )));
            }
        };
        match required.get("action_type").and_then(Value::as_str) {
            Some("monitor_action") => Ok(Action::Monitor),
            Some("anonymize_action") => Ok(Action::Anonymize),
            Some("block_action") => {
                let text = |key: &str| {
                    required
                        .get(key)
                        .and_then(Value::as_str)
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                };
                let message = match (text("detection_message"), text("policy_name")) {
                    (Some(message), _) => message.to_owned(),
                    (None, Some(policy)) => format!("Blocked by the Aim policy '{policy}'"),
                    (None, None) => DEFAULT_BLOCK_MESSAGE.to_owned(),
                };
                Ok(Action::Block(message))
            }
            Some(other) => Err(GuardrailError::failed(format!(
                "Aim asked for an unknown action '{other}' \
                 (expected monitor_action, block_action or anonymize_action)"
            ))),
            None => Err(GuardrailError::failed(
                "Aim's `required_action` has no string `action_type`",
            )),
        }
    }
}

/// One entity of `analysis_result.session_entities`.
#[derive(Debug, Clone, Deserialize)]
struct Entity {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    content: String,
    name: String,
}

fn session_entities(answer: &Value) -> Result<Vec<Entity>, GuardrailError> {
    match answer
        .get("analysis_result")
        .and_then(|r| r.get("session_entities"))
    {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(value) => {
            let entities: Vec<Entity> = serde_json::from_value(value.clone()).map_err(|e| {
                GuardrailError::failed(format!("Aim's `session_entities` are malformed: {e}"))
            })?;
            Ok(entities
                .into_iter()
                .filter(|e| !e.content.is_empty() && !e.name.is_empty())
                .collect())
        }
    }
}

/// The contents of `redacted_chat.all_redacted_messages`, if Aim sent them.
fn redacted_messages(answer: &Value) -> Result<Option<Vec<String>>, GuardrailError> {
    let Some(messages) = answer
        .get("redacted_chat")
        .filter(|v| !v.is_null())
        .map(|chat| chat.get("all_redacted_messages"))
    else {
        return Ok(None);
    };
    let Some(Value::Array(messages)) = messages else {
        return Err(GuardrailError::failed(
            "Aim's `redacted_chat` has no `all_redacted_messages` array",
        ));
    };
    messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(content)) => Ok(content.clone()),
            other => Err(GuardrailError::failed(format!(
                "a redacted message's `content` is {}, not a string",
                other.map_or("missing", kind_of)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Occurrences of the entities in the original texts, per entity type.
fn entity_counts(entities: &[Entity], texts: &[String]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entity in entities {
        let n: usize = texts
            .iter()
            .map(|t| t.matches(entity.content.as_str()).count())
            .sum();
        if n > 0 {
            let kind = entity.kind.clone().unwrap_or_else(|| "ENTITY".to_owned());
            *counts.entry(kind).or_default() += n as u64;
        }
    }
    counts
}

/// Every text with each `from[i]` replaced by `to[i]`, in one leftmost-longest pass (a
/// replacement is never replaced again). `None` when there is nothing to replace.
fn replace_all(texts: &[String], from: &[&str], to: &[&str]) -> Option<Vec<String>> {
    if from.is_empty() {
        return None;
    }
    let matcher = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(from)
        .ok()?;
    Some(texts.iter().map(|t| matcher.replace_all(t, to)).collect())
}

/// The role of each request text, when the request's shape accounts for exactly `count` texts;
/// else `user` for every text.
fn request_roles(meta: &RequestMeta, count: usize) -> Vec<String> {
    let user = || vec!["user".to_owned(); count];
    let Some(body) = meta.body() else {
        return user();
    };
    let call_type = meta.call_type();
    let role_of = |v: &Value, default: &str| {
        v.get("role")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let items = |v: Option<&Value>| -> Vec<Value> {
        v.and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let mut segments: Vec<(String, Value)> = Vec::new();
    match call_type {
        CallType::ChatCompletions => {
            for m in items(body.get("messages")) {
                segments.push((role_of(&m, "user"), json!({ "messages": [m] })));
            }
        }
        CallType::AnthropicMessages => {
            if let Some(system) = body.get("system") {
                segments.push(("system".into(), json!({ "system": system })));
            }
            for m in items(body.get("messages")) {
                segments.push((role_of(&m, "user"), json!({ "messages": [m] })));
            }
        }
        CallType::Responses => {
            if let Some(instructions) = body.get("instructions") {
                segments.push(("system".into(), json!({ "instructions": instructions })));
            }
            match body.get("input") {
                Some(Value::String(s)) => segments.push(("user".into(), json!({ "input": s }))),
                Some(Value::Array(input)) => {
                    for item in input {
                        let default = match item.get("type").and_then(Value::as_str) {
                            Some("function_call") => "assistant",
                            Some("function_call_output") => "tool",
                            _ => "user",
                        };
                        segments.push((role_of(item, default), json!({ "input": [item] })));
                    }
                }
                _ => {}
            }
        }
        _ => return user(),
    }
    let mut roles = Vec::with_capacity(count);
    for (role, fragment) in &segments {
        let n = call_type.texts(Side::Request, fragment).len();
        roles.extend(std::iter::repeat_n(role.clone(), n));
    }
    if roles.len() == count { roles } else { user() }
}

/// The messages sent for `input` (see the [module docs](self)).
fn messages(input: &GuardrailInput) -> Vec<Message<'_>> {
    let texts = input.texts();
    let meta = input.meta();
    let mut out = Vec::new();
    match input.side() {
        Side::Request => {
            let roles = request_roles(meta, texts.len());
            out.extend(roles.into_iter().zip(texts).map(|(role, content)| Message {
                role,
                content: Cow::Borrowed(content),
            }));
        }
        Side::Response => {
            // The request's messages, then the response's texts as the assistant's.
            if let Some(body) = meta.body() {
                let request_texts = meta.call_type().texts(Side::Request, body);
                let roles = request_roles(meta, request_texts.len());
                out.extend(
                    roles
                        .into_iter()
                        .zip(request_texts)
                        .map(|(role, content)| Message {
                            role,
                            content: Cow::Owned(content),
                        }),
                );
            }
            out.extend(texts.iter().map(|content| Message {
                role: "assistant".to_owned(),
                content: Cow::Borrowed(content),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardrail_tower_core::RequestId;
    use std::sync::Arc;

    fn build(
        config: AimGuardrailConfig,
        vars: &[(&str, &str)],
    ) -> Result<AimGuardrail, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AimGuardrail::with_client_and_env(config, HttpClient::new(), &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn config_from_keys_or_environment() {
        let g = build(AimGuardrailConfig::new("k"), &[]).unwrap();
        assert_eq!(
            g.endpoint().to_string(),
            "https://api.aim.security/fw/v1/analyze"
        );
        let g = build(
            AimGuardrailConfig::default(),
            &[
                ("AIM_API_KEY", "env-key"),
                ("AIM_API_BASE", "http://aim.local:9/"),
            ],
        )
        .unwrap();
        assert_eq!(g.api_key, "env-key");
        assert_eq!(g.endpoint().to_string(), "http://aim.local:9/fw/v1/analyze");
        assert_eq!(
            build(AimGuardrailConfig::default(), &[("AIM_API_KEY", "")])
                .unwrap_err()
                .field(),
            "api_key"
        );
        let mut bad = AimGuardrailConfig::new("k");
        bad.api_base = Some("aim.local".into());
        assert_eq!(build(bad, &[]).unwrap_err().field(), "api_base");
        let shown = format!("{:?} {:?}", AimGuardrailConfig::new("sk-aim-1"), g);
        assert!(
            !shown.contains("sk-aim-1") && !shown.contains("env-key"),
            "{shown}"
        );
    }

    #[test]
    fn actions() {
        let of = |v: Value| Action::of(&v);
        assert_eq!(of(json!({})).unwrap(), Action::None);
        assert_eq!(of(json!({"required_action": null})).unwrap(), Action::None);
        assert_eq!(
            of(json!({"required_action": {"action_type": "monitor_action"}})).unwrap(),
            Action::Monitor
        );
        assert_eq!(
            of(json!({"required_action": {"action_type": "block_action", "detection_message": "Jailbreak detected"}})).unwrap(),
            Action::Block("Jailbreak detected".into())
        );
        assert_eq!(
            of(json!({"required_action": {"action_type": "block_action", "policy_name": "PII"}}))
                .unwrap(),
            Action::Block("Blocked by the Aim policy 'PII'".into())
        );
        assert_eq!(
            of(json!({"required_action": {"action_type": "block_action", "detection_message": null}})).unwrap(),
            Action::Block(DEFAULT_BLOCK_MESSAGE.into())
        );
        for bad in [
            json!([]),
            json!({"required_action": "block"}),
            json!({"required_action": {}}),
            json!({"required_action": {"action_type": "explode_action"}}),
        ] {
            assert!(of(bad.clone()).is_err(), "{bad}");
        }
    }

    fn meta(call_type: CallType, body: Value) -> RequestMeta {
        RequestMeta::new(RequestId::from("r"), call_type).with_body(Some(Arc::new(body)))
    }

    #[test]
    fn roles_follow_the_request_shape() {
        let chat = meta(
            CallType::ChatCompletions,
            json!({"messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"}
            ]}),
        );
        assert_eq!(
            request_roles(&chat, 4),
            ["system", "user", "user", "assistant"]
        );
        // A count the shape does not explain: every text is the user's.
        assert_eq!(request_roles(&chat, 2), ["user", "user"]);
        let anthropic = meta(
            CallType::AnthropicMessages,
            json!({"system": "sys", "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(request_roles(&anthropic, 2), ["system", "user"]);
        let responses = meta(
            CallType::Responses,
            json!({"instructions": "ins", "input": "hello"}),
        );
        assert_eq!(request_roles(&responses, 2), ["system", "user"]);
    }

    #[test]
    fn replacement_is_one_pass_and_longest_first() {
        let texts = vec!["[NAME_1] met [NAME_10] and [NAME_1]".to_owned()];
        let out = replace_all(&texts, &["[NAME_1]", "[NAME_10]"], &["Brian", "[NAME_1]"]).unwrap();
        assert_eq!(out, ["Brian met [NAME_1] and Brian"]);
        assert_eq!(replace_all(&texts, &[], &[]), None);
        let entities = vec![Entity {
            kind: Some("NAME".into()),
            content: "Brian".into(),
            name: "NAME_1".into(),
        }];
        assert_eq!(
            entity_counts(&entities, &["Brian and Brian".into(), "brian".into()]),
            BTreeMap::from([("NAME".to_owned(), 2)])
        );
    }
}
