//! Hot reload: read the config file again, validate it whole, and swap it in atomically.
//!
//! A [`Gateway`](crate::app::Gateway) started from a file ([`Gateway::from_config_file`](crate::app::Gateway::from_config_file))
//! reloads it on `SIGHUP` ([`spawn_sighup_listener`]; the binary does this) and on
//! `POST /config/reload` (the master key only, when there is one). A reload reads the file,
//! parses and builds everything it describes (models, guardrails with their word lists and
//! regexes, keys' known guardrails, the routes), and only then replaces the live routes with
//! one atomic pointer swap:
//!
//! - requests that arrive after the swap use the new models and guardrails;
//! - requests and streams already in flight finish with the routes they started with (each
//!   holds its own reference to them: nothing they use changes under them);
//! - a config that does not parse or build is refused whole, with its error (the endpoint
//!   answers 400 naming the key and line; `SIGHUP` logs it) and the running one stays;
//! - what cannot change while the gateway runs is kept, with a warning in the log and in the
//!   endpoint's answer: the spend-log target (`general_settings.spend_logs`, the database the
//!   writer and the virtual keys use), its dead-letter path and queue size,
//!   `user_api_key_cache_ttl`, `graceful_shutdown_timeout`, `client_read_timeout` and
//!   `client_write_timeout` (set on each connection as it is accepted),
//!   `max_client_connections` (the accept loop's), `max_request_bytes_in_flight` (shared by
//!   every connection), `allow_unauthenticated`
//!   (checked against the listen address at start), and the listen address itself (a
//!   command-line flag). Adding or removing `general_settings.master_key` is refused (the
//!   access model would change under running clients: restart for that); changing its value
//!   is a reload.
//!
//! The endpoint answers `{"status": "reloaded", "models": [...], "guardrails": [...],
//! "warnings": [...]}`.
//!
//! ```text
//! $ kill -HUP $(pidof guardrail-gateway)
//! INFO config reloaded path=config.yaml models=2 guardrails=3
//! $ curl -XPOST localhost:4000/config/reload -H "Authorization: Bearer $LITELLM_MASTER_KEY"
//! {"status":"reloaded","models":["gpt-guarded"],"guardrails":["block-words"],"warnings":[]}
//! ```

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use guardrail_tower_core::{CallType, Error};
use guardrail_tower_guardrails::HttpClient;
use guardrail_tower_spend_log::{SpendLogHandle, SpendLogStore};
use http::{Request, StatusCode};
use serde_json::json;
use tower_service::Service;

use crate::config::{ConfigError, GatewayConfig, SpendLogsTarget};
use crate::keys::KeyCache;

/// What the routes are built from besides the config, kept across reloads.
pub(crate) struct Parts {
    pub(crate) writer: SpendLogHandle,
    pub(crate) store: Arc<dyn SpendLogStore>,
    pub(crate) client: HttpClient,
    pub(crate) keys: Option<Arc<KeyCache>>,
    /// The Prometheus metrics, made once at start (their counters outlive a reload).
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The settings a running gateway keeps from its first config.
#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    spend_logs: Option<SpendLogsTarget>,
    dead_letter: Option<PathBuf>,
    queue_size: usize,
    linger: std::time::Duration,
    key_cache_ttl: std::time::Duration,
    grace: std::time::Duration,
    client_read_timeout: std::time::Duration,
    client_write_timeout: std::time::Duration,
    max_client_connections: Option<usize>,
    max_request_bytes_in_flight: Option<usize>,
    allow_unauthenticated: bool,
    master_key: bool,
}

impl Fixed {
    fn of(config: &GatewayConfig) -> Self {
        Fixed {
            spend_logs: config.spend_logs.clone(),
            dead_letter: config.spend_logs_dead_letter_path.clone(),
            queue_size: config.spend_logs_queue_size,
            linger: config.spend_logs_linger,
            key_cache_ttl: config.key_cache_ttl,
            grace: config.graceful_shutdown_timeout,
            client_read_timeout: config.client_read_timeout,
            client_write_timeout: config.client_write_timeout,
            max_client_connections: config.max_client_connections,
            max_request_bytes_in_flight: config.max_request_bytes_in_flight,
            allow_unauthenticated: config.allow_unauthenticated,
            master_key: config.master_key.is_some(),
        }
    }

    /// The warnings for what `new` changes but cannot, or an error for what must not change.
    fn compare(&self, new: &Fixed) -> Result<Vec<String>, ReloadError> {
        if self.master_key != new.master_key {
            return Err(ReloadError::Refused(if self.master_key {
                "general_settings.master_key cannot be removed while the gateway runs: every \
                 route would open without a key. Restart the gateway to run without one"
                    .into()
            } else {
                "general_settings.master_key cannot be added while the gateway runs (virtual \
                 keys and the admin routes are set up at start). Restart the gateway to \
                 require keys"
                    .into()
            }));
        }
        let kept = |key: &str| {
            format!(
                "general_settings.{key} cannot change while the gateway runs: the old value is \
                 kept until a restart"
            )
        };
        let mut warnings = Vec::new();
        if self.spend_logs != new.spend_logs {
            warnings.push(kept("spend_logs"));
        }
        if self.dead_letter != new.dead_letter {
            warnings.push(kept("spend_logs_dead_letter_path"));
        }
        if self.queue_size != new.queue_size {
            warnings.push(kept("spend_logs_queue_size"));
        }
        if self.linger != new.linger {
            warnings.push(kept("proxy_batch_write_at"));
        }
        if self.key_cache_ttl != new.key_cache_ttl {
            warnings.push(kept("user_api_key_cache_ttl"));
        }
        if self.grace != new.grace {
            warnings.push(kept("graceful_shutdown_timeout"));
        }
        if self.client_read_timeout != new.client_read_timeout {
            warnings.push(kept("client_read_timeout"));
        }
        if self.client_write_timeout != new.client_write_timeout {
            warnings.push(kept("client_write_timeout"));
        }
        if self.max_client_connections != new.max_client_connections {
            warnings.push(kept("max_client_connections"));
        }
        if self.max_request_bytes_in_flight != new.max_request_bytes_in_flight {
            warnings.push(kept("max_request_bytes_in_flight"));
        }
        if self.allow_unauthenticated != new.allow_unauthenticated {
            warnings.push(kept("allow_unauthenticated"));
        }
        Ok(warnings)
    }
}

/// Why a reload was refused. The running config stays.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReloadError {
    /// The gateway was not started from a file: there is nothing to read again.
    NoFile,
    /// The file could not be read.
    Read(String),
    /// The config is invalid.
    Config(ConfigError),
    /// The config changes something that cannot change at runtime.
    Refused(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoFile => f.write_str(
                "this gateway was not started from a config file: there is nothing to reload",
            ),
            ReloadError::Read(e) => write!(f, "cannot read the config file: {e}"),
            ReloadError::Config(e) => e.fmt(f),
            ReloadError::Refused(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ReloadError {}

/// What a reload put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The models now served.
    pub models: Vec<String>,
    /// The guardrails now configured.
    pub guardrails: Vec<String>,
    /// The new config's warnings, and what it changes that cannot change at runtime.
    pub warnings: Vec<String>,
}

/// The live routes and what a reload needs to rebuild them.
pub(crate) struct Reloader {
    live: ArcSwap<Router>,
    path: Option<PathBuf>,
    parts: Parts,
    fixed: Fixed,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The reloader of `config` (read from `path`, if from a file), its first routes built by
    /// `build` (given the reload route to mount behind the master key).
    pub(crate) fn new(
        config: &GatewayConfig,
        path: Option<PathBuf>,
        parts: Parts,
        build: impl Fn(&GatewayConfig, &Parts, Router) -> Router,
    ) -> Arc<Reloader> {
        Arc::new_cyclic(|weak: &Weak<Reloader>| {
            let router = build(config, &parts, reload_route(weak.clone()));
            Reloader {
                live: ArcSwap::from_pointee(router),
                path,
                fixed: Fixed::of(config),
                parts,
                lock: tokio::sync::Mutex::new(()),
            }
        })
    }

    async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ReloadError::Read(format!("{}: {e}", path.display())))?;
        let config = GatewayConfig::from_yaml(&text).map_err(ReloadError::Config)?;
        let mut warnings = self.fixed.compare(&Fixed::of(&config))?;
        let router =
            crate::app::build_router(&config, &self.parts, reload_route(Arc::downgrade(self)));
        self.live.store(Arc::new(router));
        for warning in &warnings {
            tracing::warn!("config reload: {warning}");
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        warnings.extend(config.warnings.iter().cloned());
        let reloaded = Reloaded {
            models: config
                .deployments
                .iter()
                .map(|d| d.model_name.clone())
                .collect(),
            guardrails: config
                .guardrails
                .iter()
                .map(|g| g.name().to_owned())
                .collect(),
            warnings,
        };
        tracing::info!(
            path = %path.display(),
            models = reloaded.models.len(),
            guardrails = reloaded.guardrails.len(),
            "config reloaded"
        );
        Ok(reloaded)
    }
}

/// A handle to reload a gateway's config (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(crate) reloader: Arc<Reloader>,
}

impl std::fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle")
            .field("path", &self.reloader.path)
            .finish_non_exhaustive()
    }
}

impl ReloadHandle {
    /// Reads the config file again and, if it is valid, swaps it in. On an error the running
    /// config stays; the error says why.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload().await
    }
}

/// Reloads on every `SIGHUP` until the runtime stops; a refused reload is logged (as an
/// error, with its reason) and the running config stays. On other systems, does nothing.
pub fn spawn_sighup_listener(handle: ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with POST /config/reload");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                if let Err(e) = handle.reload().await {
                    tracing::error!("config reload refused, the running config stays: {e}");
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = handle;
    }
}

/// `POST /config/reload`.
fn reload_route(reloader: Weak<Reloader>) -> Router {
    Router::new()
        .route("/config/reload", post(reload_endpoint))
        .with_state(reloader)
}

async fn reload_endpoint(State(reloader): State<Weak<Reloader>>) -> Response {
    let Some(reloader) = reloader.upgrade() else {
        return Error::new(StatusCode::SERVICE_UNAVAILABLE, "the gateway is stopping")
            .to_response(CallType::Other)
            .map(axum::body::Body::from);
    };
    match reloader.reload().await {
        Ok(r) => axum::Json(json!({
            "status": "reloaded",
            "models": r.models,
            "guardrails": r.guardrails,
            "warnings": r.warnings,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!("config reload refused, the running config stays: {e}");
            let (code, param) = match &e {
                ReloadError::Config(c) => ("invalid_config", Some(c.key().to_owned())),
                ReloadError::Refused(_) => ("reload_refused", None),
                ReloadError::NoFile | ReloadError::Read(_) => ("reload_unavailable", None),
            };
            let mut error =
                Error::new(StatusCode::BAD_REQUEST, scrub(&e.to_string())).with_code(code);
            if let Some(param) = param {
                error = error.with_param(param);
            }
            error
                .to_response(CallType::Other)
                .map(axum::body::Body::from)
        }
    }
}

/// `message` with the user-info and credential query parameters of any URL in it masked.
fn scrub(message: &str) -> String {
    message
        .split_inclusive(|c: char| c.is_whitespace() || c == '\'' || c == '"')
        .map(|token| {
            if token.contains("://") {
                crate::guardrail_routes::mask_url(token)
            } else {
                token.to_owned()
            }
        })
        .collect()
}

/// The live routes as one service: each request is routed by the routes live when it arrives,
/// and keeps them until it ends.
#[derive(Clone)]
pub(crate) struct LiveRouter {
    pub(crate) reloader: Arc<Reloader>,
}

impl<B> Service<Request<B>> for LiveRouter
where
    Router: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An axum `Router` is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut router = Router::clone(&self.reloader.live.load());
        router.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_deadlines_are_kept_until_a_restart() {
        let fixed = |general: &str| {
            Fixed::of(&GatewayConfig::from_yaml(&format!("general_settings:\n{general}")).unwrap())
        };
        let before = fixed("  client_read_timeout: 30\n");
        let after = fixed(
            "  client_read_timeout: 5\n  client_write_timeout: 5\n  max_client_connections: 9\n  \
             max_request_bytes_in_flight: 1000000000\n",
        );
        assert_eq!(
            before.compare(&after).unwrap(),
            [
                "general_settings.client_read_timeout cannot change while the gateway runs: the old value is kept until a restart",
                "general_settings.client_write_timeout cannot change while the gateway runs: the old value is kept until a restart",
                "general_settings.max_client_connections cannot change while the gateway runs: the old value is kept until a restart",
                "general_settings.max_request_bytes_in_flight cannot change while the gateway runs: the old value is kept until a restart",
            ]
        );
        assert!(
            before
                .compare(&fixed("  client_read_timeout: 30\n"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn urls_in_errors_lose_their_credentials() {
        assert_eq!(
            scrub("'http://u:secret@h:1/x?api_key=k&a=b' has a query string"),
            "'http://*****@h:1/x?api_key=*****&a=b' has a query string"
        );
    }
}
