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
//!       guardrail: litellm_content_filter  # | generic_guardrail_api | openai_moderation | presidio
//!                                          # | lakera_v2 | azure/text_moderations | azure/prompt_shield
//!                                          # | bedrock | aim
//!       mode: pre_call                     # or a list: [pre_call, post_call]; during_call;
//!                                          # logging_only: monitor on the request and response
//!       monitor: false                     # true: log the verdict, never block or rewrite
//!       default_on: true
//!       blocked_words: [{keyword: "forbidden", action: BLOCK}]
//!       unreachable_fallback: fail_open    # default fail_closed
//!       media_fallback: fail_open          # images, audio, files it cannot read: let them pass
//!                                          # (default fail_closed: the request is refused)
//!       timeout: 5                         # seconds
//!       stream_policy: exact               # | end_of_stream | {window: {chars, overlap}}
//!                                          # | {buffer_all: {max_bytes, on_overflow}}
//! general_settings:
//!   master_key: os.environ/LITELLM_MASTER_KEY  # every route but the health probes needs a key
//!   user_api_key_cache_ttl: 5              # seconds a virtual key lookup is cached
//!   spend_logs: sqlite://spend_logs.db     # | postgres://... | jsonl://path (keys live here too)
//!   spend_logs_dead_letter_path: /var/lib/gateway/spend.dead-letter.jsonl
//!                                          # default: beside the SQLite/JSONL file, or
//!                                          # ./spend_logs.dead-letter.jsonl for PostgreSQL
//!   spend_logs_queue_size: 10000           # records held in memory while the database is slow
//!   proxy_batch_write_at: 0.02             # seconds a spend-log record waits for its batch to
//!                                          # fill (LiteLLM's name; default 20 ms, at most 60)
//!   graceful_shutdown_timeout: 30          # seconds in-flight requests get after SIGTERM
//!   store_prompts_in_spend_logs: false
//!   request_timeout: 600                   # seconds: to the upstream's answer, and of silence mid-stream
//!   client_read_timeout: 30                # seconds a connection may sit with no request (closed
//!                                          # within twice that), or a body go silent (408)
//!   client_write_timeout: 60               # seconds a client may take nothing the gateway sends
//!   max_client_connections: 10000          # connections served at once; more wait to be
//!                                          # accepted (default: from the open-file limit)
//!   max_request_body_bytes: 16777216
//!   max_request_bytes_in_flight: 1073741824  # request body bytes held at once, all clients;
//!                                          # more are refused with 503 (default: an eighth
//!                                          # of the memory)
//! litellm_settings:
//!   callbacks: ["prometheus"]              # GET /metrics (also under success_callback)
//!   require_auth_for_metrics_endpoint: true  # the default: with a master key, /metrics needs it
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
    ConfiguredGuardrail, DEFAULT_BODY_LIMIT, Fallback, Guardrail, GuardrailMode, GuardrailModes,
    StreamPolicy,
};
use guardrail_tower_guardrails::{
    AimGuardrail, AimGuardrailConfig, AzurePromptShield, AzurePromptShieldConfig,
    AzureTextModeration, AzureTextModerationConfig, BedrockGuardrail, BedrockGuardrailConfig,
    ContentFilter, ContentFilterConfig, GenericGuardrailApi, GenericGuardrailApiConfig, LakeraV2,
    LakeraV2Config, OpenAiModeration, OpenAiModerationConfig, Presidio, PresidioConfig,
    shared_client,
};
use guardrail_tower_spend_log::ModelPrice;
use serde_yaml_ng::{Mapping, Value};

use crate::telemetry::TracedGuardrail;

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

/// How long the spend-log writer waits for a batch to fill without `proxy_batch_write_at`.
pub const DEFAULT_SPEND_LOGS_LINGER: Duration = Duration::from_millis(20);

/// The longest the spend-log writer waits for a batch: a longer `proxy_batch_write_at` is
/// capped to it, with a warning.
pub const MAX_SPEND_LOGS_LINGER: Duration = Duration::from_secs(60);

/// The most records `general_settings.spend_logs_queue_size` may hold.
pub const MAX_SPEND_LOGS_QUEUE: usize = 10_000_000;

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
    /// Where records the database rejects (or that do not fit in the queue) go; `None`: the
    /// sink's default (beside the SQLite or JSON lines file; `./spend_logs.dead-letter.jsonl`
    /// for PostgreSQL).
    pub spend_logs_dead_letter_path: Option<PathBuf>,
    /// How many records the spend-log queue holds (default 10,000).
    pub spend_logs_queue_size: usize,
    /// `general_settings.proxy_batch_write_at`: how long the spend-log writer waits for a batch
    /// to fill after its first record (default 20 ms). Longer means fewer, larger transactions,
    /// and more records lost if the process is killed without a graceful shutdown.
    pub spend_logs_linger: Duration,
    /// How long in-flight requests may run after a shutdown signal before they are cut
    /// (default 30 s).
    pub graceful_shutdown_timeout: Duration,
    /// The longest an upstream may take to answer (a 504), and the longest it may go silent
    /// mid-response (the response body then fails).
    pub request_timeout: Duration,
    /// `general_settings.client_read_timeout`: how long a connection may sit with no request
    /// in flight, none begun and nothing sent to it (a head sent byte by byte, an idle
    /// keep-alive or HTTP/2 connection) before it is closed, within twice this (and a new
    /// connection before its first bytes); and how long a request body may go silent (a
    /// 408). Default
    /// [`DEFAULT_CLIENT_READ_TIMEOUT`](crate::slow_client::DEFAULT_CLIENT_READ_TIMEOUT).
    pub client_read_timeout: Duration,
    /// `general_settings.client_write_timeout`: the longest a write to a client may wait
    /// while the client takes nothing (its socket full); the connection then ends. Default
    /// [`DEFAULT_CLIENT_WRITE_TIMEOUT`](crate::slow_client::DEFAULT_CLIENT_WRITE_TIMEOUT).
    pub client_write_timeout: Duration,
    /// `general_settings.max_client_connections`: the most client connections served at once.
    /// At the limit the gateway accepts no more until one closes: they wait in the system's
    /// listen queue, and no connection already open loses anything. `None` (the default):
    /// half of what the open-file limit leaves after 64 files for the gateway's own use, so
    /// that every client connection can have its upstream connection and the spend log can
    /// still open its files (see
    /// [`default_max_client_connections`](crate::app::default_max_client_connections)). The
    /// default follows the open-file limit, not memory (an idle connection holds about 12 KiB):
    /// where memory is the tighter bound, set it to what memory allows.
    pub max_client_connections: Option<usize>,
    /// The request body limit.
    pub max_request_body_bytes: usize,
    /// `general_settings.max_request_bytes_in_flight`: the most bytes of request bodies the
    /// gateway holds at once, all clients together, from their arrival until their responses
    /// have been sent; a request that would pass it is refused with a 503 (see
    /// [`crate::request_bytes`]). At least `max_request_body_bytes`. `None` (the default): an
    /// eighth of the memory the gateway may use, its container's limit included (see
    /// [`default_max_request_bytes_in_flight`](crate::request_bytes::default_max_request_bytes_in_flight)).
    pub max_request_bytes_in_flight: Option<usize>,
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
    /// `litellm_settings.callbacks` (or `success_callback`, `failure_callback`) lists
    /// `prometheus`: serve LiteLLM's metrics on `GET /metrics` (see [`crate::metrics`]). The
    /// `serve --metrics` flag sets it too.
    pub prometheus: bool,
    /// `litellm_settings.require_auth_for_metrics_endpoint` (default true, as in LiteLLM): with
    /// a master key, `/metrics` needs it. `false` opens `/metrics` to anyone who can reach it.
    pub require_auth_for_metrics_endpoint: bool,
    /// Warnings (unknown keys, settings that are accepted but not enforced).
    pub warnings: Vec<String>,
    /// The guardrails as `GET /guardrails/list` shows them (secrets masked).
    pub guardrail_listing: Vec<crate::guardrail_routes::GuardrailListing>,
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
            .field("client_read_timeout", &self.client_read_timeout)
            .field("client_write_timeout", &self.client_write_timeout)
            .field("max_client_connections", &self.max_client_connections)
            .field("max_request_body_bytes", &self.max_request_body_bytes)
            .field(
                "max_request_bytes_in_flight",
                &self.max_request_bytes_in_flight,
            )
            .field("stream_policy", &self.stream_policy)
            .field("master_key", &self.master_key.as_ref().map(|_| REDACTED))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("prometheus", &self.prometheus)
            .field(
                "require_auth_for_metrics_endpoint",
                &self.require_auth_for_metrics_endpoint,
            )
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

/// Reads environment variables: the process environment, or a map in tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads an `os.environ/NAME` reference or returns the literal.
fn resolve(
    value: &str,
    key: &str,
    line: Option<usize>,
    env: Env<'_>,
) -> Result<String, ConfigError> {
    match value.strip_prefix("os.environ/") {
        Some(name) => env(name).ok_or_else(|| {
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

/// The `true` or `false` of `section.key`, `default` when it is absent or null.
fn flag(
    text: &str,
    map: &Mapping,
    section: &str,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ConfigError::new(
            format!("{section}.{key}"),
            line_of(text, Some(section), key),
            "must be true or false",
        )),
    }
}

/// A positive number of seconds that a `Duration` holds (`1e300` does not: no panic, `None`).
fn seconds(value: &Value) -> Option<Duration> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// Resolves every `os.environ/NAME` string inside a value, in place.
fn resolve_all(
    value: &mut Value,
    key: &str,
    text: &str,
    anchor: &str,
    env: Env<'_>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.starts_with("os.environ/") => {
            let line = line_of(text, Some(anchor), key.rsplit('.').next().unwrap_or(key));
            *s = resolve(s, key, line, env)?;
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.as_str().unwrap_or("?").to_owned();
                resolve_all(v, &format!("{key}.{k}"), text, anchor, env)?;
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                resolve_all(v, &format!("{key}[{i}]"), text, anchor, env)?;
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
    "spend_logs_dead_letter_path",
    "spend_logs_queue_size",
    "proxy_batch_write_at",
    "graceful_shutdown_timeout",
    "store_prompts_in_spend_logs",
    "request_timeout",
    "client_read_timeout",
    "client_write_timeout",
    "max_client_connections",
    "max_request_body_bytes",
    "max_request_bytes_in_flight",
    "stream_policy",
];

impl GatewayConfig {
    /// Parses a YAML config, reading `os.environ/NAME` references and the providers'
    /// environment variables (`AWS_REGION`, `AIM_API_KEY`, ...) from the process environment.
    pub fn from_yaml(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_yaml_with_env(text, &|name| std::env::var(name).ok())
    }

    /// Like [`from_yaml`](Self::from_yaml), reading environment variables through `env`.
    pub fn from_yaml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigError> {
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
        let general_line = |key: &str| line_of(text, Some("general_settings"), key);
        for key in general.keys().filter_map(Value::as_str) {
            if !GENERAL.contains(&key) {
                warnings.push(format!(
                    "line {}: general_settings.{key} is not supported by guardrail-gateway and is ignored",
                    general_line(key).unwrap_or(0)
                ));
            }
        }
        {
            let mut value = Value::Mapping(general);
            resolve_all(
                &mut value,
                "general_settings",
                text,
                "general_settings",
                env,
            )?;
            general = match value {
                Value::Mapping(m) => m,
                _ => unreachable!("resolving keeps a mapping a mapping"),
            };
        }
        let guardrails = parse_guardrails(text, root.get("guardrails"), env, &mut warnings)?;
        let names: HashSet<&str> = guardrails.iter().map(ConfiguredGuardrail::name).collect();
        let deployments = parse_models(text, root.get("model_list"), &names, env, &mut warnings)?;
        let guardrail_listing = crate::guardrail_routes::listing(root.get("guardrails"), env);
        let spend_logs = match string(&general, "spend_logs") {
            None => None,
            Some(url) => {
                let line = general_line("spend_logs");
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
                    general_line("stream_policy"),
                    m,
                )
            })?,
        };
        let spend_logs_dead_letter_path = match string(&general, "spend_logs_dead_letter_path") {
            None => None,
            Some(path) => {
                let line = line_of(
                    text,
                    Some("general_settings"),
                    "spend_logs_dead_letter_path",
                );
                Some(PathBuf::from(resolve(
                    &path,
                    "general_settings.spend_logs_dead_letter_path",
                    line,
                    env,
                )?))
            }
        };
        let duration = |key: &str| -> Result<Option<Duration>, ConfigError> {
            match general.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => seconds(v).map(Some).ok_or_else(|| {
                    ConfigError::new(
                        format!("general_settings.{key}"),
                        general_line(key),
                        "must be a positive number of seconds",
                    )
                }),
            }
        };
        // A whole number above zero, or the key's error: never a silent default.
        let count = |key: &str| -> Result<Option<usize>, ConfigError> {
            match general.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("general_settings.{key}"),
                            general_line(key),
                            "must be a whole number above zero",
                        )
                    }),
            }
        };
        let spend_logs_queue_size = match count("spend_logs_queue_size")? {
            None => 10_000,
            Some(n) if n <= MAX_SPEND_LOGS_QUEUE => n,
            Some(_) => {
                return Err(ConfigError::new(
                    "general_settings.spend_logs_queue_size",
                    general_line("spend_logs_queue_size"),
                    format!(
                        "must be at most {MAX_SPEND_LOGS_QUEUE} (a queued record takes 1 to 2 KiB)"
                    ),
                ));
            }
        };
        let max_request_body_bytes = count("max_request_body_bytes")?.unwrap_or(DEFAULT_BODY_LIMIT);
        let request_timeout = duration("request_timeout")?.unwrap_or(Duration::from_secs(600));
        let client_read_timeout = duration("client_read_timeout")?
            .unwrap_or(crate::slow_client::DEFAULT_CLIENT_READ_TIMEOUT);
        let client_write_timeout = duration("client_write_timeout")?
            .unwrap_or(crate::slow_client::DEFAULT_CLIENT_WRITE_TIMEOUT);
        let max_client_connections = count("max_client_connections")?;
        let max_request_bytes_in_flight = count("max_request_bytes_in_flight")?;
        if max_request_bytes_in_flight.is_some_and(|n| n < max_request_body_bytes) {
            return Err(ConfigError::new(
                "general_settings.max_request_bytes_in_flight",
                general_line("max_request_bytes_in_flight"),
                format!(
                    "must be at least max_request_body_bytes ({max_request_body_bytes}): a \
                     body of the largest size must fit"
                ),
            ));
        }
        let store_prompts_in_spend_logs = flag(
            text,
            &general,
            "general_settings",
            "store_prompts_in_spend_logs",
            false,
        )?;
        // LiteLLM configs may ask for minutes; a record waits that long and is lost if the
        // gateway is killed meanwhile, so the wait is capped, with a warning.
        let spend_logs_linger = match duration("proxy_batch_write_at")? {
            None => DEFAULT_SPEND_LOGS_LINGER,
            Some(linger) if linger <= MAX_SPEND_LOGS_LINGER => linger,
            Some(linger) => {
                warnings.push(format!(
                    "line {}: general_settings.proxy_batch_write_at is {} s; the spend log waits \
                     at most {} s for a batch, so it writes every {} s",
                    general_line("proxy_batch_write_at").unwrap_or(0),
                    linger.as_secs_f64(),
                    MAX_SPEND_LOGS_LINGER.as_secs(),
                    MAX_SPEND_LOGS_LINGER.as_secs(),
                ));
                MAX_SPEND_LOGS_LINGER
            }
        };
        let graceful_shutdown_timeout =
            duration("graceful_shutdown_timeout")?.unwrap_or(Duration::from_secs(30));
        let master_key = match general.get("master_key") {
            None | Some(Value::Null) => env("LITELLM_MASTER_KEY").filter(|k| !k.is_empty()),
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
        let allow_unauthenticated = flag(
            text,
            &general,
            "general_settings",
            "allow_unauthenticated",
            false,
        )?;
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
        let (prometheus, require_auth_for_metrics_endpoint) =
            parse_litellm_settings(text, root.get("litellm_settings"))?;
        Ok(GatewayConfig {
            prometheus,
            require_auth_for_metrics_endpoint,
            master_key,
            allow_unauthenticated,
            key_cache_ttl,
            deployments,
            guardrails,
            spend_logs,
            spend_logs_dead_letter_path,
            spend_logs_queue_size,
            spend_logs_linger,
            graceful_shutdown_timeout,
            store_prompts_in_spend_logs,
            request_timeout,
            client_read_timeout,
            client_write_timeout,
            max_client_connections,
            max_request_body_bytes,
            max_request_bytes_in_flight,
            stream_policy,
            warnings,
            guardrail_listing,
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

/// `litellm_settings`: whether `prometheus` is among the callbacks, and
/// `require_auth_for_metrics_endpoint` (default true). Other keys are LiteLLM's and ignored.
fn parse_litellm_settings(text: &str, value: Option<&Value>) -> Result<(bool, bool), ConfigError> {
    let settings = match value {
        None | Some(Value::Null) => return Ok((false, true)),
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            return Err(ConfigError::new(
                "litellm_settings",
                line_of(text, None, "litellm_settings"),
                "must be a mapping",
            ));
        }
    };
    let mut prometheus = false;
    for key in ["callbacks", "success_callback", "failure_callback"] {
        let names: Vec<&str> = match settings.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Sequence(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(ConfigError::new(
                    format!("litellm_settings.{key}"),
                    line_of(text, Some("litellm_settings"), key),
                    "must be a list of callback names",
                ));
            }
        };
        prometheus |= names.contains(&"prometheus");
    }
    let require_auth = flag(
        text,
        settings,
        "litellm_settings",
        "require_auth_for_metrics_endpoint",
        true,
    )?;
    Ok((prometheus, require_auth))
}

/// A guardrail's `mode`: its modes, and whether it only watches. `logging_only` (LiteLLM's
/// mode for guardrails that act only on what is logged) makes it a monitor: alone, on the
/// request (`pre_call`) and the response (`post_call`); in a list, on the other modes listed.
fn parse_mode(value: &Value) -> Result<(GuardrailModes, bool), String> {
    let mut monitor = false;
    let mut one = |v: &Value| -> Result<Option<GuardrailMode>, String> {
        let s = v.as_str().ok_or("a mode must be a string")?;
        if s == "logging_only" {
            monitor = true;
            return Ok(None);
        }
        s.parse::<GuardrailMode>().map(Some).map_err(|_| {
            format!(
                "unknown guardrail mode '{s}' (expected pre_call, during_call, post_call or logging_only)"
            )
        })
    };
    let mut modes = match value {
        Value::Sequence(items) => {
            let mut modes = GuardrailModes::empty();
            for item in items {
                if let Some(mode) = one(item)? {
                    modes = modes.with(mode);
                }
            }
            modes
        }
        v => one(v)?.map_or(GuardrailModes::empty(), GuardrailModes::from),
    };
    if monitor && modes.is_empty() {
        modes = GuardrailModes::from([GuardrailMode::PreCall, GuardrailMode::PostCall]);
    }
    Ok((modes, monitor))
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

/// One `guardrail:` type the gateway builds: its name, the `litellm_params` keys it reads besides
/// [`COMMON_GUARDRAIL_KEYS`] (any other key is a warning), and the function that builds it.
struct GuardrailType {
    name: &'static str,
    keys: &'static [&'static str],
    build: fn(&GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError>,
}

/// Every supported `guardrail:` type. A provider is one entry here and one function below.
const GUARDRAIL_TYPES: &[GuardrailType] = &[
    GuardrailType {
        name: "litellm_content_filter",
        keys: &[
            "blocked_words",
            "blocked_words_file",
            "patterns",
            "pattern_redaction_format",
            "keyword_redaction_tag",
            "max_unbounded_match_chars",
        ],
        build: content_filter,
    },
    GuardrailType {
        name: "generic_guardrail_api",
        keys: &[
            "api_base",
            "api_key",
            "headers",
            "extra_headers",
            "num_retries",
            "additional_provider_specific_params",
        ],
        build: generic_guardrail_api,
    },
    GuardrailType {
        name: "openai_moderation",
        keys: &["api_base", "api_key", "model"],
        build: openai_moderation,
    },
    GuardrailType {
        name: "presidio",
        keys: &[
            "presidio_analyzer_api_base",
            "presidio_anonymizer_api_base",
            "pii_entities_config",
            "presidio_score_thresholds",
            "presidio_entities_deny_list",
            "presidio_language",
            "presidio_ad_hoc_recognizers",
            "output_parse_pii",
            "apply_to_output",
        ],
        build: presidio,
    },
    GuardrailType {
        name: "lakera_v2",
        keys: &[
            "api_key",
            "api_base",
            "project_id",
            "payload",
            "breakdown",
            "metadata",
            "dev_info",
            "on_flagged",
        ],
        build: lakera_v2,
    },
    GuardrailType {
        name: "azure/text_moderations",
        keys: &[
            "api_key",
            "api_base",
            "api_version",
            "severity_threshold",
            "severity_threshold_by_category",
            "categories",
            "blocklistNames",
            "haltOnBlocklistHit",
            "outputType",
        ],
        build: azure_text_moderations,
    },
    GuardrailType {
        name: "azure/prompt_shield",
        keys: &["api_key", "api_base", "api_version"],
        build: azure_prompt_shield,
    },
    GuardrailType {
        name: "bedrock",
        keys: &[
            "guardrailIdentifier",
            "guardrailVersion",
            "aws_region_name",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "aws_bedrock_runtime_endpoint",
            // Refused with a clear error by the guardrail itself.
            "aws_role_name",
            "aws_profile_name",
            "aws_web_identity_token",
            "aws_session_name",
            "aws_sts_endpoint",
        ],
        build: bedrock,
    },
    GuardrailType {
        name: "aim",
        keys: &["api_key", "api_base"],
        build: aim,
    },
];

/// The `litellm_params` keys every guardrail type reads.
const COMMON_GUARDRAIL_KEYS: &[&str] = &[
    "guardrail",
    "mode",
    "default_on",
    "unreachable_fallback",
    "error_fallback",
    "media_fallback",
    "timeout",
    "stream_policy",
    "monitor",
];

/// The `guardrail:` types this gateway supports, in the order listed in errors.
pub fn supported_guardrail_types() -> impl Iterator<Item = &'static str> {
    GUARDRAIL_TYPES.iter().map(|t| t.name)
}

/// What a guardrail type's builder gets: one guardrail's resolved `litellm_params`, and how to
/// name a key in an error.
struct GuardrailParams<'a> {
    name: &'a str,
    modes: GuardrailModes,
    /// The `litellm_params` mapping, `os.environ/` references resolved.
    params: &'a Value,
    env: Env<'a>,
    /// `guardrails[i]`.
    key: &'a str,
    text: &'a str,
    anchor: &'a str,
}

impl GuardrailParams<'_> {
    /// An error about `litellm_params.{field}`, at its line.
    fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        let leaf = field.split(['.', '[']).next().unwrap_or(field);
        ConfigError::new(
            format!("{}.litellm_params.{field}", self.key),
            line_of(self.text, Some(self.anchor), leaf),
            message,
        )
    }

    /// The guardrail crate's settings type, deserialized from `litellm_params`; a bad value is
    /// an error naming its key when serde says which.
    fn settings<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, ConfigError> {
        self.settings_from(self.params, what)
    }

    /// [`GuardrailParams::settings`] from `params` (this entry's, completed).
    fn settings_from<T: serde::de::DeserializeOwned>(
        &self,
        params: &Value,
        what: &str,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(params.clone()).map_err(
            |e: serde_path_to_error::Error<serde_yaml_ng::Error>| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // A missing field is reported at the map that lacks it.
                let field = match inner.strip_prefix("missing field `") {
                    Some(rest) => rest.split('`').next().unwrap_or("guardrail").to_owned(),
                    None if path == "." => "guardrail".to_owned(),
                    None => path,
                };
                self.error(&field, format!("invalid {what} settings: {inner}"))
            },
        )
    }

    /// A config error from the guardrails crate, at its key.
    fn invalid(&self, e: guardrail_tower_guardrails::ConfigError) -> ConfigError {
        self.error(e.field(), e.message().to_owned())
    }

    /// `guardrail` under this entry's name and modes.
    fn configured(&self, guardrail: impl Guardrail) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            self.name.to_owned(),
            self.modes,
            TracedGuardrail::new(self.name, guardrail),
        )
    }
}

fn content_filter(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: ContentFilterConfig = p.settings("content filter")?;
    let filter = ContentFilter::new(config).map_err(|e| {
        let field = if e.to_string().contains("blocked_words") {
            "blocked_words"
        } else {
            "patterns"
        };
        p.error(field, e.to_string())
    })?;
    Ok(p.configured(filter))
}

fn generic_guardrail_api(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: GenericGuardrailApiConfig = p.settings("generic guardrail API")?;
    let api = GenericGuardrailApi::new(config).map_err(|e| p.invalid(e))?;
    Ok(p.configured(api))
}

fn openai_moderation(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: OpenAiModerationConfig = p.settings("OpenAI moderation")?;
    let api = OpenAiModeration::new(config).map_err(|e| p.invalid(e))?;
    Ok(p.configured(api))
}

fn bedrock(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: BedrockGuardrailConfig = p.settings("Bedrock guardrail")?;
    let guardrail = BedrockGuardrail::with_client_and_env(config, shared_client(), p.env)
        .map_err(|e| p.invalid(e))?;
    Ok(p.configured(guardrail))
}

fn aim(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: AimGuardrailConfig = p.settings("Aim guardrail")?;
    let guardrail = AimGuardrail::with_client_and_env(config, shared_client(), p.env)
        .map_err(|e| p.invalid(e))?;
    Ok(p.configured(guardrail))
}

/// One entry of a top-level list of named mappings (`model_list`, `guardrails`).
struct NamedEntry<'a> {
    /// Where it is, for errors: `section[i]`.
    key: String,
    map: &'a Mapping,
    name: String,
    /// What [`line_of`] looks for to find the entry's lines: `name_field: name` when the text
    /// has it so, else the name.
    anchor: String,
}

/// The entries of the top-level list `section` (absent or `null`: none); each must be a
/// mapping with a `name_field`. `what` names an entry in errors.
fn named_entries<'a>(
    text: &str,
    value: Option<&'a Value>,
    section: &str,
    name_field: &str,
    what: &str,
) -> Result<Vec<NamedEntry<'a>>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            return Err(ConfigError::new(
                section,
                line_of(text, None, section),
                "must be a list",
            ));
        }
    };
    let mut entries = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = format!("{section}[{i}]");
        let map = item.as_mapping().ok_or_else(|| {
            ConfigError::new(
                &key,
                line_of(text, None, section),
                format!("each {what} must be a mapping"),
            )
        })?;
        let name = string(map, name_field).ok_or_else(|| {
            ConfigError::new(
                format!("{key}.{name_field}"),
                line_of(text, None, section),
                "is required",
            )
        })?;
        let anchor = format!("{name_field}: {name}");
        let anchor = if text.contains(&anchor) {
            anchor
        } else {
            name.clone()
        };
        entries.push(NamedEntry {
            key,
            map,
            name,
            anchor,
        });
    }
    Ok(entries)
}

fn parse_guardrails(
    text: &str,
    value: Option<&Value>,
    env: Env<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ConfiguredGuardrail>, ConfigError> {
    let mut out: Vec<ConfiguredGuardrail> = Vec::new();
    for entry in named_entries(text, value, "guardrails", "guardrail_name", "guardrail")? {
        let NamedEntry {
            key,
            map,
            name,
            anchor,
        } = entry;
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
        resolve_all(
            &mut params,
            &format!("{key}.litellm_params"),
            text,
            &anchor,
            env,
        )?;
        let p = params.as_mapping().expect("a mapping");
        let kind = string(p, "guardrail").ok_or_else(|| {
            ConfigError::new(
                format!("{key}.litellm_params.guardrail"),
                at("litellm_params"),
                "is required",
            )
        })?;
        let (modes, logging_only) = match p.get("mode") {
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
        let Some(kind) = GUARDRAIL_TYPES.iter().find(|t| t.name == kind) else {
            let supported: Vec<&str> = supported_guardrail_types().collect();
            return Err(bad(
                "guardrail",
                format!(
                    "unknown guardrail type '{kind}' (supported: {})",
                    supported.join(", ")
                ),
            ));
        };
        for k in p.keys().filter_map(Value::as_str) {
            if !COMMON_GUARDRAIL_KEYS.contains(&k) && !kind.keys.contains(&k) {
                warnings.push(format!(
                    "line {}: {key}.litellm_params.{k} is not supported by guardrail type '{}' and is ignored",
                    at(k).unwrap_or(0),
                    kind.name
                ));
            }
        }
        let built = (kind.build)(&GuardrailParams {
            name: &name,
            modes,
            params: &params,
            env,
            key: &key,
            text,
            anchor: &anchor,
        })?;
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
        if let Some(v) = p.get("media_fallback") {
            g = g.media_fallback(parse_fallback(v).map_err(|m| bad("media_fallback", m))?);
        }
        if let Some(v) = p.get("timeout") {
            let t = seconds(v)
                .ok_or_else(|| bad("timeout", "must be a positive number of seconds".into()))?;
            g = g.timeout(t);
        }
        if let Some(v) = p.get("stream_policy") {
            g = g.stream_policy(parse_stream_policy(v).map_err(|m| bad("stream_policy", m))?);
        }
        let monitor = match p.get("monitor") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("monitor", "must be true or false".into())),
        };
        if monitor || logging_only {
            g = g.monitor(true);
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

/// `params` with `key` taken from the environment variable `env` when the config does not set
/// it (LiteLLM reads these variables too).
fn with_env_default(params: &Value, defaults: &[(&str, &str)], env: Env<'_>) -> Value {
    let mut params = params.clone();
    if let Value::Mapping(map) = &mut params {
        for (key, var) in defaults {
            let unset = map.get(*key).is_none_or(Value::is_null);
            if let (true, Some(value)) = (unset, env(var)) {
                map.insert(Value::from(*key), Value::from(value));
            }
        }
    }
    params
}

/// Names the environment variable a missing key can also come from.
fn or_env(
    e: guardrail_tower_guardrails::ConfigError,
    defaults: &[(&str, &str)],
) -> guardrail_tower_guardrails::ConfigError {
    match defaults.iter().find(|(key, _)| *key == e.field()) {
        Some((key, var)) if e.message() == "is required" => {
            guardrail_tower_guardrails::ConfigError::new(
                *key,
                format!("is required (in litellm_params, or the {var} environment variable)"),
            )
        }
        _ => e,
    }
}

/// `guardrail: presidio`. `output_parse_pii` and `apply_to_output` add `post_call` to the
/// modes, as in LiteLLM (the response must be restored or masked).
fn presidio(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    use guardrail_tower_guardrails::presidio::{ANALYZER_API_BASE_ENV, ANONYMIZER_API_BASE_ENV};
    const ENV: &[(&str, &str)] = &[
        ("presidio_analyzer_api_base", ANALYZER_API_BASE_ENV),
        ("presidio_anonymizer_api_base", ANONYMIZER_API_BASE_ENV),
    ];
    let config: PresidioConfig =
        p.settings_from(&with_env_default(p.params, ENV, p.env), "Presidio")?;
    let modes = if config.output_parse_pii || config.apply_to_output {
        p.modes.with(GuardrailMode::PostCall)
    } else {
        p.modes
    };
    let presidio = Presidio::new(config)
        .map_err(|e| p.invalid(or_env(e, ENV)))?
        .with_guardrail_name(p.name);
    Ok(ConfiguredGuardrail::new(
        p.name.to_owned(),
        modes,
        TracedGuardrail::new(p.name, presidio),
    ))
}

/// `guardrail: lakera_v2`.
fn lakera_v2(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    use guardrail_tower_guardrails::lakera::{API_BASE_ENV, API_KEY_ENV};
    const ENV: &[(&str, &str)] = &[("api_key", API_KEY_ENV), ("api_base", API_BASE_ENV)];
    let config: LakeraV2Config =
        p.settings_from(&with_env_default(p.params, ENV, p.env), "Lakera")?;
    let lakera = LakeraV2::new(config).map_err(|e| p.invalid(or_env(e, ENV)))?;
    Ok(p.configured(lakera))
}

/// `guardrail: azure/text_moderations`.
fn azure_text_moderations(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: AzureTextModerationConfig = p.settings("Azure text moderation")?;
    let azure = AzureTextModeration::new(config).map_err(|e| p.invalid(e))?;
    Ok(p.configured(azure))
}

/// `guardrail: azure/prompt_shield`.
fn azure_prompt_shield(p: &GuardrailParams<'_>) -> Result<ConfiguredGuardrail, ConfigError> {
    let config: AzurePromptShieldConfig = p.settings("Azure Prompt Shields")?;
    let azure = AzurePromptShield::new(config).map_err(|e| p.invalid(e))?;
    Ok(p.configured(azure))
}

fn parse_models(
    text: &str,
    value: Option<&Value>,
    guardrails: &HashSet<&str>,
    env: Env<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Deployment>, ConfigError> {
    let mut out: Vec<Deployment> = Vec::new();
    for entry in named_entries(text, value, "model_list", "model_name", "model")? {
        let NamedEntry {
            key,
            map,
            name: model_name,
            anchor,
        } = entry;
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
        resolve_all(
            &mut params,
            &format!("{key}.litellm_params"),
            text,
            &anchor,
            env,
        )?;
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
    use guardrail_tower_core::text::Side;

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
      media_fallback: fail_open
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
        // A content filter reads no media: the first refuses it, the second lets it pass.
        assert!(!config.guardrails[0].passes_media(Side::Request));
        assert!(config.guardrails[1].passes_media(Side::Request));
        assert!(config.guardrails[1].passes_media(Side::Response));
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
    fn numbers_and_flags_of_general_settings_are_checked_not_defaulted() {
        for (key, value, message) in [
            ("spend_logs_queue_size", "1.5", "a whole number above zero"),
            ("spend_logs_queue_size", "0", "a whole number above zero"),
            ("spend_logs_queue_size", "lots", "a whole number above zero"),
            (
                "spend_logs_queue_size",
                "10000000000000000000",
                "at most 10000000",
            ),
            ("max_request_body_bytes", "-1", "a whole number above zero"),
            (
                "max_request_body_bytes",
                "16MB",
                "a whole number above zero",
            ),
            ("request_timeout", "-5", "a positive number"),
            ("request_timeout", "ten", "a positive number"),
            ("request_timeout", "1e300", "a positive number of seconds"),
            ("client_read_timeout", "0", "a positive number"),
            ("client_write_timeout", "-1", "a positive number"),
            ("max_client_connections", "0", "a whole number above zero"),
            ("max_client_connections", "-3", "a whole number above zero"),
            ("max_client_connections", "1.5", "a whole number above zero"),
            (
                "max_request_bytes_in_flight",
                "0",
                "a whole number above zero",
            ),
            (
                "max_request_bytes_in_flight",
                "16777215",
                "at least max_request_body_bytes (16777216)",
            ),
            (
                "graceful_shutdown_timeout",
                "1e20",
                "a positive number of seconds",
            ),
            ("store_prompts_in_spend_logs", "\"yes\"", "true or false"),
            ("allow_unauthenticated", "1", "true or false"),
        ] {
            let e = error(&format!(
                "general_settings:\n  spend_logs: sqlite://s.db\n  {key}: {value}\n"
            ));
            assert_eq!(e.key, format!("general_settings.{key}"), "{key}: {value}");
            assert_eq!(e.line, Some(3), "{key}: {value}");
            assert!(e.message.contains(message), "{key}: {value}: {}", e.message);
        }
        let e = error("litellm_settings:\n  require_auth_for_metrics_endpoint: \"no\"\n");
        assert_eq!(e.key, "litellm_settings.require_auth_for_metrics_endpoint");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("true or false"), "{}", e.message);
        let config = GatewayConfig::from_yaml(
            "general_settings:\n  spend_logs_queue_size: 50\n  max_request_body_bytes: 1024\n  \
             request_timeout: 2.5\n  store_prompts_in_spend_logs: true\n  \
             client_read_timeout: 0.5\n  client_write_timeout: 7\n  \
             max_client_connections: 300\n  max_request_bytes_in_flight: 1024\n",
        )
        .unwrap();
        assert_eq!(config.max_client_connections, Some(300));
        assert_eq!(config.max_request_bytes_in_flight, Some(1024));
        assert_eq!(
            GatewayConfig::from_yaml("model_list: []")
                .unwrap()
                .max_client_connections,
            None
        );
        assert_eq!(config.spend_logs_queue_size, 50);
        assert_eq!(config.max_request_body_bytes, 1024);
        assert_eq!(config.request_timeout, Duration::from_millis(2500));
        assert_eq!(config.client_read_timeout, Duration::from_millis(500));
        assert_eq!(config.client_write_timeout, Duration::from_secs(7));
        assert!(config.store_prompts_in_spend_logs);
    }

    #[test]
    fn proxy_batch_write_at_sets_how_long_a_spend_log_batch_fills() {
        let linger = |general: &str| {
            GatewayConfig::from_yaml(&format!("general_settings:\n{general}"))
                .map(|c| c.spend_logs_linger)
        };
        assert_eq!(
            linger("  spend_logs_queue_size: 5\n").unwrap(),
            DEFAULT_SPEND_LOGS_LINGER
        );
        assert_eq!(
            linger("  proxy_batch_write_at: 0.5\n").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            linger("  proxy_batch_write_at: 60\n").unwrap(),
            MAX_SPEND_LOGS_LINGER
        );
        // A LiteLLM config's minutes are capped, with a warning.
        let config =
            GatewayConfig::from_yaml("general_settings:\n  proxy_batch_write_at: 300\n").unwrap();
        assert_eq!(config.spend_logs_linger, MAX_SPEND_LOGS_LINGER);
        assert_eq!(
            config.warnings,
            [
                "line 2: general_settings.proxy_batch_write_at is 300 s; the spend log waits at \
              most 60 s for a batch, so it writes every 60 s"
            ]
        );
        for (value, message) in [
            ("0", "must be a positive number"),
            ("-1", "must be a positive number"),
            ("soon", "must be a positive number"),
        ] {
            let e = linger(&format!(
                "  spend_logs_queue_size: 5\n  proxy_batch_write_at: {value}\n"
            ))
            .unwrap_err();
            assert_eq!(e.key, "general_settings.proxy_batch_write_at", "{value}");
            assert_eq!(e.line, Some(3), "{value}");
            assert!(e.message.contains(message), "{value}: {}", e.message);
        }
    }

    #[test]
    fn lists_of_models_and_guardrails_are_lists_of_named_mappings() {
        for (yaml, key, line, message) in [
            ("model_list: {a: 1}\n", "model_list", 1, "must be a list"),
            ("guardrails: x\n", "guardrails", 1, "must be a list"),
            (
                "model_list:\n  - 1\n",
                "model_list[0]",
                1,
                "each model must be a mapping",
            ),
            (
                "\nguardrails:\n  - [a]\n",
                "guardrails[0]",
                2,
                "each guardrail must be a mapping",
            ),
            (
                "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n  - litellm_params: {model: openai/b}\n",
                "model_list[1].model_name",
                1,
                "is required",
            ),
            (
                "guardrails:\n  - litellm_params: {guardrail: litellm_content_filter}\n",
                "guardrails[0].guardrail_name",
                1,
                "is required",
            ),
        ] {
            let e = error(yaml);
            assert_eq!(
                (e.key(), e.line(), e.message()),
                (key, Some(line), message),
                "{yaml}"
            );
        }
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

    fn guardrail(params: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_yaml(&format!(
            "guardrails:\n  - guardrail_name: g\n    litellm_params:\n{params}"
        ))
    }

    #[test]
    fn providers_missing_a_required_key_name_it() {
        let cases = [
            (
                "      guardrail: azure/text_moderations\n      mode: pre_call\n      api_base: https://r.example\n",
                "api_key",
                "is required",
            ),
            (
                "      guardrail: azure/prompt_shield\n      mode: pre_call\n      api_key: k\n",
                "api_base",
                "is required",
            ),
            (
                "      guardrail: azure/text_moderations\n      mode: pre_call\n      api_key: k\n      api_base: https://r.example\n      severity_threshold_by_category: {Gore: 2}\n",
                "severity_threshold_by_category.Gore",
                "unknown category 'Gore'",
            ),
            (
                "      guardrail: presidio\n      mode: pre_call\n      presidio_analyzer_api_base: http://a\n      presidio_anonymizer_api_base: http://b\n      pii_entities_config: {US_SSN: REFUSE}\n",
                "pii_entities_config.US_SSN",
                "unknown variant `REFUSE`, expected `MASK` or `BLOCK`",
            ),
            (
                "      guardrail: lakera_v2\n      mode: pre_call\n      api_key: k\n      on_flagged: shout\n",
                "on_flagged",
                "unknown variant",
            ),
        ];
        for (params, key, message) in cases {
            let e = guardrail(params).unwrap_err();
            assert_eq!(
                e.key(),
                format!("guardrails[0].litellm_params.{key}"),
                "{e}"
            );
            assert!(e.message().contains(message), "{e}");
        }
        // Keys LiteLLM also reads from the environment say so when both are missing.
        if std::env::var_os("LAKERA_API_KEY").is_none() {
            let e = guardrail("      guardrail: lakera_v2\n      mode: pre_call\n").unwrap_err();
            assert_eq!(e.key(), "guardrails[0].litellm_params.api_key");
            assert!(
                e.message().contains("LAKERA_API_KEY environment variable"),
                "{e}"
            );
        }
        if std::env::var_os("PRESIDIO_ANALYZER_API_BASE").is_none() {
            let e = guardrail("      guardrail: presidio\n      mode: pre_call\n").unwrap_err();
            assert_eq!(
                e.key(),
                "guardrails[0].litellm_params.presidio_analyzer_api_base"
            );
            assert!(e.message().contains("PRESIDIO_ANALYZER_API_BASE"), "{e}");
        }
        // An `os.environ/` reference that is unset names the variable and the key.
        let e = guardrail(
            "      guardrail: lakera_v2\n      mode: pre_call\n      api_key: os.environ/GUARDRAIL_GATEWAY_LAKERA_SURELY_UNSET\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), "guardrails[0].litellm_params.api_key");
        assert!(
            e.message()
                .contains("GUARDRAIL_GATEWAY_LAKERA_SURELY_UNSET is not set")
        );
        let e = guardrail("      guardrail: bedrock_v9\n      mode: pre_call\n").unwrap_err();
        assert!(
            e.message()
                .contains("presidio, lakera_v2, azure/text_moderations, azure/prompt_shield"),
            "{e}"
        );
    }

    #[test]
    fn providers_parse_with_litellm_keys() {
        let config = GatewayConfig::from_yaml(
            r#"
guardrails:
  - guardrail_name: pii
    litellm_params:
      guardrail: presidio
      mode: pre_call
      presidio_analyzer_api_base: http://analyzer:3000
      presidio_anonymizer_api_base: http://anonymizer:3000
      output_parse_pii: true
  - guardrail_name: lakera
    litellm_params: {guardrail: lakera_v2, mode: [pre_call, post_call], api_key: lk-secret, on_flagged: monitor}
  - guardrail_name: moderation
    litellm_params: {guardrail: azure/text_moderations, mode: post_call, api_key: az-secret, api_base: "https://r.example", severity_threshold: 4}
  - guardrail_name: shield
    litellm_params: {guardrail: azure/prompt_shield, mode: during_call, api_key: az-secret, api_base: "https://r.example"}
"#,
        )
        .unwrap();
        let providers: Vec<&str> = config.guardrails.iter().map(|g| g.provider()).collect();
        assert_eq!(
            providers,
            [
                "presidio",
                "lakera_v2",
                "azure/text_moderations",
                "azure/prompt_shield"
            ]
        );
        // output_parse_pii restores the response: post_call is added, as in LiteLLM.
        assert!(
            config.guardrails[0]
                .spec()
                .modes()
                .contains(GuardrailMode::PostCall)
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("lk-secret") && !debug.contains("az-secret"),
            "{debug}"
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

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn error_with_env(yaml: &str, vars: &'static [(&'static str, &'static str)]) -> ConfigError {
        GatewayConfig::from_yaml_with_env(yaml, &env_of(vars)).unwrap_err()
    }

    #[test]
    fn an_unknown_type_lists_the_supported_ones() {
        let e = error(
            "guardrails:\n  - guardrail_name: g\n    litellm_params:\n      guardrail: lakera\n      mode: pre_call\n",
        );
        assert_eq!(e.key(), "guardrails[0].litellm_params.guardrail");
        assert_eq!(
            e.message(),
            "unknown guardrail type 'lakera' (supported: litellm_content_filter, \
             generic_guardrail_api, openai_moderation, presidio, lakera_v2, \
             azure/text_moderations, azure/prompt_shield, bedrock, aim)"
        );
        assert_eq!(
            supported_guardrail_types().collect::<Vec<_>>(),
            GUARDRAIL_TYPES.iter().map(|t| t.name).collect::<Vec<_>>()
        );
    }

    const BEDROCK: &str = "guardrails:
  - guardrail_name: bedrock-guard
    litellm_params:
      guardrail: bedrock
      mode: [pre_call, post_call]
      guardrailIdentifier: gr-1
      guardrailVersion: 2
      aws_region_name: eu-west-1
";

    #[test]
    fn bedrock_parses_and_names_missing_keys() {
        let env: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ];
        let config = GatewayConfig::from_yaml_with_env(BEDROCK, &env_of(env)).unwrap();
        assert_eq!(config.guardrails[0].provider(), "bedrock");
        assert_eq!(config.warnings, Vec::<String>::new());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("env-secret") && !shown.contains("AKIDENV"),
            "{shown}"
        );

        // No credentials anywhere: the key is named, at the guardrail's line.
        let e = error_with_env(BEDROCK, &[]);
        assert_eq!(e.key(), "guardrails[0].litellm_params.aws_access_key_id");
        assert!(e.message().contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert_eq!(e.line(), Some(2));

        let e = error_with_env(
            &BEDROCK.replace("      guardrailIdentifier: gr-1\n", ""),
            env,
        );
        assert_eq!(e.key(), "guardrails[0].litellm_params.guardrailIdentifier");
        assert_eq!(e.message(), "is required");

        let e = error_with_env(
            &BEDROCK.replace("guardrailVersion: 2", "guardrailVersion: latest"),
            env,
        );
        assert_eq!(
            (e.key(), e.line()),
            ("guardrails[0].litellm_params.guardrailVersion", Some(7))
        );

        // An os.environ/ reference that is unset names the key and the variable.
        let yaml = format!(
            "{BEDROCK}      aws_access_key_id: os.environ/MY_KEY_ID\n      aws_secret_access_key: os.environ/MY_SECRET\n"
        );
        let e = error_with_env(&yaml, &[("MY_KEY_ID", "AKID")]);
        assert_eq!(
            (e.key(), e.line()),
            (
                "guardrails[0].litellm_params.aws_secret_access_key",
                Some(10)
            )
        );
        assert_eq!(e.message(), "environment variable MY_SECRET is not set");
        GatewayConfig::from_yaml_with_env(
            &yaml,
            &env_of(&[("MY_KEY_ID", "AKID"), ("MY_SECRET", "s")]),
        )
        .unwrap();

        let e = error_with_env(&format!("{BEDROCK}      aws_profile_name: prod\n"), env);
        assert_eq!(e.key(), "guardrails[0].litellm_params.aws_profile_name");
        let e = error_with_env(&format!("{BEDROCK}      timeout: soon\n"), env);
        assert_eq!(e.key(), "guardrails[0].litellm_params.timeout", "{e}");
        // Too large for a duration: an error, not a panic at start-up.
        let e = error_with_env(&format!("{BEDROCK}      timeout: 1e300\n"), env);
        assert_eq!(e.key(), "guardrails[0].litellm_params.timeout", "{e}");
    }

    #[test]
    fn aim_needs_a_key_from_the_config_or_the_environment() {
        let yaml = "guardrails:
  - guardrail_name: aim-guard
    litellm_params:
      guardrail: aim
      mode: during_call
      mask_request_content: true
";
        let e = error_with_env(yaml, &[]);
        assert_eq!(e.key(), "guardrails[0].litellm_params.api_key");
        assert_eq!(e.message(), "is required (or set AIM_API_KEY)");
        let config =
            GatewayConfig::from_yaml_with_env(yaml, &env_of(&[("AIM_API_KEY", "k")])).unwrap();
        assert_eq!(config.guardrails[0].provider(), "aim");
        assert_eq!(
            config.warnings,
            [
                "line 6: guardrails[0].litellm_params.mask_request_content is not supported by guardrail type 'aim' and is ignored"
            ]
        );
        let e = error_with_env(
            &format!("{yaml}      api_key: os.environ/AIM_KEY_UNSET\n"),
            &[("AIM_API_KEY", "k")],
        );
        assert_eq!(
            (e.key(), e.message()),
            (
                "guardrails[0].litellm_params.api_key",
                "environment variable AIM_KEY_UNSET is not set"
            )
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

    #[test]
    fn logging_only_and_monitor_make_a_monitor() {
        let modes = |g: &ConfiguredGuardrail| g.spec().modes().iter().collect::<Vec<_>>();
        let filter = "      guardrail: litellm_content_filter\n      blocked_words: [{keyword: x, action: BLOCK}]\n";
        let c = guardrail(&format!("{filter}      mode: logging_only\n")).unwrap();
        let g = &c.guardrails[0];
        assert!(g.is_monitor());
        assert_eq!(modes(g), [GuardrailMode::PreCall, GuardrailMode::PostCall]);
        let c = guardrail(&format!(
            "{filter}      mode: [during_call, logging_only]\n"
        ))
        .unwrap();
        assert!(c.guardrails[0].is_monitor());
        assert_eq!(modes(&c.guardrails[0]), [GuardrailMode::DuringCall]);
        let c = guardrail(&format!(
            "{filter}      mode: post_call\n      monitor: true\n"
        ))
        .unwrap();
        assert!(c.guardrails[0].is_monitor());
        assert_eq!(modes(&c.guardrails[0]), [GuardrailMode::PostCall]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = guardrail(&format!("{filter}      mode: pre_call\n")).unwrap();
        assert!(!c.guardrails[0].is_monitor());
        let e = guardrail(&format!(
            "{filter}      mode: pre_call\n      monitor: yes please\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), "guardrails[0].litellm_params.monitor");
        let e = guardrail(&format!("{filter}      mode: shadow\n")).unwrap_err();
        assert_eq!(
            e.message(),
            "unknown guardrail mode 'shadow' (expected pre_call, during_call, post_call or logging_only)"
        );
    }

    #[test]
    fn prometheus_is_a_litellm_callback() {
        let parse = |settings: &str| {
            GatewayConfig::from_yaml(&format!("litellm_settings:\n{settings}")).unwrap()
        };
        for on in [
            "  callbacks: [\"prometheus\"]\n",
            "  success_callback: [\"langfuse\", \"prometheus\"]\n",
            "  failure_callback: prometheus\n",
        ] {
            let c = parse(on);
            assert!(c.prometheus, "{on}");
            assert!(c.require_auth_for_metrics_endpoint);
        }
        let c = parse("  callbacks: [\"langfuse\"]\n  require_auth_for_metrics_endpoint: false\n");
        assert!(!c.prometheus);
        assert!(!c.require_auth_for_metrics_endpoint);
        assert!(!GatewayConfig::from_yaml("").unwrap().prometheus);
        let e = GatewayConfig::from_yaml("litellm_settings:\n  callbacks: 3\n").unwrap_err();
        assert_eq!(e.key(), "litellm_settings.callbacks");
    }
}
