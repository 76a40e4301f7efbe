use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::{BoxError, BufferedCall, Guardrails, take_ready};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::StreamingGuardrailBodyLayer;
use crate::capture::Capture;
use crate::future::ResponseFuture;

/// Runs `post_call` guardrails on the inner service's responses: whole JSON bodies and SSE
/// streams. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct StreamingGuardrailBody<S> {
    inner: S,
    config: Arc<StreamingGuardrailBodyLayer>,
}

impl<S> StreamingGuardrailBody<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: StreamingGuardrailBodyLayer) -> Self {
        StreamingGuardrailBody {
            inner,
            config: Arc::new(config),
        }
    }

    /// A layer running these guardrails.
    pub fn layer(guardrails: Guardrails) -> StreamingGuardrailBodyLayer {
        StreamingGuardrailBodyLayer::new(guardrails)
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

impl<S, B, ResB> Service<Request<B>> for StreamingGuardrailBody<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<crate::GuardedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        let capture = Capture {
            guardrails: self.config.guardrails.clone(),
        };
        ResponseFuture::new(
            BufferedCall::new(request, self.config.body_limit, inner, capture),
            self.config.clone(),
        )
    }
}
