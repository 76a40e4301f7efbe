use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{
    BoxError, BufferRequest, Caller, ClientRequestId, GuardrailLog, RequestId, ResponseReport,
    take_ready,
};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::body::SpendLogBody;
use crate::future::ResponseFuture;
use crate::recorder::Recorder;
use crate::{SpendLogHandle, SpendLogLayer};

/// Writes one spend-log record per request. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct SpendLog<S> {
    inner: S,
    config: SpendLogLayer,
}

impl<S> SpendLog<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: SpendLogLayer) -> Self {
        SpendLog { inner, config }
    }

    /// A layer writing through `writer`.
    pub fn layer(writer: SpendLogHandle) -> SpendLogLayer {
        SpendLogLayer::new(writer)
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

impl<S, B, ResB> Service<Request<B>> for SpendLog<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    S::Error: fmt::Display,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<SpendLogBody<ResponseBody<ResB>>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let request_id = RequestId::get_or_insert(&mut request);
        let client_request_id = ClientRequestId::get_or_insert(&mut request);
        let call_type = guardrail_tower_core::call_type_of(&request);
        let log = GuardrailLog::get_or_insert(&mut request);
        let report = ResponseReport::get_or_insert(&mut request);
        let caller = request.extensions().get::<Arc<Caller>>().cloned();
        let recorder = Recorder::new(
            self.config.writer.clone(),
            self.config.settings.clone(),
            request_id,
            client_request_id,
            call_type,
            request.headers(),
            caller,
            log,
            report,
        );
        let inner = take_ready(&mut self.inner);
        let buffer = BufferRequest::new(request, self.config.body_limit);
        ResponseFuture::new(buffer, inner, recorder, call_type)
    }
}
