use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{BoxError, BufferedCall, take_ready};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::ModelGuardrailMergeLayer;
use crate::future::ResponseFuture;
use crate::layer::ModelMap;
use crate::merge::Merge;

/// Merges the requested model's guardrails into the request's guardrail selection. See the
/// [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ModelGuardrailMerge<S> {
    inner: S,
    models: ModelMap,
    body_limit: usize,
}

impl<S> ModelGuardrailMerge<S> {
    pub(crate) fn new(inner: S, models: ModelMap, body_limit: usize) -> Self {
        ModelGuardrailMerge {
            inner,
            models,
            body_limit,
        }
    }

    /// A layer with no models configured.
    pub fn layer() -> ModelGuardrailMergeLayer {
        ModelGuardrailMergeLayer::new()
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

impl<S, B, ResB> Service<Request<B>> for ModelGuardrailMerge<S>
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
        let merge = Merge {
            models: self.models.clone(),
        };
        ResponseFuture::new(BufferedCall::new(request, self.body_limit, inner, merge))
    }
}
