use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{BoxError, BufferedCall, Guardrails, take_ready};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::PreCallGuardrailLayer;
use crate::future::{Checks, ResponseFuture};

/// Runs `pre_call` guardrails before the inner service is called and `during_call` guardrails
/// concurrently with it. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct PreCallGuardrail<S> {
    inner: S,
    config: PreCallGuardrailLayer,
}

impl<S> PreCallGuardrail<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: PreCallGuardrailLayer) -> Self {
        PreCallGuardrail { inner, config }
    }

    /// A layer running these guardrails.
    pub fn layer(guardrails: Guardrails) -> PreCallGuardrailLayer {
        PreCallGuardrailLayer::new(guardrails)
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

impl<S, B, ResB> Service<Request<B>> for PreCallGuardrail<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        let checks = Checks {
            guardrails: self.config.guardrails.clone(),
        };
        ResponseFuture::new(
            BufferedCall::new(request, self.config.body_limit, inner, checks),
            self.config.response_headers,
        )
    }
}
