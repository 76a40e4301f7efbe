//! Azure AI Content Safety: text moderation (`guardrail: azure/text_moderations`) and Prompt
//! Shields (`guardrail: azure/prompt_shield`), configured with LiteLLM's keys.
//!
//! Both POST to `{api_base}/contentsafety/text:{action}?api-version={api_version}` (default
//! [`DEFAULT_API_VERSION`]) with the key in `Ocp-Apim-Subscription-Key`. The service takes at
//! most [`MAX_TEXT_CHARS`] characters per text: longer input is split at whitespace (a word
//! longer than the limit is cut) and every piece is checked; a violation in any piece decides.
//!
//! # Text moderation
//!
//! The texts are joined (blank line between them) into as few pieces as the limit allows, and
//! each piece is sent as
//! `{"text", "categories", "blocklistNames", "haltOnBlocklistHit", "outputType"}` to
//! `text:analyze`. The answer's `categoriesAnalysis` gives a severity per category (`Hate`,
//! `SelfHarm`, `Sexual`, `Violence`): a category is blocked when its severity reaches its
//! threshold, which is its entry in `severity_threshold_by_category`, else
//! `severity_threshold`, else 2 (LiteLLM's default). The message is LiteLLM's:
//! `Azure Content Safety Guardrail: Violence crossed severity 4, Got severity: 6`.
//! A match in one of the configured `blocklistNames` (`blocklistsMatch`) blocks too.
//!
//! ```
//! use guardrail_tower_guardrails::azure::{AzureTextModeration, AzureTextModerationConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: AzureTextModerationConfig = serde_yaml_ng::from_str(r#"
//!     guardrail: azure/text_moderations
//!     mode: [pre_call, post_call]
//!     api_key: azure-key
//!     api_base: https://my-resource.cognitiveservices.azure.com/
//!     severity_threshold: 4
//!     severity_threshold_by_category: {Hate: 2, Violence: 6}
//! "#)?;
//! let moderation = AzureTextModeration::new(config)?;
//! assert_eq!(
//!     moderation.endpoint(),
//!     "https://my-resource.cognitiveservices.azure.com/contentsafety/text:analyze?api-version=2024-09-01"
//! );
//! assert!(!format!("{moderation:?}").contains("azure-key"));
//! # Ok(())
//! # }
//! ```
//!
//! Differences from LiteLLM, where its behaviour would surprise: every text is checked (LiteLLM
//! checks only the last user message on the way in and the first choice on the way out); a
//! per-category threshold replaces the general one for its category (LiteLLM also applied the
//! general one, so a looser per-category threshold had no effect), and categories without a
//! threshold of their own get the general one or the default 2 (LiteLLM left them unchecked when
//! only per-category thresholds were set); a threshold of 0 is a config error (LiteLLM read it
//! as unset); blocklist matches block (LiteLLM sent `blocklistNames` but ignored the matches).
//!
//! # Prompt Shields
//!
//! `text:shieldPrompt` with `{"userPrompt": "...", "documents": [...]}`. On the request side,
//! the texts of user messages make the user prompt; the texts of tool results, function
//! outputs and assistant turns are sent as documents (where indirect prompt injection hides);
//! system and developer instructions are not screened (they are the operator's). On the
//! response side the model's texts are documents, for deployments whose output feeds other
//! agents. An attack detected in the user prompt (`userPromptAnalysis.attackDetected`) or in
//! any document (`documentsAnalysis[i].attackDetected`) blocks. At most five documents of at
//! most [`MAX_TEXT_CHARS`] characters in all go in one call. (LiteLLM screens only the last
//! user message, and sends no documents.)
//!
//! # Streams
//!
//! Per window, the whole window (overlap included) is checked; a block ends the stream with the
//! in-band error.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, Verdict};
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::{ConfigError, HttpClient, JsonPost, parse_base_url, shared_client};
use crate::support::{kind_of, required, roles, timeout_or};

/// The default `api_version`.
pub const DEFAULT_API_VERSION: &str = "2024-09-01";

/// The most characters Azure Content Safety takes per text.
pub const MAX_TEXT_CHARS: usize = 10_000;

/// The most documents in one Prompt Shields call.
pub const MAX_DOCUMENTS: usize = 5;

/// The default timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The severity at which a category is blocked when no threshold is set (LiteLLM's default).
pub const DEFAULT_SEVERITY_THRESHOLD: u8 = 2;

/// The harm categories text moderation reports.
pub const CATEGORIES: [&str; 4] = ["Hate", "SelfHarm", "Sexual", "Violence"];

const KEY_HEADER: HeaderName = HeaderName::from_static("ocp-apim-subscription-key");

/// `{api_base}/contentsafety/text:{action}?api-version={version}`, with the key header.
fn content_safety_post(
    api_key: Option<&str>,
    api_base: Option<&str>,
    api_version: Option<&str>,
    action: &str,
    timeout: Option<f64>,
) -> Result<JsonPost, ConfigError> {
    let key = required("api_key", api_key)?;
    let base = required("api_base", api_base)?;
    let base = base.trim_end_matches('/');
    parse_base_url("api_base", base)?;
    // Older LiteLLM releases stored "v1" here; it means the default.
    let version = match api_version.map(str::trim) {
        None | Some("" | "v1") => DEFAULT_API_VERSION,
        Some(v) => v,
    };
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ConfigError::new(
            "api_version",
            format!("'{version}' is not an API version"),
        ));
    }
    let url = format!("{base}/contentsafety/text:{action}?api-version={version}");
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::new("api_base", format!("'{url}' is not a URL ({e})")))?;
    let mut value = HeaderValue::try_from(key).map_err(|_| {
        ConfigError::new("api_key", "not a valid header value (control characters?)")
    })?;
    value.set_sensitive(true);
    Ok(JsonPost::new(uri)
        .timeout(timeout_or(timeout, DEFAULT_TIMEOUT_SECS)?)
        .header(KEY_HEADER, value))
}

/// The settings of an Azure text moderation guardrail: LiteLLM's `litellm_params` for
/// `guardrail: azure/text_moderations` (other keys are ignored).
#[derive(Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct AzureTextModerationConfig {
    /// The Content Safety key (`Ocp-Apim-Subscription-Key`). Required.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The resource's endpoint, `https://{resource}.cognitiveservices.azure.com`. Required.
    #[serde(default)]
    pub api_base: Option<String>,
    /// Default [`DEFAULT_API_VERSION`].
    #[serde(default)]
    pub api_version: Option<String>,
    /// The severity at which any category is blocked (1 to 7).
    #[serde(default)]
    pub severity_threshold: Option<u8>,
    /// The severity at which a category is blocked, per category (overrides
    /// `severity_threshold` for it).
    #[serde(default)]
    pub severity_threshold_by_category: BTreeMap<String, u8>,
    /// The categories to analyze. Default: all four.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// Custom blocklists to match.
    #[serde(default, rename = "blocklistNames")]
    pub blocklist_names: Option<Vec<String>>,
    /// Stop analyzing once a blocklist matched.
    #[serde(default, rename = "haltOnBlocklistHit")]
    pub halt_on_blocklist_hit: Option<bool>,
    /// `FourSeverityLevels` (default: 0, 2, 4, 6) or `EightSeverityLevels` (0 to 7).
    #[serde(default, rename = "outputType")]
    pub output_type: Option<String>,
    /// The longest one call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl fmt::Debug for AzureTextModerationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTextModerationConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_base", &self.api_base)
            .field("api_version", &self.api_version)
            .field("severity_threshold", &self.severity_threshold)
            .field(
                "severity_threshold_by_category",
                &self.severity_threshold_by_category,
            )
            .field("categories", &self.categories)
            .field("blocklist_names", &self.blocklist_names)
            .field("halt_on_blocklist_hit", &self.halt_on_blocklist_hit)
            .field("output_type", &self.output_type)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A guardrail that blocks texts Azure AI Content Safety rates at or above a severity. See the
/// [module docs](self).
#[derive(Clone)]
pub struct AzureTextModeration {
    client: HttpClient,
    post: JsonPost,
    /// The request fields besides `text`.
    options: Map<String, Value>,
    general: Option<u8>,
    by_category: BTreeMap<String, u8>,
}

impl AzureTextModeration {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: AzureTextModerationConfig) -> Result<Self, ConfigError> {
        AzureTextModeration::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: AzureTextModerationConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        let post = content_safety_post(
            config.api_key.as_deref(),
            config.api_base.as_deref(),
            config.api_version.as_deref(),
            "analyze",
            config.timeout,
        )?;
        let category = |field: String, name: &str| {
            if CATEGORIES.contains(&name) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!(
                        "unknown category '{name}' (expected {})",
                        CATEGORIES.join(", ")
                    ),
                ))
            }
        };
        let threshold = |field: String, value: u8| {
            if (1..=7).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("{value} is not a severity from 1 to 7"),
                ))
            }
        };
        if let Some(t) = config.severity_threshold {
            threshold("severity_threshold".into(), t)?;
        }
        for (name, t) in &config.severity_threshold_by_category {
            let field = format!("severity_threshold_by_category.{name}");
            category(field.clone(), name)?;
            threshold(field, *t)?;
        }
        let categories = match config.categories {
            None => CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new("categories", "must not be empty"));
            }
            Some(list) => {
                for name in &list {
                    category("categories".into(), name)?;
                }
                list
            }
        };
        let output_type = config
            .output_type
            .unwrap_or_else(|| "FourSeverityLevels".to_owned());
        if !["FourSeverityLevels", "EightSeverityLevels"].contains(&output_type.as_str()) {
            return Err(ConfigError::new(
                "outputType",
                format!("'{output_type}' is not FourSeverityLevels or EightSeverityLevels"),
            ));
        }
        let mut options = Map::new();
        options.insert("categories".into(), json!(categories));
        if let Some(names) = config.blocklist_names.filter(|n| !n.is_empty()) {
            options.insert("blocklistNames".into(), json!(names));
        }
        options.insert(
            "haltOnBlocklistHit".into(),
            Value::from(config.halt_on_blocklist_hit.unwrap_or(false)),
        );
        options.insert("outputType".into(), Value::from(output_type));
        Ok(AzureTextModeration {
            client,
            post,
            options,
            general: config.severity_threshold,
            by_category: config.severity_threshold_by_category,
        })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &http::Uri {
        self.post.uri()
    }

    /// The severity at which `category` is blocked.
    pub fn threshold(&self, category: &str) -> u8 {
        self.by_category
            .get(category)
            .copied()
            .or(self.general)
            .unwrap_or(DEFAULT_SEVERITY_THRESHOLD)
    }
}

impl fmt::Debug for AzureTextModeration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTextModeration")
            .field("endpoint", self.post.uri())
            .field("severity_threshold", &self.general)
            .field("severity_threshold_by_category", &self.by_category)
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

impl Guardrail for AzureTextModeration {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let texts: Vec<&str> = input.texts().iter().map(String::as_str).collect();
        let pieces = pack(&texts, MAX_TEXT_CHARS);
        if pieces.is_empty() {
            return Ok(Verdict::allow());
        }
        // The highest severity seen per category, and the blocklists matched, over all pieces.
        let mut severities: BTreeMap<String, u64> = BTreeMap::new();
        let mut blocklists: Vec<String> = Vec::new();
        for piece in &pieces {
            let mut body = Map::new();
            body.insert("text".into(), Value::from(piece.as_str()));
            body.extend(self.options.clone());
            let body = serde_json::to_vec(&body).map_err(|e| {
                GuardrailError::failed(format!("could not encode the request: {e}"))
            })?;
            let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
            let (analysis, matched) = parse_analysis(&answer)?;
            for (category, severity) in analysis {
                let best = severities.entry(category).or_insert(severity);
                *best = (*best).max(severity);
            }
            blocklists.extend(matched);
            // A violation in this piece decides: the rest need not be sent.
            if !blocklists.is_empty() || self.violation(&severities).is_some() {
                break;
            }
        }
        let detail = json!({
            "categoriesAnalysis": severities
                .iter()
                .map(|(category, severity)| json!({"category": category, "severity": severity}))
                .collect::<Vec<_>>(),
            "blocklistsMatch": blocklists,
        });
        if let Some(name) = blocklists.first() {
            return Ok(Verdict::block(format!(
                "Azure Content Safety Guardrail: blocklist '{name}' matched"
            ))
            .with_detail(detail));
        }
        match self.violation(&severities) {
            Some((category, threshold, severity)) => Ok(Verdict::block(format!(
                "Azure Content Safety Guardrail: {category} crossed severity {threshold}, Got severity: {severity}"
            ))
            .with_detail(detail)),
            None => Ok(Verdict::allow().with_detail(detail)),
        }
    }

    fn provider(&self) -> &str {
        "azure/text_moderations"
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

impl AzureTextModeration {
    /// The first category (in Azure's order) at or above its threshold.
    fn violation<'a>(&self, severities: &'a BTreeMap<String, u64>) -> Option<(&'a str, u8, u64)> {
        CATEGORIES
            .iter()
            .filter_map(|c| severities.get_key_value(*c))
            .chain(
                severities
                    .iter()
                    .filter(|(c, _)| !CATEGORIES.contains(&c.as_str())),
            )
            .map(|(category, severity)| (category.as_str(), self.threshold(category), *severity))
            .find(|(_, threshold, severity)| *severity >= u64::from(*threshold))
    }
}

/// A `text:analyze` answer: the severity per category, and the blocklists matched.
type Analysis = (Vec<(String, u64)>, Vec<String>);

/// Reads a `text:analyze` answer.
fn parse_analysis(answer: &Value) -> Result<Analysis, GuardrailError> {
    let bad =
        |what: String| GuardrailError::failed(format!("Azure Content Safety answered {what}"));
    let Some(items) = answer.get("categoriesAnalysis").and_then(Value::as_array) else {
        return Err(bad(format!(
            "{} without a `categoriesAnalysis` array",
            kind_of(answer)
        )));
    };
    let analysis = items
        .iter()
        .map(|item| {
            let category = item.get("category").and_then(Value::as_str);
            let severity = item.get("severity").and_then(Value::as_u64);
            match (category, severity) {
                (Some(c), Some(s)) => Ok((c.to_owned(), s)),
                _ => Err(bad(
                    "a category analysis without a string `category` and an integer `severity`"
                        .into(),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    let matched = match answer.get("blocklistsMatch") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.get("blocklistName")
                    .and_then(Value::as_str)
                    .unwrap_or("unnamed")
                    .to_owned()
            })
            .collect(),
        Some(other) => {
            return Err(bad(format!(
                "a `blocklistsMatch` that is {}",
                kind_of(other)
            )));
        }
    };
    Ok((analysis, matched))
}

/// The settings of an Azure Prompt Shields guardrail: LiteLLM's `litellm_params` for
/// `guardrail: azure/prompt_shield` (other keys are ignored).
#[derive(Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct AzurePromptShieldConfig {
    /// The Content Safety key (`Ocp-Apim-Subscription-Key`). Required.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The resource's endpoint, `https://{resource}.cognitiveservices.azure.com`. Required.
    #[serde(default)]
    pub api_base: Option<String>,
    /// Default [`DEFAULT_API_VERSION`].
    #[serde(default)]
    pub api_version: Option<String>,
    /// The longest one call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl fmt::Debug for AzurePromptShieldConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzurePromptShieldConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_base", &self.api_base)
            .field("api_version", &self.api_version)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A guardrail that blocks prompt attacks Azure Prompt Shields detects. See the
/// [module docs](self).
#[derive(Clone)]
pub struct AzurePromptShield {
    client: HttpClient,
    post: JsonPost,
}

impl AzurePromptShield {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: AzurePromptShieldConfig) -> Result<Self, ConfigError> {
        AzurePromptShield::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(
        config: AzurePromptShieldConfig,
        client: HttpClient,
    ) -> Result<Self, ConfigError> {
        let post = content_safety_post(
            config.api_key.as_deref(),
            config.api_base.as_deref(),
            config.api_version.as_deref(),
            "shieldPrompt",
            config.timeout,
        )?;
        Ok(AzurePromptShield { client, post })
    }

    /// The full URL called.
    pub fn endpoint(&self) -> &http::Uri {
        self.post.uri()
    }
}

impl fmt::Debug for AzurePromptShield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzurePromptShield")
            .field("endpoint", self.post.uri())
            .field("timeout", &self.post.get_timeout())
            .finish_non_exhaustive()
    }
}

impl Guardrail for AzurePromptShield {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let mut prompt: Vec<&str> = Vec::new();
        let mut documents: Vec<&str> = Vec::new();
        for (text, role) in input.texts().iter().zip(roles(input)) {
            if text.trim().is_empty() {
                continue;
            }
            match (input.side(), &*role) {
                (Side::Request, "user") => prompt.push(text),
                (Side::Request, "system" | "developer") => {}
                _ => documents.push(text),
            }
        }
        let prompts = pack(&prompt, MAX_TEXT_CHARS);
        let pieces: Vec<&str> = documents
            .iter()
            .flat_map(|d| split_at_whitespace(d, MAX_TEXT_CHARS))
            .collect();
        let batches = batch_documents(&pieces);
        let calls = prompts.len().max(batches.len());
        if calls == 0 {
            return Ok(Verdict::allow());
        }
        let mut user_attack = false;
        let mut document_attacks = Vec::new();
        for call in 0..calls {
            let user_prompt = prompts.get(call).map_or("", String::as_str);
            let docs = batches.get(call).map_or(&[][..], Vec::as_slice);
            let body = json!({"userPrompt": user_prompt, "documents": docs});
            let body = serde_json::to_vec(&body).map_err(|e| {
                GuardrailError::failed(format!("could not encode the request: {e}"))
            })?;
            let answer = self.client.post_json(&self.post, Bytes::from(body)).await?;
            let (user, docs_found) = parse_shield(&answer, docs.len())?;
            user_attack |= user && !user_prompt.is_empty();
            document_attacks.extend(docs_found);
            if user_attack || document_attacks.iter().any(|a| *a) {
                break;
            }
        }
        let detail = json!({
            "userPromptAnalysis": {"attackDetected": user_attack},
            "documentsAnalysis": document_attacks
                .iter()
                .map(|a| json!({"attackDetected": a}))
                .collect::<Vec<_>>(),
        });
        let message = if user_attack {
            Some(
                "Violated Azure Prompt Shield guardrail policy: attack detected in the user prompt",
            )
        } else if document_attacks.iter().any(|a| *a) {
            Some("Violated Azure Prompt Shield guardrail policy: attack detected in a document")
        } else {
            None
        };
        Ok(match message {
            Some(message) => Verdict::block(message).with_detail(detail),
            None => Verdict::allow().with_detail(detail),
        })
    }

    fn provider(&self) -> &str {
        "azure/prompt_shield"
    }

    /// The texts and, for their roles, the request body; not the headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}

/// Reads a `text:shieldPrompt` answer: whether the user prompt is an attack, and each
/// document's verdict (one per document sent).
fn parse_shield(answer: &Value, documents: usize) -> Result<(bool, Vec<bool>), GuardrailError> {
    let bad =
        |what: String| GuardrailError::failed(format!("Azure Prompt Shields answered {what}"));
    let Some(user) = answer
        .get("userPromptAnalysis")
        .and_then(|a| a.get("attackDetected"))
        .and_then(Value::as_bool)
    else {
        return Err(bad(format!(
            "{} without a boolean `userPromptAnalysis.attackDetected`",
            kind_of(answer)
        )));
    };
    let docs = match answer.get("documentsAnalysis") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.get("attackDetected")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| {
                        bad("a document analysis without a boolean `attackDetected`".into())
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "a `documentsAnalysis` that is {}",
                kind_of(other)
            )));
        }
    };
    if docs.len() != documents {
        return Err(bad(format!(
            "{} document analyses for {documents} documents",
            docs.len()
        )));
    }
    Ok((user, docs))
}

/// The non-blank texts joined (blank line between them) into pieces of at most `max`
/// characters; a text longer than `max` is split at whitespace.
fn pack(texts: &[&str], max: usize) -> Vec<String> {
    const SEPARATOR: &str = "\n\n";
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    for text in texts.iter().filter(|t| !t.trim().is_empty()) {
        for part in split_at_whitespace(text, max) {
            let chars = part.chars().count();
            let needed = if current.is_empty() {
                chars
            } else {
                chars + SEPARATOR.len()
            };
            if current_chars + needed > max && !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
                current_chars = 0;
            }
            if !current.is_empty() {
                current.push_str(SEPARATOR);
                current_chars += SEPARATOR.len();
            }
            current.push_str(part);
            current_chars += chars;
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// `text` in pieces of at most `max` characters, each ending after whitespace where possible.
fn split_at_whitespace(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        // The byte offset just past `max` characters.
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, c)| i + c.len_utf8())
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// Documents grouped into calls: at most [`MAX_DOCUMENTS`] per call and [`MAX_TEXT_CHARS`]
/// characters in all.
fn batch_documents<'a>(documents: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut batches: Vec<Vec<&str>> = Vec::new();
    let mut chars = 0;
    for doc in documents {
        let len = doc.chars().count();
        let full = batches
            .last()
            .is_none_or(|b| b.len() >= MAX_DOCUMENTS || chars + len > MAX_TEXT_CHARS);
        if full {
            batches.push(Vec::new());
            chars = 0;
        }
        batches.last_mut().expect("a batch").push(doc);
        chars += len;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_split_at_whitespace_and_short_texts_are_joined() {
        assert_eq!(split_at_whitespace("aaa bbb ccc", 8), ["aaa bbb ", "ccc"]);
        assert_eq!(split_at_whitespace("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(split_at_whitespace("éé éé", 3), ["éé ", "éé"]);
        assert_eq!(pack(&["one", " ", "two"], 100), ["one\n\ntwo"]);
        assert_eq!(pack(&["aaaa", "bbbb"], 9), ["aaaa", "bbbb"]);
        assert_eq!(pack(&["aaa", "bbb"], 8), ["aaa\n\nbbb"]);
        for piece in pack(&[&"word ".repeat(5_000), "tail"], MAX_TEXT_CHARS) {
            assert!(piece.chars().count() <= MAX_TEXT_CHARS);
        }
        let docs = ["a"; 7];
        let batches = batch_documents(&docs);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [5, 2]);
    }

    #[test]
    fn thresholds_per_category_override_the_general_one() {
        let mut config = AzureTextModerationConfig {
            api_key: Some("k".into()),
            api_base: Some("https://r.example".into()),
            ..AzureTextModerationConfig::default()
        };
        let g = AzureTextModeration::new(config.clone()).unwrap();
        assert_eq!(g.threshold("Hate"), 2);
        config.severity_threshold = Some(4);
        config
            .severity_threshold_by_category
            .insert("Violence".into(), 6);
        let g = AzureTextModeration::new(config.clone()).unwrap();
        assert_eq!((g.threshold("Hate"), g.threshold("Violence")), (4, 6));
        let severities = BTreeMap::from([("Hate".to_owned(), 2), ("Violence".to_owned(), 4)]);
        assert_eq!(g.violation(&severities), None);
        let severities = BTreeMap::from([("Violence".to_owned(), 6)]);
        assert_eq!(g.violation(&severities), Some(("Violence", 6, 6)));
    }

    #[test]
    fn config_errors_name_the_key() {
        let base = || AzureTextModerationConfig {
            api_key: Some("k".into()),
            api_base: Some("https://r.example".into()),
            ..AzureTextModerationConfig::default()
        };
        let err = |c: AzureTextModerationConfig| {
            AzureTextModeration::new(c).unwrap_err().field().to_owned()
        };
        assert_eq!(
            err(AzureTextModerationConfig {
                api_key: None,
                ..base()
            }),
            "api_key"
        );
        assert_eq!(
            err(AzureTextModerationConfig {
                api_base: None,
                ..base()
            }),
            "api_base"
        );
        assert_eq!(
            err(AzureTextModerationConfig {
                severity_threshold: Some(0),
                ..base()
            }),
            "severity_threshold"
        );
        let mut c = base();
        c.severity_threshold_by_category.insert("Gore".into(), 2);
        assert_eq!(err(c), "severity_threshold_by_category.Gore");
        assert_eq!(
            err(AzureTextModerationConfig {
                categories: Some(vec!["Spam".into()]),
                ..base()
            }),
            "categories"
        );
        assert_eq!(
            err(AzureTextModerationConfig {
                output_type: Some("Two".into()),
                ..base()
            }),
            "outputType"
        );
        assert_eq!(
            err(AzureTextModerationConfig {
                api_version: Some("x&y=1".into()),
                ..base()
            }),
            "api_version"
        );
        let err = AzurePromptShield::new(AzurePromptShieldConfig::default()).unwrap_err();
        assert_eq!(err.field(), "api_key");
        let shield = AzurePromptShield::new(AzurePromptShieldConfig {
            api_key: Some("secret-key".into()),
            api_base: Some("https://r.example/".into()),
            api_version: Some("v1".into()),
            timeout: None,
        })
        .unwrap();
        assert_eq!(
            shield.endpoint(),
            "https://r.example/contentsafety/text:shieldPrompt?api-version=2024-09-01"
        );
        assert!(!format!("{shield:?}").contains("secret-key"));
    }
}
