//! A guardrail that asks an OpenAI-compatible `/v1/moderations` endpoint.
//!
//! The texts are sent as one call, `{"model": ..., "input": [texts]}`; when any result is
//! `flagged`, the text is blocked with a message naming the flagged categories, and the log
//! records them with their scores. Otherwise the text is allowed and the moderation answer is
//! logged as is.
//!
//! ```
//! use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode};
//! use guardrail_tower_guardrails::openai_moderation::{OpenAiModeration, OpenAiModerationConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: OpenAiModerationConfig = serde_json::from_value(serde_json::json!({
//!     "guardrail": "openai_moderation",
//!     "mode": "pre_call",
//!     "api_key": "sk-...",
//! }))?;
//! let moderation = OpenAiModeration::new(config)?;
//! assert_eq!(moderation.endpoint(), "https://api.openai.com/v1/moderations");
//! let guardrail = ConfiguredGuardrail::new("moderation", GuardrailMode::PreCall, moderation);
//! assert_eq!(guardrail.provider(), "openai_moderation");
//! # Ok(())
//! # }
//! ```
//!
//! # The URL
//!
//! `api_base` (without a trailing `/`) is used as follows:
//!
//! - ending in `/moderations`: used as is;
//! - ending in `/v1`: `/moderations` is appended (`https://api.openai.com/v1` gives
//!   `https://api.openai.com/v1/moderations`);
//! - otherwise: `/v1/moderations` is appended (`http://localhost:8000` gives
//!   `http://localhost:8000/v1/moderations`).
//!
//! # Failures
//!
//! As for every HTTP guardrail (see [`crate::http`]): connect errors, timeouts and 502/503/504
//! are *unreachable*; other statuses (a 401 for a bad key, a 429) and bad answers are *failed*.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, Verdict};
use http::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::{
    ConfigError, HttpClient, JsonPost, parse_base_url, parse_timeout, shared_client,
};

/// The default `api_base`.
pub const DEFAULT_API_BASE: &str = "https://api.openai.com/v1";

/// The default moderation model.
pub const DEFAULT_MODEL: &str = "omni-moderation-latest";

/// The default overall timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The start of the block message (LiteLLM's wording).
const BLOCK_MESSAGE: &str = "Violated OpenAI moderation policy";

/// The settings of an OpenAI moderation guardrail (LiteLLM's `litellm_params` for
/// `guardrail: openai_moderation`; other keys are ignored).
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct OpenAiModerationConfig {
    /// The API base URL; see the [module docs](self) for how the endpoint is derived.
    /// Default [`DEFAULT_API_BASE`].
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// Sent as `Authorization: Bearer {api_key}` when set (leave unset for a keyless local
    /// moderation service).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The moderation model. Default [`DEFAULT_MODEL`].
    #[serde(default = "default_model")]
    pub model: String,
    /// The longest a call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

fn default_api_base() -> String {
    DEFAULT_API_BASE.to_owned()
}

fn default_model() -> String {
    DEFAULT_MODEL.to_owned()
}

impl Default for OpenAiModerationConfig {
    fn default() -> Self {
        OpenAiModerationConfig {
            api_base: default_api_base(),
            api_key: None,
            model: default_model(),
            timeout: None,
        }
    }
}

impl OpenAiModerationConfig {
    /// The defaults, with `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        OpenAiModerationConfig {
            api_key: Some(api_key.into()),
            ..OpenAiModerationConfig::default()
        }
    }
}

impl fmt::Debug for OpenAiModerationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModerationConfig")
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A guardrail that blocks text an OpenAI-compatible moderation endpoint flags.
#[derive(Clone)]
pub struct OpenAiModeration {
    client: HttpClient,
    post: JsonPost,
    model: String,
}

impl OpenAiModeration {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: OpenAiModerationConfig) -> Result<Self, ConfigError> {
        OpenAiModeration::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: OpenAiModerationConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        let uri = parse_base_url("api_base", &endpoint_url(&config.api_base))?;
        let timeout = match config.timeout {
            Some(secs) => parse_timeout("timeout", secs)?,
            None => Duration::from_secs_f64(DEFAULT_TIMEOUT_SECS),
        };
        if config.model.trim().is_empty() {
            return Err(ConfigError::new("model", "must not be empty"));
        }
        let mut post = JsonPost::new(uri).timeout(timeout);
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                ConfigError::new("api_key", "not a valid header value (control characters?)")
            })?;
            value.set_sensitive(true);
            post = post.header(AUTHORIZATION, value);
        }
        Ok(OpenAiModeration {
            client,
            post,
            model: config.model,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &http::Uri {
        self.post.uri()
    }
}

impl fmt::Debug for OpenAiModeration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModeration")
            .field("endpoint", self.post.uri())
            .field("model", &self.model)
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct ModerationRequest<'a> {
    model: &'a str,
    input: &'a [String],
}

impl Guardrail for OpenAiModeration {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        if input.texts().iter().all(|t| t.trim().is_empty()) {
            return Ok(Verdict::allow());
        }
        let body = serde_json::to_vec(&ModerationRequest {
            model: &self.model,
            input: input.texts(),
        })
        .map_err(|e| GuardrailError::failed(format!("could not encode the request: {e}")))?;
        let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
        interpret(answer)
    }

    fn provider(&self) -> &str {
        "openai_moderation"
    }

    /// Only the texts it is given.
    fn reads_request_body(&self) -> bool {
        false
    }

    /// Nor the request's headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}

/// `api_base` turned into the moderations endpoint (see the module docs).
fn endpoint_url(api_base: &str) -> String {
    let base = api_base.trim().trim_end_matches('/');
    if base.ends_with("/moderations") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/moderations")
    } else {
        format!("{base}/v1/moderations")
    }
}

/// Blocks when any result is flagged, naming the flagged categories.
fn interpret(answer: Value) -> Result<Verdict, GuardrailError> {
    let Some(results) = answer.get("results").and_then(Value::as_array) else {
        return Err(GuardrailError::failed(
            "the moderation answer has no `results` array",
        ));
    };
    let mut flagged_any = false;
    // Category -> highest score among flagged results, in first-seen order.
    let mut categories: Vec<String> = Vec::new();
    let mut scores: BTreeMap<String, f64> = BTreeMap::new();
    for result in results {
        let Some(flagged) = result.get("flagged").and_then(Value::as_bool) else {
            return Err(GuardrailError::failed(
                "a moderation result has no boolean `flagged`",
            ));
        };
        if !flagged {
            continue;
        }
        flagged_any = true;
        let result_scores = result.get("category_scores");
        for (category, on) in result
            .get("categories")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if on.as_bool() != Some(true) {
                continue;
            }
            if !categories.contains(category) {
                categories.push(category.clone());
            }
            if let Some(score) = result_scores
                .and_then(|s| s.get(category))
                .and_then(Value::as_f64)
            {
                let best = scores.entry(category.clone()).or_insert(score);
                *best = best.max(score);
            }
        }
    }
    if !flagged_any {
        return Ok(Verdict::allow().with_detail(answer));
    }
    let message = if categories.is_empty() {
        BLOCK_MESSAGE.to_owned()
    } else {
        format!("{BLOCK_MESSAGE}: flagged for {}", categories.join(", "))
    };
    let category_scores: Map<String, Value> = categories
        .iter()
        .filter_map(|c| Some((c.clone(), Value::from(*scores.get(c)?))))
        .collect();
    let detail = serde_json::json!({
        "flagged": true,
        "violated_categories": categories,
        "category_scores": category_scores,
    });
    Ok(Verdict::block(message).with_detail(detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardrail_tower_core::Decision;
    use serde_json::json;

    #[test]
    fn endpoint_rule() {
        for (base, want) in [
            (
                "https://api.openai.com/v1",
                "https://api.openai.com/v1/moderations",
            ),
            (
                "https://api.openai.com/v1/",
                "https://api.openai.com/v1/moderations",
            ),
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/moderations",
            ),
            ("http://h:1/proxy", "http://h:1/proxy/v1/moderations"),
            ("http://h:1/v1/moderations", "http://h:1/v1/moderations"),
        ] {
            assert_eq!(endpoint_url(base), want, "{base}");
        }
    }

    #[test]
    fn config_defaults_and_errors() {
        let config: OpenAiModerationConfig =
            serde_json::from_value(json!({"guardrail": "openai_moderation", "mode": "pre_call"}))
                .unwrap();
        assert_eq!(config.api_base, DEFAULT_API_BASE);
        assert_eq!(config.model, DEFAULT_MODEL);
        assert!(!format!("{:?}", OpenAiModerationConfig::new("sk-1")).contains("sk-1"));
        let config = OpenAiModerationConfig {
            api_base: "nope".into(),
            ..OpenAiModerationConfig::default()
        };
        assert_eq!(
            OpenAiModeration::new(config).unwrap_err().field(),
            "api_base"
        );
        let config = OpenAiModerationConfig {
            model: " ".into(),
            ..OpenAiModerationConfig::default()
        };
        assert_eq!(OpenAiModeration::new(config).unwrap_err().field(), "model");
    }

    #[test]
    fn flagged_results_block_with_their_categories() {
        let verdict = interpret(json!({"results": [
            {"flagged": false, "categories": {"hate": false}, "category_scores": {"hate": 0.1}},
            {"flagged": true,
             "categories": {"harassment": true, "violence": true, "hate": false},
             "category_scores": {"harassment": 0.91, "violence": 0.7, "hate": 0.2}},
            {"flagged": true,
             "categories": {"violence": true},
             "category_scores": {"violence": 0.8}}
        ]}))
        .unwrap();
        assert_eq!(
            verdict.decision(),
            &Decision::Block {
                message: "Violated OpenAI moderation policy: flagged for harassment, violence"
                    .into()
            }
        );
        assert_eq!(
            verdict.detail().unwrap(),
            &json!({
                "flagged": true,
                "violated_categories": ["harassment", "violence"],
                "category_scores": {"harassment": 0.91, "violence": 0.8}
            })
        );
        let allowed = interpret(json!({"results": [{"flagged": false}]})).unwrap();
        assert_eq!(allowed.decision(), &Decision::Allow);
        assert!(interpret(json!({"id": "x"})).is_err());
        assert!(interpret(json!({"results": [{}]})).is_err());
    }
}
