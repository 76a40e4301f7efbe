//! The gateway: the five layers in front of the upstream forwarder, per route, and access
//! control in front of everything but the health probes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post_service};
use guardrail_tower_core::{CallType, Error, GuardrailMode, Guardrails};
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
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::task::JoinSet;
use tower::timeout::TimeoutLayer;
use tower::{Layer as _, ServiceBuilder};
use tower_http::decompression::{DecompressionBody, DecompressionLayer};

use crate::auth::{Authenticator, KeyAuthLayer, RequireKeyLayer};
use crate::config::{ConfigError, GatewayConfig, SpendLogsTarget};
use crate::drain::drained;
use crate::keys::routes::KeyRoutes;
use crate::keys::{KeyCache, KeyStore, PostgresKeyStore, SqliteKeyStore};
use crate::metrics::Metrics;
use crate::reload::{LiveRouter, Parts, ReloadHandle, Reloader};
use crate::request_bytes::{RequestBytes, default_max_request_bytes_in_flight};
use crate::slow_client::{Activity, SendDeadline, Watchdog, Watched};
use crate::telemetry::{RequestSpanLayer, SpanLayer};
use crate::upstream::{ContentCoded, Forward};

/// A configured gateway, ready to serve.
pub struct Gateway {
    live: Arc<Reloader>,
    writer: SpendLogHandle,
    grace: Duration,
    client_read_timeout: Duration,
    client_write_timeout: Duration,
    /// The connection limit, and what the accept loop counts against it.
    connections: Arc<ConnectionCounts>,
    /// The request body bytes held at once, against their limit.
    request_bytes: Arc<RequestBytes>,
    /// The body limit the gateway was built with (see [`Watched::new`]).
    body_limit: usize,
    keys: Option<Arc<KeyCache>>,
    requires_keys: bool,
    allow_unauthenticated: bool,
    warnings: Vec<String>,
    // Keeps the temporary spend-log file of a config without `spend_logs`.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("requires_keys", &self.requires_keys)
            .field("keys", &self.keys)
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

    /// Builds the gateway from a config file, which [`Gateway::reload_handle`] (`SIGHUP`,
    /// `POST /config/reload`) reads again: see [`crate::reload`].
    pub async fn from_config_file(path: impl Into<PathBuf>) -> Result<Gateway, ConfigError> {
        Gateway::from_config_file_with_metrics(path, false).await
    }

    /// [`Gateway::from_config_file`], with Prometheus metrics on whatever the file says when
    /// `metrics` is set (`serve --metrics`). Whether metrics are served is decided at start:
    /// a reload keeps it, and keeps the counters.
    pub async fn from_config_file_with_metrics(
        path: impl Into<PathBuf>,
        metrics: bool,
    ) -> Result<Gateway, ConfigError> {
        let path = path.into();
        let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
            ConfigError::new(
                "config",
                None,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let mut config = GatewayConfig::from_yaml(&text)?;
        config.prometheus |= metrics;
        Gateway::build(config, Some(path)).await
    }

    /// Builds the gateway from a parsed config: opens the spend-log sink and starts its writer.
    /// Without a file, it cannot be reloaded.
    pub async fn from_config(config: GatewayConfig) -> Result<Gateway, ConfigError> {
        Gateway::build(config, None).await
    }

    async fn build(config: GatewayConfig, path: Option<PathBuf>) -> Result<Gateway, ConfigError> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let mut settings = SpendLogWriter::new()
            .capacity(config.spend_logs_queue_size)
            .linger(config.spend_logs_linger);
        if let Some(path) = &config.spend_logs_dead_letter_path {
            settings = settings.dead_letter_path(path);
        }
        let (writer, store, temp, key_store) =
            open_spend_logs(config.spend_logs.as_ref(), settings).await?;
        if let Some(path) = writer.dead_letter_path() {
            // Created on the first record the database will not take: a file that cannot be
            // written then would lose that record. Said now, not at the first outage.
            if let Err(e) = writer.check_dead_letter() {
                return Err(ConfigError::new(
                    "general_settings.spend_logs_dead_letter_path",
                    None,
                    format!(
                        "the spend log's dead-letter file {} cannot be written ({e}); records the \
                         database does not take would be lost: set \
                         general_settings.spend_logs_dead_letter_path to a writable file",
                        path.display()
                    ),
                ));
            }
            tracing::info!(
                path = %path.display(),
                "spend log: records the database rejects go to this dead-letter file"
            );
        }
        let keys = match (&config.master_key, key_store) {
            (Some(_), Some(store)) => Some(Arc::new(KeyCache::new(store, config.key_cache_ttl))),
            (Some(_), None) => {
                tracing::warn!(
                    "virtual keys are unavailable: the spend log is a JSON lines file, and keys \
                     need a database (general_settings.spend_logs: sqlite://PATH or \
                     postgres://...); only the master key is accepted"
                );
                None
            }
            (None, _) => None,
        };
        if config.master_key.is_some() && temp.is_some() {
            tracing::warn!(
                "virtual keys are kept in a temporary SQLite file (general_settings.spend_logs \
                 is not set): keys generated in this run are lost when it stops"
            );
        }
        let open_files = crate::process::open_file_limit();
        let room = default_max_client_connections(open_files);
        let max_client_connections = config.max_client_connections.unwrap_or(room);
        if max_client_connections > room {
            tracing::warn!(
                max_client_connections,
                open_file_limit = open_files,
                "general_settings.max_client_connections is more than the open-file limit \
                 leaves room for: near it, connections to upstreams and guardrail services, \
                 and the spend log's files, may fail to open. Raise the limit (ulimit -n, \
                 systemd's LimitNOFILE) or lower max_client_connections"
            );
        }
        let connections = Arc::new(ConnectionCounts::new(max_client_connections));
        let request_bytes = Arc::new(RequestBytes::new(
            config.max_request_bytes_in_flight.unwrap_or_else(|| {
                default_max_request_bytes_in_flight(
                    crate::process::memory_limit(),
                    config.max_request_body_bytes,
                )
            }),
        ));
        // Counted from the first config on, across reloads.
        let metrics = config.prometheus.then(|| {
            let mut metrics = Metrics::new(&config, writer.clone());
            metrics.count_connections(Arc::clone(&connections), Arc::clone(&request_bytes));
            Arc::new(metrics)
        });
        let parts = Parts {
            writer: writer.clone(),
            store,
            client: HttpClient::new(),
            keys: keys.clone(),
            metrics,
        };
        let live = Reloader::new(&config, path, parts, build_router);
        Ok(Gateway {
            live,
            writer,
            grace: config.graceful_shutdown_timeout,
            client_read_timeout: config.client_read_timeout,
            client_write_timeout: config.client_write_timeout,
            connections,
            request_bytes,
            body_limit: config.max_request_body_bytes,
            keys,
            requires_keys: config.master_key.is_some(),
            allow_unauthenticated: config.allow_unauthenticated,
            warnings: config.warnings,
            _temp: temp,
        })
    }

    /// The most client connections [`Gateway::serve`] serves at once:
    /// `general_settings.max_client_connections`, or its default from the open-file limit when
    /// the gateway was built ([`default_max_client_connections`]).
    pub fn max_client_connections(&self) -> usize {
        self.connections.limit
    }

    /// The request body bytes [`Gateway::serve`] holds, all clients together, and their limit:
    /// `general_settings.max_request_bytes_in_flight`, or its default from the memory when the
    /// gateway was built ([`default_max_request_bytes_in_flight`]).
    pub fn request_bytes(&self) -> &Arc<RequestBytes> {
        &self.request_bytes
    }

    /// Whether every route but the health probes needs a key (a master key is configured).
    pub fn requires_keys(&self) -> bool {
        self.requires_keys
    }

    /// The virtual keys' cache (and through it, their store), when virtual keys are on.
    pub fn key_cache(&self) -> Option<&Arc<KeyCache>> {
        self.keys.as_ref()
    }

    /// Whether the gateway may listen on `addr`: always with a master key; without one, only on
    /// a loopback address, unless `allow_unauthenticated` (the `serve` flag) or
    /// `general_settings.allow_unauthenticated` says otherwise. The error says what to do.
    pub fn check_exposure(
        &self,
        addr: SocketAddr,
        allow_unauthenticated: bool,
    ) -> Result<(), String> {
        if self.requires_keys
            || addr.ip().is_loopback()
            || allow_unauthenticated
            || self.allow_unauthenticated
        {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {addr} without a master key: anyone who reaches it could call \
             every model and read every spend log. Set general_settings.master_key (for example \
             master_key: os.environ/LITELLM_MASTER_KEY), listen on a loopback address, or pass \
             --allow-unauthenticated (or set general_settings.allow_unauthenticated: true) to \
             run open on purpose"
        ))
    }

    /// The routes, to serve or to nest in a larger axum app. Each request is routed by the
    /// routes live when it arrives (a reload swaps them: see [`crate::reload`]).
    ///
    /// What guards the connections themselves is [`Gateway::serve`]'s, not the routes': the
    /// client deadlines (`client_read_timeout`, `client_write_timeout`: see
    /// [`crate::slow_client`]), `max_client_connections`, `max_request_bytes_in_flight` (see
    /// [`crate::request_bytes`]), `TCP_NODELAY`, and the graceful shutdown that flushes the
    /// spend log. A server of your own that serves these routes (`axum::serve`, hyper) must
    /// bound slow and idle clients, the number of connections and the bytes their bodies hold
    /// itself, and call [`SpendLogHandle::shutdown`] on [`Gateway::spend_log`] when it stops;
    /// prefer [`Gateway::serve`] or [`Gateway::spawn`] unless the routes must share a server.
    pub fn router(&self) -> Router {
        Router::new().fallback_service(LiveRouter {
            reloader: Arc::clone(&self.live),
        })
    }

    /// The handle that reloads the config file (see [`crate::reload`]).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            reloader: Arc::clone(&self.live),
        }
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
    ///
    /// At most [`max_client_connections`](Gateway::max_client_connections) connections are
    /// served at once: at the limit the gateway accepts none until one closes (they wait in
    /// the listen queue, as with Go's `LimitListener`), and says so in a `warn` line at most
    /// once a minute. A client that opens connections without end holds no more memory and
    /// file descriptors than the limit allows, and the gateway keeps the descriptors its
    /// upstream connections and spend log need. The request bodies held at once, all
    /// connections together, are bounded by [`request_bytes`](Gateway::request_bytes): a
    /// request past it is a 503 (see [`crate::request_bytes`]). With metrics on, `/metrics`
    /// has the connections open, the limit and how often it was reached, and the same of the
    /// request bytes (see [`crate::metrics`]).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        // Tells connections still deciding their protocol that the server is stopping.
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let max = self.connections.limit;
        let warned_full = EveryMinute::default();
        loop {
            tokio::select! {
                // At the limit, no accept until a connection ends (`join_next` below).
                accepted = listener.accept(), if connections.len() < max => {
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
                    // Each request body under the client's deadline (a 408 when it stalls),
                    // each request counted in flight for the connection's watchdog.
                    let activity = Arc::new(Activity::default());
                    let service = TowerToHyperService::new(Watched::new(
                        LiveRouter {
                            reloader: Arc::clone(&self.live),
                        },
                        Arc::clone(&activity),
                        self.client_read_timeout,
                        Arc::clone(&self.request_bytes),
                        self.body_limit,
                    ));
                    connections.spawn(serve_connection(
                        stream,
                        service,
                        activity,
                        (self.client_read_timeout, self.client_write_timeout),
                        graceful.watcher(),
                        stopping_rx.clone(),
                    ));
                    self.connections.set_open(connections.len());
                    if connections.len() >= max {
                        self.connections.reached();
                        if warned_full.due() {
                            tracing::warn!(
                                max_client_connections = max,
                                "client connections at general_settings.max_client_connections: \
                                 new connections wait in the listen queue until one closes"
                            );
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {
                    self.connections.set_open(connections.len());
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = stopping.send(true);
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

    /// [`Gateway::serve`] on `listener` in a task of its own, until the returned handle stops
    /// it: for tests, and for a program that runs the gateway beside other work.
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use guardrail_gateway::app::Gateway;
    ///
    /// let gateway = Gateway::from_config_str("model_list: []").await?;
    /// let running = gateway.spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    /// println!("serving on {}", running.url("/v1/chat/completions"));
    /// running.stop().await?; // in-flight requests finished, the spend log flushed
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(self, listener: tokio::net::TcpListener) -> std::io::Result<RunningGateway> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningGateway {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A gateway serving in a task of its own, from [`Gateway::spawn`]. Dropping the handle stops
/// the gateway (gracefully, without waiting for it); [`stop`](RunningGateway::stop) stops it
/// and waits until it has shut down.
#[derive(Debug)]
pub struct RunningGateway {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningGateway {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDRESS` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting connections and waits until the in-flight requests finished (within the
    /// grace period) and the spend log is flushed: what [`Gateway::serve`] returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What [`Gateway::serve`]'s accept loop counts, for the metrics: the client connections open,
/// the limit, and how often it was reached.
#[derive(Debug)]
pub(crate) struct ConnectionCounts {
    open: AtomicU64,
    limit: usize,
    reached: AtomicU64,
}

impl ConnectionCounts {
    fn new(limit: usize) -> Self {
        ConnectionCounts {
            open: AtomicU64::new(0),
            limit,
            reached: AtomicU64::new(0),
        }
    }

    fn set_open(&self, open: usize) {
        self.open
            .store(u64::try_from(open).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn reached(&self) {
        self.reached.fetch_add(1, Ordering::Relaxed);
    }

    /// The connections open, the limit, and how often it was reached.
    pub(crate) fn read(&self) -> (u64, u64, u64) {
        (
            self.open.load(Ordering::Relaxed),
            u64::try_from(self.limit).unwrap_or(u64::MAX),
            self.reached.load(Ordering::Relaxed),
        )
    }
}

/// A warning given at most once a minute however often its cause recurs (a limit reached under
/// load): [`due`](Self::due) says whether to give it now.
#[derive(Debug, Default)]
pub(crate) struct EveryMinute(std::sync::Mutex<Option<std::time::Instant>>);

impl EveryMinute {
    /// Whether a minute has passed since the last time this answered `true` (or it never has).
    pub(crate) fn due(&self) -> bool {
        let Ok(mut last) = self.0.lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}

/// The open files the gateway keeps for itself before client connections are counted: the
/// listener, the runtime's (`epoll`, its wakers), the spend log's database and dead-letter
/// files, the config file on reload, and standard streams.
const RESERVED_FILES: u64 = 64;

/// What `general_settings.max_client_connections` is when the config does not set it, from the
/// open-file limit (see [`crate::process::open_file_limit`]): half of what the limit leaves
/// after the 64 files the gateway keeps for itself, so that each client connection can have an
/// upstream connection open beside it (at least 1). With the usual soft limit of 1,024, 480;
/// the binary raises the soft limit to the hard limit first
/// ([`crate::process::raise_open_file_limit`]; 524,288 under systemd: 262,112). `None` (no
/// limit, or one that cannot be read): the kernel's default most open files a process can
/// have (`fs.nr_open`, 1,048,576) is taken for it.
pub fn default_max_client_connections(open_file_limit: Option<u64>) -> usize {
    let files = open_file_limit.unwrap_or(1 << 20);
    usize::try_from(files.saturating_sub(RESERVED_FILES) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// HTTP/2 with prior knowledge (h2c) opens with this preface; anything else is HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one connection: HTTP/2 when it opens with the HTTP/2 preface, else HTTP/1, decided by
/// peeking at its first bytes. (hyper-util's `auto` builder decides by reading them and
/// replaying them to hyper, whose first read then returns only those few bytes; hyper reserves
/// a further 8 KiB before its second read, so every HTTP/1 connection's read buffer grew to
/// 16 KiB and stayed there: 8 KiB more per keep-alive connection and open stream.)
///
/// `watcher` makes the connection part of the graceful shutdown once it is served, and
/// `stopping` drains it (see [`Drained`](crate::drain::Drained)); while it is still waiting for
/// its first bytes, `stopping` ends it. The client's deadlines (see [`crate::slow_client`]): its
/// first bytes within `client_read_timeout`, the connection closed when it has done nothing
/// for that long (no request in flight, none begun, nothing written: see
/// [`Watchdog`](crate::slow_client::Watchdog)), each write to it taken within
/// `client_write_timeout`.
async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    service: S,
    activity: Arc<Activity>,
    (client_read_timeout, client_write_timeout): (Duration, Duration),
    watcher: hyper_util::server::graceful::Watcher,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http2 = tokio::select! {
        http2 = tokio::time::timeout(client_read_timeout, opens_http2(&stream)) => match http2 {
            Ok(Ok(http2)) => http2,
            // Reset before sending anything, or silent since it connected.
            Ok(Err(_)) | Err(_) => return,
        },
        _ = stopping.wait_for(|stopping| *stopping) => return,
    };
    // A client that stops reading ends its connection (see `SendDeadline`); one that has no
    // request in flight, begins none and is sent nothing for the limit, too (see `Watchdog`).
    let io = TokioIo::new(SendDeadline::new(
        stream,
        client_write_timeout,
        Arc::clone(&activity),
    ));
    if http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service);
        let connection = drained(connection, watcher, stopping);
        Watchdog::new(connection, activity, client_read_timeout).await;
    } else {
        // hyper's header read timeout stays off (no timer is given): it boxes and registers a
        // timer for every request on a keep-alive connection; the watchdog's one timer does
        // its work.
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        let connection = drained(connection, watcher, stopping);
        Watchdog::new(connection, activity, client_read_timeout).await;
    }
}

/// Whether the connection opens with the HTTP/2 preface, peeked (the bytes stay in the socket).
/// HTTP/1 is known from the first byte that differs (the first one, for every method); a
/// preface split across packets is peeked again a few times, for at most about a second.
async fn opens_http2(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut wait = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if wait > Duration::from_millis(512) {
            // Not a whole preface in a second: HTTP/1, which refuses it.
            return Ok(false);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

fn sink_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(
        "general_settings.spend_logs",
        None,
        format!("cannot open the spend log: {e}"),
    )
}

/// What `open_spend_logs` opens: the writer, the store for `/spend/logs`, the temporary
/// directory of a config without `spend_logs`, and the key store (none for JSON lines).
type Opened = (
    SpendLogHandle,
    Store,
    Option<tempfile::TempDir>,
    Option<Arc<dyn KeyStore>>,
);

fn key_store_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(
        "general_settings.spend_logs",
        None,
        format!("cannot open the key table: {e}"),
    )
}

async fn open_spend_logs(
    target: Option<&SpendLogsTarget>,
    settings: SpendLogWriter,
) -> Result<Opened, ConfigError> {
    async fn sqlite_keys(path: &std::path::Path) -> Result<Arc<dyn KeyStore>, ConfigError> {
        Ok(Arc::new(
            SqliteKeyStore::open(path).await.map_err(key_store_error)?,
        ))
    }
    Ok(match target {
        Some(SpendLogsTarget::Sqlite(path)) => {
            let (w, s) = start_writer(SqliteSink::open(path).await.map_err(sink_error)?, settings);
            (w, s, None, Some(sqlite_keys(path).await?))
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
            // Connected on first use: virtual-key requests fail (503) while the database is
            // down; the master key keeps working.
            let keys = PostgresKeyStore::new(url).map_err(key_store_error)?;
            let (w, s) = start_writer(sink, settings);
            (w, s, None, Some(Arc::new(keys) as Arc<dyn KeyStore>))
        }
        Some(SpendLogsTarget::Jsonl(path)) => {
            let (w, s) = start_writer(JsonlSink::open(path).await.map_err(sink_error)?, settings);
            (w, s, None, None)
        }
        None => {
            tracing::warn!(
                "general_settings.spend_logs is not set: spend logs are kept in a temporary \
                 SQLite file for this run only"
            );
            let dir = tempfile::tempdir().map_err(sink_error)?;
            let path = dir.path().join("spend_logs.db");
            let sink = SqliteSink::open(&path).await.map_err(sink_error)?;
            let keys = sqlite_keys(&path).await?;
            let (w, s) = start_writer(sink, settings);
            (w, s, Some(dir), Some(keys))
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

/// The LLM routes.
const LLM_ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/responses",
    "/v1/messages",
];

/// The gateway's routes without virtual keys: [`router_with_keys`] with none. A configured
/// master key is still required.
pub fn router(
    config: &GatewayConfig,
    writer: SpendLogHandle,
    store: Arc<dyn SpendLogStore>,
    client: HttpClient,
) -> Router {
    router_with_keys(config, writer, store, client, None)
}

/// The gateway's routes: every LLM endpoint gets the whole stack, in this order (outermost
/// first): spend log, key authentication (with a master key), error normalization, model
/// guardrail merge, pre-call guardrails, post-call (streaming) guardrails, the upstream
/// timeout, the forwarder. A layer that could have nothing to do is left out: a config without
/// guardrails leaves out the three guardrail layers, one whose models have no guardrails of
/// their own the model-merge layer, one without a `pre_call` or `during_call` guardrail the
/// pre-call layer, one without a `post_call` guardrail the streaming layer.
///
/// With `general_settings.master_key`, every route but the health probes (`/health`,
/// `/health/liveliness`, `/health/liveness`, `/health/readiness`) needs a key: the admin routes
/// (`/spend/logs`, `/spend/logs/blocks`, `/key/*`, `/guardrails/list`,
/// `/guardrails/apply_guardrail`: see [`crate::guardrail_routes`]) the master key, the LLM
/// routes the master key or a virtual key of `keys`, and any other path a valid key before its
/// 404. The readiness probe is described in [`crate::health`].
///
/// With Prometheus metrics on (see [`crate::metrics`]), `GET /metrics` serves them, counted
/// from every spend-log record; it needs the master key unless
/// `require_auth_for_metrics_endpoint` is false.
pub fn router_with_keys(
    config: &GatewayConfig,
    writer: SpendLogHandle,
    store: Arc<dyn SpendLogStore>,
    client: HttpClient,
    keys: Option<Arc<KeyCache>>,
) -> Router {
    let metrics = config
        .prometheus
        .then(|| Arc::new(Metrics::new(config, writer.clone())));
    let parts = Parts {
        writer,
        store,
        client,
        keys,
        metrics,
    };
    build_router(config, &parts, Router::new())
}

/// [`router_with_keys`], with `extra_admin` routes behind the master key (the reload route).
pub(crate) fn build_router(config: &GatewayConfig, parts: &Parts, extra_admin: Router) -> Router {
    let Parts {
        writer,
        store,
        client,
        keys,
        metrics: _,
    } = parts;
    let (writer, store, client) = (writer.clone(), Arc::clone(store), client.clone());
    let guardrails = Guardrails::new(config.guardrails.iter().cloned());
    let guardrails_for_routes = guardrails.clone();
    let guardrail_names: Vec<String> = config
        .guardrails
        .iter()
        .map(|g| g.name().to_owned())
        .collect();
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
    let auth = config.master_key.as_deref().map(|master| {
        let auth = Authenticator::new(master).known_guardrails(guardrail_names.iter().cloned());
        match &keys {
            Some(keys) => auth.keys(Arc::clone(keys)),
            None => auth,
        }
    });
    let health_writer = writer.clone();
    let metrics = parts.metrics.clone();
    let mut spend_log = SpendLogLayer::new(writer);
    if let Some(metrics) = &metrics {
        let metrics = Arc::clone(metrics);
        spend_log = spend_log.observer(move |record: &guardrail_tower_spend_log::SpendRecord| {
            metrics.observe(record)
        });
    }
    let spend_log = spend_log
        .prices(prices)
        .store_prompts_in_spend_logs(config.store_prompts_in_spend_logs)
        .body_limit(limit);
    // Each layer in a span of its own (`crate::telemetry`), when something listens for those
    // spans. Without, the span wrappers are left out of the stack rather than left idle: seven
    // of them cost about 2,000 instructions a request (a disabled span each, the moves of the
    // futures they wrap, a clone).
    let spans = crate::telemetry::layer_spans_enabled();
    let span = |name| spans.then(|| SpanLayer::new(name));
    let upstream = ServiceBuilder::new()
        .layer(TimeoutLayer::new(config.request_timeout))
        .option_layer(spans.then(SpanLayer::upstream))
        // The upstream body boxed: each layer above wraps the body and hands the response up by
        // value, and the decoder states kept inline made every response (and every future
        // holding one) about 500 bytes larger. One allocation a request instead. A response
        // the upstream did not encode is boxed without the decoding body around it, which
        // would only pass each frame on.
        .map_response(|mut response: http::Response<DecompressionBody<_>>| {
            let coded = response.extensions_mut().remove::<ContentCoded>().is_some();
            response.map(|body| {
                if coded {
                    UnsyncBoxBody::new(body)
                } else {
                    UnsyncBoxBody::new(body.into_inner())
                }
            })
        })
        // The upstream is asked for `identity`; one that compresses anyway (gzip, br, deflate)
        // is decoded here, so the post-call guardrails read the text.
        .layer(DecompressionLayer::new())
        .service(Forward::new(
            &config.deployments,
            client,
            config.request_timeout,
        ));
    let error_normalize = ServiceBuilder::new()
        .option_layer(span("error_normalize"))
        .layer(ErrorNormalizeLayer::new());
    let key_routes = match (&auth, &keys) {
        (None, _) => KeyRoutes::unavailable(
            "virtual keys need general_settings.master_key: without it no key is checked",
        ),
        (Some(_), None) => KeyRoutes::unavailable(
            "virtual keys need a database: set general_settings.spend_logs to sqlite://PATH or postgres://...",
        ),
        (Some(_), Some(keys)) => KeyRoutes::new(Arc::clone(keys), guardrail_names),
    };
    let health = crate::health::router(
        match &config.spend_logs {
            Some(SpendLogsTarget::Postgres(_)) => crate::health::Backend::Postgres,
            Some(SpendLogsTarget::Jsonl(_)) => crate::health::Backend::Jsonl,
            Some(SpendLogsTarget::Sqlite(_)) | None => crate::health::Backend::Sqlite,
        },
        Arc::clone(&store),
        health_writer,
        config
            .guardrail_listing
            .iter()
            .map(|g| (g.guardrail_name.clone(), g.services.clone()))
            .collect(),
    );
    let admin = Router::new()
        .route("/spend/logs", get(spend_logs))
        .route("/spend/logs/blocks", get(block_summary))
        .with_state(store)
        .merge(key_routes.router())
        .merge(extra_admin)
        .merge(crate::guardrail_routes::router(
            guardrails_for_routes,
            config.guardrail_listing.clone(),
            limit,
        ));
    let admin = match &auth {
        Some(auth) => admin.route_layer(RequireKeyLayer::master_only(auth.clone())),
        None => admin,
    };
    let admin = match metrics {
        Some(metrics) => admin.merge(metrics_routes(
            metrics,
            auth.as_ref()
                .filter(|_| config.require_auth_for_metrics_endpoint),
        )),
        None => admin,
    };
    let app = admin.route("/health", get(health_status)).merge(health);
    // The LLM routes over `inner` (error normalization and what it wraps): the spend log
    // outermost, then key authentication with a master key. A macro, as each of the five
    // stacks below is a type of its own (a layer left out through `Either` would leave a level
    // in every response that costs about half of what leaving it out saves).
    macro_rules! llm_routes {
        ($inner:expr) => {
            match auth {
                Some(auth) => {
                    let stack = ServiceBuilder::new()
                        .layer(RequestSpanLayer)
                        .option_layer(span("spend_log"))
                        .layer(spend_log)
                        .option_layer(span("key_auth"))
                        .layer(KeyAuthLayer::new(auth.clone()).body_limit(limit))
                        .service($inner);
                    let app = LLM_ROUTES.into_iter().fold(app, |router, path| {
                        router.route(path, post_service(stack.clone()))
                    });
                    app.fallback_service(
                        RequireKeyLayer::any_key(auth).layer(tower::service_fn(not_found)),
                    )
                }
                None => {
                    let stack = ServiceBuilder::new()
                        .layer(RequestSpanLayer)
                        .option_layer(span("spend_log"))
                        .layer(spend_log)
                        .service($inner);
                    let app = LLM_ROUTES.into_iter().fold(app, |router, path| {
                        router.route(path, post_service(stack.clone()))
                    });
                    app.fallback_service(tower::service_fn(not_found))
                }
            }
        };
    }
    if config.guardrails.is_empty() {
        // No guardrail is configured, so none can apply to any request: a model's guardrails
        // and a key's name configured ones (the config and the keys are refused otherwise),
        // and a name a request asks for selects nothing. The three guardrail layers are left
        // out rather than left idle: idle, they cost about 8,000 instructions a request (the
        // moves of their futures, the re-wrap of the buffered request, their body levels).
        // What they would have checked (the body limit, JSON on the LLM routes) the spend log
        // checks with the same code; a stream that fails midway still ends with its in-band
        // error event, which error normalization writes. A reload that adds a guardrail
        // builds the routes again, with them.
        llm_routes!(error_normalize.service(upstream))
    } else {
        let pre_call = ServiceBuilder::new()
            .option_layer(span("pre_call_guardrails"))
            .layer(PreCallGuardrailLayer::new(guardrails.clone()).body_limit(limit));
        // The merge layer only when a model has guardrails of its own: without, it would
        // merge nothing into any request (about 2,900 instructions a request).
        let model_guardrails = config.deployments.iter().any(|d| !d.guardrails.is_empty());
        macro_rules! merged {
            ($guarded:expr) => {
                if model_guardrails {
                    let merged = ServiceBuilder::new()
                        .option_layer(span("model_guardrail_merge"))
                        .layer(merge.body_limit(limit))
                        .service($guarded);
                    llm_routes!(error_normalize.service(merged))
                } else {
                    llm_routes!(error_normalize.service($guarded))
                }
            };
        }
        // The pre-call layer only when a guardrail runs on requests (`pre_call` or
        // `during_call`), the streaming layer only when one runs on responses (`post_call`,
        // monitors included): without, each would check nothing in any request or response.
        // A model's or a key's guardrails are configured ones, so this holds for them too.
        let runs_in = |modes: &[GuardrailMode]| {
            config
                .guardrails
                .iter()
                .any(|g| modes.iter().any(|&m| g.spec().modes().contains(m)))
        };
        let on_requests = runs_in(&[GuardrailMode::PreCall, GuardrailMode::DuringCall]);
        let on_responses = runs_in(&[GuardrailMode::PostCall]);
        let streaming = ServiceBuilder::new()
            .option_layer(span("streaming_guardrails"))
            .layer(
                StreamingGuardrailBodyLayer::new(guardrails)
                    .policy(config.stream_policy)
                    .body_limit(limit),
            );
        match (on_requests, on_responses) {
            (true, true) => merged!(pre_call.layer(streaming).service(upstream)),
            (true, false) => merged!(pre_call.service(upstream)),
            (false, true) => merged!(streaming.service(upstream)),
            // Guardrails with no mode to run in: none can run, as with none configured.
            (false, false) => llm_routes!(error_normalize.service(upstream)),
        }
    }
}

/// `GET /metrics` (and `/metrics/`, LiteLLM's mount point): the Prometheus text format; behind
/// the master key when `auth` is given.
fn metrics_routes(metrics: Arc<Metrics>, auth: Option<&Authenticator>) -> Router {
    let routes = Router::new()
        .route("/metrics", get(scrape))
        .route("/metrics/", get(scrape))
        .with_state(metrics);
    match auth {
        Some(auth) => routes.route_layer(RequireKeyLayer::master_only(auth.clone())),
        None => routes,
    }
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}

/// Any other path: 404 in the OpenAI shape.
async fn not_found(request: http::Request<axum::body::Body>) -> Result<Response, Infallible> {
    Ok(Error::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
    .with_code("not_found")
    .to_response(CallType::Other)
    .map(axum::body::Body::from))
}

async fn health_status() -> Response {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::{H2_PREFACE, default_max_client_connections, opens_http2};

    #[test]
    fn a_warning_every_minute_is_due_once_then_not_within_the_minute() {
        let warning = super::EveryMinute::default();
        assert!(warning.due());
        assert!(!warning.due());
        assert!(!warning.due());
    }

    #[test]
    fn the_default_connection_limit_leaves_each_connection_an_upstream_file() {
        assert_eq!(default_max_client_connections(Some(1024)), 480);
        assert_eq!(default_max_client_connections(Some(524_288)), 262_112);
        assert_eq!(default_max_client_connections(Some(65)), 1);
        assert_eq!(default_max_client_connections(Some(0)), 1);
        assert_eq!(default_max_client_connections(None), 524_256);
    }

    /// What `opens_http2` says of a connection whose client writes `parts`, 20 ms apart.
    async fn opens_http2_with(parts: &[&[u8]]) -> bool {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let http2 = opens_http2(&server).await.unwrap();
        drop(writer.await.unwrap());
        http2
    }

    #[tokio::test]
    async fn the_protocol_is_told_from_the_first_bytes_without_taking_them() {
        assert!(opens_http2_with(&[H2_PREFACE]).await);
        // A preface split across packets is waited for.
        assert!(opens_http2_with(&[&H2_PREFACE[..5], &H2_PREFACE[5..16], &H2_PREFACE[16..]]).await);
        assert!(!opens_http2_with(&[b"POST /v1/chat/completions HTTP/1.1\r\n"]).await);
        assert!(!opens_http2_with(&[b"PRI * HTTP/1.1\r\n\r\n"]).await);
        // The bytes stay in the socket for the server to read.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(!opens_http2(&server).await.unwrap());
        let mut buf = [0u8; 64];
        let n = server.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }
}
