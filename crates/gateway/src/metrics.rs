//! Prometheus metrics on `GET /metrics`, with LiteLLM's names and labels, so dashboards and
//! alerts written for the LiteLLM proxy work unchanged.
//!
//! Turned on as in LiteLLM, by `litellm_settings.callbacks: ["prometheus"]` (or
//! `success_callback` / `failure_callback`), or by `guardrail-gateway serve --metrics`. With a
//! master key, `/metrics` needs the master key unless
//! `litellm_settings.require_auth_for_metrics_endpoint: false` (LiteLLM's setting, true by
//! default). The answer is the Prometheus text format 0.0.4, as LiteLLM's Python client serves.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `litellm_guardrail_requests_total` | counter | `guardrail_name`, `status`, `hook_type` |
//! | `litellm_guardrail_errors_total` | counter | `guardrail_name`, `error_type`, `hook_type` |
//! | `litellm_guardrail_latency_seconds` | histogram | `guardrail_name`, `status`, `error_type`, `hook_type` |
//! | `litellm_proxy_total_requests_metric_total` | counter | `requested_model`, `status_code` |
//! | `litellm_proxy_failed_requests_metric_total` | counter | `requested_model`, `exception_status`, `exception_class` |
//! | `litellm_request_total_latency_metric` | histogram | `requested_model`, `model` |
//! | `litellm_input_tokens_metric_total`, `litellm_output_tokens_metric_total`, `litellm_total_tokens_metric_total` | counter | `requested_model`, `model` |
//! | `litellm_spend_metric_total` | counter (USD) | `model` |
//! | `guardrail_tower_stream_blocks_after_head_total` | counter | `guardrail_name` |
//! | `guardrail_tower_spend_log_queue_depth`, `..._pending`, `..._deferred` | gauge | |
//! | `guardrail_tower_spend_log_rows_written_total`, `..._rows_dead_lettered_total`, `..._rows_dropped_total`, `..._write_retries_total` | counter | |
//! | `guardrail_tower_client_connections`, `guardrail_tower_client_connections_limit` | gauge | |
//! | `guardrail_tower_client_connection_limit_reached_total` | counter | |
//! | `guardrail_tower_request_bytes_in_flight`, `guardrail_tower_request_bytes_in_flight_limit` | gauge | |
//! | `guardrail_tower_request_bytes_refused_total` | counter | |
//!
//! Guardrail labels: `hook_type` is `pre_call`, `during_call` or `post_call`; `status` is
//! LiteLLM's `success` (ran and allowed), `intervened` (blocked, masked, or flagged by a
//! monitor) or `error` (failed to respond, whatever the fallback), and `error_type` is
//! `unreachable`, `timeout` or `failed` (`none` on the latency of a run without error). A
//! guardrail selected but not run (an earlier one blocked) is not counted.
//!
//! Labels stay low-cardinality: guardrail names and model names are those of the config (a
//! model a client asks for that the config does not list is `other`); never a key, a user or a
//! request id. LiteLLM's per-key and per-team labels (`hashed_api_key`, `team`, `end_user`, ...)
//! are left out for that reason: queries that sum over them work unchanged.
//!
//! Everything is counted in one place: when the spend-log record of a request is complete
//! (a [`SpendLogObserver`](guardrail_tower_spend_log::SpendLogObserver)), from its
//! `guardrail_information` and its columns, so a metric and a spend-log row never disagree.
//! Counting costs one map lookup by model name, one by guardrail name per run, and atomic
//! increments: the series of configured models and guardrails are created on first use and kept
//! (no label set is built or hashed per request); the spend-log counters are read from the
//! writer's atomics at scrape time, and the client connections' from
//! [`Gateway::serve`](crate::app::Gateway::serve)'s (served by another server, the routes have
//! none).
//!
//! The exporter is [`prometheus_client`], the Prometheus project's own Rust client: typed label
//! sets hashed in place, no global registry, the classic text format LiteLLM serves, and
//! collectors evaluated at scrape time. The `metrics` facade with
//! `metrics-exporter-prometheus` would add a process-wide recorder and build a label key per
//! call unless every handle were cached by hand.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use guardrail_tower_core::{GuardrailLogEntry, GuardrailMode, GuardrailStatus};
use guardrail_tower_spend_log::{SpendLogHandle, SpendRecord, SpendStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::app::ConnectionCounts;
use crate::config::GatewayConfig;
use crate::request_bytes::RequestBytes;

/// The `Content-Type` of `GET /metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// LiteLLM's latency buckets (`LATENCY_BUCKETS`), in seconds.
const LATENCY_BUCKETS: [f64; 35] = [
    0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
    5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0, 180.0,
    240.0, 300.0,
];

/// A label value from a fixed set.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::enum_variant_names)]
        enum $name {
            $($variant),*
        }

        impl $name {
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum!(
    /// LiteLLM's guardrail `status` label.
    Status {
        Success => "success",
        Intervened => "intervened",
        Error => "error",
    }
);

label_enum!(
    /// The guardrail `error_type` label.
    ErrorType {
        None => "none",
        Unreachable => "unreachable",
        Timeout => "timeout",
        Failed => "failed",
    }
);

label_enum!(
    /// The guardrail `hook_type` label.
    Hook {
        PreCall => "pre_call",
        DuringCall => "during_call",
        PostCall => "post_call",
    }
);

label_enum!(
    /// `exception_class`: the spend log's `error_class`.
    ExceptionClass {
        PolicyBlock => "policy_block",
        ClientError => "client_error",
        UpstreamFailure => "upstream_failure",
        GuardrailFailure => "guardrail_failure",
        Internal => "internal",
        Other => "other",
    }
);

impl ExceptionClass {
    fn of(class: &str) -> ExceptionClass {
        match class {
            "policy_block" => ExceptionClass::PolicyBlock,
            "client_error" => ExceptionClass::ClientError,
            "upstream_failure" => ExceptionClass::UpstreamFailure,
            "guardrail_failure" => ExceptionClass::GuardrailFailure,
            "internal" => ExceptionClass::Internal,
            _ => ExceptionClass::Other,
        }
    }
}

impl From<GuardrailMode> for Hook {
    fn from(mode: GuardrailMode) -> Hook {
        match mode {
            GuardrailMode::PreCall => Hook::PreCall,
            GuardrailMode::DuringCall => Hook::DuringCall,
            GuardrailMode::PostCall => Hook::PostCall,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuardrailLabels {
    guardrail_name: Arc<str>,
    status: Status,
    hook_type: Hook,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuardrailErrorLabels {
    guardrail_name: Arc<str>,
    error_type: ErrorType,
    hook_type: Hook,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuardrailLatencyLabels {
    guardrail_name: Arc<str>,
    status: Status,
    error_type: ErrorType,
    hook_type: Hook,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    requested_model: Arc<str>,
    status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailedLabels {
    requested_model: Arc<str>,
    exception_status: u16,
    exception_class: ExceptionClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    requested_model: Arc<str>,
    model: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SpendLabels {
    model: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamBlockLabels {
    guardrail_name: Arc<str>,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// A configured guardrail: its name, and the series of its runs without error, created on first
/// use and then incremented directly (no family lookup per run).
struct GuardrailSlot {
    name: Arc<str>,
    /// `[status (success, intervened)][hook_type]`: the run counter and the latency histogram.
    runs: [[OnceLock<(Counter, Histogram)>; 3]; 2],
}

/// A configured model (or `other`): its labels, and its series, created on first use.
struct ModelSlot {
    labels: ModelLabels,
    series: OnceLock<ModelSeries>,
    /// `litellm_proxy_total_requests_metric` with `status_code="200"`.
    ok: OnceLock<Counter>,
}

struct ModelSeries {
    latency: Histogram,
    input: Counter,
    output: Counter,
    total: Counter,
    spend: Counter<f64, AtomicU64>,
}

fn hook_index(hook: Hook) -> usize {
    match hook {
        Hook::PreCall => 0,
        Hook::DuringCall => 1,
        Hook::PostCall => 2,
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The gateway's metrics: fed by [`Metrics::observe`] with every spend-log record, encoded by
/// [`Metrics::encode`] for `GET /metrics`.
pub struct Metrics {
    registry: Registry,
    /// The configured guardrails, by name.
    guardrails: HashMap<Box<str>, GuardrailSlot>,
    /// The configured models, by the name clients send.
    models: HashMap<Box<str>, ModelSlot>,
    /// Any other model.
    other: ModelSlot,
    guardrail_requests: Family<GuardrailLabels, Counter>,
    guardrail_errors: Family<GuardrailErrorLabels, Counter>,
    guardrail_latency: HistogramFamily<GuardrailLatencyLabels>,
    total_requests: Family<RequestLabels, Counter>,
    failed_requests: Family<FailedLabels, Counter>,
    request_latency: HistogramFamily<ModelLabels>,
    input_tokens: Family<ModelLabels, Counter>,
    output_tokens: Family<ModelLabels, Counter>,
    total_tokens: Family<ModelLabels, Counter>,
    spend: Family<SpendLabels, Counter<f64, AtomicU64>>,
    stream_blocks: Family<StreamBlockLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("guardrails", &self.guardrails.len())
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a gateway with this config, reading the spend-log counters of `writer`.
    pub fn new(config: &GatewayConfig, writer: SpendLogHandle) -> Metrics {
        let guardrails = config
            .guardrails
            .iter()
            .map(|g| {
                let slot = GuardrailSlot {
                    name: Arc::from(g.name()),
                    runs: Default::default(),
                };
                (Box::from(g.name()), slot)
            })
            .collect();
        let model_slot = |requested: &str, model: &str| ModelSlot {
            labels: ModelLabels {
                requested_model: Arc::from(requested),
                model: Arc::from(model),
            },
            series: OnceLock::new(),
            ok: OnceLock::new(),
        };
        let models = config
            .deployments
            .iter()
            .map(|d| {
                (
                    Box::from(d.model_name.as_str()),
                    model_slot(&d.model_name, &d.upstream_model),
                )
            })
            .collect();
        let histogram =
            || -> HistogramFamily<_> { Family::new_with_constructor(latency_histogram) };
        let mut metrics = Metrics {
            registry: Registry::default(),
            guardrails,
            models,
            other: model_slot("other", "other"),
            guardrail_requests: Family::default(),
            guardrail_errors: Family::default(),
            guardrail_latency: Family::new_with_constructor(latency_histogram),
            total_requests: Family::default(),
            failed_requests: Family::default(),
            request_latency: histogram(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            total_tokens: Family::default(),
            spend: Family::default(),
            stream_blocks: Family::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "litellm_guardrail_requests",
            "Total number of guardrail invocations",
            metrics.guardrail_requests.clone(),
        );
        r.register(
            "litellm_guardrail_errors",
            "Total number of errors encountered during guardrail execution",
            metrics.guardrail_errors.clone(),
        );
        r.register(
            "litellm_guardrail_latency_seconds",
            "Latency (seconds) for guardrail execution",
            metrics.guardrail_latency.clone(),
        );
        r.register(
            "litellm_proxy_total_requests_metric",
            "Total number of requests made to the proxy server - track number of client side requests",
            metrics.total_requests.clone(),
        );
        r.register(
            "litellm_proxy_failed_requests_metric",
            "Total number of failed responses from proxy - the client did not get a success response from litellm proxy",
            metrics.failed_requests.clone(),
        );
        r.register(
            "litellm_request_total_latency_metric",
            "Total latency (seconds) for a request to LiteLLM",
            metrics.request_latency.clone(),
        );
        r.register(
            "litellm_input_tokens_metric",
            "Total number of input tokens from LLM requests",
            metrics.input_tokens.clone(),
        );
        r.register(
            "litellm_output_tokens_metric",
            "Total number of output tokens from LLM requests",
            metrics.output_tokens.clone(),
        );
        r.register(
            "litellm_total_tokens_metric",
            "Total number of input + output tokens from LLM requests",
            metrics.total_tokens.clone(),
        );
        r.register(
            "litellm_spend_metric",
            "Total spend on LLM requests",
            metrics.spend.clone(),
        );
        r.register(
            "guardrail_tower_stream_blocks_after_head",
            "Streams a guardrail blocked after the 200 head was sent (ended with an in-band error event)",
            metrics.stream_blocks.clone(),
        );
        r.register_collector(Box::new(SpendLogCollector { writer }));
        metrics
    }

    fn guardrail_name(&self, name: &str) -> Arc<str> {
        self.guardrails
            .get(name)
            .map_or_else(|| Arc::from(name), |slot| slot.name.clone())
    }

    fn model_series<'a>(&self, slot: &'a ModelSlot) -> &'a ModelSeries {
        slot.series.get_or_init(|| ModelSeries {
            latency: self.request_latency.get_or_create(&slot.labels).clone(),
            input: self.input_tokens.get_or_create(&slot.labels).clone(),
            output: self.output_tokens.get_or_create(&slot.labels).clone(),
            total: self.total_tokens.get_or_create(&slot.labels).clone(),
            spend: self
                .spend
                .get_or_create(&SpendLabels {
                    model: slot.labels.model.clone(),
                })
                .clone(),
        })
    }

    /// Counts one completed request: its guardrail runs, its outcome, latency, tokens, spend.
    pub fn observe(&self, record: &SpendRecord) {
        for entry in &record.metadata.guardrail_information {
            self.observe_guardrail(entry);
        }
        let slot = self.models.get(&*record.model).unwrap_or(&self.other);
        let requested_model = &slot.labels.requested_model;
        let http_status = record.metadata.http_status;
        let request_labels = || RequestLabels {
            requested_model: requested_model.clone(),
            status_code: http_status,
        };
        if http_status == 200 {
            slot.ok
                .get_or_init(|| self.total_requests.get_or_create(&request_labels()).clone())
                .inc();
        } else {
            self.total_requests.get_or_create(&request_labels()).inc();
        }
        if record.status == SpendStatus::Failure {
            let class = record
                .metadata
                .error_information
                .as_ref()
                .map_or(ExceptionClass::Other, |e| {
                    ExceptionClass::of(&e.error_class)
                });
            self.failed_requests
                .get_or_create(&FailedLabels {
                    requested_model: requested_model.clone(),
                    exception_status: http_status,
                    exception_class: class,
                })
                .inc();
            if record.metadata.stream && http_status == 200 && class == ExceptionClass::PolicyBlock
            {
                if let Some(name) = record
                    .metadata
                    .error_information
                    .as_ref()
                    .and_then(|e| e.guardrail.as_deref())
                {
                    self.stream_blocks
                        .get_or_create(&StreamBlockLabels {
                            guardrail_name: self.guardrail_name(name),
                        })
                        .inc();
                }
            }
        }
        let series = self.model_series(slot);
        if let Ok(latency) = record.end_time.duration_since(record.start_time) {
            series.latency.observe(latency.as_secs_f64());
        }
        if record.total_tokens > 0 {
            series.input.inc_by(record.prompt_tokens);
            series.output.inc_by(record.completion_tokens);
            series.total.inc_by(record.total_tokens);
        }
        if record.spend > 0.0 && record.spend.is_finite() {
            series.spend.inc_by(record.spend);
        }
    }

    fn observe_guardrail(&self, entry: &GuardrailLogEntry) {
        let (status, error_type) = match entry.guardrail_status {
            GuardrailStatus::Success => (Status::Success, ErrorType::None),
            GuardrailStatus::GuardrailIntervened => (Status::Intervened, ErrorType::None),
            GuardrailStatus::GuardrailFailedToRespond => (
                Status::Error,
                match entry.guardrail_response["error_type"].as_str() {
                    Some("unreachable") => ErrorType::Unreachable,
                    Some("timeout") => ErrorType::Timeout,
                    _ => ErrorType::Failed,
                },
            ),
            // Selected but not run: not an invocation.
            GuardrailStatus::NotRun => return,
        };
        let hook_type = Hook::from(entry.guardrail_mode);
        let duration = entry.duration.max(0.0);
        if let Some(slot) = self.guardrails.get(&*entry.guardrail_name) {
            let status_index = match status {
                Status::Success => Some(0),
                Status::Intervened => Some(1),
                Status::Error => None,
            };
            if let Some(i) = status_index {
                let (runs, latency) = slot.runs[i][hook_index(hook_type)].get_or_init(|| {
                    let name = slot.name.clone();
                    (
                        self.guardrail_requests
                            .get_or_create(&GuardrailLabels {
                                guardrail_name: name.clone(),
                                status,
                                hook_type,
                            })
                            .clone(),
                        self.guardrail_latency
                            .get_or_create(&GuardrailLatencyLabels {
                                guardrail_name: name,
                                status,
                                error_type,
                                hook_type,
                            })
                            .clone(),
                    )
                });
                latency.observe(duration);
                runs.inc();
                return;
            }
        }
        let guardrail_name = self.guardrail_name(&entry.guardrail_name);
        self.guardrail_latency
            .get_or_create(&GuardrailLatencyLabels {
                guardrail_name: guardrail_name.clone(),
                status,
                error_type,
                hook_type,
            })
            .observe(duration);
        if status == Status::Error {
            self.guardrail_errors
                .get_or_create(&GuardrailErrorLabels {
                    guardrail_name: guardrail_name.clone(),
                    error_type,
                    hook_type,
                })
                .inc();
        }
        self.guardrail_requests
            .get_or_create(&GuardrailLabels {
                guardrail_name,
                status,
                hook_type,
            })
            .inc();
    }

    /// Serves the client connections [`Gateway::serve`](crate::app::Gateway::serve) counts
    /// (open, the limit, how often it was reached), and the request body bytes it holds (held,
    /// the limit, the requests refused).
    pub(crate) fn count_connections(
        &mut self,
        counts: Arc<ConnectionCounts>,
        bytes: Arc<RequestBytes>,
    ) {
        self.registry
            .register_collector(Box::new(ConnectionCollector { counts, bytes }));
    }

    /// The metrics in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The client connections of [`Gateway::serve`](crate::app::Gateway::serve) and the request
/// body bytes it holds, read at scrape time.
#[derive(Debug)]
struct ConnectionCollector {
    counts: Arc<ConnectionCounts>,
    bytes: Arc<RequestBytes>,
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (open, limit, reached) = self.counts.read();
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        for (name, help, value) in [
            (
                "guardrail_tower_client_connections",
                "Client connections open.",
                open,
            ),
            (
                "guardrail_tower_client_connections_limit",
                "The most client connections served at once (general_settings.max_client_connections).",
                limit,
            ),
            (
                "guardrail_tower_request_bytes_in_flight",
                "Request body bytes held, all clients together.",
                bytes(self.bytes.held()),
            ),
            (
                "guardrail_tower_request_bytes_in_flight_limit",
                "The most request body bytes held at once (general_settings.max_request_bytes_in_flight).",
                bytes(self.bytes.limit()),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "guardrail_tower_client_connection_limit_reached",
                "Times the client connections reached the limit (new ones then waited in the listen queue).",
                reached,
            ),
            (
                "guardrail_tower_request_bytes_refused",
                "Requests refused with 503 because their body did not fit in general_settings.max_request_bytes_in_flight.",
                self.bytes.refused(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The spend-log writer's counters, read at scrape time.
#[derive(Debug)]
struct SpendLogCollector {
    writer: SpendLogHandle,
}

impl Collector for SpendLogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = self.writer.stats();
        let gauges = [
            (
                "guardrail_tower_spend_log_queue_depth",
                "Spend-log records in the writer's queue.",
                stats.queue_depth,
            ),
            (
                "guardrail_tower_spend_log_pending",
                "Spend-log records submitted and not yet written, dead-lettered or dropped.",
                stats.pending,
            ),
            (
                "guardrail_tower_spend_log_deferred",
                "Spend-log records waiting for their request's monitor guardrails.",
                stats.deferred,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let counters = [
            (
                "guardrail_tower_spend_log_rows_written",
                "Spend-log records the database has written.",
                stats.written,
            ),
            (
                "guardrail_tower_spend_log_rows_dead_lettered",
                "Spend-log records written to the dead-letter file.",
                stats.dead_lettered,
            ),
            (
                "guardrail_tower_spend_log_rows_dropped",
                "Spend-log records lost (a full queue under the drop policy, or no dead-letter file).",
                stats.dropped,
            ),
            (
                "guardrail_tower_spend_log_write_retries",
                "Spend-log writes that failed and were retried (a batch or a row).",
                stats.retried,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
