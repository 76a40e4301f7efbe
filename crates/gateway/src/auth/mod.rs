//! Authentication as LiteLLM does it: a master key and virtual keys.
//!
//! A client sends its key as `Authorization: Bearer <key>`, or `x-litellm-api-key: <key>`
//! (with or without `Bearer `; it wins over `Authorization`, as in LiteLLM), or, on
//! `/v1/messages`, `x-api-key: <key>` as Anthropic clients send it. The key is hashed once
//! (SHA-256) and the digest compared with the master key's in constant time; any other key is
//! looked up (through a [`KeyCache`]) as a virtual key.
//!
//! - [`KeyAuthLayer`] guards the LLM routes. With a valid key it buffers and parses the request
//!   (once: later layers reuse it), refuses a model the key does not allow (403), and a
//!   request beyond the key's `max_parallel_requests` running at once (429, until one of them
//!   has sent its response: the place is held by the response body, [`KeyAuthBody`]), merges the
//!   key's guardrails into the request's guardrail selection (nothing the client sends can take
//!   them out), removes the client's credentials from the request, and puts an `Arc<Caller>` in
//!   the request extensions (for guardrails), in the response extensions, and in the request's
//!   [`ResponseReport`](guardrail_tower_core::ResponseReport) when there is one (for the spend
//!   log, which wraps this layer: it names the caller even when the client leaves before the
//!   response). A refused request gets LiteLLM's error, in the endpoint's shape,
//!   and is never forwarded.
//! - [`RequireKeyLayer`] guards the other routes: admin routes (`/spend/logs`, `/key/*`) take
//!   the master key only, other routes any valid key. It passes the request through untouched.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use guardrail_gateway::auth::{Authenticator, KeyAuthLayer};
//! use guardrail_tower_core::Caller;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let auth = Authenticator::new("sk-master-0123456789");
//! let svc = ServiceBuilder::new()
//!     .layer(KeyAuthLayer::new(auth))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         // The key never reaches the inner service; who called does.
//!         assert!(req.headers().get("authorization").is_none());
//!         let caller = req.extensions().get::<Arc<Caller>>().unwrap();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
//!             caller.user_id.clone().unwrap(),
//!         ))))
//!     }));
//!
//! let body = r#"{"model":"gpt-4o","messages":[]}"#;
//! let req = Request::post("/v1/chat/completions")
//!     .header("authorization", "Bearer sk-master-0123456789")
//!     .body(Full::new(Bytes::from_static(body.as_bytes())))
//!     .unwrap();
//! let resp = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "default_user_id");
//!
//! let req = Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(body.as_bytes())))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 401);
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"error":{"message":"Authentication Error, No api key passed in.","type":"auth_error","param":null,"code":"401"}}"#
//! );
//! # }
//! ```

mod future;
mod layer;
mod require;
mod service;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use guardrail_tower_core::{CallType, Caller, Error, ErrorClass};
use http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::keys::{KeyCache, KeyStoreError, ResolvedKey, key_digest, python_timestamp};

pub use future::{KeyAuthBody, KeyAuthFuture};
pub use layer::KeyAuthLayer;
pub use require::{RequireKey, RequireKeyFuture, RequireKeyLayer};
pub use service::KeyAuth;

/// LiteLLM's name for the master key in logs and spend rows
/// (`LITELLM_PROXY_MASTER_KEY_ALIAS`): requests made with the master key record this, not the
/// key's hash.
pub const MASTER_KEY_ALIAS: &str = "litellm_proxy_master_key";

/// LiteLLM's user id of the master key (`LITELLM_PROXY_ADMIN_NAME`).
pub const MASTER_USER_ID: &str = "default_user_id";

/// The request headers that carry a client's credentials: never forwarded.
pub const CREDENTIAL_HEADERS: &[&str] =
    &["authorization", "x-litellm-api-key", "x-api-key", "api-key"];

/// Who may call: the master key (its SHA-256 digest) and, optionally, the virtual keys of a
/// [`KeyCache`]. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    master: [u8; 32],
    master_caller: Arc<Caller>,
    keys: Option<Arc<KeyCache>>,
    guardrails: Option<HashSet<String>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("master_key", &"<redacted>")
            .field("keys", &self.shared.keys)
            .finish_non_exhaustive()
    }
}

/// Who a request's key says it is.
#[derive(Debug, Clone)]
pub(crate) enum Who {
    /// The master key.
    Master(Arc<Caller>),
    /// A virtual key.
    Key(Arc<ResolvedKey>),
}

impl Who {
    pub(crate) fn caller(&self) -> &Arc<Caller> {
        match self {
            Who::Master(caller) => caller,
            Who::Key(key) => key.caller(),
        }
    }
}

/// The first step of authentication, from the headers alone.
pub(crate) enum Check {
    /// Known now.
    Known(Who),
    /// Refused now.
    Refused(Error),
    /// A virtual key not in the cache: the store must be asked.
    Lookup(Arc<KeyCache>, [u8; 32]),
}

impl Authenticator {
    /// The master key only.
    pub fn new(master_key: &str) -> Self {
        Authenticator {
            shared: Arc::new(Shared {
                master: key_digest(master_key),
                master_caller: Arc::new(
                    Caller::with_key_hash(MASTER_KEY_ALIAS).user_id(MASTER_USER_ID),
                ),
                keys: None,
                guardrails: None,
            }),
        }
    }

    /// Also accepts the virtual keys of `keys`.
    pub fn keys(self, keys: Arc<KeyCache>) -> Self {
        self.with(|s| s.keys = Some(keys))
    }

    /// The guardrails configured on the gateway: a request with a key that names any other is
    /// refused (a 500: the key's guardrail would silently not run).
    pub fn known_guardrails<I>(self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let names = names.into_iter().map(Into::into).collect();
        self.with(|s| s.guardrails = Some(names))
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Authenticator {
            shared: Arc::new(shared),
        }
    }

    /// The key cache, if virtual keys are accepted.
    pub fn key_cache(&self) -> Option<&Arc<KeyCache>> {
        self.shared.keys.as_ref()
    }

    /// Authenticates from the headers: the master key at once, a cached virtual key at once,
    /// else a lookup to make.
    pub(crate) fn check(&self, headers: &HeaderMap, call_type: CallType) -> Check {
        let key = match presented(headers, call_type) {
            Presented::Key(key) => key,
            Presented::Missing => return Check::Refused(no_key()),
            Presented::Malformed => return Check::Refused(malformed()),
        };
        let digest = key_digest(key);
        if bool::from(digest.ct_eq(&self.shared.master)) {
            return Check::Known(Who::Master(Arc::clone(&self.shared.master_caller)));
        }
        let Some(keys) = &self.shared.keys else {
            return Check::Refused(invalid_key());
        };
        match keys.cached(&digest) {
            Some(Some(key)) => Check::Known(Who::Key(key)),
            Some(None) => Check::Refused(invalid_key()),
            None => Check::Lookup(Arc::clone(keys), digest),
        }
    }

    /// Whether a key's guardrails are all configured; the error names the first that is not.
    pub(crate) fn check_guardrails(&self, key: &ResolvedKey) -> Result<(), Error> {
        let Some(known) = &self.shared.guardrails else {
            return Ok(());
        };
        match key.guardrails().iter().find(|g| !known.contains(&***g)) {
            None => Ok(()),
            Some(name) => {
                tracing::error!(
                    guardrail = %name,
                    key_alias = key.caller().key_alias.as_deref().unwrap_or(""),
                    "a virtual key names a guardrail that is not configured: its requests are refused"
                );
                Err(Error::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "this key's guardrail '{name}' is not configured on the gateway; the request was not sent"
                    ),
                )
                .with_code("key_guardrail_not_configured")
                .with_class(ErrorClass::Internal))
            }
        }
    }
}

/// Checks a found virtual key: blocked, then expired.
pub(crate) fn check_key(key: &ResolvedKey) -> Result<(), Error> {
    if key.blocked() {
        return Err(auth_error(
            "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
        ));
    }
    if let Some(expires) = key.expires() {
        let now = SystemTime::now();
        if expires < now {
            return Err(Error::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "Authentication Error - Expired Key. Key Expiry time {} and current time {}",
                    python_timestamp(expires),
                    python_timestamp(now)
                ),
            )
            .with_type("expired_key")
            .with_code("401"));
        }
    }
    Ok(())
}

/// The refusal of a request made with a key whose `max_parallel_requests` run already: a 429
/// (LiteLLM's status for it) that says when to come back.
pub(crate) fn parallel_limit_reached(key: &ResolvedKey) -> Error {
    Error::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "Max parallel request limit reached: this key's max_parallel_requests is {}; \
             retry when one of its requests has ended",
            key.max_parallel_requests().unwrap_or(0)
        ),
    )
    .with_code("max_parallel_requests_reached")
    .with_header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    )
}

/// The outcome of a store lookup as a check.
pub(crate) fn looked_up(
    result: Result<Option<Arc<ResolvedKey>>, KeyStoreError>,
) -> Result<Who, Error> {
    match result {
        Ok(Some(key)) => Ok(Who::Key(key)),
        Ok(None) => Err(invalid_key()),
        Err(e) => {
            tracing::error!(error = %e, "cannot look a virtual key up: the request is refused");
            Err(Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Authentication Error, the key could not be checked: the key database is unavailable",
            )
            .with_type("auth_error")
            .with_code("503")
            .with_class(ErrorClass::Internal))
        }
    }
}

/// A LiteLLM authentication error: 401, `type: auth_error`, `code: "401"`.
fn auth_error(message: &'static str) -> Error {
    Error::new(StatusCode::UNAUTHORIZED, message)
        .with_type("auth_error")
        .with_code("401")
}

fn no_key() -> Error {
    auth_error("Authentication Error, No api key passed in.")
}

fn malformed() -> Error {
    auth_error(
        "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
    )
}

/// LiteLLM's answer to an unknown key, without the key's tail and hash that LiteLLM echoes.
pub(crate) fn invalid_key() -> Error {
    Error::new(
        StatusCode::UNAUTHORIZED,
        "Authentication Error, Invalid proxy server token passed. Unable to find token in cache or `LiteLLM_VerificationTokenTable`",
    )
    .with_type("token_not_found_in_db")
    .with_param("key")
    .with_code("401")
}

/// LiteLLM's answer to a key calling a model it may not.
pub(crate) fn model_not_allowed(key: &ResolvedKey, model: &str) -> Error {
    let models: Vec<String> = key
        .models()
        .iter()
        .map(|m| format!("'{}'", m.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    Error::new(
        StatusCode::FORBIDDEN,
        format!(
            "key not allowed to access model. This key can only access models=[{}]. Tried to access {model}",
            models.join(", ")
        ),
    )
    .with_type("key_model_access_denied")
    .with_param("model")
    .with_code("403")
}

/// The refusal of a valid virtual key on a route for the master key only.
pub(crate) fn master_only(path: &str) -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        format!("Authentication Error, only the master key can call {path}"),
    )
    .with_type("auth_error")
    .with_code("403")
}

/// What the request carries as a key.
enum Presented<'a> {
    Key(&'a str),
    Missing,
    Malformed,
}

fn strip_bearer(value: &str) -> Option<&str> {
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
}

/// The key a request carries: `x-litellm-api-key` (bare or `Bearer `), else `Authorization:
/// Bearer`, else, on the Anthropic route, `x-api-key`.
fn presented(headers: &HeaderMap, call_type: CallType) -> Presented<'_> {
    let clean = |v: &'_ str| -> Option<()> {
        (!v.is_empty() && !v.contains(char::is_whitespace)).then_some(())
    };
    if let Some(value) = headers.get("x-litellm-api-key") {
        let Ok(value) = value.to_str() else {
            return Presented::Malformed;
        };
        let key = strip_bearer(value).unwrap_or(value).trim();
        return match clean(key) {
            Some(()) => Presented::Key(key),
            None => Presented::Malformed,
        };
    }
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let key = value.to_str().ok().and_then(strip_bearer).map(str::trim);
        return match key {
            Some(key) if clean(key).is_some() => Presented::Key(key),
            _ => Presented::Malformed,
        };
    }
    if call_type == CallType::AnthropicMessages {
        if let Some(value) = headers.get("x-api-key") {
            return match value.to_str().map(str::trim) {
                Ok(key) if clean(key).is_some() => Presented::Key(key),
                _ => Presented::Malformed,
            };
        }
    }
    Presented::Missing
}

/// Removes the client's credentials from a request's headers.
pub(crate) fn strip_credentials(headers: &mut HeaderMap) {
    for name in CREDENTIAL_HEADERS {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests;
