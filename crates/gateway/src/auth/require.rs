//! [`RequireKeyLayer`]: a key check for the routes that are not LLM calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{CallType, Caller, Error, take_ready};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::future::LookupFuture;
use super::{Authenticator, Check, Who, check_key, looked_up, master_only, strip_credentials};

/// Applies [`RequireKey`]: the master key only (admin routes: `/spend/logs`, `/key/*`), or any
/// valid key. The request passes through unread, with an `Arc<Caller>` in its extensions; a
/// refusal is LiteLLM's error in the OpenAI shape.
#[derive(Debug, Clone)]
pub struct RequireKeyLayer {
    auth: Authenticator,
    master_only: bool,
}

impl RequireKeyLayer {
    /// The master key only; a valid virtual key gets a 403.
    pub fn master_only(auth: Authenticator) -> Self {
        RequireKeyLayer {
            auth,
            master_only: true,
        }
    }

    /// The master key or any valid virtual key.
    pub fn any_key(auth: Authenticator) -> Self {
        RequireKeyLayer {
            auth,
            master_only: false,
        }
    }
}

impl<S> Layer<S> for RequireKeyLayer {
    type Service = RequireKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireKey {
            inner,
            auth: self.auth.clone(),
            master_only: self.master_only,
        }
    }
}

/// Refuses requests without an acceptable key. See [`RequireKeyLayer`].
#[derive(Debug, Clone)]
pub struct RequireKey<S> {
    inner: S,
    auth: Authenticator,
    master_only: bool,
}

impl<S> RequireKey<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pin_project! {
    /// The response future of [`RequireKey`].
    pub struct RequireKeyFuture<B, S>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<B, S>,
        master_only: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S>
    where
        S: Service<Request<B>>,
    {
        Refused {
            error: Option<Error>,
        },
        Lookup {
            fut: LookupFuture,
            request: Option<Request<B>>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
    }
}

/// Calls `inner` if `who` may use this route.
fn admit<B, S>(who: Who, master_only: bool, mut request: Request<B>, mut inner: S) -> State<B, S>
where
    S: Service<Request<B>>,
{
    let refused = match &who {
        Who::Master(_) => None,
        // A blocked or expired key is refused as such, before it is told the route is not
        // for it.
        Who::Key(key) => check_key(key)
            .err()
            .or_else(|| master_only.then(|| master_only_error(request.uri().path()))),
    };
    if let Some(error) = refused {
        return State::Refused { error: Some(error) };
    }
    strip_credentials(request.headers_mut());
    request
        .extensions_mut()
        .insert::<Arc<Caller>>(Arc::clone(who.caller()));
    State::Calling {
        fut: inner.call(request),
    }
}

fn master_only_error(path: &str) -> Error {
    master_only(path)
}

impl<S, B, ResB> Service<Request<B>> for RequireKey<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = RequireKeyFuture<B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        let check = self
            .auth
            .check(request.headers(), CallType::from_path(request.uri().path()));
        let state = match check {
            Check::Known(who) => admit(who, self.master_only, request, inner),
            Check::Refused(error) => State::Refused { error: Some(error) },
            Check::Lookup(cache, digest) => State::Lookup {
                fut: Box::pin(async move { cache.fetch(&digest).await }),
                request: Some(request),
                inner: Some(inner),
            },
        };
        RequireKeyFuture {
            state,
            master_only: self.master_only,
        }
    }
}

impl<B, S, ResB> Future for RequireKeyFuture<B, S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("RequireKeyFuture polled after completion");
                    return Poll::Ready(Ok(error
                        .to_response(CallType::Other)
                        .map(ResponseBody::full)));
                }
                StateProj::Lookup {
                    fut,
                    request,
                    inner,
                } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let request = request
                        .take()
                        .expect("RequireKeyFuture polled after completion");
                    let inner = inner
                        .take()
                        .expect("RequireKeyFuture polled after completion");
                    let next = match looked_up(result) {
                        Ok(who) => admit(who, *this.master_only, request, inner),
                        Err(error) => State::Refused { error: Some(error) },
                    };
                    this.state.set(next);
                }
                StateProj::Calling { fut } => {
                    return Poll::Ready(Ok(ready!(fut.poll(cx))?.map(ResponseBody::new)));
                }
            }
        }
    }
}

impl<B, S> std::fmt::Debug for RequireKeyFuture<B, S>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireKeyFuture")
            .field("master_only", &self.master_only)
            .finish_non_exhaustive()
    }
}
