//! The one state machine every request-side layer is built on: buffer and parse the request
//! once, let the layer look at (or adjust, or refuse) it, wait for the guardrails that must pass
//! before the call, then call the inner service while the guardrails that run beside the call
//! finish.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::guardrail::BoxError;
use crate::runner::{Outcome, RunFuture};
use crate::{BufferRequest, CallType, Error, ParsedRequest};

/// A layer's step between buffering the request and calling the inner service.
///
/// A named type per layer (not a closure), so the layer's response future stays nameable.
pub trait Prepare {
    /// What the layer keeps for the response (e.g. what it needs to check the response).
    type Output;

    /// Looks at or adjusts the buffered request (the parsed request is in its extensions);
    /// an `Err` refuses it (the inner service is not called).
    fn prepare(self, request: &mut Request<Full<Bytes>>) -> Result<Prepared<Self::Output>, Error>;
}

/// What [`Prepare::prepare`] decided: what to keep, and guardrail runs to wait for.
pub struct Prepared<T> {
    output: T,
    before: Option<RunFuture>,
    beside: Option<RunFuture>,
}

impl<T> Prepared<T> {
    /// Call the inner service at once, keeping `output`.
    pub fn new(output: T) -> Self {
        Prepared {
            output,
            before: None,
            beside: None,
        }
    }

    /// Wait for `run` before calling the inner service: a block refuses the request, a
    /// rewrite is written into the request (the parsed texts and the body forwarded).
    pub fn before(mut self, run: Option<RunFuture>) -> Self {
        self.before = run;
        self
    }

    /// Run `run` beside the inner call: the response is held until it passes; a block drops
    /// the response (body and all) and refuses the request. A rewrite cannot apply (the
    /// request is already on its way) and is ignored with a warning.
    pub fn beside(mut self, run: Option<RunFuture>) -> Self {
        self.beside = run;
        self
    }
}

impl<T: fmt::Debug> fmt::Debug for Prepared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("output", &self.output)
            .field("before", &self.before.is_some())
            .field("beside", &self.beside.is_some())
            .finish()
    }
}

/// How a [`BufferedCall`] ended.
#[derive(Debug)]
pub enum CallOutcome<R, T> {
    /// The inner service answered; `T` is what [`Prepare::prepare`] kept.
    Called(R, T),
    /// The request was refused before or instead of reaching the client (body too large,
    /// malformed, a guardrail block): answer with this error in the endpoint's shape. `T` is
    /// there when the layer's step ran.
    Refused(Error, CallType, Option<T>),
}

pin_project! {
    /// Buffers and parses the request once (reusing an earlier layer's work), runs a
    /// [`Prepare`] step, waits for the guardrails that run before the call, then calls the
    /// inner service while those that run beside it finish.
    ///
    /// The inner service passed in must be the instance that was polled ready (see
    /// [`take_ready`]).
    pub struct BufferedCall<B, S, P>
    where
        S: Service<Request<Full<Bytes>>>,
        P: Prepare,
    {
        #[pin]
        state: State<B, S, P>,
        call_type: CallType,
        output: Option<P::Output>,
        // When the current wait on guardrails began, and the time they added so far.
        waiting_since: Option<Instant>,
        guardrail_time: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S, P>
    where
        S: Service<Request<Full<Bytes>>>,
        P: Prepare,
    {
        Refused {
            error: Option<Error>,
        },
        Buffering {
            #[pin]
            buffer: BufferRequest<B>,
            inner: Option<S>,
            prepare: Option<P>,
        },
        Gating {
            before: RunFuture,
            beside: Option<RunFuture>,
            request: Option<Request<Full<Bytes>>>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            beside: Option<RunFuture>,
            // Boxed: only a call with a guardrail beside it holds a response, and inline the
            // slot made every layer's future (each nesting the next) larger by a response.
            held: Option<Box<S::Response>>,
        },
    }
}

impl<B, S, P> BufferedCall<B, S, P>
where
    B: Body,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>>,
    P: Prepare,
{
    /// Starts: buffers `request` (with `body_limit`), then `prepare`, then `inner.call`.
    pub fn new(request: Request<B>, body_limit: usize, inner: S, prepare: P) -> Self {
        let call_type = crate::call_type_of(&request);
        BufferedCall {
            call_type,
            output: None,
            waiting_since: None,
            guardrail_time: Duration::ZERO,
            state: State::Buffering {
                buffer: BufferRequest::new(request, body_limit),
                inner: Some(inner),
                prepare: Some(prepare),
            },
        }
    }

    /// A call refused before it began (a misordered stack, say), for a request of `call_type`.
    pub fn refused(error: Error, call_type: CallType) -> Self {
        BufferedCall {
            call_type,
            output: None,
            waiting_since: None,
            guardrail_time: Duration::ZERO,
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<B, S, P> BufferedCall<B, S, P>
where
    S: Service<Request<Full<Bytes>>>,
    P: Prepare,
{
    /// The time the guardrails added so far: waiting for the checks before the call, and for
    /// those beside it after the inner service had answered.
    pub fn guardrail_time(&self) -> Duration {
        self.guardrail_time
    }
}

fn stop_waiting(since: &mut Option<Instant>, total: &mut Duration) {
    if let Some(since) = since.take() {
        *total += since.elapsed();
    }
}

/// Writes rewritten texts into the parsed request and the body forwarded upstream.
fn apply_rewrite(request: &mut Request<Full<Bytes>>, texts: &[String]) -> Result<(), Error> {
    let parsed = request
        .extensions_mut()
        .get_mut::<ParsedRequest>()
        .ok_or_else(|| Error::internal("the parsed request is missing"))?;
    parsed
        .set_texts(texts)
        .map_err(|e| Error::internal(format!("could not apply the guardrail rewrite: {e}")))?;
    let bytes = parsed.bytes().clone();
    let (mut parts, _) = std::mem::take(request).into_parts();
    let body = crate::request::buffered_body(&mut parts, bytes);
    *request = Request::from_parts(parts, body);
    Ok(())
}

impl<B, S, P> Future for BufferedCall<B, S, P>
where
    B: Body,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>>,
    P: Prepare,
{
    type Output = Result<CallOutcome<S::Response, P::Output>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error.take().expect("BufferedCall polled after completion");
                    return Poll::Ready(Ok(CallOutcome::Refused(
                        error,
                        *this.call_type,
                        this.output.take(),
                    )));
                }
                StateProj::Buffering {
                    buffer,
                    inner,
                    prepare,
                } => {
                    let mut request = match ready!(buffer.poll(cx)) {
                        Ok(request) => request,
                        Err(err) => {
                            return Poll::Ready(Ok(CallOutcome::Refused(
                                err,
                                *this.call_type,
                                None,
                            )));
                        }
                    };
                    let prepare = prepare
                        .take()
                        .expect("BufferedCall polled after completion");
                    let prepared = match prepare.prepare(&mut request) {
                        Ok(prepared) => prepared,
                        Err(err) => {
                            return Poll::Ready(Ok(CallOutcome::Refused(
                                err,
                                *this.call_type,
                                None,
                            )));
                        }
                    };
                    *this.output = Some(prepared.output);
                    // Checks that answered at once ran in `prepare`: their time counts too.
                    for run in prepared.before.iter().chain(&prepared.beside) {
                        *this.guardrail_time += run.spent();
                    }
                    let inner = inner.take();
                    match prepared.before {
                        Some(before) => {
                            *this.waiting_since = Some(Instant::now());
                            this.state.set(State::Gating {
                                before,
                                beside: prepared.beside,
                                request: Some(request),
                                inner,
                            });
                        }
                        None => {
                            let mut inner = inner.expect("BufferedCall polled after completion");
                            this.state.set(State::Calling {
                                fut: inner.call(request),
                                beside: prepared.beside,
                                held: None,
                            });
                        }
                    }
                }
                StateProj::Gating {
                    before,
                    beside,
                    request,
                    inner,
                } => {
                    let outcome = ready!(Pin::new(before).poll(cx));
                    stop_waiting(this.waiting_since, this.guardrail_time);
                    let mut request = request
                        .take()
                        .expect("BufferedCall polled after completion");
                    match outcome {
                        Outcome::Blocked(err) => {
                            return Poll::Ready(Ok(CallOutcome::Refused(
                                err,
                                *this.call_type,
                                this.output.take(),
                            )));
                        }
                        Outcome::Allowed {
                            rewritten: Some(texts),
                            ..
                        } => {
                            if let Err(err) = apply_rewrite(&mut request, &texts) {
                                return Poll::Ready(Ok(CallOutcome::Refused(
                                    err,
                                    *this.call_type,
                                    this.output.take(),
                                )));
                            }
                        }
                        Outcome::Allowed {
                            rewritten: None, ..
                        } => {}
                    }
                    let mut inner = inner.take().expect("BufferedCall polled after completion");
                    let beside = beside.take();
                    this.state.set(State::Calling {
                        fut: inner.call(request),
                        beside,
                        held: None,
                    });
                }
                StateProj::Calling {
                    mut fut,
                    beside,
                    held,
                } => {
                    // The upstream first: it is the slow part, get it going.
                    if held.is_none() {
                        if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                            let response = result?;
                            if beside.is_none() {
                                let output = this
                                    .output
                                    .take()
                                    .expect("BufferedCall polled after completion");
                                return Poll::Ready(Ok(CallOutcome::Called(response, output)));
                            }
                            *held = Some(Box::new(response));
                            *this.waiting_since = Some(Instant::now());
                        }
                    }
                    if let Some(check) = beside {
                        if let Poll::Ready(outcome) = Pin::new(check).poll(cx) {
                            *beside = None;
                            if held.is_some() {
                                stop_waiting(this.waiting_since, this.guardrail_time);
                            }
                            match outcome {
                                Outcome::Blocked(err) => {
                                    // The upstream response (or the call still under way) is
                                    // dropped: nothing of it reaches the client.
                                    held.take();
                                    return Poll::Ready(Ok(CallOutcome::Refused(
                                        err,
                                        *this.call_type,
                                        this.output.take(),
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
                    if beside.is_none() {
                        if let Some(response) = held.take() {
                            let output = this
                                .output
                                .take()
                                .expect("BufferedCall polled after completion");
                            return Poll::Ready(Ok(CallOutcome::Called(*response, output)));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<B, S, P> fmt::Debug for BufferedCall<B, S, P>
where
    S: Service<Request<Full<Bytes>>>,
    P: Prepare,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedCall")
            .field("call_type", &self.call_type)
            .finish_non_exhaustive()
    }
}

/// Swaps a clone of `service` in and returns the instance that was polled ready, to move into a
/// future (tower-http's `async_require_authorization` pattern).
pub fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A service whose response is 4 KiB inline (as a response with its body nested through
    /// several layers can be large), and whose future is small.
    #[derive(Clone)]
    struct LargeResponse;

    type Large = [u8; 4096];

    impl Service<Request<Full<Bytes>>> for LargeResponse {
        type Response = Large;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Large, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
            Box::pin(std::future::ready(Ok([7; 4096])))
        }
    }

    struct Keep;

    impl Prepare for Keep {
        type Output = ();

        fn prepare(self, _request: &mut Request<Full<Bytes>>) -> Result<Prepared<()>, Error> {
            Ok(Prepared::new(()))
        }
    }

    #[test]
    fn the_slot_for_a_held_response_does_not_grow_the_future() {
        // Each layer's future holds the next one's, so a response kept inline for the rare
        // call with a guardrail beside it made every future of the stack larger by a response.
        let size = std::mem::size_of::<BufferedCall<Full<Bytes>, LargeResponse, Keep>>();
        assert!(
            size < std::mem::size_of::<Large>(),
            "BufferedCall is {size} bytes for a 4,096-byte response"
        );
    }

    #[tokio::test]
    async fn a_large_response_passes_through() {
        let request = Request::builder()
            .uri("/v1/chat/completions")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            )))
            .unwrap();
        let call = BufferedCall::new(request, 1 << 20, LargeResponse, Keep);
        match call.await {
            Ok(CallOutcome::Called(response, ())) => assert_eq!(response, [7; 4096]),
            Ok(CallOutcome::Refused(error, ..)) => panic!("refused: {error}"),
        }
    }
}
