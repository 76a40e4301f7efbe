//! The future most layers are built on: buffer and parse the request once, let the layer look at
//! (or adjust) it, then call the inner service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::guardrail::BoxError;
use crate::{BufferRequest, CallType, Error};

/// A layer's step between buffering the request and calling the inner service.
///
/// A named type per layer (not a closure), so the layer's response future stays nameable.
pub trait Prepare {
    /// What the layer keeps for the response (e.g. what it needs to check the response).
    type Output;

    /// Looks at or adjusts the buffered request; the parsed request is in its extensions.
    fn prepare(self, request: &mut Request<Full<Bytes>>) -> Self::Output;
}

/// How a [`BufferedCall`] ended.
#[derive(Debug)]
pub enum CallOutcome<R, T> {
    /// The inner service answered; `T` is what [`Prepare::prepare`] returned.
    Called(R, T),
    /// The request was refused before the inner service was called (body too large, malformed
    /// JSON): answer with this error in the endpoint's shape.
    Rejected(Error, CallType),
}

pin_project! {
    /// Buffers and parses the request once (reusing an earlier layer's work), runs a
    /// [`Prepare`] step, then calls the inner service.
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
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S, P>
    where
        S: Service<Request<Full<Bytes>>>,
        P: Prepare,
    {
        Buffering {
            #[pin]
            buffer: BufferRequest<B>,
            inner: Option<S>,
            prepare: Option<P>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            output: Option<P::Output>,
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
        let call_type = CallType::from_path(request.uri().path());
        BufferedCall {
            call_type,
            state: State::Buffering {
                buffer: BufferRequest::new(request, body_limit),
                inner: Some(inner),
                prepare: Some(prepare),
            },
        }
    }
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
                StateProj::Buffering {
                    buffer,
                    inner,
                    prepare,
                } => {
                    let result = ready!(buffer.poll(cx));
                    let mut request = match result {
                        Ok(request) => request,
                        Err(err) => {
                            return Poll::Ready(Ok(CallOutcome::Rejected(err, *this.call_type)));
                        }
                    };
                    let output = prepare
                        .take()
                        .expect("BufferedCall polled after completion")
                        .prepare(&mut request);
                    let mut inner = inner.take().expect("BufferedCall polled after completion");
                    let fut = inner.call(request);
                    this.state.set(State::Calling {
                        fut,
                        output: Some(output),
                    });
                }
                StateProj::Calling { fut, output } => {
                    let response = ready!(fut.poll(cx))?;
                    let output = output.take().expect("BufferedCall polled after completion");
                    return Poll::Ready(Ok(CallOutcome::Called(response, output)));
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
        f.debug_struct("BufferedCall").finish_non_exhaustive()
    }
}

/// Swaps a clone of `service` in and returns the instance that was polled ready, to move into a
/// future (tower-http's `async_require_authorization` pattern).
pub fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}
