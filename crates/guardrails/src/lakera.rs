//! Lakera Guard v2 (`guardrail: lakera_v2`), configured with LiteLLM's keys.
//!
//! The texts are sent as chat messages to `POST {api_base}/v2/guard` with
//! `Authorization: Bearer {api_key}`:
//!
//! ```json
//! {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
//!  "project_id": "project-...", "payload": true, "breakdown": true, "dev_info": true}
//! ```
//!
//! On the request side each text keeps the role of the message it comes from (system, user,
//! assistant, tool, ...), so Lakera judges a system prompt as a system prompt; on the response
//! side the texts are `assistant` messages. `project_id` and `metadata` are sent when set.
//!
//! Lakera answers `{"flagged": bool, "payload": [...], "breakdown": [...], ...}`:
//!
//! - not flagged: allowed;
//! - flagged, and every detector that fired is a PII detector (`pii/...`) with the spans in
//!   `payload`: the spans are masked as `[MASKED {TYPE}]` (`pii/email` gives
//!   `[MASKED EMAIL]`) and counted in `masked_entity_count`, as in LiteLLM;
//! - otherwise flagged, with `on_flagged: block` (the default): blocked, with a message naming
//!   the detectors that fired;
//! - with `on_flagged: monitor`: allowed unchanged, and logged as `guardrail_intervened` with
//!   action `allow` and Lakera's answer, so violations are counted without blocking.
//!
//! The log keeps Lakera's answer without the `text` of the payload items (the PII itself).
//!
//! ```
//! use guardrail_tower_guardrails::lakera::{LakeraV2, LakeraV2Config, OnFlagged};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: LakeraV2Config = serde_yaml_ng::from_str(r#"
//!     guardrail: lakera_v2
//!     mode: pre_call
//!     api_key: lk-secret
//!     project_id: project-1234
//!     on_flagged: monitor
//! "#)?;
//! assert_eq!(config.on_flagged, OnFlagged::Monitor);
//! assert!(!format!("{config:?}").contains("lk-secret"));
//! let lakera = LakeraV2::new(config)?;
//! assert_eq!(lakera.endpoint(), "https://api.lakera.ai/v2/guard");
//! # Ok(())
//! # }
//! ```
//!
//! # Streams
//!
//! Per window, the whole window (overlap included) is screened. A block ends the stream with
//! the in-band error; PII spans are masked in the new text only (a span cut by the window
//! boundary from the boundary on; spans wholly in the overlap were masked with their window).
//!
//! # Differences from LiteLLM
//!
//! - Every text a request carries is screened (tool-call arguments and every message part),
//!   with its role; LiteLLM drops non-text parts of some shapes.
//! - A post-call check screens the response alone, not the conversation again: re-screening the
//!   request with every window would multiply calls and block a response for what the request
//!   said.
//! - When Lakera flags only PII but sends no payload (`payload: false`), `on_flagged` decides;
//!   LiteLLM let the text through unmasked.
//! - Unset `project_id` and `metadata` are omitted rather than sent as `null`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, Verdict};
use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::{ConfigError, HttpClient, JsonPost, parse_base_url, shared_client};
use crate::support::{
    CharOffsets, Span, context_len, kind_of, replace_spans, required, roles, timeout_or,
};

/// The default `api_base`.
pub const DEFAULT_API_BASE: &str = "https://api.lakera.ai";

/// The environment variable a gateway reads an unset `api_key` from (LiteLLM's).
pub const API_KEY_ENV: &str = "LAKERA_API_KEY";

/// The environment variable a gateway reads an unset `api_base` from (LiteLLM's).
pub const API_BASE_ENV: &str = "LAKERA_API_BASE";

/// The path appended to `api_base`.
pub const GUARD_PATH: &str = "/v2/guard";

/// The default timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The start of the block message.
const BLOCK_MESSAGE: &str = "Violated guardrail policy";

/// What to do when Lakera flags a text that cannot be masked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFlagged {
    /// Block it (the default).
    #[default]
    Block,
    /// Let it through, and log the violation as `guardrail_intervened` with action `allow`.
    Monitor,
}

/// The settings of a Lakera Guard v2 guardrail: LiteLLM's `litellm_params` for
/// `guardrail: lakera_v2` (other keys are ignored).
#[derive(Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct LakeraV2Config {
    /// Sent as `Authorization: Bearer {api_key}`. Required.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Default [`DEFAULT_API_BASE`]; [`GUARD_PATH`] is appended.
    #[serde(default)]
    pub api_base: Option<String>,
    /// The Lakera project whose policy applies.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Ask for the flagged spans (needed to mask PII). Default true.
    #[serde(default)]
    pub payload: Option<bool>,
    /// Ask for the per-detector breakdown. Default true.
    #[serde(default)]
    pub breakdown: Option<bool>,
    /// Sent as `metadata` (a map).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Ask for Lakera's build information. Default true.
    #[serde(default)]
    pub dev_info: Option<bool>,
    /// `block` (default) or `monitor`.
    #[serde(default)]
    pub on_flagged: OnFlagged,
    /// The longest one call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl LakeraV2Config {
    /// A config with this key, everything else default.
    pub fn new(api_key: impl Into<String>) -> Self {
        LakeraV2Config {
            api_key: Some(api_key.into()),
            ..LakeraV2Config::default()
        }
    }
}

impl fmt::Debug for LakeraV2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeraV2Config")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_base", &self.api_base)
            .field("project_id", &self.project_id)
            .field("payload", &self.payload)
            .field("breakdown", &self.breakdown)
            .field("metadata", &self.metadata)
            .field("dev_info", &self.dev_info)
            .field("on_flagged", &self.on_flagged)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A guardrail that screens texts with Lakera Guard v2. See the [module docs](self).
#[derive(Clone)]
pub struct LakeraV2 {
    client: HttpClient,
    post: JsonPost,
    /// The request fields besides `messages`.
    options: Map<String, Value>,
    on_flagged: OnFlagged,
}

impl LakeraV2 {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: LakeraV2Config) -> Result<Self, ConfigError> {
        LakeraV2::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(config: LakeraV2Config, client: HttpClient) -> Result<Self, ConfigError> {
        let key = required("api_key", config.api_key.as_deref())?;
        let base = config
            .api_base
            .as_deref()
            .unwrap_or(DEFAULT_API_BASE)
            .trim();
        let base = base.trim_end_matches('/');
        let url = if base.ends_with(GUARD_PATH) {
            base.to_owned()
        } else {
            format!("{base}{GUARD_PATH}")
        };
        let uri = parse_base_url("api_base", &url)?;
        let mut auth = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
            ConfigError::new("api_key", "not a valid header value (control characters?)")
        })?;
        auth.set_sensitive(true);
        let post = JsonPost::new(uri)
            .timeout(timeout_or(config.timeout, DEFAULT_TIMEOUT_SECS)?)
            .header(AUTHORIZATION, auth);
        let mut options = Map::new();
        if let Some(project) = &config.project_id {
            options.insert("project_id".into(), Value::from(project.as_str()));
        }
        options.insert(
            "payload".into(),
            Value::from(config.payload.unwrap_or(true)),
        );
        options.insert(
            "breakdown".into(),
            Value::from(config.breakdown.unwrap_or(true)),
        );
        match config.metadata {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                options.insert("metadata".into(), Value::Object(map));
            }
            Some(_) => return Err(ConfigError::new("metadata", "expected a map")),
        }
        options.insert(
            "dev_info".into(),
            Value::from(config.dev_info.unwrap_or(true)),
        );
        Ok(LakeraV2 {
            client,
            post,
            options,
            on_flagged: config.on_flagged,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &http::Uri {
        self.post.uri()
    }

    /// The request body for `input`, and the index of the text each message carries (blank
    /// texts are not sent).
    fn request_body(&self, input: &GuardrailInput) -> (Value, Vec<usize>) {
        let roles = roles(input);
        let mut sent = Vec::new();
        let messages: Vec<Value> = input
            .texts()
            .iter()
            .zip(&roles)
            .enumerate()
            .filter(|(_, (text, _))| !text.trim().is_empty())
            .map(|(i, (text, role))| {
                sent.push(i);
                json!({"role": role, "content": text})
            })
            .collect();
        let mut body = Map::new();
        body.insert("messages".into(), Value::Array(messages));
        body.extend(self.options.clone());
        (Value::Object(body), sent)
    }
}

impl fmt::Debug for LakeraV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeraV2")
            .field("endpoint", self.post.uri())
            .field("on_flagged", &self.on_flagged)
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

impl Guardrail for LakeraV2 {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let (body, sent) = self.request_body(input);
        if sent.is_empty() {
            return Ok(Verdict::allow());
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| GuardrailError::failed(format!("could not encode the request: {e}")))?;
        let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
        self.interpret(answer, input, &sent)
    }

    fn provider(&self) -> &str {
        "lakera_v2"
    }

    /// The texts and, for their roles, the request body; not the headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}

impl LakeraV2 {
    fn interpret(
        &self,
        answer: Value,
        input: &GuardrailInput,
        sent: &[usize],
    ) -> Result<Verdict, GuardrailError> {
        let bad = |what: String| GuardrailError::failed(format!("Lakera answered {what}"));
        let Value::Object(fields) = &answer else {
            return Err(bad(format!("{}, not a JSON object", kind_of(&answer))));
        };
        let Some(flagged) = fields.get("flagged").and_then(Value::as_bool) else {
            return Err(bad("no boolean `flagged`".into()));
        };
        let breakdown = match fields.get("breakdown") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(items)) => items.as_slice(),
            Some(other) => return Err(bad(format!("a `breakdown` that is {}", kind_of(other)))),
        };
        let payload = match fields.get("payload") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(items)) => items.as_slice(),
            Some(other) => return Err(bad(format!("a `payload` that is {}", kind_of(other)))),
        };
        let detail = redacted(&answer);
        if !flagged {
            return Ok(Verdict::allow().with_detail(detail));
        }
        let detected: BTreeSet<&str> = breakdown
            .iter()
            .filter(|item| item.get("detected").and_then(Value::as_bool) == Some(true))
            .map(|item| {
                item.get("detector_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            })
            .collect();
        let only_pii = !detected.is_empty() && detected.iter().all(|d| d.starts_with("pii/"));
        if only_pii && !payload.is_empty() {
            return mask(input, sent, payload).map(|(texts, counts)| match texts {
                Some(texts) => Verdict::rewrite(texts)
                    .with_detail(detail)
                    .with_masked_entity_count(counts),
                None => Verdict::allow().with_detail(detail),
            });
        }
        match self.on_flagged {
            OnFlagged::Monitor => Ok(Verdict::allow().flagged().with_detail(detail)),
            OnFlagged::Block => {
                let message = if detected.is_empty() {
                    format!("{BLOCK_MESSAGE}: flagged by Lakera Guard")
                } else {
                    let list: Vec<&str> = detected.into_iter().filter(|d| !d.is_empty()).collect();
                    format!(
                        "{BLOCK_MESSAGE}: flagged by Lakera Guard ({})",
                        list.join(", ")
                    )
                };
                Ok(Verdict::block(message).with_detail(detail))
            }
        }
    }
}

/// Masked texts (`None` when nothing changed: every span lay in a window's context) and the
/// counts per type.
type Masked = (Option<Vec<String>>, BTreeMap<String, u64>);

/// Masks the payload's spans as `[MASKED {TYPE}]`.
fn mask(
    input: &GuardrailInput,
    sent: &[usize],
    payload: &[Value],
) -> Result<Masked, GuardrailError> {
    let bad = |what: String| GuardrailError::failed(format!("Lakera answered {what}"));
    let texts = input.texts();
    let mut spans: Vec<Vec<(Span, String)>> = vec![Vec::new(); texts.len()];
    let offsets: Vec<CharOffsets> = texts.iter().map(|t| CharOffsets::new(t)).collect();
    for (k, item) in payload.iter().enumerate() {
        let message = item.get("message_id").and_then(Value::as_u64).unwrap_or(0);
        let start = item.get("start").and_then(Value::as_u64);
        let end = item.get("end").and_then(Value::as_u64);
        let index = usize::try_from(message)
            .ok()
            .and_then(|m| sent.get(m))
            .copied();
        let (Some(index), Some(start), Some(end)) = (index, start, end) else {
            return Err(bad(format!(
                "a payload item (#{k}) without a valid `message_id`, `start` and `end`"
            )));
        };
        let byte = |c: u64| usize::try_from(c).ok().and_then(|c| offsets[index].byte(c));
        let (Some(start), Some(end)) = (byte(start), byte(end)) else {
            return Err(bad(format!("a payload item (#{k}) outside its message")));
        };
        if start >= end {
            continue;
        }
        let context = context_len(input, index);
        if end <= context {
            continue;
        }
        let detector = item
            .get("detector_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = detector.rsplit('/').next().unwrap_or("").to_uppercase();
        let kind = if kind.is_empty() {
            "PII".to_owned()
        } else {
            kind
        };
        spans[index].push((
            Span {
                start: start.max(context),
                end,
                replacement: format!("[MASKED {kind}]"),
            },
            kind,
        ));
    }
    let mut counts = BTreeMap::new();
    let mut new_texts = texts.to_vec();
    let mut changed = false;
    for (i, text_spans) in spans.into_iter().enumerate() {
        if text_spans.is_empty() {
            continue;
        }
        let (only, kinds): (Vec<Span>, Vec<String>) = text_spans.into_iter().unzip();
        let (masked, applied) = replace_spans(&texts[i], &only);
        for a in applied {
            *counts.entry(kinds[a].clone()).or_insert(0) += 1;
        }
        if masked != texts[i] {
            new_texts[i] = masked;
            changed = true;
        }
    }
    Ok((changed.then_some(new_texts), counts))
}

/// Lakera's answer for the log, without the flagged text itself.
fn redacted(answer: &Value) -> Value {
    let mut answer = answer.clone();
    if let Some(Value::Array(items)) = answer.get_mut("payload") {
        for item in items {
            if let Value::Object(item) = item {
                item.remove("text");
            }
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_requires_a_key_and_hides_it() {
        let err = LakeraV2::new(LakeraV2Config::default()).unwrap_err();
        assert_eq!((err.field(), err.message()), ("api_key", "is required"));
        let mut c = LakeraV2Config::new("lk-1");
        c.api_base = Some("https://eu.lakera.example/".into());
        c.metadata = Some(json!(["not a map"]));
        assert_eq!(LakeraV2::new(c.clone()).unwrap_err().field(), "metadata");
        c.metadata = None;
        let g = LakeraV2::new(c).unwrap();
        assert_eq!(g.endpoint(), "https://eu.lakera.example/v2/guard");
        assert!(!format!("{g:?}").contains("lk-1"));
        assert!(!format!("{:?}", LakeraV2Config::new("lk-2")).contains("lk-2"));
    }

    #[test]
    fn the_log_never_keeps_the_flagged_text() {
        let answer = json!({"flagged": true, "payload": [{"start": 0, "end": 3, "text": "a@b", "detector_type": "pii/email", "message_id": 0}]});
        assert_eq!(
            redacted(&answer),
            json!({"flagged": true, "payload": [{"start": 0, "end": 3, "detector_type": "pii/email", "message_id": 0}]})
        );
    }
}
