//! PII masking with Microsoft Presidio (`guardrail: presidio`), configured with LiteLLM's keys.
//!
//! Each text is sent to the Presidio analyzer (`POST {presidio_analyzer_api_base}/analyze`).
//! When it finds an entity whose action in `pii_entities_config` is `BLOCK`, the text is
//! blocked (a 400 before the head is sent, the in-band error event after it) and the anonymizer
//! is not called. Otherwise the findings go to the anonymizer
//! (`POST {presidio_anonymizer_api_base}/anonymize`) and its text replaces the original:
//! upstream on the way in, to the client on the way out. The log records what was found (entity
//! types, offsets and scores, never the values) and `masked_entity_count`.
//!
//! ```
//! use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode};
//! use guardrail_tower_guardrails::presidio::{PiiAction, Presidio, PresidioConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config: PresidioConfig = serde_yaml_ng::from_str(r#"
//!     guardrail: presidio
//!     mode: [pre_call, post_call]
//!     presidio_analyzer_api_base: http://presidio-analyzer:3000
//!     presidio_anonymizer_api_base: http://presidio-anonymizer:3000
//!     presidio_language: en
//!     pii_entities_config: {EMAIL_ADDRESS: MASK, US_SSN: BLOCK}
//!     presidio_score_thresholds: {ALL: 0.5, PERSON: 0.8}
//!     output_parse_pii: true
//! "#)?;
//! assert_eq!(config.pii_entities_config["US_SSN"], PiiAction::Block);
//! let presidio = Presidio::new(config)?.with_guardrail_name("pii");
//! let guardrail = ConfiguredGuardrail::new(
//!     "pii",
//!     [GuardrailMode::PreCall, GuardrailMode::PostCall],
//!     presidio,
//! );
//! assert_eq!(guardrail.provider(), "presidio");
//! # Ok(())
//! # }
//! ```
//!
//! # Settings
//!
//! | key | meaning |
//! | --- | --- |
//! | `presidio_analyzer_api_base`, `presidio_anonymizer_api_base` | required; a URL without a scheme gets `http://` (as in LiteLLM) |
//! | `pii_entities_config` | `{ENTITY: MASK \| BLOCK}`; when set, only these entities are asked for |
//! | `presidio_score_thresholds` | `{ENTITY: min_score}`, with `ALL` for the others; findings below are ignored |
//! | `presidio_entities_deny_list` | entity types to ignore |
//! | `presidio_language` | default `en` |
//! | `presidio_ad_hoc_recognizers` | a JSON file of ad-hoc recognizers, read at start-up and sent with every analysis |
//! | `output_parse_pii` | mask with numbered placeholders (`<PERSON_1>`) and restore them in the response |
//! | `apply_to_output` | mask the response as well (cannot be combined with `output_parse_pii`) |
//! | `timeout` | seconds per call, default 10 |
//!
//! # `output_parse_pii`
//!
//! On the request side each entity gets a numbered placeholder, `<{ENTITY_TYPE}_{n}>`, numbered
//! per entity type across the whole request (the same value gets the same placeholder in every
//! message; a placeholder that already occurs in the request is skipped). The anonymizer
//! applies them (each entity is sent under its own placeholder's name with a `replace`
//! operator), so its conflict resolution decides what is masked. The placeholders and their
//! values are kept in the request's [`RequestState`](guardrail_tower_core::RequestState), not on
//! the guardrail: the response is restored with the values of **this** request only. (LiteLLM
//! once kept them on the guardrail object, shared by every request, and numbered them per
//! message, so two messages' `<PERSON_1>` collided.) With `output_parse_pii`, the response is
//! restored, not analyzed again: the client gets back the values it sent.
//!
//! # Streams
//!
//! A streamed response is checked by the streaming layer in windows (see
//! [`StreamWindow`](guardrail_tower_core::StreamWindow)). Per window:
//!
//! - **masking** (post-call without `output_parse_pii`): the whole window, overlap included, is
//!   analyzed (the overlap gives the analyzer context). A `BLOCK` entity anywhere in it ends the
//!   stream with the in-band error. `MASK` entities in the new text are masked; entities wholly
//!   inside the overlap were masked with the window that brought them and are left alone; an
//!   entity cut by the window boundary is masked from the boundary on (its beginning was sent
//!   before the analyzer could see the whole entity). Use `buffer_all` where a partial entity
//!   must never reach the client.
//! - **restoring** (`output_parse_pii`): placeholders of this request in the new text are
//!   restored. When the new text ends with the beginning of one of this request's placeholders
//!   (`<EMAIL_ADD`), that beginning is held back, and the next window, which sees it again in its
//!   overlap, completes and restores it (or sends it as it was, if it was not a placeholder).
//!   This needs windows whose `chars` and `overlap` are at least as long as a placeholder (the
//!   defaults, 200 and 50, are). A placeholder beginning held back at the very end of a stream
//!   (a placeholder the model cut off) is dropped.
//!
//! # Failures
//!
//! As for every HTTP guardrail (see [`crate::http`]): connect errors, timeouts and 502/503/504
//! are *unreachable*; other statuses and answers of the wrong shape are *failed*. Unlike
//! LiteLLM, an analyzer answer with an item it cannot read fails the check instead of skipping
//! the item (a skipped item is an unmasked entity).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;
use futures_util::future::try_join_all;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, StateKey, Verdict};
use http::header::{ACCEPT, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::http::{ConfigError, HttpClient, JsonPost, parse_base_url, shared_client};
use crate::support::{CharOffsets, context_len, kind_of, timeout_or};

/// The default `presidio_language`.
pub const DEFAULT_LANGUAGE: &str = "en";

/// The environment variable a gateway reads an unset `presidio_analyzer_api_base` from
/// (LiteLLM's).
pub const ANALYZER_API_BASE_ENV: &str = "PRESIDIO_ANALYZER_API_BASE";

/// The environment variable a gateway reads an unset `presidio_anonymizer_api_base` from
/// (LiteLLM's).
pub const ANONYMIZER_API_BASE_ENV: &str = "PRESIDIO_ANONYMIZER_API_BASE";

/// The default timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The longest placeholder, in bytes, looked for when restoring.
const MAX_PLACEHOLDER_LEN: usize = 96;

/// What to do with an entity type (`pii_entities_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PiiAction {
    /// Replace it with the anonymizer's placeholder.
    Mask,
    /// Refuse the text.
    Block,
}

/// The settings of a Presidio guardrail: LiteLLM's `litellm_params` for `guardrail: presidio`
/// (other keys are ignored). See the [module docs](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct PresidioConfig {
    /// The analyzer's base URL (`/analyze` is appended). Required.
    #[serde(default)]
    pub presidio_analyzer_api_base: Option<String>,
    /// The anonymizer's base URL (`/anonymize` is appended). Required.
    #[serde(default)]
    pub presidio_anonymizer_api_base: Option<String>,
    /// `MASK` or `BLOCK` per entity type. Empty: every entity the analyzer finds is masked.
    #[serde(default)]
    pub pii_entities_config: BTreeMap<String, PiiAction>,
    /// The lowest score kept per entity type; `ALL` applies to the types not listed.
    #[serde(default)]
    pub presidio_score_thresholds: BTreeMap<String, f64>,
    /// Entity types to ignore.
    #[serde(default)]
    pub presidio_entities_deny_list: Vec<String>,
    /// The analyzer's language. Default [`DEFAULT_LANGUAGE`].
    #[serde(default)]
    pub presidio_language: Option<String>,
    /// A JSON file of ad-hoc recognizers, sent as `ad_hoc_recognizers` with every analysis.
    #[serde(default)]
    pub presidio_ad_hoc_recognizers: Option<String>,
    /// Mask with numbered placeholders and restore them in the response.
    #[serde(default)]
    pub output_parse_pii: bool,
    /// Mask the response too (the gateway adds `post_call` to the modes).
    #[serde(default)]
    pub apply_to_output: bool,
    /// The longest one call may take, in seconds. Default [`DEFAULT_TIMEOUT_SECS`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

impl PresidioConfig {
    /// A config for the analyzer and anonymizer at these base URLs, everything else default.
    pub fn new(
        analyzer_api_base: impl Into<String>,
        anonymizer_api_base: impl Into<String>,
    ) -> Self {
        PresidioConfig {
            presidio_analyzer_api_base: Some(analyzer_api_base.into()),
            presidio_anonymizer_api_base: Some(anonymizer_api_base.into()),
            ..PresidioConfig::default()
        }
    }
}

/// A guardrail that masks (or blocks) PII found by Presidio. See the [module docs](self).
#[derive(Clone)]
pub struct Presidio {
    client: HttpClient,
    analyze: JsonPost,
    anonymize: JsonPost,
    language: String,
    entities: BTreeMap<String, PiiAction>,
    thresholds: BTreeMap<String, f64>,
    deny: Vec<String>,
    ad_hoc: Option<Value>,
    output_parse_pii: bool,
    name: Option<String>,
    state: StateKey,
}

impl Presidio {
    /// Checks `config` and builds the guardrail on the [`shared_client`].
    pub fn new(config: PresidioConfig) -> Result<Self, ConfigError> {
        Presidio::with_client(config, shared_client())
    }

    /// Like [`new`](Self::new), on the given client.
    pub fn with_client(config: PresidioConfig, client: HttpClient) -> Result<Self, ConfigError> {
        let analyzer = endpoint(
            "presidio_analyzer_api_base",
            config.presidio_analyzer_api_base.as_deref(),
            "analyze",
        )?;
        let anonymizer = endpoint(
            "presidio_anonymizer_api_base",
            config.presidio_anonymizer_api_base.as_deref(),
            "anonymize",
        )?;
        if config.output_parse_pii && config.apply_to_output {
            return Err(ConfigError::new(
                "apply_to_output",
                "cannot be combined with output_parse_pii (one restores the response's \
                 placeholders, the other masks the response)",
            ));
        }
        let language = match config.presidio_language.as_deref().map(str::trim) {
            None => DEFAULT_LANGUAGE.to_owned(),
            Some("") => return Err(ConfigError::new("presidio_language", "must not be empty")),
            Some(lang) => lang.to_owned(),
        };
        for (entity, score) in &config.presidio_score_thresholds {
            if !(0.0..=1.0).contains(score) {
                return Err(ConfigError::new(
                    format!("presidio_score_thresholds.{entity}"),
                    format!("{score} is not a score between 0 and 1"),
                ));
            }
        }
        let ad_hoc = match &config.presidio_ad_hoc_recognizers {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "presidio_ad_hoc_recognizers",
                        format!("cannot read '{path}': {e}"),
                    )
                })?;
                let value: Value = serde_json::from_str(&text).map_err(|e| {
                    ConfigError::new(
                        "presidio_ad_hoc_recognizers",
                        format!("'{path}' is not JSON: {e}"),
                    )
                })?;
                Some(value)
            }
        };
        let timeout = timeout_or(config.timeout, DEFAULT_TIMEOUT_SECS)?;
        let post = |uri| {
            JsonPost::new(uri)
                .timeout(timeout)
                .header(ACCEPT, HeaderValue::from_static("application/json"))
        };
        Ok(Presidio {
            client,
            analyze: post(analyzer),
            anonymize: post(anonymizer),
            language,
            entities: config.pii_entities_config,
            thresholds: config.presidio_score_thresholds,
            deny: config.presidio_entities_deny_list,
            ad_hoc,
            output_parse_pii: config.output_parse_pii,
            name: None,
            state: StateKey::new(),
        })
    }

    /// Names the guardrail in block messages, as LiteLLM does ("... by Guardrail: {name}").
    pub fn with_guardrail_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The analyzer URL called.
    pub fn analyzer_endpoint(&self) -> &http::Uri {
        self.analyze.uri()
    }

    /// The anonymizer URL called.
    pub fn anonymizer_endpoint(&self) -> &http::Uri {
        self.anonymize.uri()
    }

    /// The analyzer request body for `text`.
    fn analyze_body(&self, text: &str) -> Value {
        let mut body = Map::new();
        body.insert("text".into(), Value::from(text));
        body.insert("language".into(), Value::from(self.language.as_str()));
        if !self.entities.is_empty() {
            body.insert(
                "entities".into(),
                self.entities
                    .keys()
                    .map(|k| Value::from(k.as_str()))
                    .collect(),
            );
        }
        if let Some(ad_hoc) = &self.ad_hoc {
            body.insert("ad_hoc_recognizers".into(), ad_hoc.clone());
        }
        Value::Object(body)
    }

    /// The findings in `text` that pass the thresholds and the deny list.
    async fn analyze_text(&self, text: &str) -> Result<Vec<Finding>, GuardrailError> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let body = serde_json::to_vec(&self.analyze_body(text))
            .map_err(|e| GuardrailError::failed(format!("could not encode the request: {e}")))?;
        let answer = self
            .client
            .post_json(&self.analyze, Bytes::from(body))
            .await?;
        let offsets = CharOffsets::new(text);
        let findings = parse_analysis(&answer, &offsets)?;
        Ok(findings.into_iter().filter(|f| self.keeps(f)).collect())
    }

    /// Whether a finding passes the deny list and the score thresholds.
    fn keeps(&self, finding: &Finding) -> bool {
        if self.deny.iter().any(|d| d == &finding.entity) {
            return false;
        }
        let threshold = self
            .thresholds
            .get(&finding.entity)
            .or_else(|| self.thresholds.get("ALL"));
        threshold.is_none_or(|t| finding.score >= *t)
    }

    fn action(&self, entity: &str) -> PiiAction {
        self.entities
            .get(entity)
            .copied()
            .unwrap_or(PiiAction::Mask)
    }

    fn block_message(&self, entity: &str) -> String {
        match &self.name {
            Some(name) => format!(
                "Blocked entity detected: {entity} by Guardrail: {name}. This entity is not allowed to be used in this request."
            ),
            None => format!(
                "Blocked entity detected: {entity}. This entity is not allowed to be used in this request."
            ),
        }
    }

    /// Analyzes every text; blocks, or masks through the anonymizer.
    async fn analyze_and_mask(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let texts = input.texts();
        let analyses = try_join_all(texts.iter().map(|t| self.analyze_text(t))).await?;
        let detail = findings_detail(texts, &analyses, |f| self.action(&f.entity));
        for findings in &analyses {
            if let Some(blocked) = findings
                .iter()
                .find(|f| self.action(&f.entity) == PiiAction::Block)
            {
                return Ok(Verdict::block(self.block_message(&blocked.entity)).with_detail(detail));
            }
        }
        // What to mask: the findings that reach past the window's context, from the boundary on.
        let numbered = input.side() == Side::Request && self.output_parse_pii;
        let mut jobs: Vec<(usize, Vec<Finding>)> = Vec::new();
        for (i, findings) in analyses.into_iter().enumerate() {
            let context = context_len(input, i);
            let masks: Vec<Finding> = findings
                .into_iter()
                .filter(|f| f.end > context)
                .map(|mut f| {
                    f.start = f.start.max(context);
                    f
                })
                .collect();
            if !masks.is_empty() {
                jobs.push((i, masks));
            }
        }
        if jobs.is_empty() {
            return Ok(Verdict::allow().with_detail(detail));
        }
        let (names, entity_of) = if numbered {
            self.assign_placeholders(input, &jobs)
        } else {
            (Vec::new(), HashMap::new())
        };
        let results = try_join_all(jobs.iter().enumerate().map(|(j, (i, masks))| {
            let names = names.get(j).map(Vec::as_slice);
            self.anonymize_text(&texts[*i], masks, names, &entity_of)
        }))
        .await?;
        let mut new_texts = texts.to_vec();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for ((i, _), (text, masked)) in jobs.iter().zip(results) {
            let context = context_len(input, *i);
            if !text.starts_with(&texts[*i][..context]) {
                return Err(GuardrailError::failed(
                    "the Presidio anonymizer changed text outside the entities it was given",
                ));
            }
            new_texts[*i] = text;
            for entity in masked {
                *counts.entry(entity).or_insert(0) += 1;
            }
        }
        if new_texts == texts {
            return Ok(Verdict::allow().with_detail(detail));
        }
        Ok(Verdict::rewrite(new_texts)
            .with_detail(detail)
            .with_masked_entity_count(counts))
    }

    /// Gives every finding to mask a numbered placeholder, kept in the request's state. Returns
    /// the placeholder name (`EMAIL_ADDRESS_1`, without brackets) of each mask of each job, and
    /// the entity type of each name.
    fn assign_placeholders(
        &self,
        input: &GuardrailInput,
        jobs: &[(usize, Vec<Finding>)],
    ) -> (Vec<Vec<String>>, HashMap<String, String>) {
        let texts = input.texts();
        input
            .meta()
            .state()
            .update::<Placeholders, _>(self.state, |state| {
                let mut entity_of = HashMap::new();
                let names = jobs
                    .iter()
                    .map(|(i, masks)| {
                        masks
                            .iter()
                            .map(|f| {
                                let value = &texts[*i][f.start..f.end];
                                let token = state.assign(&f.entity, value, texts);
                                let name = token[1..token.len() - 1].to_owned();
                                entity_of.insert(name.clone(), f.entity.clone());
                                name
                            })
                            .collect()
                    })
                    .collect();
                (names, entity_of)
            })
    }

    /// Sends one text and its findings to the anonymizer; returns the anonymized text and the
    /// entity type of each item it masked. With `names`, each finding is sent under its
    /// placeholder's name with a `replace` operator that writes the placeholder.
    async fn anonymize_text(
        &self,
        text: &str,
        masks: &[Finding],
        names: Option<&[String]>,
        entity_of: &HashMap<String, String>,
    ) -> Result<(String, Vec<String>), GuardrailError> {
        let offsets = CharOffsets::new(text);
        let mut anonymizers = Map::new();
        let results: Vec<Value> = masks
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let entity = match names.and_then(|n| n.get(k)) {
                    Some(name) => {
                        anonymizers.insert(
                            name.clone(),
                            json!({"type": "replace", "new_value": format!("<{name}>")}),
                        );
                        name.clone()
                    }
                    None => f.entity.clone(),
                };
                json!({
                    "entity_type": entity,
                    "start": offsets.char_at(f.start),
                    "end": offsets.char_at(f.end),
                    "score": f.score,
                })
            })
            .collect();
        let mut body = Map::new();
        body.insert("text".into(), Value::from(text));
        if !anonymizers.is_empty() {
            body.insert("anonymizers".into(), Value::Object(anonymizers));
        }
        body.insert("analyzer_results".into(), Value::Array(results));
        let body = serde_json::to_vec(&body)
            .map_err(|e| GuardrailError::failed(format!("could not encode the request: {e}")))?;
        let answer = self
            .client
            .post_json(&self.anonymize, Bytes::from(body))
            .await?;
        let (text, items) = parse_anonymized(&answer)?;
        let masked = items
            .into_iter()
            .map(|entity| entity_of.get(&entity).cloned().unwrap_or(entity))
            .collect();
        Ok((text, masked))
    }

    /// Restores this request's placeholders in the response texts.
    fn restore(&self, input: &GuardrailInput) -> Verdict {
        let window = input.stream_window();
        let last = window.is_none_or(|w| w.is_last());
        let texts = input.texts();
        let restored = input
            .meta()
            .state()
            .update::<Placeholders, _>(self.state, |state| {
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| state.restore(text, context_len(input, i), last))
                    .collect::<Vec<_>>()
            });
        let count: usize = restored.iter().map(|(_, n)| n).sum();
        let new_texts: Vec<String> = restored.into_iter().map(|(t, _)| t).collect();
        let detail = json!({ "restored_placeholders": count });
        if new_texts == texts {
            Verdict::allow().with_detail(detail)
        } else {
            Verdict::rewrite(new_texts).with_detail(detail)
        }
    }
}

impl fmt::Debug for Presidio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presidio")
            .field("analyzer", self.analyze.uri())
            .field("anonymizer", self.anonymize.uri())
            .field("language", &self.language)
            .field("pii_entities_config", &self.entities)
            .field("output_parse_pii", &self.output_parse_pii)
            .field("timeout", &self.analyze.get_timeout())
            .finish_non_exhaustive()
    }
}

impl Guardrail for Presidio {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        if input.side() == Side::Response && self.output_parse_pii {
            return Ok(self.restore(input));
        }
        self.analyze_and_mask(input).await
    }

    fn provider(&self) -> &str {
        "presidio"
    }

    /// Only the texts it is given (and the request's state, for the placeholders it restores).
    fn reads_request_body(&self) -> bool {
        false
    }

    /// Nor the request's headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}

/// `{base}/{path}`: `http://` is added to a base without a scheme (as LiteLLM does).
fn endpoint(field: &str, base: Option<&str>, path: &str) -> Result<http::Uri, ConfigError> {
    let base = crate::support::required(field, base)?;
    let base = base.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    parse_base_url(field, &format!("{base}/{path}"))
}

/// One entity the analyzer found, in byte offsets of the text.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    entity: String,
    start: usize,
    end: usize,
    score: f64,
}

/// Reads the analyzer's answer: a JSON array of `{entity_type, start, end, score}` in character
/// offsets. Anything else fails the check.
fn parse_analysis(answer: &Value, offsets: &CharOffsets) -> Result<Vec<Finding>, GuardrailError> {
    let bad =
        |what: String| GuardrailError::failed(format!("the Presidio analyzer answered {what}"));
    let items = match answer {
        Value::Array(items) => items,
        Value::Object(map) if map.contains_key("error") => {
            return Err(bad(format!("an error: {}", map["error"])));
        }
        other => return Err(bad(format!("{}, not an array of results", kind_of(other)))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let entity = item.get("entity_type").and_then(Value::as_str);
            let start = item.get("start").and_then(Value::as_u64);
            let end = item.get("end").and_then(Value::as_u64);
            let score = item.get("score").and_then(Value::as_f64);
            let (Some(entity), Some(start), Some(end), Some(score)) = (entity, start, end, score)
            else {
                return Err(bad(format!(
                    "a result (#{i}) without a string `entity_type`, integer `start` and `end` \
                     and a numeric `score`"
                )));
            };
            let byte = |c: u64| usize::try_from(c).ok().and_then(|c| offsets.byte(c));
            match (byte(start), byte(end)) {
                (Some(start), Some(end)) if start < end && !entity.is_empty() => Ok(Finding {
                    entity: entity.to_owned(),
                    start,
                    end,
                    score,
                }),
                _ => Err(bad(format!(
                    "a result (#{i}, {entity} at {start}..{end}) outside the text of {} characters",
                    offsets.chars()
                ))),
            }
        })
        .collect()
}

/// Reads the anonymizer's answer: `{"text": ..., "items": [{"entity_type": ...}, ...]}`.
fn parse_anonymized(answer: &Value) -> Result<(String, Vec<String>), GuardrailError> {
    let bad =
        |what: &str| GuardrailError::failed(format!("the Presidio anonymizer answered {what}"));
    let Some(text) = answer.get("text").and_then(Value::as_str) else {
        return Err(bad("no string `text`"));
    };
    let items = match answer.get("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.get("entity_type")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| bad("an item without a string `entity_type`"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`items` that is not an array")),
    };
    Ok((text.to_owned(), items))
}

/// The log's record of the findings: entity types, character offsets, scores and actions
/// (never the values).
fn findings_detail(
    texts: &[String],
    analyses: &[Vec<Finding>],
    action: impl Fn(&Finding) -> PiiAction,
) -> Value {
    let results: Vec<Value> = texts
        .iter()
        .zip(analyses)
        .enumerate()
        .flat_map(|(i, (text, findings))| {
            let offsets = CharOffsets::new(text);
            findings
                .iter()
                .map(|f| {
                    json!({
                        "text_index": i,
                        "entity_type": f.entity,
                        "start": offsets.char_at(f.start),
                        "end": offsets.char_at(f.end),
                        "score": f.score,
                        "action": action(f),
                    })
                    .clone()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    json!({ "analyzer_results": results })
}

/// One request's placeholders (`output_parse_pii`), kept in its
/// [`RequestState`](guardrail_tower_core::RequestState).
#[derive(Debug, Default)]
struct Placeholders {
    /// Placeholder -> original value.
    values: HashMap<String, String>,
    /// (entity type, value) -> placeholder.
    tokens: HashMap<(String, String), String>,
    /// The last number used per entity type.
    numbers: HashMap<String, u64>,
}

impl Placeholders {
    /// The placeholder of `value`: the one it already has, or the next free number for its
    /// entity type that occurs in none of `texts`.
    fn assign(&mut self, entity: &str, value: &str, texts: &[String]) -> String {
        let key = (entity.to_owned(), value.to_owned());
        if let Some(token) = self.tokens.get(&key) {
            return token.clone();
        }
        let number = self.numbers.entry(entity.to_owned()).or_insert(0);
        let token = loop {
            *number += 1;
            let token = format!("<{entity}_{number}>");
            if !texts.iter().any(|t| t.contains(&token)) {
                break token;
            }
        };
        self.values.insert(token.clone(), value.to_owned());
        self.tokens.insert(key, token.clone());
        token
    }

    /// A full placeholder of this request at the start of `rest`, with its value.
    fn full_at<'a>(&'a self, rest: &str) -> Option<(usize, &'a str)> {
        let end = rest
            .char_indices()
            .take(MAX_PLACEHOLDER_LEN)
            .skip(1)
            .find(|&(_, c)| c == '>' || c == '<' || c.is_whitespace())
            .filter(|&(_, c)| c == '>')
            .map(|(i, _)| i + 1)?;
        self.values
            .get(&rest[..end])
            .map(|value| (end, value.as_str()))
    }

    /// Whether `rest` (which runs to the end of the text) is a proper beginning of one of this
    /// request's placeholders.
    fn is_partial(&self, rest: &str) -> bool {
        rest.len() < MAX_PLACEHOLDER_LEN
            && self
                .values
                .keys()
                .any(|token| token.len() > rest.len() && token.starts_with(rest))
    }

    /// Restores the placeholders in `text`, whose first `context` bytes were already sent (and
    /// stay as they are). See the module docs for what happens at window boundaries. Returns
    /// the text and the number of placeholders restored.
    fn restore(&self, text: &str, context: usize, last: bool) -> (String, usize) {
        if self.values.is_empty() {
            return (text.to_owned(), 0);
        }
        let mut out = String::with_capacity(text.len());
        out.push_str(&text[..context]);
        let mut count = 0;
        let mut pos = context;
        // A placeholder beginning at the end of the context was held back by the previous
        // window: complete it, hold it further, or send it as it was.
        if let Some(start) = text[..context].rfind('<') {
            if self.is_partial(&text[start..context]) {
                if let Some((len, value)) = self
                    .full_at(&text[start..])
                    .filter(|(len, _)| start + len > context)
                {
                    out.push_str(value);
                    count += 1;
                    pos = start + len;
                } else if !last && self.is_partial(&text[start..]) {
                    return (out, 0);
                } else {
                    out.push_str(&text[start..context]);
                }
            }
        }
        while let Some(offset) = text[pos..].find('<') {
            let at = pos + offset;
            out.push_str(&text[pos..at]);
            if let Some((len, value)) = self.full_at(&text[at..]) {
                out.push_str(value);
                count += 1;
                pos = at + len;
            } else if !last && self.is_partial(&text[at..]) {
                // Held back: the next window sees it again in its overlap.
                return (out, count);
            } else {
                out.push('<');
                pos = at + 1;
            }
        }
        out.push_str(&text[pos..]);
        (out, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(pairs: &[(&str, &str)]) -> Placeholders {
        let mut p = Placeholders::default();
        for (token, value) in pairs {
            p.values.insert((*token).to_owned(), (*value).to_owned());
        }
        p
    }

    #[test]
    fn numbering_is_per_entity_type_per_request_and_skips_placeholders_in_the_text() {
        let mut p = Placeholders::default();
        let texts = vec!["Alice wrote <PERSON_1> to Bob".to_owned()];
        assert_eq!(p.assign("PERSON", "Alice", &texts), "<PERSON_2>");
        assert_eq!(p.assign("PERSON", "Bob", &texts), "<PERSON_3>");
        assert_eq!(p.assign("PERSON", "Alice", &texts), "<PERSON_2>");
        assert_eq!(
            p.assign("EMAIL_ADDRESS", "a@b.c", &texts),
            "<EMAIL_ADDRESS_1>"
        );
        assert_eq!(p.values["<PERSON_3>"], "Bob");
    }

    #[test]
    fn whole_texts_are_restored() {
        let p = placeholders(&[("<PERSON_1>", "Zoë"), ("<EMAIL_ADDRESS_1>", "zoë@x.fr")]);
        assert_eq!(
            p.restore(
                "Hi <PERSON_1>, mail <EMAIL_ADDRESS_1> or <PERSON_2> <b>",
                0,
                true
            ),
            ("Hi Zoë, mail zoë@x.fr or <PERSON_2> <b>".to_owned(), 2)
        );
        // A placeholder cut off at the very end stays as it is.
        assert_eq!(p.restore("Hi <PERS", 0, true), ("Hi <PERS".to_owned(), 0));
        assert_eq!(
            placeholders(&[]).restore("<PERSON_1>", 0, true),
            ("<PERSON_1>".to_owned(), 0)
        );
    }

    #[test]
    fn a_placeholder_cut_by_a_window_boundary_is_held_and_completed() {
        let p = placeholders(&[("<EMAIL_ADDRESS_1>", "jane@corp.com")]);
        // Window 1: new text ends with the beginning of a placeholder: held back.
        assert_eq!(
            p.restore("Write to <EMAIL_AD", 0, false),
            ("Write to ".to_owned(), 0)
        );
        // Window 2: the overlap holds the beginning; the new text completes it.
        let text = "Write to <EMAIL_ADDRESS_1> today";
        let context = "Write to <EMAIL_AD".len();
        assert_eq!(
            p.restore(text, context, false),
            ("Write to <EMAIL_ADjane@corp.com today".to_owned(), 1)
        );
        // Not a placeholder after all: the held text is sent again with the new text.
        let text = "a <EMAIL_ADx";
        assert_eq!(
            p.restore(text, "a <EMAIL_AD".len(), true),
            ("a <EMAIL_AD<EMAIL_ADx".to_owned(), 0)
        );
        // Still a beginning: held further.
        let text = "a <EMAIL_ADDR";
        assert_eq!(
            p.restore(text, "a <EMAIL_AD".len(), false),
            ("a <EMAIL_AD".to_owned(), 0)
        );
        // A '<' that begins no placeholder is never held.
        assert_eq!(p.restore("x < y", 0, false), ("x < y".to_owned(), 0));
        assert_eq!(p.restore("x <b", 0, false), ("x <b".to_owned(), 0));
    }

    /// What a client receives when `text` streams in windows ending at `cuts` (and at the
    /// end), each with `overlap` bytes of context, as the streaming layer applies rewrites.
    fn streamed(p: &Placeholders, text: &str, cuts: &[usize], overlap: usize) -> String {
        let mut out = String::new();
        let mut start: usize = 0;
        let ends: Vec<usize> = cuts.iter().copied().chain([text.len()]).collect();
        for (k, &end) in ends.iter().enumerate() {
            let window_start = start.saturating_sub(overlap);
            let last = k + 1 == ends.len();
            let (new, _) = p.restore(&text[window_start..end], start - window_start, last);
            let prefix = &text[window_start..start];
            out.push_str(new.strip_prefix(prefix).expect("the context is left alone"));
            start = end;
        }
        out
    }

    #[test]
    fn placeholders_are_restored_at_every_split() {
        let p = placeholders(&[
            ("<EMAIL_ADDRESS_1>", "jane@corp.com"),
            ("<PERSON_1>", "Zoë"),
        ]);
        let text = "Dear <PERSON_1>, write to <EMAIL_ADDRESS_1> or <b>me</b> <PERSON_9>.";
        let want = "Dear Zoë, write to jane@corp.com or <b>me</b> <PERSON_9>.";
        for cut in 1..text.len() {
            assert_eq!(streamed(&p, text, &[cut], 40), want, "cut at {cut}");
            for cut2 in cut + 1..text.len() {
                if cut2 - cut >= 20 {
                    assert_eq!(
                        streamed(&p, text, &[cut, cut2], 40),
                        want,
                        "cuts {cut}, {cut2}"
                    );
                }
            }
        }
    }

    #[test]
    fn analyzer_answers_are_checked() {
        let text = "Zoë: zoë@x.fr";
        let offsets = CharOffsets::new(text);
        let found = parse_analysis(
            &json!([{"entity_type": "EMAIL_ADDRESS", "start": 5, "end": 13, "score": 1.0}]),
            &offsets,
        )
        .unwrap();
        assert_eq!(&text[found[0].start..found[0].end], "zoë@x.fr");
        for bad in [
            json!({"error": "No text provided"}),
            json!("oops"),
            json!([{"entity_type": "PERSON", "start": 0, "end": 99, "score": 1.0}]),
            json!([{"entity_type": "PERSON", "start": 3, "end": 3, "score": 1.0}]),
            json!([{"entity_type": "PERSON", "start": 0, "end": 3}]),
            json!([{"start": 0, "end": 3, "score": 0.5}]),
        ] {
            assert!(parse_analysis(&bad, &offsets).is_err(), "{bad}");
        }
        assert!(parse_anonymized(&json!({"items": []})).is_err());
        assert!(parse_anonymized(&json!({"text": "x", "items": [{}]})).is_err());
        assert_eq!(
            parse_anonymized(&json!({"text": "x"})).unwrap(),
            ("x".to_owned(), vec![])
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |config: PresidioConfig| Presidio::new(config).unwrap_err().field().to_owned();
        assert_eq!(err(PresidioConfig::default()), "presidio_analyzer_api_base");
        let c = PresidioConfig {
            presidio_analyzer_api_base: Some("http://a".into()),
            ..PresidioConfig::default()
        };
        assert_eq!(err(c), "presidio_anonymizer_api_base");
        let mut c = PresidioConfig::new("http://a", "http://b");
        c.output_parse_pii = true;
        c.apply_to_output = true;
        assert_eq!(err(c), "apply_to_output");
        let mut c = PresidioConfig::new("http://a", "http://b");
        c.presidio_score_thresholds.insert("ALL".into(), 1.5);
        assert_eq!(err(c), "presidio_score_thresholds.ALL");
        let mut c = PresidioConfig::new("http://a", "http://b");
        c.presidio_ad_hoc_recognizers = Some("/nonexistent/recognizers.json".into());
        assert_eq!(err(c), "presidio_ad_hoc_recognizers");
        let p =
            Presidio::new(PresidioConfig::new("presidio-analyzer:3000/", "http://b/x")).unwrap();
        assert_eq!(
            p.analyzer_endpoint(),
            "http://presidio-analyzer:3000/analyze"
        );
        assert_eq!(p.anonymizer_endpoint(), "http://b/x/anonymize");
    }
}
