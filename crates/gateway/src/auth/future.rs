use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{
    BoxError, BufferRequest, CallType, Caller, Error, ParsedRequest, ResponseReport,
};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    Authenticator, Check, Who, check_key, looked_up, model_not_allowed, parallel_limit_reached,
    strip_credentials,
};
use crate::keys::{KeyStoreError, ResolvedKey, Running};

/// A store lookup in flight (the slow path: a key not in the cache).
pub(crate) type LookupFuture =
    Pin<Box<dyn Future<Output = Result<Option<Arc<ResolvedKey>>, KeyStoreError>> + Send>>;

pin_project! {
    /// The response future of [`KeyAuth`](super::KeyAuth).
    pub struct KeyAuthFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<B, S>,
        call_type: CallType,
        auth: Authenticator,
        body_limit: usize,
        caller: Option<Arc<Caller>>,
        // The request's place among its key's requests running at once, handed to the body.
        running: Option<Running>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        Refused {
            error: Option<Error>,
        },
        Lookup {
            fut: LookupFuture,
            request: Option<Request<B>>,
            inner: Option<S>,
        },
        Buffering {
            #[pin]
            buffer: BufferRequest<B>,
            inner: Option<S>,
            who: Option<Who>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
    }
}

impl<B, S> KeyAuthFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(
        check: Check,
        request: Request<B>,
        inner: S,
        auth: Authenticator,
        body_limit: usize,
        call_type: CallType,
    ) -> Self {
        let mut caller = None;
        let mut running = None;
        let state = match check {
            Check::Known(who) => {
                accepted(who, request, inner, body_limit, &mut caller, &mut running)
            }
            Check::Refused(error) => State::Refused { error: Some(error) },
            Check::Lookup(cache, digest) => State::Lookup {
                fut: Box::pin(async move { cache.fetch(&digest).await }),
                request: Some(request),
                inner: Some(inner),
            },
        };
        KeyAuthFuture {
            state,
            call_type,
            auth,
            body_limit,
            caller,
            running,
        }
    }
}

/// The next state for a key that was found: refused if blocked or expired, or if as many of
/// its requests as it allows run already (its place among them is taken into `running`), else
/// the body is read.
fn accepted<B, S>(
    who: Who,
    request: Request<B>,
    inner: S,
    body_limit: usize,
    caller: &mut Option<Arc<Caller>>,
    running: &mut Option<Running>,
) -> State<B, S>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    *caller = Some(Arc::clone(who.caller()));
    // A spend log outside this layer learns the caller here, however the request ends.
    if let Some(report) = ResponseReport::of(&request) {
        report.set_caller(who.caller());
    }
    if let Who::Key(key) = &who {
        if let Err(error) = check_key(key) {
            return State::Refused { error: Some(error) };
        }
        match key.start() {
            Some(place) => *running = Some(place),
            None => {
                return State::Refused {
                    error: Some(parallel_limit_reached(key)),
                };
            }
        }
    }
    State::Buffering {
        buffer: BufferRequest::new(request, body_limit),
        inner: Some(inner),
        who: Some(who),
    }
}

/// The refusal in the endpoint's shape, with the caller (when the key was known) for the spend
/// log.
fn refusal<ResB>(
    error: &Error,
    call_type: CallType,
    caller: Option<Arc<Caller>>,
) -> Response<KeyAuthBody<ResB>> {
    let mut response = error
        .to_response(call_type)
        .map(|body| KeyAuthBody::new(ResponseBody::full(body), None));
    if let Some(caller) = caller {
        response.extensions_mut().insert(caller);
    }
    response
}

impl<B, S, ResB> Future for KeyAuthFuture<B, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<KeyAuthBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error.take().expect("KeyAuthFuture polled after completion");
                    return Poll::Ready(Ok(refusal(&error, *this.call_type, this.caller.take())));
                }
                StateProj::Lookup {
                    fut,
                    request,
                    inner,
                } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let request = request
                        .take()
                        .expect("KeyAuthFuture polled after completion");
                    let inner = inner.take().expect("KeyAuthFuture polled after completion");
                    let next = match looked_up(result) {
                        Ok(who) => accepted(
                            who,
                            request,
                            inner,
                            *this.body_limit,
                            this.caller,
                            this.running,
                        ),
                        Err(error) => State::Refused { error: Some(error) },
                    };
                    this.state.set(next);
                }
                StateProj::Buffering { buffer, inner, who } => {
                    let result = ready!(buffer.poll(cx));
                    let who = who.take().expect("KeyAuthFuture polled after completion");
                    let mut request = match result {
                        Ok(request) => request,
                        Err(error) => {
                            this.state.set(State::Refused { error: Some(error) });
                            continue;
                        }
                    };
                    if let Who::Key(key) = &who {
                        if let Err(error) = admit(this.auth, key, &mut request) {
                            this.state.set(State::Refused { error: Some(error) });
                            continue;
                        }
                    }
                    strip_credentials(request.headers_mut());
                    request.extensions_mut().insert(Arc::clone(who.caller()));
                    let mut inner = inner.take().expect("KeyAuthFuture polled after completion");
                    let fut = inner.call(request);
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    let response = ready!(fut.poll(cx))?;
                    let running = this.running.take();
                    let mut response =
                        response.map(|body| KeyAuthBody::new(ResponseBody::new(body), running));
                    if let Some(caller) = this.caller.take() {
                        response.extensions_mut().insert(caller);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// What a virtual key allows, checked on the parsed request: the model, then the key's
/// guardrails, which join the request's guardrail selection.
fn admit(
    auth: &Authenticator,
    key: &ResolvedKey,
    request: &mut Request<Full<Bytes>>,
) -> Result<(), Error> {
    let Some(parsed) = request.extensions_mut().get_mut::<ParsedRequest>() else {
        return Err(Error::internal("the request was not parsed"));
    };
    if let Some(model) = parsed.model() {
        if !key.allows_model(model) {
            return Err(model_not_allowed(key, model));
        }
    }
    if !key.guardrails().is_empty() {
        auth.check_guardrails(key)?;
        parsed
            .selection_mut()
            .merge(key.guardrails().iter().cloned());
    }
    Ok(())
}

impl<B, S> std::fmt::Debug for KeyAuthFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuthFuture")
            .field("call_type", &self.call_type)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body of [`KeyAuth`](super::KeyAuth): a request made with a key that limits
    /// its requests at once (`max_parallel_requests`) keeps its place among them until this is
    /// dropped, when the response has been sent whole or the client left.
    pub struct KeyAuthBody<B> {
        #[pin]
        body: ResponseBody<B>,
        running: Option<Running>,
    }
}

impl<B> KeyAuthBody<B> {
    fn new(body: ResponseBody<B>, running: Option<Running>) -> Self {
        KeyAuthBody { body, running }
    }
}

impl<B> Body for KeyAuthBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> std::fmt::Debug for KeyAuthBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuthBody")
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}
