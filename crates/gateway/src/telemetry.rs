//! OpenTelemetry traces: one trace per LLM request, a span per layer and per guardrail run,
//! exported over OTLP/HTTP, with the trace context (`traceparent`) passed on to the upstream
//! and to guardrail services.
//!
//! The binary turns it on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard variables:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default
//! `guardrail-gateway`), `OTEL_RESOURCE_ATTRIBUTES` and the batch settings
//! (`OTEL_BSP_SCHEDULE_DELAY`, ...). Spans are sent by the gateway's own HTTP client (rustls),
//! batched off the request path; at shutdown the last batch is flushed.
//!
//! The spans of one request (`POST /v1/chat/completions`, blocked by a pre-call guardrail):
//!
//! ```text
//! POST /v1/chat/completions          otel.kind=server, http.response.status_code=400
//! └─ spend_log
//!    └─ key_auth
//!       └─ error_normalize
//!          └─ model_guardrail_merge
//!             └─ pre_call_guardrails
//!                └─ guardrail block-words  guardrail.name=block-words, guardrail.mode=pre_call,
//!                                          guardrail.verdict=block, guardrail.duration_ms=0.02
//! ```
//!
//! An allowed request goes on through `streaming_guardrails` to `upstream` (`otel.kind=client`,
//! `gen_ai.request.model`), whose span context is what the upstream receives as `traceparent`.
//! A layer's span covers its work up to the response head; checks of a streamed response run
//! while the body flows and are children of the request span, which ends with the body. A
//! guardrail's span context is what an HTTP guardrail service receives as `traceparent`. A
//! `traceparent` from the client makes the request span its child.
//!
//! `guardrail.verdict` is `allow`, `block`, `mask`, `flagged` (allowed, found a violation:
//! a monitor mode), `error` (with `guardrail.error_kind`: `unreachable`, `timeout`, `failed`;
//! the guardrail's fallback decides what the request does), or `cancelled` (the check was cut
//! short: its timeout, or the client went away). Streamed responses checked by a local matcher
//! (the content filter under the `exact` stream policy) are matched without a guardrail call
//! and have no guardrail span.
//!
//! Without telemetry the spans are never created: their target ([`TARGET`]) is off for the
//! log output, and with no exporter no one listens for them; the layer span wrappers are then
//! left out of the stack altogether ([`layer_spans_enabled`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use guardrail_tower_core::{
    Decision, Guardrail, GuardrailError, GuardrailErrorKind, GuardrailInput, ParsedRequest,
    SpanMatcher, Verdict,
};
use guardrail_tower_guardrails::HttpClient;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing::{Span, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span this module makes. Only the OpenTelemetry layer
/// listens to it; the log output turns it off.
pub const TARGET: &str = "guardrail_gateway::otel";

/// Where and how to export traces. Read from the standard environment variables by
/// [`OtelSettings::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSettings {
    /// Send OTLP as JSON instead of protobuf.
    pub json: bool,
    /// `service.name` when `OTEL_SERVICE_NAME` does not set one.
    pub service_name: String,
}

impl OtelSettings {
    /// `Some` when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
    /// set (the exporter reads the endpoint, headers and timeout itself).
    pub fn from_env() -> Option<OtelSettings> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return None;
        }
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        Some(OtelSettings {
            json: protocol.trim() == "http/json",
            service_name: "guardrail-gateway".into(),
        })
    }
}

/// The running trace pipeline. [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts the exporter (its HTTP calls run on `runtime`) and returns the pipeline and the
    /// `tracing` layer that feeds it (already filtered to [`TARGET`]). Guardrail service calls
    /// carry the trace context from then on.
    pub fn start<S>(
        settings: &OtelSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Telemetry, impl tracing_subscriber::Layer<S>), String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        use tracing_subscriber::Layer as _;

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(if settings.json {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            })
            .with_http_client(OtlpClient {
                client: HttpClient::new(),
                runtime,
            })
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(settings.service_name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("guardrail-gateway");
        guardrail_tower_guardrails::set_request_hook(inject_current);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TARGET, tracing::Level::TRACE),
            );
        Ok((Telemetry { provider }, layer))
    }

    /// Exports what is left and stops. Blocks: call it off the async threads
    /// (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last traces may not have been exported");
        }
    }
}

/// The OTLP exporter's HTTP client: the gateway's own, run on the gateway's runtime (the
/// exporter calls it from its own thread).
struct OtlpClient {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpClient").finish_non_exhaustive()
    }
}

type OtlpFuture<'a> = Pin<
    Box<dyn Future<Output = Result<Response<Bytes>, opentelemetry_http::HttpError>> + Send + 'a>,
>;

impl opentelemetry_http::HttpClient for OtlpClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> OtlpFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(|e| -> opentelemetry_http::HttpError { Box::new(e) })?;
            let (parts, body) = response.into_parts();
            // A collector's answer is small; a bound keeps a misbehaving one from holding memory.
            let body = http_body_util::Limited::new(body, 4 << 20)
                .collect()
                .await?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        });
        Box::pin(async move {
            task.await
                .map_err(|e| -> opentelemetry_http::HttpError { Box::new(e) })?
        })
    }
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to `headers`; nothing
/// when there is no current span.
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&Span::current(), headers);
}

fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

// ---------------------------------------------------------------------------------------------
// The request span

/// The root span of each request: `"{method} {path}"`, `otel.kind=server`, the status, a
/// parent from the client's `traceparent`. It ends when the response body does, and the body
/// is read inside it (so checks of a streamed response are its children).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpanLayer;

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// See [`RequestSpanLayer`].
#[derive(Debug, Clone)]
pub struct RequestSpan<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for RequestSpan<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = RequestSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = info_span!(
            target: TARGET,
            "request",
            otel.name = %format_args!("{} {}", request.method(), request.uri().path()),
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
            let _ = span.set_parent(parent);
        }
        let future = span.in_scope(|| self.inner.call(request));
        RequestSpanFuture {
            future,
            span: Some(span),
        }
    }
}

pin_project! {
    /// The future of [`RequestSpan`].
    pub struct RequestSpanFuture<F> {
        #[pin]
        future: F,
        span: Option<Span>,
    }
}

impl<F, ResB, E> Future for RequestSpanFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<TracedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span = this
            .span
            .as_ref()
            .expect("RequestSpanFuture polled after completion");
        let result = {
            let _entered = span.enter();
            std::task::ready!(this.future.poll(cx))
        };
        let span = this
            .span
            .take()
            .expect("RequestSpanFuture polled after completion");
        Poll::Ready(result.map(|response| {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            response.map(|body| TracedBody {
                body,
                // A span nothing records is not entered at every frame.
                span: (!span.is_disabled()).then_some(span),
            })
        }))
    }
}

impl<F> fmt::Debug for RequestSpanFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSpanFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body read inside the request span, which ends when the body does.
    pub struct TracedBody<B> {
        #[pin]
        body: B,
        span: Option<Span>,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = match this.span.as_ref() {
            Some(span) => {
                let _entered = span.enter();
                this.body.poll_frame(cx)
            }
            None => this.body.poll_frame(cx),
        };
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            // The end: the span closes now, not when the connection lets go of the body.
            this.span.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedBody").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Layer spans

/// Whether anything listens for the layer spans ([`SpanLayer`]): the OpenTelemetry layer, when
/// the process's subscriber has it. The gateway asks when it builds its stack (after the
/// subscriber is installed, and again at each reload) and leaves the span wrappers out when
/// nothing listens.
pub fn layer_spans_enabled() -> bool {
    tracing::enabled!(kind: tracing::metadata::Kind::SPAN, target: TARGET, tracing::Level::INFO)
}

/// A span around the layer (or service) it wraps: named `name`, a child of the current span,
/// from the call to the response head. [`SpanLayer::upstream`] also sends the span's context
/// upstream (`traceparent`).
#[derive(Debug, Clone, Copy)]
pub struct SpanLayer {
    name: &'static str,
    upstream: bool,
}

impl SpanLayer {
    /// A span named `name`.
    pub const fn new(name: &'static str) -> Self {
        SpanLayer {
            name,
            upstream: false,
        }
    }

    /// The `upstream` span (`otel.kind=client`, `gen_ai.request.model`), whose context goes
    /// upstream as `traceparent`.
    pub const fn upstream() -> Self {
        SpanLayer {
            name: "upstream",
            upstream: true,
        }
    }
}

impl<S> Layer<S> for SpanLayer {
    type Service = Spanned<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Spanned {
            inner,
            name: self.name,
            upstream: self.upstream,
        }
    }
}

/// See [`SpanLayer`].
#[derive(Debug, Clone)]
pub struct Spanned<S> {
    inner: S,
    name: &'static str,
    upstream: bool,
}

impl<S, B> Service<Request<B>> for Spanned<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let span = if self.upstream {
            let span = info_span!(
                target: TARGET,
                "upstream",
                otel.kind = "client",
                gen_ai.request.model = Empty,
            );
            if !span.is_disabled() {
                if let Some(model) = request
                    .extensions()
                    .get::<ParsedRequest>()
                    .and_then(ParsedRequest::model)
                {
                    span.record("gen_ai.request.model", model);
                }
                inject(&span, request.headers_mut());
            }
            span
        } else {
            info_span!(target: TARGET, "layer", otel.name = self.name)
        };
        let future = span.in_scope(|| self.inner.call(request));
        future.instrument(span)
    }
}

// ---------------------------------------------------------------------------------------------
// Guardrail spans

/// A guardrail whose every check is a span: `guardrail {name}`, with `guardrail.name`,
/// `guardrail.provider`, `guardrail.mode`, `guardrail.verdict` (and `guardrail.error_kind`)
/// and `guardrail.duration_ms`. Everything else is the wrapped guardrail's.
pub struct TracedGuardrail<G> {
    name: Arc<str>,
    inner: G,
}

impl<G> TracedGuardrail<G> {
    /// `inner`, traced under `name`.
    pub fn new(name: impl Into<Arc<str>>, inner: G) -> Self {
        TracedGuardrail {
            name: name.into(),
            inner,
        }
    }
}

impl<G> fmt::Debug for TracedGuardrail<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedGuardrail")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn verdict_name(result: &Result<Verdict, GuardrailError>) -> (&'static str, Option<&'static str>) {
    match result {
        Ok(v) => match v.decision() {
            Decision::Block { .. } => ("block", None),
            Decision::Rewrite { .. } => ("mask", None),
            _ if v.is_flagged() => ("flagged", None),
            _ => ("allow", None),
        },
        Err(e) => (
            "error",
            Some(match e.kind() {
                GuardrailErrorKind::Unreachable => "unreachable",
                GuardrailErrorKind::Timeout => "timeout",
                _ => "failed",
            }),
        ),
    }
}

/// Records `guardrail.verdict = cancelled` on a check dropped before it answered.
struct Unfinished<'a>(Option<&'a Span>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(span) = self.0 {
            span.record("guardrail.verdict", "cancelled");
        }
    }
}

impl<G: Guardrail> TracedGuardrail<G> {
    /// The span of one check (disabled when nothing listens).
    fn span(&self, input: &GuardrailInput) -> Span {
        info_span!(
            target: TARGET,
            "guardrail",
            otel.name = %format_args!("guardrail {}", self.name),
            guardrail.name = %self.name,
            guardrail.provider = self.inner.provider(),
            guardrail.mode = input.mode().as_str(),
            guardrail.verdict = Empty,
            guardrail.error_kind = Empty,
            guardrail.duration_ms = Empty,
            otel.status_code = Empty,
        )
    }
}

impl<G: Guardrail> Guardrail for TracedGuardrail<G> {
    /// The wrapped guardrail's answer at once when nothing listens to the spans; with spans
    /// on, the check goes through [`Guardrail::check`], which records one around it.
    fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
        // Asked without making a span: a span made here would be exported empty.
        if layer_spans_enabled() {
            None
        } else {
            self.inner.check_now(input)
        }
    }

    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        let span = self.span(input);
        if span.is_disabled() {
            return self.inner.check(input).await;
        }
        let start = Instant::now();
        let mut pending = Unfinished(Some(&span));
        let result = self.inner.check(input).instrument(span.clone()).await;
        pending.0 = None;
        let (verdict, error_kind) = verdict_name(&result);
        span.record("guardrail.verdict", verdict);
        span.record(
            "guardrail.duration_ms",
            start.elapsed().as_secs_f64() * 1000.0,
        );
        if let Some(kind) = error_kind {
            span.record("guardrail.error_kind", kind);
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    fn provider(&self) -> &str {
        self.inner.provider()
    }

    fn span_matcher(&self) -> Option<&dyn SpanMatcher> {
        self.inner.span_matcher()
    }

    fn reads_request_body(&self) -> bool {
        self.inner.reads_request_body()
    }

    fn reads_request_headers(&self) -> bool {
        self.inner.reads_request_headers()
    }
}
