use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::BoxError;
use guardrail_tower_core::ResponseReport;
use guardrail_tower_core::body::ResponseBody;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::{ErrorNormalizeLayer, OnFailure};

/// Turns every error of the inner service into a well-formed response in the shape of the
/// request's endpoint. Its own error type is [`Infallible`]. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ErrorNormalize<S, F> {
    inner: S,
    on_failure: F,
    max_error_body: usize,
    ready_error: Option<guardrail_tower_core::Error>,
}

impl<S, F> ErrorNormalize<S, F> {
    /// Wraps `inner`.
    pub fn new(inner: S, on_failure: F, max_error_body: usize) -> Self {
        ErrorNormalize {
            inner,
            on_failure,
            max_error_body,
            ready_error: None,
        }
    }

    /// A layer with the default failure hook.
    pub fn layer() -> ErrorNormalizeLayer {
        ErrorNormalizeLayer::new()
    }

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

impl<S, F, ReqB, ResB> Service<Request<ReqB>> for ErrorNormalize<S, F>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    F: OnFailure + Clone,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, ResB, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            // An error cannot be answered without a request: keep it for the next call.
            Poll::Ready(Err(err)) => {
                let err: BoxError = err.into();
                self.ready_error = Some(crate::classify_error(&*err));
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let call_type = guardrail_tower_core::call_type_of(&request);
        let on_failure = self.on_failure.clone();
        if let Some(err) = self.ready_error.take() {
            return ResponseFuture::error(err, call_type, on_failure);
        }
        let report = ResponseReport::of(&request).cloned();
        ResponseFuture::new(
            self.inner.call(request),
            call_type,
            on_failure,
            self.max_error_body,
        )
        .with_report(report)
    }
}
