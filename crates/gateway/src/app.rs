//! The gateway: the five layers in front of the upstream forwarder, per route.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post_service};
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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ServerBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::task::JoinSet;
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;

use crate::config::{ConfigError, GatewayConfig, SpendLogsTarget};
use crate::upstream::Forward;

/// A configured gateway, ready to serve.
pub struct Gateway {
    router: Router,
    writer: SpendLogHandle,
    grace: Duration,
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
        let mut settings = SpendLogWriter::new().capacity(config.spend_logs_queue_size);
        if let Some(path) = &config.spend_logs_dead_letter_path {
            settings = settings.dead_letter_path(path);
        }
        let (writer, store, temp) = open_spend_logs(config.spend_logs.as_ref(), settings).await?;
        if let Some(path) = writer.dead_letter_path() {
            tracing::info!(
                path = %path.display(),
                "spend log: records the database rejects go to this dead-letter file"
            );
        }
        let router = router(&config, writer.clone(), store, HttpClient::new());
        Ok(Gateway {
            router,
            writer,
            grace: config.graceful_shutdown_timeout,
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

    /// Serves on `listener` until `shutdown` resolves; then stops accepting connections, lets
    /// in-flight requests finish for at most the grace period (`graceful_shutdown_timeout`,
    /// default 30 s; requests still running then are cut, and recorded as failures), and
    /// flushes the spend log.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let builder = ServerBuilder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            // Out of file descriptors and the like: back off a moment.
                            tracing::warn!(error = %err, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Without TCP_NODELAY, each small SSE event waits for the client's delayed
                    // ACK (Nagle's algorithm): tens of milliseconds per event.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::warn!(error = %err, "could not set TCP_NODELAY");
                    }
                    let service = TowerToHyperService::new(self.router.clone());
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        let _ = connection.await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let in_flight = connections.len();
        tracing::info!(
            connections = in_flight,
            grace = ?self.grace,
            "stopped accepting connections; waiting for in-flight requests"
        );
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = connections.len(),
                grace = ?self.grace,
                "the shutdown grace period passed: cutting the requests still running"
            );
        }
        // Cut what is left; their spend-log records are written (as failures) as they drop.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let stats = self.writer.stats();
        tracing::info!(pending = stats.pending, "flushing the spend log");
        match self.writer.shutdown().await {
            Ok(()) => tracing::info!(written = self.writer.stats().written, "spend log flushed"),
            Err(err) => tracing::error!(error = %err, "spend log not fully flushed at shutdown"),
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
    settings: SpendLogWriter,
) -> Result<(SpendLogHandle, Store, Option<tempfile::TempDir>), ConfigError> {
    Ok(match target {
        Some(SpendLogsTarget::Sqlite(path)) => {
            let (w, s) = start_writer(SqliteSink::open(path).await.map_err(sink_error)?, settings);
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
            let (w, s) = start_writer(sink, settings);
            (w, s, None)
        }
        Some(SpendLogsTarget::Jsonl(path)) => {
            let (w, s) = start_writer(JsonlSink::open(path).await.map_err(sink_error)?, settings);
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
            let (w, s) = start_writer(sink, settings);
            (w, s, Some(dir))
        }
    })
}

fn start_writer<S: SpendLogSink + SpendLogStore>(
    sink: S,
    settings: SpendLogWriter,
) -> (SpendLogHandle, Store) {
    let sink = Arc::new(sink);
    (settings.spawn(sink.clone()), sink)
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

/// `GET /spend/logs?request_id=&client_request_id=&api_key=&user_id=&start_date=&end_date=
/// &status=&limit=&offset=`: records, newest first, as a JSON array (LiteLLM's shape), at most
/// `limit` (default 100, at most 1,000) after skipping `offset`. A full page carries
/// `x-next-offset`, the `offset` of the next page. A parameter that cannot be read is a 400
/// naming it.
async fn spend_logs(State(store): State<Store>, RawQuery(query): RawQuery) -> Response {
    let filter = match SpendLogFilter::from_query_string(query.as_deref().unwrap_or("")) {
        Ok(filter) => filter,
        Err(e) => return bad_request(e.to_string(), e.param()),
    };
    match store.query(&filter).await {
        Ok(records) => {
            let full = filter.limit.is_some_and(|l| records.len() as u64 >= l);
            let next = filter.offset + records.len() as u64;
            let mut response = axum::Json(records).into_response();
            if full {
                response
                    .headers_mut()
                    .insert("x-next-offset", http::HeaderValue::from(next));
            }
            response
        }
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
