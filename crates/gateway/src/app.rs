//! The gateway: the five layers in front of the upstream forwarder, per route.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post_service};
use axum::serve::ListenerExt;
use guardrail_tower_core::{CallType, Error, Guardrails};
use guardrail_tower_error::ErrorNormalizeLayer;
use guardrail_tower_guardrails::HttpClient;
use guardrail_tower_model_merge::ModelGuardrailMergeLayer;
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use guardrail_tower_spend_log::{
    JsonlSink, PostgresSink, PriceTable, SpendLogFilter, SpendLogHandle, SpendLogLayer,
    SpendLogSink, SpendLogStore, SpendLogWriter, SqliteSink,
};
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use http::StatusCode;
use serde_json::json;
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;

use crate::config::{ConfigError, GatewayConfig, SpendLogsTarget};
use crate::upstream::Forward;

/// A configured gateway, ready to serve.
pub struct Gateway {
    router: Router,
    writer: SpendLogHandle,
    warnings: Vec<String>,
    // Keeps the temporary spend-log file of a config without `spend_logs`.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

type Store = Arc<dyn SpendLogStore>;

impl Gateway {
    /// Builds the gateway from a LiteLLM-style YAML config (see [`crate::config`]).
    pub async fn from_config_str(yaml: &str) -> Result<Gateway, ConfigError> {
        Gateway::from_config(GatewayConfig::from_yaml(yaml)?).await
    }

    /// Builds the gateway from a parsed config: opens the spend-log sink and starts its writer.
    pub async fn from_config(config: GatewayConfig) -> Result<Gateway, ConfigError> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let (writer, store, temp) = open_spend_logs(config.spend_logs.as_ref()).await?;
        let router = router(&config, writer.clone(), store, HttpClient::new());
        Ok(Gateway {
            router,
            writer,
            warnings: config.warnings,
            _temp: temp,
        })
    }

    /// The routes, to serve or to nest in a larger axum app.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The config warnings.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The spend-log writer's handle (stats, shutdown).
    pub fn spend_log(&self) -> &SpendLogHandle {
        &self.writer
    }

    /// Serves on `listener` until `shutdown` resolves, lets in-flight requests finish, then
    /// flushes the spend log.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Without TCP_NODELAY, each small SSE event waits for the client's delayed ACK
        // (Nagle's algorithm): tens of milliseconds per event.
        let listener = listener.tap_io(|socket| {
            if let Err(err) = socket.set_nodelay(true) {
                tracing::warn!(error = %err, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, self.router.clone())
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Err(err) = self.writer.shutdown().await {
            tracing::error!(error = %err, "spend log not fully flushed at shutdown");
        }
        Ok(())
    }
}

fn sink_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(
        "general_settings.spend_logs",
        None,
        format!("cannot open the spend log: {e}"),
    )
}

async fn open_spend_logs(
    target: Option<&SpendLogsTarget>,
) -> Result<(SpendLogHandle, Store, Option<tempfile::TempDir>), ConfigError> {
    fn start<S: SpendLogSink + SpendLogStore>(sink: S) -> (SpendLogHandle, Store) {
        let sink = Arc::new(sink);
        (SpendLogWriter::new().spawn(sink.clone()), sink)
    }
    Ok(match target {
        Some(SpendLogsTarget::Sqlite(path)) => {
            let (w, s) = start(SqliteSink::open(path).await.map_err(sink_error)?);
            (w, s, None)
        }
        Some(SpendLogsTarget::Postgres(url)) => {
            let sink = match PostgresSink::connect(url).await {
                Ok(sink) => sink,
                Err(e) if e.is_transient() => {
                    tracing::error!(
                        error = %e,
                        "the spend-log database is unreachable at start; records are kept and \
                         written when it comes back"
                    );
                    PostgresSink::builder(url.clone())
                        .build()
                        .map_err(sink_error)?
                }
                Err(e) => return Err(sink_error(e)),
            };
            let (w, s) = start(sink);
            (w, s, None)
        }
        Some(SpendLogsTarget::Jsonl(path)) => {
            let (w, s) = start(JsonlSink::open(path).await.map_err(sink_error)?);
            (w, s, None)
        }
        None => {
            tracing::warn!(
                "general_settings.spend_logs is not set: spend logs are kept in a temporary \
                 SQLite file for this run only"
            );
            let dir = tempfile::tempdir().map_err(sink_error)?;
            let sink = SqliteSink::open(dir.path().join("spend_logs.db"))
                .await
                .map_err(sink_error)?;
            let (w, s) = start(sink);
            (w, s, Some(dir))
        }
    })
}

/// The gateway's routes: every LLM endpoint gets the whole stack, in this order (outermost
/// first): spend log, error normalization, model guardrail merge, pre-call guardrails,
/// post-call (streaming) guardrails, the upstream timeout, the forwarder.
pub fn router(
    config: &GatewayConfig,
    writer: SpendLogHandle,
    store: Arc<dyn SpendLogStore>,
    client: HttpClient,
) -> Router {
    let guardrails = Guardrails::new(config.guardrails.iter().cloned());
    let prices = config
        .deployments
        .iter()
        .filter_map(|d| d.price.map(|p| (d.model_name.clone(), p)))
        .fold(PriceTable::new(), |t, (m, p)| t.model(m, p));
    let merge: ModelGuardrailMergeLayer = config
        .deployments
        .iter()
        .map(|d| (d.model_name.clone(), d.guardrails.clone()))
        .collect();
    let limit = config.max_request_body_bytes;
    let stack = ServiceBuilder::new()
        .layer(
            SpendLogLayer::new(writer)
                .prices(prices)
                .store_prompts_in_spend_logs(config.store_prompts_in_spend_logs)
                .body_limit(limit),
        )
        .layer(ErrorNormalizeLayer::new())
        .layer(merge.body_limit(limit))
        .layer(PreCallGuardrailLayer::new(guardrails.clone()).body_limit(limit))
        .layer(
            StreamingGuardrailBodyLayer::new(guardrails)
                .policy(config.stream_policy)
                .body_limit(limit),
        )
        .layer(TimeoutLayer::new(config.request_timeout))
        .service(Forward::new(
            &config.deployments,
            client,
            config.request_timeout,
        ));
    let api = Router::new()
        .route("/health", get(health))
        .route("/spend/logs", get(spend_logs))
        .route("/spend/logs/blocks", get(block_summary))
        .with_state(store);
    [
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/responses",
        "/v1/messages",
    ]
    .into_iter()
    .fold(api, |router, path| {
        router.route(path, post_service(stack.clone()))
    })
}

async fn health() -> Response {
    axum::Json(json!({"status": "healthy"})).into_response()
}

fn bad_request(message: String, param: &'static str) -> Response {
    Error::new(StatusCode::BAD_REQUEST, message)
        .with_param(param)
        .to_response(CallType::Other)
        .map(axum::body::Body::from)
}

fn internal(message: String) -> Response {
    Error::internal(message)
        .to_response(CallType::Other)
        .map(axum::body::Body::from)
}

/// `GET /spend/logs?request_id=&start_date=&end_date=&status=&limit=&offset=`: records, newest
/// first.
async fn spend_logs(State(store): State<Store>, RawQuery(query): RawQuery) -> Response {
    let filter = match SpendLogFilter::from_query_string(query.as_deref().unwrap_or("")) {
        Ok(filter) => filter,
        Err(e) => return bad_request(e.to_string(), e.param()),
    };
    match store.query(&filter).await {
        Ok(records) => axum::Json(records).into_response(),
        Err(e) => internal(format!("spend log query failed: {e}")),
    }
}

/// `GET /spend/logs/blocks?start_date=&end_date=`: guardrail blocks per guardrail per day.
async fn block_summary(State(store): State<Store>, RawQuery(query): RawQuery) -> Response {
    let filter = match SpendLogFilter::from_query_string(query.as_deref().unwrap_or("")) {
        Ok(filter) => filter,
        Err(e) => return bad_request(e.to_string(), e.param()),
    };
    match store.block_summary(filter.start, filter.end).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => internal(format!("spend log query failed: {e}")),
    }
}
