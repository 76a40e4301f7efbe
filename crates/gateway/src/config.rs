//! The gateway's configuration: the subset of the LiteLLM proxy's `config.yaml` that matters
//! here, so an existing LiteLLM config runs unchanged.
//!
//! ```yaml
//! model_list:
//!   - model_name: gpt-guarded              # what clients send as `model`
//!     litellm_params:
//!       model: openai/gpt-4o-mini          # provider/upstream model
//!       api_base: http://127.0.0.1:9000/v1
//!       api_key: os.environ/OPENAI_API_KEY # or a literal
//!       guardrails: [pii-mask]             # model-level guardrails
//!       input_cost_per_token: 0.00000015   # optional prices (also accepted under model_info)
//!       output_cost_per_token: 0.0000006
//! guardrails:
//!   - guardrail_name: block-words
//!     litellm_params:
//!       guardrail: litellm_content_filter  # | generic_guardrail_api | openai_moderation
//!       mode: pre_call                     # or a list: [pre_call, post_call]; during_call
//!       default_on: true
//!       blocked_words: [{keyword: "forbidden", action: BLOCK}]
//!       unreachable_fallback: fail_open    # default fail_closed
//!       timeout: 5                         # seconds
//!       stream_policy: exact               # | end_of_stream | {window: {chars, overlap}}
//!                                          # | {buffer_all: {max_bytes, on_overflow}}
//! general_settings:
//!   master_key: os.environ/LITELLM_MASTER_KEY  # every route but the health probes needs a key
//!   user_api_key_cache_ttl: 5              # seconds a virtual key lookup is cached
//!   spend_logs: sqlite://spend_logs.db     # | postgres://... | jsonl://path (keys live here too)
//!   store_prompts_in_spend_logs: false
//!   request_timeout: 600                   # seconds: to the upstream's answer, and of silence mid-stream
//!   max_request_body_bytes: 16777216
//! ```
//!
//! Unknown keys are warnings. A config error (an unknown guardrail type, a guardrail name
//! referenced but not defined, a bad regex, a missing environment variable) is a
//! [`ConfigError`] naming the key and the line.
//!
//! Any string under `model_list[].litellm_params`, `guardrails[].litellm_params` and
//! `general_settings` (keys, URLs, headers, the master key) may be `os.environ/NAME`: it is read
//! from the environment when the config is loaded. Without `general_settings.master_key`, the
//! `LITELLM_MASTER_KEY` environment variable is the master key, as in LiteLLM. `Debug` of every
//! config type here redacts keys and database passwords.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use guardrail_tower_core::{
    ConfiguredGuardrail, DEFAULT_BODY_LIMIT, Fallback, GuardrailMode, GuardrailModes, StreamPolicy,
};
use guardrail_tower_guardrails::{
    ContentFilter, ContentFilterConfig, GenericGuardrailApi, GenericGuardrailApiConfig,
    OpenAiModeration, OpenAiModerationConfig,
};
use guardrail_tower_spend_log::ModelPrice;
use serde_yaml_ng::{Mapping, Value};

/// A configuration error: what is wrong, which key, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    line: Option<usize>,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(
        key: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        }
    }

    /// The key at fault (`guardrails[1].litellm_params.guardrail`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The 1-based line, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "config error at line {line}: {}: {}",
                self.key, self.message
            ),
            None => write!(f, "config error: {}: {}", self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI or any OpenAI-compatible server (`openai/...`, and any other prefix).
    OpenAi,
    /// Anthropic (`anthropic/...`).
    Anthropic,
}

/// One `model_list` entry. `Debug` redacts the key.
#[derive(Clone, PartialEq)]
pub struct Deployment {
    /// What clients send as `model`.
    pub model_name: String,
    /// The API the upstream speaks.
    pub provider: Provider,
    /// The upstream's model name (`openai/gpt-4o-mini` forwards `gpt-4o-mini`).
    pub upstream_model: String,
    /// The upstream base URL.
    pub api_base: String,
    /// The upstream key, if any.
    pub api_key: Option<String>,
    /// Model-level guardrails.
    pub guardrails: Vec<String>,
    /// Prices, if configured.
    pub price: Option<ModelPrice>,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("model_name", &self.model_name)
            .field("provider", &self.provider)
            .field("upstream_model", &self.upstream_model)
            .field("api_base", &self.api_base)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("guardrails", &self.guardrails)
            .field("price", &self.price)
            .finish()
    }
}

/// What `Debug` prints in place of a secret.
const REDACTED: &str = "<redacted>";

/// Where spend logs (and virtual keys) go. `Debug` redacts a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum SpendLogsTarget {
    /// `sqlite://path`.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(String),
    /// `jsonl://path`.
    Jsonl(PathBuf),
}

impl fmt::Debug for SpendLogsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpendLogsTarget::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            SpendLogsTarget::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
            SpendLogsTarget::Jsonl(path) => f.debug_tuple("Jsonl").field(path).finish(),
        }
    }
}

/// `url` with its password (`user:PASSWORD@host`, or a `password=` parameter) replaced.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                out.replace_range(start..scheme_end + 3 + at, REDACTED);
            }
        }
    }
    if let Some(query) = out.find('?') {
        let (head, params) = out.split_at(query + 1);
        let params: Vec<String> = params
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={REDACTED}"),
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

/// The default of `general_settings.user_api_key_cache_ttl`.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// A parsed configuration. `Debug` redacts every key.
pub struct GatewayConfig {
    /// The models.
    pub deployments: Vec<Deployment>,
    /// The guardrails, in configured order.
    pub guardrails: Vec<ConfiguredGuardrail>,
    /// Where spend logs go; `None` keeps them in memory only (queryable through
    /// `/spend/logs` until restart) — see [`crate::app`].
    pub spend_logs: Option<SpendLogsTarget>,
    /// Keep guardrail responses (which may quote prompts) in spend logs.
    pub store_prompts_in_spend_logs: bool,
    /// The longest an upstream may take to answer (a 504), and the longest it may go silent
    /// mid-response (the response body then fails).
    pub request_timeout: Duration,
    /// The request body limit.
    pub max_request_body_bytes: usize,
    /// The stream policy for guardrails that set none (and have no span matcher).
    pub stream_policy: StreamPolicy,
    /// `general_settings.master_key` (or the `LITELLM_MASTER_KEY` environment variable): with
    /// it, every route but the health probes needs a key.
    pub master_key: Option<String>,
    /// `general_settings.allow_unauthenticated`: `serve` may listen on a non-loopback address
    /// without a master key.
    pub allow_unauthenticated: bool,
    /// `general_settings.user_api_key_cache_ttl`: how long a virtual key lookup is cached (a
    /// key deleted on another replica stops working within this time). Default
    /// [`DEFAULT_KEY_CACHE_TTL`].
    pub key_cache_ttl: Duration,
    /// Warnings (unknown keys, settings that are accepted but not enforced).
    pub warnings: Vec<String>,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("deployments", &self.deployments)
            .field("guardrails", &self.guardrails)
            .field("spend_logs", &self.spend_logs)
            .field(
                "store_prompts_in_spend_logs",
                &self.store_prompts_in_spend_logs,
            )
            .field("request_timeout", &self.request_timeout)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .field("stream_policy", &self.stream_policy)
            .field("master_key", &self.master_key.as_ref().map(|_| REDACTED))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Finds the 1-based line of `key:` after the line containing `anchor` (or the first line with
/// `key:` when there is no anchor).
fn line_of(text: &str, anchor: Option<&str>, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = match anchor {
        Some(anchor) => lines.iter().position(|l| l.contains(anchor))?,
        None => 0,
    };
    let needle = format!("{key}:");
    lines[start..]
        .iter()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(&needle)
                || t.contains(&format!("{{{needle}"))
                || t.contains(&format!(" {needle}"))
        })
        .map(|i| start + i + 1)
        .or(Some(start + 1))
}

/// Reads an `os.environ/NAME` reference or returns the literal.
fn resolve(value: &str, key: &str, line: Option<usize>) -> Result<String, ConfigError> {
    match value.strip_prefix("os.environ/") {
        Some(name) => std::env::var(name).map_err(|_| {
            ConfigError::new(key, line, format!("environment variable {name} is not set"))
        }),
        None => Ok(value.to_owned()),
    }
}

fn string(map: &Mapping, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seconds(value: &Value) -> Option<Duration> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// Resolves every `os.environ/NAME` string inside a value, in place.
fn resolve_all(value: &mut Value, key: &str, text: &str, anchor: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.starts_with("os.environ/") => {
            let line = line_of(text, Some(anchor), key.rsplit('.').next().unwrap_or(key));
            *s = resolve(s, key, line)?;
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.as_str().unwrap_or("?").to_owned();
                resolve_all(v, &format!("{key}.{k}"), text, anchor)?;
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                resolve_all(v, &format!("{key}[{i}]"), text, anchor)?;
            }
        }
        _ => {}
    }
    Ok(())
}

const TOP_LEVEL: &[&str] = &[
    "model_list",
    "guardrails",
    "general_settings",
    "litellm_settings",
    "router_settings",
    "environment_variables",
];
const MODEL_PARAMS: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "guardrails",
    "input_cost_per_token",
    "output_cost_per_token",
];
const GENERAL: &[&str] = &[
    "master_key",
    "allow_unauthenticated",
    "user_api_key_cache_ttl",
    "spend_logs",
    "store_prompts_in_spend_logs",
    "request_timeout",
    "max_request_body_bytes",
    "stream_policy",
];

impl GatewayConfig {
    /// Parses a YAML config.
    pub fn from_yaml(text: &str) -> Result<GatewayConfig, ConfigError> {
        let root: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            ConfigError::new("config", line, format!("invalid YAML: {e}"))
        })?;
        let root = match root {
            Value::Mapping(map) => map,
            Value::Null => Mapping::new(),
            _ => {
                return Err(ConfigError::new(
                    "config",
                    Some(1),
                    "the config must be a mapping",
                ));
            }
        };
        let mut warnings = Vec::new();
        for key in root.keys().filter_map(Value::as_str) {
            if !TOP_LEVEL.contains(&key) {
                warnings.push(format!(
                    "line {}: unknown top-level key '{key}' ignored",
                    line_of(text, None, key).unwrap_or(0)
                ));
            }
        }
        let mut general = match root.get("general_settings") {
            Some(Value::Mapping(m)) => m.clone(),
            Some(Value::Null) | None => Mapping::new(),
            Some(_) => {
                return Err(ConfigError::new(
                    "general_settings",
                    line_of(text, None, "general_settings"),
                    "must be a mapping",
                ));
            }
        };
        for key in general.keys().filter_map(Value::as_str) {
            if !GENERAL.contains(&key) {
                warnings.push(format!(
                    "line {}: general_settings.{key} is not supported by guardrail-gateway and is ignored",
                    line_of(text, Some("general_settings"), key).unwrap_or(0)
                ));
            }
        }
        {
            let mut value = Value::Mapping(general);
            resolve_all(&mut value, "general_settings", text, "general_settings")?;
            general = match value {
                Value::Mapping(m) => m,
                _ => unreachable!("resolving keeps a mapping a mapping"),
            };
        }
        let guardrails = parse_guardrails(text, root.get("guardrails"), &mut warnings)?;
        let names: HashSet<&str> = guardrails.iter().map(ConfiguredGuardrail::name).collect();
        let deployments = parse_models(text, root.get("model_list"), &names, &mut warnings)?;
        let spend_logs = match string(&general, "spend_logs") {
            None => None,
            Some(url) => {
                let line = line_of(text, Some("general_settings"), "spend_logs");
                Some(
                    parse_spend_logs(&url)
                        .map_err(|m| ConfigError::new("general_settings.spend_logs", line, m))?,
                )
            }
        };
        let stream_policy = match general.get("stream_policy") {
            None => StreamPolicy::DEFAULT_WINDOW,
            Some(v) => parse_stream_policy(v).map_err(|m| {
                ConfigError::new(
                    "general_settings.stream_policy",
                    line_of(text, Some("general_settings"), "stream_policy"),
                    m,
                )
            })?,
        };
        let general_line = |key: &str| line_of(text, Some("general_settings"), key);
        let master_key = match general.get("master_key") {
            None | Some(Value::Null) => std::env::var("LITELLM_MASTER_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            Some(Value::String(key)) if !key.trim().is_empty() => Some(key.clone()),
            Some(_) => {
                return Err(ConfigError::new(
                    "general_settings.master_key",
                    general_line("master_key"),
                    "must be a non-empty string (or os.environ/NAME)",
                ));
            }
        };
        if let Some(key) = &master_key {
            if key.trim() != key || key.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "general_settings.master_key",
                    general_line("master_key"),
                    "must not have leading or trailing spaces or control characters",
                ));
            }
            if key.len() < 16 {
                warnings.push(format!(
                    "line {}: general_settings.master_key is shorter than 16 characters: easy to guess",
                    general_line("master_key").unwrap_or(0)
                ));
            }
        }
        let allow_unauthenticated = match general.get("allow_unauthenticated") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ConfigError::new(
                    "general_settings.allow_unauthenticated",
                    general_line("allow_unauthenticated"),
                    "must be true or false",
                ));
            }
        };
        let key_cache_ttl = match general.get("user_api_key_cache_ttl") {
            None | Some(Value::Null) => DEFAULT_KEY_CACHE_TTL,
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    ConfigError::new(
                        "general_settings.user_api_key_cache_ttl",
                        general_line("user_api_key_cache_ttl"),
                        "must be a number of seconds from 0 to 86400",
                    )
                })?,
        };
        Ok(GatewayConfig {
            master_key,
            allow_unauthenticated,
            key_cache_ttl,
            deployments,
            guardrails,
            spend_logs,
            store_prompts_in_spend_logs: general
                .get("store_prompts_in_spend_logs")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            request_timeout: general
                .get("request_timeout")
                .and_then(seconds)
                .unwrap_or(Duration::from_secs(600)),
            max_request_body_bytes: general
                .get("max_request_body_bytes")
                .and_then(Value::as_u64)
                .map_or(DEFAULT_BODY_LIMIT, |n| n as usize),
            stream_policy,
            warnings,
        })
    }

    /// The deployment for a client's `model`.
    pub fn deployment(&self, model: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.model_name == model)
    }
}

fn parse_spend_logs(url: &str) -> Result<SpendLogsTarget, String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(SpendLogsTarget::Sqlite(PathBuf::from(path)));
    }
    if let Some(path) = url.strip_prefix("jsonl://") {
        return Ok(SpendLogsTarget::Jsonl(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(SpendLogsTarget::Postgres(url.to_owned()));
    }
    Err(format!(
        "unsupported spend log URL '{url}' (expected sqlite://PATH, postgres://..., or jsonl://PATH)"
    ))
}

fn parse_mode(value: &Value) -> Result<GuardrailModes, String> {
    let one = |v: &Value| -> Result<GuardrailMode, String> {
        let s = v.as_str().ok_or("a mode must be a string")?;
        s.parse::<GuardrailMode>().map_err(|e| e.to_string())
    };
    match value {
        Value::Sequence(items) => items.iter().map(one).collect(),
        v => Ok(one(v)?.into()),
    }
}

fn parse_fallback(value: &Value) -> Result<Fallback, String> {
    value
        .as_str()
        .ok_or_else(|| "must be fail_closed or fail_open".to_owned())?
        .parse()
}

/// `exact`, `end_of_stream`, `window`, `buffer_all`, or a mapping with one of those keys and
/// its parameters.
fn parse_stream_policy(value: &Value) -> Result<StreamPolicy, String> {
    let usize_of = |m: &Value, key: &str, default: usize| -> Result<usize, String> {
        match m.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| format!("'{key}' must be a non-negative integer")),
        }
    };
    let (kind, params) = match value {
        Value::String(s) => (s.as_str(), Value::Null),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            (k.as_str().unwrap_or(""), v.clone())
        }
        _ => {
            return Err(
                "expected exact, end_of_stream, {window: {...}} or {buffer_all: {...}}".into(),
            );
        }
    };
    match kind {
        "exact" => Ok(StreamPolicy::Exact),
        "end_of_stream" => Ok(StreamPolicy::EndOfStream),
        "window" => Ok(StreamPolicy::Window {
            chars: usize_of(&params, "chars", 200)?.max(1),
            overlap: usize_of(&params, "overlap", 50)?,
        }),
        "buffer_all" => Ok(StreamPolicy::BufferAll {
            max_bytes: usize_of(&params, "max_bytes", 1 << 20)?,
            on_overflow: match params.get("on_overflow") {
                None => Fallback::FailClosed,
                Some(v) => parse_fallback(v)?,
            },
        }),
        other => Err(format!(
            "unknown stream policy '{other}' (expected exact, window, end_of_stream or buffer_all)"
        )),
    }
}

fn parse_guardrails(
    text: &str,
    value: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ConfiguredGuardrail>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            return Err(ConfigError::new(
                "guardrails",
                line_of(text, None, "guardrails"),
                "must be a list",
            ));
        }
    };
    let mut out: Vec<ConfiguredGuardrail> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("guardrails[{i}]");
        let map = item.as_mapping().ok_or_else(|| {
            ConfigError::new(
                &key,
                line_of(text, None, "guardrails"),
                "each guardrail must be a mapping",
            )
        })?;
        let name = string(map, "guardrail_name").ok_or_else(|| {
            ConfigError::new(
                format!("{key}.guardrail_name"),
                line_of(text, None, "guardrails"),
                "is required",
            )
        })?;
        let anchor = format!("guardrail_name: {name}");
        let anchor = if text.contains(&anchor) {
            anchor
        } else {
            name.clone()
        };
        let at = |k: &str| line_of(text, Some(&anchor), k);
        if out.iter().any(|g| g.name() == name) {
            return Err(ConfigError::new(
                format!("{key}.guardrail_name"),
                at("guardrail_name"),
                format!("guardrail '{name}' is defined twice"),
            ));
        }
        let mut params = match map.get("litellm_params") {
            Some(Value::Mapping(m)) => Value::Mapping(m.clone()),
            _ => {
                return Err(ConfigError::new(
                    format!("{key}.litellm_params"),
                    at("guardrail_name"),
                    "is required (a mapping)",
                ));
            }
        };
        resolve_all(&mut params, &format!("{key}.litellm_params"), text, &anchor)?;
        let p = params.as_mapping().expect("a mapping");
        let kind = string(p, "guardrail").ok_or_else(|| {
            ConfigError::new(
                format!("{key}.litellm_params.guardrail"),
                at("litellm_params"),
                "is required",
            )
        })?;
        let modes = match p.get("mode") {
            Some(v) => parse_mode(v).map_err(|m| {
                ConfigError::new(format!("{key}.litellm_params.mode"), at("mode"), m)
            })?,
            None => {
                return Err(ConfigError::new(
                    format!("{key}.litellm_params.mode"),
                    at("litellm_params"),
                    "is required (pre_call, during_call, post_call, or a list)",
                ));
            }
        };
        let bad = |field: &str, m: String| {
            ConfigError::new(format!("{key}.litellm_params.{field}"), at(field), m)
        };
        let built = match kind.as_str() {
            "litellm_content_filter" => {
                let config: ContentFilterConfig = serde_yaml_ng::from_value(params.clone())
                    .map_err(|e| {
                        bad("guardrail", format!("invalid content filter settings: {e}"))
                    })?;
                let filter = ContentFilter::new(config).map_err(|e| {
                    let field = if e.to_string().contains("blocked_words") {
                        "blocked_words"
                    } else {
                        "patterns"
                    };
                    bad(field, e.to_string())
                })?;
                ConfiguredGuardrail::new(name.clone(), modes, filter)
            }
            "generic_guardrail_api" => {
                let config: GenericGuardrailApiConfig = serde_yaml_ng::from_value(params.clone())
                    .map_err(|e| {
                    bad(
                        "api_base",
                        format!("invalid generic guardrail API settings: {e}"),
                    )
                })?;
                let api = GenericGuardrailApi::new(config)
                    .map_err(|e| bad(e.field(), e.message().to_owned()))?;
                ConfiguredGuardrail::new(name.clone(), modes, api)
            }
            "openai_moderation" => {
                let config: OpenAiModerationConfig = serde_yaml_ng::from_value(params.clone())
                    .map_err(|e| {
                        bad(
                            "api_base",
                            format!("invalid OpenAI moderation settings: {e}"),
                        )
                    })?;
                let api = OpenAiModeration::new(config)
                    .map_err(|e| bad(e.field(), e.message().to_owned()))?;
                ConfiguredGuardrail::new(name.clone(), modes, api)
            }
            other => {
                return Err(bad(
                    "guardrail",
                    format!(
                        "unknown guardrail type '{other}' (expected litellm_content_filter, generic_guardrail_api or openai_moderation)"
                    ),
                ));
            }
        };
        let mut g = built.default_on(
            p.get("default_on")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        );
        if let Some(v) = p.get("unreachable_fallback") {
            g = g.unreachable_fallback(
                parse_fallback(v).map_err(|m| bad("unreachable_fallback", m))?,
            );
        }
        if let Some(v) = p.get("error_fallback") {
            g = g.error_fallback(parse_fallback(v).map_err(|m| bad("error_fallback", m))?);
        }
        if let Some(v) = p.get("timeout") {
            let t = seconds(v)
                .ok_or_else(|| bad("timeout", "must be a positive number of seconds".into()))?;
            g = g.timeout(t);
        }
        if let Some(v) = p.get("stream_policy") {
            g = g.stream_policy(parse_stream_policy(v).map_err(|m| bad("stream_policy", m))?);
        }
        for k in map.keys().filter_map(Value::as_str) {
            if !["guardrail_name", "litellm_params", "guardrail_info"].contains(&k) {
                warnings.push(format!(
                    "line {}: {key}.{k} is not supported and is ignored",
                    at(k).unwrap_or(0)
                ));
            }
        }
        out.push(g);
    }
    Ok(out)
}

fn parse_models(
    text: &str,
    value: Option<&Value>,
    guardrails: &HashSet<&str>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Deployment>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            return Err(ConfigError::new(
                "model_list",
                line_of(text, None, "model_list"),
                "must be a list",
            ));
        }
    };
    let mut out: Vec<Deployment> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("model_list[{i}]");
        let map = item.as_mapping().ok_or_else(|| {
            ConfigError::new(
                &key,
                line_of(text, None, "model_list"),
                "each model must be a mapping",
            )
        })?;
        let model_name = string(map, "model_name").ok_or_else(|| {
            ConfigError::new(
                format!("{key}.model_name"),
                line_of(text, None, "model_list"),
                "is required",
            )
        })?;
        let anchor = format!("model_name: {model_name}");
        let anchor = if text.contains(&anchor) {
            anchor
        } else {
            model_name.clone()
        };
        let at = |k: &str| line_of(text, Some(&anchor), k);
        let mut params = match map.get("litellm_params") {
            Some(Value::Mapping(m)) => Value::Mapping(m.clone()),
            _ => {
                return Err(ConfigError::new(
                    format!("{key}.litellm_params"),
                    at("model_name"),
                    "is required (a mapping)",
                ));
            }
        };
        resolve_all(&mut params, &format!("{key}.litellm_params"), text, &anchor)?;
        let p = params.as_mapping().expect("a mapping");
        for k in p.keys().filter_map(Value::as_str) {
            if !MODEL_PARAMS.contains(&k) {
                warnings.push(format!(
                    "line {}: {key}.litellm_params.{k} is not supported and is ignored",
                    at(k).unwrap_or(0)
                ));
            }
        }
        let model = string(p, "model").ok_or_else(|| {
            ConfigError::new(
                format!("{key}.litellm_params.model"),
                at("litellm_params"),
                "is required",
            )
        })?;
        let (provider, upstream_model) = match model.split_once('/') {
            Some(("anthropic", rest)) => (Provider::Anthropic, rest.to_owned()),
            Some((_, rest)) => (Provider::OpenAi, rest.to_owned()),
            None => (Provider::OpenAi, model.clone()),
        };
        let api_base = string(p, "api_base").unwrap_or_else(|| match provider {
            Provider::OpenAi => "https://api.openai.com/v1".to_owned(),
            Provider::Anthropic => "https://api.anthropic.com".to_owned(),
        });
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(ConfigError::new(
                format!("{key}.litellm_params.api_base"),
                at("api_base"),
                format!("'{api_base}' is not an http(s) URL"),
            ));
        }
        let names: Vec<String> = match p.get("guardrails") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{key}.litellm_params.guardrails"),
                    at("guardrails"),
                    "must be a list of guardrail names",
                ));
            }
        };
        for name in &names {
            if !guardrails.contains(name.as_str()) {
                return Err(ConfigError::new(
                    format!("{key}.litellm_params.guardrails"),
                    at("guardrails"),
                    format!(
                        "guardrail '{name}' is referenced by model '{model_name}' but not defined under guardrails"
                    ),
                ));
            }
        }
        let info = map.get("model_info").and_then(Value::as_mapping);
        let cost = |k: &str| {
            p.get(k)
                .or_else(|| info.and_then(|i| i.get(k)))
                .and_then(Value::as_f64)
        };
        let price = match (cost("input_cost_per_token"), cost("output_cost_per_token")) {
            (None, None) => None,
            (input, output) => Some(ModelPrice {
                input_cost_per_token: input.unwrap_or(0.0),
                output_cost_per_token: output.unwrap_or(0.0),
            }),
        };
        if out.iter().any(|d| d.model_name == model_name) {
            warnings.push(format!(
                "line {}: model '{model_name}' is listed twice; the first entry is used",
                at("model_name").unwrap_or(0)
            ));
            continue;
        }
        out.push(Deployment {
            model_name,
            provider,
            upstream_model,
            api_base: api_base.trim_end_matches('/').to_owned(),
            api_key: string(p, "api_key"),
            guardrails: names,
            price,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
model_list:
  - model_name: gpt-guarded
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:9000/v1/
      api_key: sk-literal
      guardrails: [pii-mask]
      rpm: 100
    model_info:
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4
guardrails:
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{keyword: "forbidden", action: BLOCK}]
  - guardrail_name: pii-mask
    litellm_params:
      guardrail: litellm_content_filter
      mode: [pre_call, post_call]
      patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]
      stream_policy: {window: {chars: 100, overlap: 10}}
      unreachable_fallback: fail_open
      timeout: 2.5
general_settings:
  spend_logs: sqlite://spend.db
  master_key: sk-1234
litellm_settings:
  drop_params: true
"#;

    #[test]
    fn parses_a_litellm_config() {
        let config = GatewayConfig::from_yaml(GOOD).unwrap();
        assert_eq!(config.deployments.len(), 2);
        let gpt = config.deployment("gpt-guarded").unwrap();
        assert_eq!(gpt.provider, Provider::OpenAi);
        assert_eq!(gpt.upstream_model, "gpt-4o-mini");
        assert_eq!(gpt.api_base, "http://127.0.0.1:9000/v1");
        assert_eq!(gpt.api_key.as_deref(), Some("sk-literal"));
        assert_eq!(gpt.guardrails, ["pii-mask"]);
        assert_eq!(gpt.price.unwrap().output_cost_per_token, 0.000002);
        let claude = config.deployment("claude").unwrap();
        assert_eq!(
            (claude.provider, claude.api_base.as_str()),
            (Provider::Anthropic, "https://api.anthropic.com")
        );
        assert_eq!(config.guardrails.len(), 2);
        assert!(config.guardrails[0].spec().default_on());
        assert_eq!(
            config.guardrails[1].configured_stream_policy(),
            Some(StreamPolicy::Window {
                chars: 100,
                overlap: 10
            })
        );
        assert_eq!(
            config.spend_logs,
            Some(SpendLogsTarget::Sqlite("spend.db".into()))
        );
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.contains("rpm") && w.starts_with("line 9:")),
            "{:?}",
            config.warnings
        );
        assert!(config.warnings.iter().any(|w| w.contains("master_key")));
        assert_eq!(config.master_key.as_deref(), Some("sk-1234"));
    }

    fn error(yaml: &str) -> ConfigError {
        GatewayConfig::from_yaml(yaml).unwrap_err()
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = error(
            "guardrails:\n  - guardrail_name: g\n    litellm_params:\n      guardrail: magic\n      mode: pre_call\n",
        );
        assert_eq!(e.key(), "guardrails[0].litellm_params.guardrail");
        assert_eq!(e.line(), Some(4));
        assert!(e.message().contains("unknown guardrail type 'magic'"));
        assert!(e.to_string().starts_with("config error at line 4: "));

        let e = error(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/x\n      guardrails: [nope]\n",
        );
        assert_eq!(
            (e.key(), e.line()),
            ("model_list[0].litellm_params.guardrails", Some(5))
        );
        assert!(
            e.message()
                .contains("guardrail 'nope' is referenced by model 'm' but not defined")
        );

        let e = error(
            "guardrails:\n  - guardrail_name: re\n    litellm_params:\n      guardrail: litellm_content_filter\n      mode: pre_call\n      patterns:\n        - {pattern_type: regex, pattern: \"(unclosed\", name: bad, action: BLOCK}\n",
        );
        assert_eq!(e.key(), "guardrails[0].litellm_params.patterns");
        assert_eq!(e.line(), Some(6));

        let e = error(
            "guardrails:\n  - guardrail_name: g\n    litellm_params:\n      guardrail: generic_guardrail_api\n      mode: sometimes\n      api_base: http://x\n",
        );
        assert_eq!(
            (e.key(), e.line()),
            ("guardrails[0].litellm_params.mode", Some(5))
        );

        let e = error(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/GUARDRAIL_GATEWAY_SURELY_UNSET\n",
        );
        assert_eq!(e.line(), Some(5));
        assert!(
            e.message()
                .contains("GUARDRAIL_GATEWAY_SURELY_UNSET is not set")
        );

        let e = error("model_list: [\n");
        assert_eq!(e.key(), "config");
        assert!(e.line().is_some());
        assert!(e.message().starts_with("invalid YAML"));

        let e = error("general_settings:\n  spend_logs: mysql://x\n");
        assert_eq!(
            (e.key(), e.line()),
            ("general_settings.spend_logs", Some(2))
        );
    }

    #[test]
    fn environment_references_resolve() {
        let path = std::env::var("PATH").expect("PATH is set");
        let yaml = "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/x\n      api_key: os.environ/PATH\n";
        let config = GatewayConfig::from_yaml(yaml).unwrap();
        assert_eq!(
            config.deployments[0].api_key.as_deref(),
            Some(path.as_str())
        );
    }

    #[test]
    fn every_secret_may_come_from_the_environment_and_debug_shows_none() {
        // PATH is set in every test environment; its value stands in for a secret.
        let path = std::env::var("PATH").expect("PATH is set");
        let yaml = r#"
model_list:
  - model_name: m
    litellm_params: {model: openai/x, api_key: os.environ/PATH, api_base: os.environ/GT_UNUSED_BASE}
guardrails:
  - guardrail_name: remote
    litellm_params:
      guardrail: generic_guardrail_api
      mode: pre_call
      api_base: http://guard.internal:8080
      api_key: os.environ/PATH
      headers: {x-service-token: os.environ/PATH}
  - guardrail_name: moderation
    litellm_params: {guardrail: openai_moderation, mode: pre_call, api_key: os.environ/PATH}
general_settings:
  master_key: os.environ/PATH
  spend_logs: postgres://gateway:db-password-SECRET@db.internal:5432/spend?password=db-password-SECRET
"#;
        let err = GatewayConfig::from_yaml(yaml).unwrap_err();
        assert!(err.message().contains("GT_UNUSED_BASE is not set"), "{err}");
        let config =
            GatewayConfig::from_yaml(&yaml.replace("os.environ/GT_UNUSED_BASE", "http://up:1/v1"))
                .unwrap();
        assert_eq!(config.master_key.as_deref(), Some(path.as_str()));
        assert_eq!(
            config.deployments[0].api_key.as_deref(),
            Some(path.as_str())
        );
        let debug = format!("{config:?} {:?}", config.deployments[0]);
        assert!(!debug.contains(&path), "{debug}");
        assert!(!debug.contains("db-password-SECRET"), "{debug}");
        assert!(debug.contains("gateway:<redacted>@db.internal"), "{debug}");
        assert!(
            debug.contains("master_key: Some(\"<redacted>\")"),
            "{debug}"
        );
    }

    #[test]
    fn access_settings() {
        let config = GatewayConfig::from_yaml(
            "general_settings:\n  master_key: sk-a-long-enough-master-key\n  user_api_key_cache_ttl: 0.5\n  allow_unauthenticated: true\n",
        )
        .unwrap();
        assert_eq!(
            config.master_key.as_deref(),
            Some("sk-a-long-enough-master-key")
        );
        assert_eq!(config.key_cache_ttl, Duration::from_millis(500));
        assert!(config.allow_unauthenticated);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let config =
            GatewayConfig::from_yaml("general_settings:\n  master_key: sk-short\n").unwrap();
        assert!(
            config.warnings[0].contains("shorter than 16"),
            "{:?}",
            config.warnings
        );
        assert_eq!(config.key_cache_ttl, DEFAULT_KEY_CACHE_TTL);
        for (yaml, key) in [
            (
                "general_settings:\n  master_key: ''\n",
                "general_settings.master_key",
            ),
            (
                "general_settings:\n  master_key: 1234\n",
                "general_settings.master_key",
            ),
            (
                "general_settings:\n  master_key: ' sk-with-a-space-around '\n",
                "general_settings.master_key",
            ),
            (
                "general_settings:\n  user_api_key_cache_ttl: -1\n",
                "general_settings.user_api_key_cache_ttl",
            ),
            (
                "general_settings:\n  allow_unauthenticated: yes please\n",
                "general_settings.allow_unauthenticated",
            ),
        ] {
            let err = error(yaml);
            assert_eq!((err.key(), err.line()), (key, Some(2)), "{yaml}");
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://u:p@h/db"),
            "postgres://u:<redacted>@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgresql://h/db?user=u&password=p&sslmode=disable"),
            "postgresql://h/db?user=u&password=<redacted>&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://u:p:q@h:5/d?x=1"),
            "postgres://u:<redacted>@h:5/d?x=1"
        );
    }

    #[test]
    fn stream_policies() {
        assert_eq!(
            parse_stream_policy(&Value::from("exact")),
            Ok(StreamPolicy::Exact)
        );
        assert_eq!(
            parse_stream_policy(&Value::from("end_of_stream")),
            Ok(StreamPolicy::EndOfStream)
        );
        let v: Value =
            serde_yaml_ng::from_str("{buffer_all: {max_bytes: 1000, on_overflow: fail_open}}")
                .unwrap();
        assert_eq!(
            parse_stream_policy(&v),
            Ok(StreamPolicy::BufferAll {
                max_bytes: 1000,
                on_overflow: Fallback::FailOpen
            })
        );
        assert!(parse_stream_policy(&Value::from("sometimes")).is_err());
    }
}
