use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::{
    BoxError, BufferedCall, CallType, Error, GuardrailLog, GuardrailMode, GuardrailSelection,
    Guardrails, Layer, ParsedRequest, Prepare, Prepared, RequestMeta, ResponseReport, enter_layer,
    take_ready,
};
use http::HeaderValue;
use http::header::ACCEPT_ENCODING;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use crate::StreamingGuardrailBodyLayer;
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

/// What the layer keeps from the request to check the response.
#[derive(Debug)]
pub(crate) struct StreamContext {
    pub(crate) call_type: CallType,
    pub(crate) selection: GuardrailSelection,
    pub(crate) meta: Arc<RequestMeta>,
    pub(crate) log: GuardrailLog,
    pub(crate) report: Option<ResponseReport>,
}

/// Captures, once the request is parsed, what checking the response needs; `None` when the
/// gate selects no post_call guardrail (the response then passes through untouched).
#[derive(Debug)]
pub(crate) struct Capture {
    guardrails: Guardrails,
}

impl Prepare for Capture {
    type Output = Option<StreamContext>;

    fn prepare(
        self,
        request: &mut Request<Full<Bytes>>,
    ) -> Result<Prepared<Option<StreamContext>>, Error> {
        enter_layer(request, Layer::Streaming)?;
        Ok(Prepared::new(self.capture(request)?))
    }
}

impl Capture {
    fn capture(self, request: &mut Request<Full<Bytes>>) -> Result<Option<StreamContext>, Error> {
        let Some(parsed) = request.extensions().get::<ParsedRequest>() else {
            return Ok(None);
        };
        if !self
            .guardrails
            .any_selected(GuardrailMode::PostCall, parsed.selection())
        {
            return Ok(None);
        }
        if !parsed.call_type().has_text_view() {
            // A response no text view can read: refuse before the upstream is called.
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                format!(
                    "post-call guardrails apply to this request, but responses of {} are not a \
                     format they can read; refused (serve this route without guardrails to pass \
                     it through)",
                    request.uri().path()
                ),
            )
            .with_code("unsupported_endpoint"));
        }
        let Some(meta) = RequestMeta::shared_from_request(request) else {
            return Ok(None);
        };
        let context = StreamContext {
            call_type: parsed.call_type(),
            selection: parsed.selection().clone(),
            meta,
            log: GuardrailLog::new(),
            report: request.extensions().get::<ResponseReport>().cloned(),
        };
        let log = match request.extensions().get::<GuardrailLog>() {
            Some(log) => log.clone(),
            None => {
                request.extensions_mut().insert(context.log.clone());
                context.log.clone()
            }
        };
        // The guardrails read the response: ask for it uncompressed.
        request
            .headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        Ok(Some(StreamContext { log, ..context }))
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
