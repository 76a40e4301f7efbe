//! LiteLLM's guardrail endpoints: `GET /guardrails/list` and `POST /guardrails/apply_guardrail`.
//!
//! - `GET /guardrails/list` answers `{"guardrails": [{"guardrail_name", "litellm_params",
//!   "guardrail_info"}]}`, one entry per configured guardrail in config order. `litellm_params`
//!   is the config's mapping with every secret masked (see [`mask_params`]): a value under a
//!   key that names a credential (`api_key`, `aws_secret_access_key`, `aws_session_token`,
//!   `password`, `authorization`, ...) and every header value become `"*****"`; any other
//!   value given as `os.environ/NAME` is shown as that reference, never resolved; a URL loses
//!   its user-info and its credential query parameters.
//! - `POST /guardrails/apply_guardrail` (and LiteLLM's alias `/apply_guardrail`) takes
//!   `{"guardrail_name", "text"}` (LiteLLM's optional `language` and `entities` are accepted;
//!   the guardrail's own configuration decides both) and runs that one guardrail on the text, as
//!   LiteLLM does: on the request side, in its `pre_call` (else `during_call`, else
//!   `post_call`) mode. It answers `{"response_text": ...}`: the text as the guardrail left it
//!   (masked, or unchanged). A block is the OpenAI error body of a guardrail block (400,
//!   `content_policy_violation`); an unknown guardrail a 404 naming it; a body that is not
//!   JSON, or lacks a string `guardrail_name` or `text`, a 400 naming the field.
//!
//! With a master key both need it (see [`crate::app::router_with_keys`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Caller, Effect, Error, GuardrailInput, GuardrailMode, Guardrails, RequestId,
    RequestMeta, Resolved,
};
use http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// What a masked secret shows.
pub const MASKED: &str = "*****";

/// One `/guardrails/list` entry: a guardrail as configured, its secrets masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailListing {
    /// `guardrail_name`.
    pub guardrail_name: String,
    /// `litellm_params`, masked by [`mask_params`].
    pub litellm_params: Value,
    /// `guardrail_info`, as configured (masked the same way), or `null`.
    pub guardrail_info: Value,
    /// The services the guardrail calls, for the readiness probe.
    #[serde(skip)]
    pub(crate) services: Vec<crate::health::ServiceAddr>,
}

/// `value` with every `os.environ/NAME` string read from `env` (unset: left as is).
fn resolve_env(value: &Value, env: &dyn Fn(&str) -> Option<String>) -> Value {
    match value {
        Value::String(s) => match s.strip_prefix("os.environ/").and_then(env) {
            Some(v) => Value::String(v),
            None => value.clone(),
        },
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resolve_env(v, env)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve_env(v, env)).collect()),
        other => other.clone(),
    }
}

/// The `/guardrails/list` entries of a config's `guardrails:` list (already validated), in
/// order, with the services each calls (`env` resolves their `os.environ/` URLs).
pub(crate) fn listing(
    guardrails: Option<&serde_yaml_ng::Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<GuardrailListing> {
    let Some(serde_yaml_ng::Value::Sequence(items)) = guardrails else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let map = item.as_mapping()?;
            let name = map.get("guardrail_name")?;
            let name = match name {
                serde_yaml_ng::Value::String(s) => s.clone(),
                other => serde_json::to_value(other).ok()?.to_string(),
            };
            let to_json = |key: &str| {
                map.get(key)
                    .and_then(|v| serde_json::to_value(v).ok())
                    .unwrap_or(Value::Null)
            };
            let params = to_json("litellm_params");
            let resolved = resolve_env(&params, env);
            let kind = resolved
                .get("guardrail")
                .and_then(Value::as_str)
                .unwrap_or("");
            let services = crate::health::service_addrs(kind, &resolved, env);
            Some(GuardrailListing {
                guardrail_name: name,
                litellm_params: mask_params(params),
                guardrail_info: mask_params(to_json("guardrail_info")),
                services,
            })
        })
        .collect()
}

/// Whether a key names a credential: one of its words (split at `_`, `-`, `.` and
/// lower-to-upper case changes) is a credential word, or it is one run together
/// (`apikey`, `accesskey`).
fn is_secret_key(key: &str) -> bool {
    const WORDS: &[&str] = &[
        "key",
        "keys",
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwd",
        "pwd",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "cookie",
        "signature",
        "sig",
    ];
    let lower = key.to_ascii_lowercase();
    if ["apikey", "accesskey", "secretkey", "sessiontoken"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return true;
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if matches!(c, '_' | '-' | '.' | ' ') {
            words.push(std::mem::take(&mut word));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    words.push(word);
    words.iter().any(|w| WORDS.contains(&w.as_str()))
}

/// Keys whose every value is masked (header maps carry credentials under any name).
fn is_header_map(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "headers" | "extra_headers" | "default_headers"
    )
}

/// A config's `litellm_params` (or `guardrail_info`) with its secrets masked:
///
/// - under a key that names a credential (`api_key`, `aws_access_key_id`,
///   `aws_secret_access_key`, `aws_session_token`, `password`, `Authorization`, ...) every
///   string or number becomes [`MASKED`], however deep;
/// - under `headers` / `extra_headers`, every value becomes [`MASKED`] (the names stay);
/// - any other `os.environ/NAME` reference stays as written (the name of a variable, not its
///   value: the listing shows what the config file says, never what the environment holds);
/// - any other string that is a URL loses its user-info (`user:pass@`) and the values of
///   query parameters that name a credential (`?api_key=`, `?code=`, `?sig=`, ...).
///
/// ```
/// use guardrail_gateway::guardrail_routes::mask_params;
/// use serde_json::json;
///
/// let masked = mask_params(json!({
///     "guardrail": "generic_guardrail_api",
///     "api_key": "sk-live-0123456789",
///     "api_base": "https://user:pw@guard.internal/v1?code=abc&region=eu",
///     "headers": {"X-Team": "t-1"},
///     "aws_secret_access_key": "os.environ/AWS_SECRET",
/// }));
/// assert_eq!(masked, json!({
///     "guardrail": "generic_guardrail_api",
///     "api_key": "*****",
///     "api_base": "https://*****@guard.internal/v1?code=*****&region=eu",
///     "headers": {"X-Team": "*****"},
///     "aws_secret_access_key": "*****",
/// }));
/// ```
pub fn mask_params(value: Value) -> Value {
    mask(value, false, 0)
}

fn mask(value: Value, secret: bool, depth: usize) -> Value {
    // A config nested deeper than this is not a config: mask it whole.
    if depth > 32 {
        return Value::String(MASKED.into());
    }
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let secret = secret || is_secret_key(&k) || is_header_map(&k);
                    let v = mask(v, secret, depth + 1);
                    (k, v)
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| mask(v, secret, depth + 1))
                .collect(),
        ),
        Value::String(_) | Value::Number(_) if secret => Value::String(MASKED.into()),
        Value::String(s) if s.contains("://") => Value::String(mask_url(&s)),
        other => other,
    }
}

/// `url` without its user-info and with the values of credential query parameters masked.
pub(crate) fn mask_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.replace_range(scheme_end + 3..scheme_end + 3 + at, MASKED);
        }
    }
    if let Some(query) = out.find('?') {
        let (head, tail) = out.split_at(query + 1);
        let (params, fragment) = match tail.find('#') {
            Some(i) => tail.split_at(i),
            None => (tail, ""),
        };
        let params: Vec<String> = params
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_secret_key(k) || k.eq_ignore_ascii_case("code") => {
                    format!("{k}={MASKED}")
                }
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{head}{}{fragment}", params.join("&"));
    }
    out
}

/// The guardrail routes' state: the guardrails that run and their listing.
#[derive(Clone)]
struct RoutesState {
    guardrails: Guardrails,
    listing: Arc<[GuardrailListing]>,
    body_limit: usize,
}

/// The routes: `GET /guardrails/list`, `POST /guardrails/apply_guardrail` and
/// `POST /apply_guardrail`. Mount them behind the master key when there is one.
pub fn router(
    guardrails: Guardrails,
    listing: impl Into<Arc<[GuardrailListing]>>,
    body_limit: usize,
) -> Router {
    let state = RoutesState {
        guardrails,
        listing: listing.into(),
        body_limit,
    };
    Router::new()
        .route("/guardrails/list", get(list))
        .route("/guardrails/apply_guardrail", post(apply))
        .route("/apply_guardrail", post(apply))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn list(State(state): State<RoutesState>) -> Response {
    axum::Json(json!({ "guardrails": &*state.listing })).into_response()
}

fn error(
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: &'static str,
) -> Response {
    let mut e = Error::new(status, message).with_code(code);
    if let Some(param) = param {
        e = e.with_param(param);
    }
    e.to_response(CallType::Other).map(axum::body::Body::from)
}

/// The field `name` of `body`, which must be a string.
fn string_field<'a>(body: &'a Value, name: &'static str) -> Result<&'a str, Error> {
    let message = match body.get(name) {
        Some(Value::String(s)) => return Ok(s),
        Some(_) => format!("'{name}' must be a string"),
        None => format!("'{name}' is required"),
    };
    Err(Error::new(StatusCode::BAD_REQUEST, message)
        .with_param(name)
        .with_code("invalid_request"))
}

/// The mode and side `/guardrails/apply_guardrail` runs a guardrail in: its request mode
/// (`pre_call`, else `during_call`) on the request side, else `post_call` on the response side.
fn mode_of(modes: guardrail_tower_core::GuardrailModes) -> (GuardrailMode, Side) {
    if modes.contains(GuardrailMode::PreCall) {
        (GuardrailMode::PreCall, Side::Request)
    } else if modes.contains(GuardrailMode::DuringCall) {
        (GuardrailMode::DuringCall, Side::Request)
    } else if modes.contains(GuardrailMode::PostCall) {
        (GuardrailMode::PostCall, Side::Response)
    } else {
        (GuardrailMode::PreCall, Side::Request)
    }
}

async fn apply(
    State(state): State<RoutesState>,
    caller: Option<Extension<Arc<Caller>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Error::payload_too_large(state.body_limit)
                .to_response(CallType::Other)
                .map(axum::body::Body::from);
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {}", rejection.body_text()),
                None,
                "invalid_request",
            );
        }
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body @ Value::Object(_)) => body,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body must be a JSON object".into(),
                None,
                "invalid_json",
            );
        }
        Err(e) => {
            return Error::invalid_json(e)
                .to_response(CallType::Other)
                .map(axum::body::Body::from);
        }
    };
    let (name, text) = match (
        string_field(&body, "guardrail_name"),
        string_field(&body, "text"),
    ) {
        (Ok(name), Ok(text)) => (name, text),
        (Err(e), _) | (_, Err(e)) => {
            return e.to_response(CallType::Other).map(axum::body::Body::from);
        }
    };
    let Some(guardrail) = state.guardrails.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "Guardrail '{name}' not found. Please ensure the guardrail is configured in your LiteLLM proxy."
            ),
            Some("guardrail_name"),
            "not_found",
        );
    };
    let (mode, side) = mode_of(guardrail.spec().modes());
    let meta = RequestMeta::new(RequestId::generate(), CallType::Other)
        .with_caller(caller.map(|Extension(c)| c));
    let input = GuardrailInput::new(vec![text.to_owned()], side, mode, Arc::new(meta));
    let check = guardrail.check(&input).await;
    let Resolved { entry, effect } = guardrail.resolve(mode, 1, check);
    tracing::info!(
        guardrail = %entry.guardrail_name,
        mode = mode.as_str(),
        status = ?entry.guardrail_status,
        action = ?entry.guardrail_action,
        duration = entry.duration,
        "apply_guardrail"
    );
    match effect {
        Effect::Allow => axum::Json(json!({ "response_text": text })).into_response(),
        Effect::Rewrite(mut texts) => {
            let text = texts.pop().unwrap_or_default();
            axum::Json(json!({ "response_text": text })).into_response()
        }
        Effect::Block(error) => error
            .to_response(CallType::Other)
            .map(axum::body::Body::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_are_recognized_and_others_are_not() {
        for key in [
            "api_key",
            "apiKey",
            "API_KEY",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "x-api-key",
            "Authorization",
            "password",
            "db_passwd",
            "client_secret",
            "vertex_credentials",
            "Ocp-Apim-Subscription-Key",
            "apikey",
        ] {
            assert!(is_secret_key(key), "{key} should be masked");
        }
        for key in [
            "guardrail",
            "mode",
            "keyword",
            "keyword_redaction_tag",
            "blocked_words",
            "api_base",
            "guardrailIdentifier",
            "max_unbounded_match_chars",
            "presidio_analyzer_api_base",
            "aws_region_name",
        ] {
            assert!(!is_secret_key(key), "{key} should not be masked");
        }
    }

    #[test]
    fn nested_secrets_headers_and_urls_are_masked() {
        let masked = mask_params(json!({
            "guardrail": "litellm_content_filter",
            "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
            "additional_provider_specific_params": {"auth": {"token": "t0k3n", "ttl": 5}},
            "extra_headers": {"X-Custom": "secret-value"},
            "api_base": "http://guard.local:8080/check?api-key=abc&x=1#frag",
            "aws_session_token": 12345,
        }));
        assert_eq!(
            masked,
            json!({
                "guardrail": "litellm_content_filter",
                "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
                "additional_provider_specific_params": {"auth": {"token": MASKED, "ttl": MASKED}},
                "extra_headers": {"X-Custom": MASKED},
                "api_base": "http://guard.local:8080/check?api-key=*****&x=1#frag",
                "aws_session_token": MASKED,
            })
        );
    }
}
