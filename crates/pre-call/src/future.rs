use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    BoxError, BufferRequest, CallType, Error, GuardrailLog, GuardrailMode, GuardrailStatus,
    Guardrails, Outcome, ParsedRequest, RequestMeta, RunFuture, set_buffered_body,
};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::PreCallGuardrailLayer;

/// `x-litellm-applied-guardrails`: the guardrails that ran on the request, comma-separated (the
/// header LiteLLM sends).
pub const APPLIED_GUARDRAILS: HeaderName = HeaderName::from_static("x-litellm-applied-guardrails");

/// `x-guardrails-duration-ms`: the time the request's guardrails added, in milliseconds.
pub const GUARDRAILS_DURATION_MS: HeaderName = HeaderName::from_static("x-guardrails-duration-ms");

pin_project! {
    /// The response future of [`PreCallGuardrail`](crate::PreCallGuardrail).
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<B, S>,
        guardrails: Guardrails,
        call_type: CallType,
        response_headers: bool,
        log: Option<GuardrailLog>,
        log_start: usize,
        // When the current wait on guardrails began.
        waiting_since: Option<Instant>,
        // Time the guardrails added so far.
        guardrail_time: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        Buffering {
            #[pin]
            buffer: BufferRequest<B>,
            inner: Option<S>,
        },
        Checking {
            check: RunFuture,
            request: Option<Request<Full<Bytes>>>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            during: Option<RunFuture>,
            held: Option<Result<S::Response, S::Error>>,
        },
    }
}

impl<B, S> ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(request: Request<B>, inner: S, config: &PreCallGuardrailLayer) -> Self {
        ResponseFuture {
            call_type: CallType::from_path(request.uri().path()),
            state: State::Buffering {
                buffer: BufferRequest::new(request, config.body_limit),
                inner: Some(inner),
            },
            guardrails: config.guardrails.clone(),
            response_headers: config.response_headers,
            log: None,
            log_start: 0,
            waiting_since: None,
            guardrail_time: Duration::ZERO,
        }
    }
}

/// Starts the guardrails of `mode` on the request's text, if the gate selects any.
fn start_checks(
    guardrails: &Guardrails,
    mode: GuardrailMode,
    request: &Request<Full<Bytes>>,
    log: &GuardrailLog,
) -> Option<RunFuture> {
    let parsed = request.extensions().get::<ParsedRequest>()?;
    if !guardrails.any_selected(mode, parsed.selection()) {
        return None;
    }
    let meta = RequestMeta::shared_from_request(request)?;
    guardrails.run(
        mode,
        parsed.selection(),
        Side::Request,
        parsed.texts(),
        meta,
        log.clone(),
    )
}

/// Writes the rewritten texts into the parsed request and the body forwarded upstream.
fn apply_rewrite(
    request: Request<Full<Bytes>>,
    texts: &[String],
) -> Result<Request<Full<Bytes>>, Error> {
    let (mut parts, _) = request.into_parts();
    let parsed = parts
        .extensions
        .get_mut::<ParsedRequest>()
        .ok_or_else(|| Error::internal("the parsed request is missing"))?;
    parsed
        .set_texts(texts)
        .map_err(|e| Error::internal(format!("could not apply the guardrail rewrite: {e}")))?;
    let parsed = parsed.clone();
    let body = set_buffered_body(&mut parts, &parsed);
    Ok(Request::from_parts(parts, body))
}

impl<B, S, ResB> Future for ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { buffer, inner } => {
                    let mut request = match ready!(buffer.poll(cx)) {
                        Ok(request) => request,
                        Err(err) => {
                            return Poll::Ready(Ok(err
                                .to_response(*this.call_type)
                                .map(ResponseBody::full)));
                        }
                    };
                    let log = match request.extensions().get::<GuardrailLog>() {
                        Some(log) => log.clone(),
                        None => {
                            let log = GuardrailLog::new();
                            request.extensions_mut().insert(log.clone());
                            log
                        }
                    };
                    *this.log_start = log.len();
                    let inner = inner.take();
                    let check =
                        start_checks(this.guardrails, GuardrailMode::PreCall, &request, &log);
                    *this.log = Some(log);
                    match check {
                        Some(check) => {
                            *this.waiting_since = Some(Instant::now());
                            this.state.set(State::Checking {
                                check,
                                request: Some(request),
                                inner,
                            });
                        }
                        None => {
                            let state = start_call(this.guardrails, this.log, request, inner);
                            this.state.set(state);
                        }
                    }
                }
                StateProj::Checking {
                    check,
                    request,
                    inner,
                } => {
                    let outcome = ready!(check.as_mut().poll(cx));
                    stop_waiting(this.waiting_since, this.guardrail_time);
                    let request = request
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let request = match outcome {
                        Outcome::Blocked(err) => {
                            let response = err.to_response(*this.call_type).map(ResponseBody::full);
                            return Poll::Ready(Ok(finish(
                                response,
                                this.log,
                                *this.log_start,
                                *this.guardrail_time,
                                *this.response_headers,
                            )));
                        }
                        Outcome::Allowed {
                            rewritten: None, ..
                        } => request,
                        Outcome::Allowed {
                            rewritten: Some(texts),
                            ..
                        } => match apply_rewrite(request, &texts) {
                            Ok(request) => request,
                            Err(err) => {
                                let response =
                                    err.to_response(*this.call_type).map(ResponseBody::full);
                                return Poll::Ready(Ok(response));
                            }
                        },
                    };
                    let state = start_call(this.guardrails, this.log, request, inner.take());
                    this.state.set(state);
                }
                StateProj::Calling {
                    mut fut,
                    during,
                    held,
                } => {
                    // The upstream first: it is the slow part, get it going.
                    if held.is_none() {
                        if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                            *held = Some(result);
                            if during.is_some() {
                                *this.waiting_since = Some(Instant::now());
                            }
                        }
                    }
                    if let Some(check) = during {
                        if let Poll::Ready(outcome) = check.as_mut().poll(cx) {
                            *during = None;
                            if held.is_some() {
                                stop_waiting(this.waiting_since, this.guardrail_time);
                            }
                            match outcome {
                                Outcome::Blocked(err) => {
                                    // The upstream response (or the call still under way) is
                                    // dropped: nothing of it reaches the client.
                                    held.take();
                                    let response =
                                        err.to_response(*this.call_type).map(ResponseBody::full);
                                    return Poll::Ready(Ok(finish(
                                        response,
                                        this.log,
                                        *this.log_start,
                                        *this.guardrail_time,
                                        *this.response_headers,
                                    )));
                                }
                                Outcome::Allowed { rewritten, .. } => {
                                    if rewritten.is_some() {
                                        tracing::warn!(
                                            "a during_call guardrail rewrote the request after it was sent; \
                                             the rewrite is ignored (use pre_call to mask)"
                                        );
                                    }
                                }
                            }
                        }
                    }
                    if during.is_none() {
                        if let Some(result) = held.take() {
                            let response = result?.map(ResponseBody::new);
                            return Poll::Ready(Ok(finish(
                                response,
                                this.log,
                                *this.log_start,
                                *this.guardrail_time,
                                *this.response_headers,
                            )));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Starts `during_call` guardrails and the upstream call together.
fn start_call<B, S>(
    guardrails: &Guardrails,
    log: &Option<GuardrailLog>,
    request: Request<Full<Bytes>>,
    inner: Option<S>,
) -> State<B, S>
where
    S: Service<Request<Full<Bytes>>>,
{
    let during = log
        .as_ref()
        .and_then(|log| start_checks(guardrails, GuardrailMode::DuringCall, &request, log));
    let mut inner = inner.expect("ResponseFuture polled after completion");
    State::Calling {
        fut: inner.call(request),
        during,
        held: None,
    }
}

fn stop_waiting(since: &mut Option<Instant>, total: &mut Duration) {
    if let Some(since) = since.take() {
        *total += since.elapsed();
    }
}

/// Adds the applied-guardrails and duration headers when any guardrail ran.
fn finish<B>(
    mut response: Response<B>,
    log: &Option<GuardrailLog>,
    log_start: usize,
    guardrail_time: Duration,
    enabled: bool,
) -> Response<B> {
    let Some(log) = log.as_ref().filter(|log| enabled && log.len() > log_start) else {
        return response;
    };
    let entries = log.entries();
    let mut applied: Vec<&str> = Vec::new();
    for entry in &entries[log_start..] {
        let name = entry.guardrail_name.as_str();
        if entry.guardrail_status != GuardrailStatus::NotRun && !applied.contains(&name) {
            applied.push(name);
        }
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&applied.join(",")) {
        headers.insert(APPLIED_GUARDRAILS, value);
    }
    let millis = format!("{:.3}", guardrail_time.as_secs_f64() * 1000.0);
    headers.insert(
        GUARDRAILS_DURATION_MS,
        HeaderValue::from_str(&millis).expect("a number is a valid header value"),
    );
    response
}
