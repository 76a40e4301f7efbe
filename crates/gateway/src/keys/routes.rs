//! The `/key/*` routes, with LiteLLM's request and response shapes. The gateway puts them
//! behind the master key ([`RequireKeyLayer::master_only`](crate::auth::RequireKeyLayer)).
//!
//! | route | request | response |
//! |---|---|---|
//! | `POST /key/generate` | `key_alias`, `duration` (`30s`, `30m`, `30h`, `30d`, `2w`, `1mo`; none: never expires), `models`, `metadata`, `guardrails`, `user_id`, `team_id`, `organization_id`, `blocked`, `max_parallel_requests` (the most requests with the key running at once; `null`: no limit), `key` (a value of your own, `sk-...`) | the row, with `key` (shown this once), `token` / `token_id` (its hash), `key_name` (`sk-...` and its last four characters) |
//! | `GET /key/info?key=` | the key or its hash | `{"key", "info": {...}}` |
//! | `POST /key/update` | `key` (the key or its hash) and the fields to change (`duration: "-1"`: never expires) | `{"key", ...the row}` |
//! | `POST /key/delete` | `keys` (keys or hashes) or `key_aliases` | `{"deleted_keys": [...]}`; all or nothing |
//! | `POST /key/block`, `POST /key/unblock` | `key` (the key or its hash) | the row |
//! | `GET /key/list` | `page`, `size` (1 to 100), `user_id`, `team_id`, `organization_id`, `key_alias`, `key_hash`, `return_full_object`, `sort_by`, `sort_order` | `{"keys", "total_count", "current_page", "total_pages"}` |
//!
//! A field LiteLLM knows but this gateway does not enforce (`max_budget`, `tpm_limit`, ...)
//! is refused with a 400 when it is set, rather than stored and ignored; so is any unknown
//! field. A key's `guardrails` (stored in `metadata.guardrails`, as LiteLLM does) must name
//! configured guardrails.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guardrail_tower_core::{CallType, Caller, Error};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    DeleteOutcome, KeyCache, KeyQuery, KeySelector, KeyStoreError, KeyStoreErrorKind, VirtualKey,
    abbreviate, expiry_after, generate_key, hash_key, token_of,
};

/// The state of the `/key/*` routes.
#[derive(Debug, Clone)]
pub struct KeyRoutes {
    keys: Result<Arc<KeyCache>, &'static str>,
    guardrails: Arc<BTreeSet<String>>,
}

impl KeyRoutes {
    /// Routes over the keys of `keys`; `guardrails` are the configured guardrail names a key
    /// may carry.
    pub fn new<I>(keys: Arc<KeyCache>, guardrails: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        KeyRoutes {
            keys: Ok(keys),
            guardrails: Arc::new(guardrails.into_iter().map(Into::into).collect()),
        }
    }

    /// Routes that answer every request with a 400 saying why virtual keys are unavailable.
    pub fn unavailable(reason: &'static str) -> Self {
        KeyRoutes {
            keys: Err(reason),
            guardrails: Arc::default(),
        }
    }

    /// The router: `/key/generate`, `/key/info`, `/key/update`, `/key/delete`, `/key/list`,
    /// `/key/block`, `/key/unblock`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/key/generate", post(generate))
            .route("/key/info", get(info))
            .route("/key/update", post(update))
            .route("/key/delete", post(delete))
            .route("/key/list", get(list))
            .route("/key/block", post(block))
            .route("/key/unblock", post(unblock))
            .with_state(self)
    }

    fn keys(&self) -> Result<&Arc<KeyCache>, Error> {
        self.keys.as_ref().map_err(|reason| {
            Error::new(StatusCode::BAD_REQUEST, *reason).with_code("virtual_keys_unavailable")
        })
    }
}

/// A handler's answer: the JSON, or the error in the OpenAI shape.
fn respond(result: Result<Value, Error>) -> Response {
    match result {
        Ok(json) => axum::Json(json).into_response(),
        Err(e) => e.to_response(CallType::Other).map(axum::body::Body::from),
    }
}

fn bad(message: impl Into<String>, param: &'static str) -> Error {
    Error::new(StatusCode::BAD_REQUEST, message.into()).with_param(param)
}

fn not_found(param: &'static str) -> Error {
    Error::new(StatusCode::NOT_FOUND, "Key not found in database")
        .with_type("not_found_error")
        .with_param(param)
        .with_code("404")
}

fn store_error(e: KeyStoreError) -> Error {
    match e.kind() {
        KeyStoreErrorKind::AliasTaken(alias) => bad(
            format!(
                "Key with alias '{alias}' already exists. Unique key aliases across all keys are required."
            ),
            "key_alias",
        ),
        KeyStoreErrorKind::Exists => bad("a key with this value already exists", "key"),
        KeyStoreErrorKind::Unavailable => {
            tracing::error!(error = %e, "key store unavailable");
            Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key database is unavailable; nothing was changed",
            )
            .with_code("key_store_unavailable")
        }
        _ => {
            tracing::error!(error = %e, "key store error");
            Error::internal("the key database failed; see the gateway's log")
        }
    }
}

/// Who made the admin request (`created_by` / `updated_by`).
fn actor(caller: Option<&Arc<Caller>>) -> Option<String> {
    caller.and_then(|c| c.user_id.clone())
}

fn caller_of(headers: &http::Extensions) -> Option<Arc<Caller>> {
    headers.get::<Arc<Caller>>().cloned()
}

/// The fields of `/key/generate` and `/key/update` this gateway stores. `None`: not given (or
/// `null`).
#[derive(Debug, Default)]
struct Fields {
    key: Option<String>,
    key_alias: Option<String>,
    duration: Option<String>,
    models: Option<Vec<String>>,
    metadata: Option<Map<String, Value>>,
    guardrails: Option<Vec<String>>,
    user_id: Option<String>,
    team_id: Option<String>,
    organization_id: Option<String>,
    blocked: Option<bool>,
    /// `Some(None)`: `null`, no limit.
    max_parallel_requests: Option<Option<u32>>,
}

/// Whether a value is the default LiteLLM sends for a field it does not use.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "default",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

fn parse_fields(body: &Bytes) -> Result<Fields, Error> {
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(bad("the request body must be a JSON object", "body")),
        Err(e) => return Err(Error::invalid_json(e)),
    };
    let mut fields = Fields::default();
    for (name, value) in object {
        let text = |param: &'static str| -> Result<Option<String>, Error> {
            match &value {
                Value::Null => Ok(None),
                Value::String(s) if s.is_empty() || s.chars().any(char::is_control) => Err(bad(
                    format!("'{param}' must be a non-empty string without control characters"),
                    param,
                )),
                Value::String(s) if s.chars().count() > 256 => Err(bad(
                    format!("'{param}' is longer than 256 characters"),
                    param,
                )),
                Value::String(s) => Ok(Some(s.clone())),
                _ => Err(bad(format!("'{param}' must be a string"), param)),
            }
        };
        let list = |param: &'static str| -> Result<Option<Vec<String>>, Error> {
            match &value {
                Value::Null => Ok(None),
                Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(bad(format!("'{param}' must be a list of names"), param)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                _ => Err(bad(format!("'{param}' must be a list of names"), param)),
            }
        };
        match name.as_str() {
            "key" => fields.key = text("key")?,
            "key_alias" => fields.key_alias = text("key_alias")?,
            "duration" => fields.duration = text("duration")?,
            "user_id" => fields.user_id = text("user_id")?,
            "team_id" => fields.team_id = text("team_id")?,
            "organization_id" => fields.organization_id = text("organization_id")?,
            "models" => fields.models = list("models")?,
            "guardrails" => fields.guardrails = list("guardrails")?,
            "metadata" => {
                fields.metadata = match value {
                    Value::Null => None,
                    Value::Object(map) => Some(map),
                    _ => return Err(bad("'metadata' must be an object", "metadata")),
                }
            }
            "max_parallel_requests" => {
                fields.max_parallel_requests = match &value {
                    Value::Null => Some(None),
                    // At most what LiteLLM's `INTEGER` column holds.
                    Value::Number(n) => n
                        .as_u64()
                        .and_then(|n| i32::try_from(n).ok())
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|&n| n > 0)
                        .map(Some),
                    _ => None,
                };
                if fields.max_parallel_requests.is_none() {
                    return Err(bad(
                        "'max_parallel_requests' must be a whole number above zero, or null for \
                         no limit",
                        "max_parallel_requests",
                    ));
                }
            }
            "blocked" => {
                fields.blocked = match value {
                    Value::Null => None,
                    Value::Bool(b) => Some(b),
                    _ => return Err(bad("'blocked' must be true or false", "blocked")),
                }
            }
            other if is_empty(&value) => {
                // A LiteLLM field left at its default: nothing to store.
                let _ = other;
            }
            other => {
                return Err(bad(
                    format!(
                        "'{other}' is not supported by this gateway: a key carries key_alias, \
                         duration, models, metadata, guardrails, user_id, team_id, \
                         organization_id, blocked and max_parallel_requests"
                    ),
                    "body",
                ));
            }
        }
    }
    Ok(fields)
}

impl KeyRoutes {
    /// Every guardrail a key would carry must be configured.
    fn check_guardrails(&self, key: &VirtualKey) -> Result<(), Error> {
        match key
            .guardrails()
            .into_iter()
            .find(|g| !self.guardrails.contains(g))
        {
            None => Ok(()),
            Some(name) => Err(bad(
                format!("guardrail '{name}' is not configured on this gateway"),
                "guardrails",
            )),
        }
    }
}

/// Applies the given fields to a row (`now` for the expiry).
fn apply(key: &mut VirtualKey, fields: Fields, now: SystemTime) -> Result<(), Error> {
    if let Some(alias) = fields.key_alias {
        key.key_alias = Some(alias);
    }
    if let Some(duration) = fields.duration {
        key.expires = if duration == "-1" {
            None
        } else {
            Some(expiry_after(&duration, now).map_err(|m| bad(m, "duration"))?)
        };
    }
    if let Some(models) = fields.models {
        key.models = models;
    }
    if let Some(mut metadata) = fields.metadata {
        // New metadata keeps the key's guardrails unless it names its own: an update of other
        // metadata must not silently drop them.
        if !metadata.contains_key("guardrails") {
            if let Some(guardrails) = key.metadata.get("guardrails") {
                metadata.insert("guardrails".into(), guardrails.clone());
            }
        }
        key.metadata = metadata;
    }
    if let Some(guardrails) = fields.guardrails {
        key.metadata
            .insert("guardrails".into(), Value::from(guardrails));
    }
    if let Some(user_id) = fields.user_id {
        key.user_id = Some(user_id);
    }
    if let Some(team_id) = fields.team_id {
        key.team_id = Some(team_id);
    }
    if let Some(org) = fields.organization_id {
        key.organization_id = Some(org);
    }
    if let Some(blocked) = fields.blocked {
        key.blocked = Some(blocked);
    }
    if let Some(max) = fields.max_parallel_requests {
        key.max_parallel_requests = max;
    }
    Ok(())
}

/// Reads a request body of at most 1 MiB.
async fn body_of(body: axum::body::Body) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, 1 << 20).await.map_err(|_| {
        bad(
            "the request body is larger than 1 MiB or could not be read",
            "body",
        )
    })
}

/// `POST /key/generate`.
async fn generate(
    State(routes): State<KeyRoutes>,
    request: http::Request<axum::body::Body>,
) -> Response {
    respond(generate_key_row(&routes, request).await)
}

async fn generate_key_row(
    routes: &KeyRoutes,
    request: http::Request<axum::body::Body>,
) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let (parts, body) = request.into_parts();
    let mut fields = parse_fields(&body_of(body).await?)?;
    let raw = match fields.key.take() {
        Some(key)
            if key.starts_with("sk-") && key.len() >= 16 && !key.contains(char::is_whitespace) =>
        {
            key
        }
        Some(_) => {
            return Err(bad(
                "Invalid key format. LiteLLM Virtual Key must start with 'sk-' (and be at least 16 characters, without spaces).",
                "key",
            ));
        }
        None => generate_key().map_err(store_error)?,
    };
    let duration = fields.duration.clone();
    if duration.as_deref() == Some("-1") {
        fields.duration = None;
    }
    let now = SystemTime::now();
    let mut key = VirtualKey::new(hash_key(&raw));
    key.key_name = Some(abbreviate(&raw));
    apply(&mut key, fields, now)?;
    routes.check_guardrails(&key)?;
    let actor = actor(caller_of(&parts.extensions).as_ref());
    key.created_at = Some(now);
    key.updated_at = Some(now);
    key.created_by = actor.clone();
    key.updated_by = actor;
    keys.store().insert(&key).await.map_err(store_error)?;
    // A lookup of this key made before it existed may be cached as "unknown".
    keys.invalidate(&key.token);
    tracing::info!(
        key_alias = key.key_alias.as_deref().unwrap_or(""),
        key_name = key.key_name.as_deref().unwrap_or(""),
        "virtual key generated"
    );
    let mut out = Map::new();
    out.insert("key".into(), Value::from(raw));
    out.extend(key.to_json(false));
    out.insert("token".into(), Value::from(key.token.clone()));
    out.insert("token_id".into(), Value::from(key.token.clone()));
    out.insert("duration".into(), duration.map_or(Value::Null, Value::from));
    Ok(Value::Object(out))
}

type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

fn query_map(query: QueryMap) -> Result<HashMap<String, String>, Error> {
    query
        .map(|Query(q)| q)
        .map_err(|e| bad(format!("invalid query string: {e}"), "query"))
}

/// `GET /key/info?key=`.
async fn info(State(routes): State<KeyRoutes>, query: QueryMap) -> Response {
    respond(key_info(&routes, query).await)
}

async fn key_info(routes: &KeyRoutes, query: QueryMap) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let query = query_map(query)?;
    let Some(key) = query.get("key").filter(|k| !k.is_empty()) else {
        return Err(bad("'key' is required: the key or its hash", "key"));
    };
    match keys.store().get(&token_of(key)).await {
        Ok(Some(row)) => Ok(json!({"key": key, "info": row.to_json(false)})),
        Ok(None) => Err(not_found("key")),
        Err(e) => Err(store_error(e)),
    }
}

/// `POST /key/update`.
async fn update(
    State(routes): State<KeyRoutes>,
    request: http::Request<axum::body::Body>,
) -> Response {
    respond(update_key(&routes, request).await)
}

async fn update_key(
    routes: &KeyRoutes,
    request: http::Request<axum::body::Body>,
) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let (parts, body) = request.into_parts();
    let mut fields = parse_fields(&body_of(body).await?)?;
    let Some(name) = fields.key.take() else {
        return Err(bad("'key' is required: the key or its hash", "key"));
    };
    let token = token_of(&name);
    let mut key = keys
        .store()
        .get(&token)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("key"))?;
    let now = SystemTime::now();
    apply(&mut key, fields, now)?;
    routes.check_guardrails(&key)?;
    key.updated_at = Some(now);
    key.updated_by = actor(caller_of(&parts.extensions).as_ref());
    if !keys.store().update(&key).await.map_err(store_error)? {
        return Err(not_found("key"));
    }
    keys.invalidate(&token);
    tracing::info!(
        key_alias = key.key_alias.as_deref().unwrap_or(""),
        key_name = key.key_name.as_deref().unwrap_or(""),
        "virtual key updated"
    );
    let mut out = Map::new();
    out.insert("key".into(), Value::from(name));
    out.extend(key.to_json(false));
    Ok(Value::Object(out))
}

/// `POST /key/block`: `{"key": ...}`; the key is refused until unblocked.
async fn block(
    State(routes): State<KeyRoutes>,
    request: http::Request<axum::body::Body>,
) -> Response {
    respond(set_blocked(&routes, request, true).await)
}

/// `POST /key/unblock`.
async fn unblock(
    State(routes): State<KeyRoutes>,
    request: http::Request<axum::body::Body>,
) -> Response {
    respond(set_blocked(&routes, request, false).await)
}

async fn set_blocked(
    routes: &KeyRoutes,
    request: http::Request<axum::body::Body>,
    blocked: bool,
) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let (parts, body) = request.into_parts();
    let body = body_of(body).await?;
    let name = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(object)) => match object.get("key") {
            Some(Value::String(key)) if !key.is_empty() => key.clone(),
            _ => return Err(bad("'key' is required: the key or its hash", "key")),
        },
        Ok(_) => return Err(bad("the request body must be a JSON object", "body")),
        Err(e) => return Err(Error::invalid_json(e)),
    };
    let token = token_of(&name);
    let mut key = keys
        .store()
        .get(&token)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("key"))?;
    key.blocked = Some(blocked);
    key.updated_at = Some(SystemTime::now());
    key.updated_by = actor(caller_of(&parts.extensions).as_ref());
    if !keys.store().update(&key).await.map_err(store_error)? {
        return Err(not_found("key"));
    }
    keys.invalidate(&token);
    tracing::info!(
        key_alias = key.key_alias.as_deref().unwrap_or(""),
        key_name = key.key_name.as_deref().unwrap_or(""),
        blocked,
        "virtual key blocked or unblocked"
    );
    let mut out = Map::new();
    out.insert("key".into(), Value::from(name));
    out.extend(key.to_json(false));
    Ok(Value::Object(out))
}

/// `POST /key/delete`.
async fn delete(State(routes): State<KeyRoutes>, body: Bytes) -> Response {
    respond(delete_keys(&routes, &body).await)
}

async fn delete_keys(routes: &KeyRoutes, body: &Bytes) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(bad("the request body must be a JSON object", "body")),
        Err(e) => return Err(Error::invalid_json(e)),
    };
    let names = |field: &str| -> Result<Option<Vec<String>>, Error> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if items.is_empty() => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| bad(format!("'{field}' must be a list of strings"), "keys")),
            Some(_) => Err(bad(format!("'{field}' must be a list of strings"), "keys")),
        }
    };
    let (given, selector) = match (names("keys")?, names("key_aliases")?) {
        (Some(keys), _) => {
            let tokens = keys.iter().map(|k| token_of(k)).collect();
            (keys, KeySelector::Tokens(tokens))
        }
        (None, Some(aliases)) => (aliases.clone(), KeySelector::Aliases(aliases)),
        (None, None) => {
            return Err(bad(
                "At least one of 'keys' or 'key_aliases' must be provided.",
                "keys",
            ));
        }
    };
    let DeleteOutcome { deleted, missing } =
        keys.store().delete(&selector).await.map_err(store_error)?;
    if !missing.is_empty() {
        return Err(Error::new(
            StatusCode::NOT_FOUND,
            format!(
                "Not all keys passed in were found ({} of {} not found); nothing was deleted",
                missing.len(),
                given.len()
            ),
        )
        .with_type("not_found_error")
        .with_param("keys")
        .with_code("404"));
    }
    for token in &deleted {
        keys.invalidate(token);
    }
    tracing::info!(count = deleted.len(), "virtual keys deleted");
    Ok(json!({"deleted_keys": given}))
}

/// `GET /key/list`.
async fn list(State(routes): State<KeyRoutes>, query: QueryMap) -> Response {
    respond(list_keys(&routes, query).await)
}

async fn list_keys(routes: &KeyRoutes, query: QueryMap) -> Result<Value, Error> {
    let keys = routes.keys()?;
    let q = query_map(query)?;
    let number = |name: &'static str, default: u64, max: u64| -> Result<u64, Error> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(format!("'{name}' must be an integer from 1 to {max}"), name)),
        }
    };
    let page = number("page", 1, 1_000_000)?;
    let size = number("size", 10, 100)?;
    let full = match q.get("return_full_object").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(bad(
                "'return_full_object' must be true or false",
                "return_full_object",
            ));
        }
    };
    let ascending = match q.get("sort_order").map(|s| s.to_ascii_lowercase()) {
        None => false,
        Some(s) if s == "desc" => false,
        Some(s) if s == "asc" => true,
        Some(_) => return Err(bad("'sort_order' must be asc or desc", "sort_order")),
    };
    let sort_by = q.get("sort_by").cloned();
    if let Some(column) = &sort_by {
        if !KeyQuery::SORTABLE.contains(&column.as_str()) {
            return Err(bad(
                format!("'sort_by' must be one of {}", KeyQuery::SORTABLE.join(", ")),
                "sort_by",
            ));
        }
    }
    let mut query = KeyQuery::new();
    query.page = page;
    query.size = size;
    query.user_id = q.get("user_id").cloned();
    query.team_id = q.get("team_id").cloned();
    query.organization_id = q.get("organization_id").cloned();
    query.key_alias = q.get("key_alias").cloned();
    query.token = q.get("key_hash").cloned();
    query.sort_by = sort_by;
    query.ascending = ascending;
    let found = keys.store().list(&query).await.map_err(store_error)?;
    let listed: Vec<Value> = found
        .keys
        .iter()
        .map(|k| {
            if full {
                Value::Object(k.to_json(true))
            } else {
                Value::from(k.token.clone())
            }
        })
        .collect();
    Ok(json!({
        "keys": listed,
        "total_count": found.total,
        "current_page": page,
        "total_pages": found.total.div_ceil(size),
    }))
}
