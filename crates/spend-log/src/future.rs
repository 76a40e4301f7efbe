use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{
    BodyType, BoxError, BufferRequest, CallType, Caller, Error, ParsedRequest, X_LITELLM_CALL_ID,
    X_REQUEST_ID,
};
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{Observer, SpendLogBody};
use crate::recorder::{ApiBase, Ending, Recorder};

pin_project! {
    /// The response future of [`SpendLog`](crate::SpendLog). Dropping it before the response
    /// (the client went away) still completes the request's record, as `client_disconnected`.
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        state: State<B, S>,
        recorder: Option<Recorder>,
        call_type: CallType,
    }

    impl<B, S> PinnedDrop for ResponseFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        fn drop(this: Pin<&mut Self>) {
            if let Some(recorder) = this.project().recorder.take() {
                recorder.finish(Ending::Disconnected);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        Buffering {
            #[pin]
            buffer: BufferRequest<B>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
    }
}

impl<B, S> ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(crate) fn new(
        buffer: BufferRequest<B>,
        inner: S,
        recorder: Recorder,
        call_type: CallType,
    ) -> Self {
        ResponseFuture {
            state: State::Buffering {
                buffer,
                inner: Some(inner),
            },
            recorder: Some(recorder),
            call_type,
        }
    }
}

fn observer_for<B>(response: &Response<B>, call_type: CallType) -> Option<Observer> {
    match BodyType::of(response.headers().get(CONTENT_TYPE)) {
        BodyType::EventStream => Some(Observer::sse(call_type)),
        BodyType::Json => Some(Observer::json(call_type)),
        _ => None,
    }
}

impl<B, S, ResB> Future for ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: fmt::Display,
    B: Body,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<SpendLogBody<ResponseBody<ResB>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering { buffer, inner } => match ready!(buffer.poll(cx)) {
                    Ok(request) => {
                        if let Some(parsed) = request.extensions().get::<ParsedRequest>() {
                            if let Some(recorder) = this.recorder.as_mut() {
                                recorder.set_request(parsed);
                            }
                        }
                        let mut inner = inner.take().expect("polled after completion");
                        let fut = inner.call(request);
                        this.state.set(State::Calling { fut });
                    }
                    Err(err) => {
                        let response = err.to_response(*this.call_type).map(ResponseBody::full);
                        return Poll::Ready(Ok(wrap(response, this.recorder, *this.call_type)));
                    }
                },
                StateProj::Calling { fut } => {
                    return Poll::Ready(match ready!(fut.poll(cx)) {
                        Ok(response) => Ok(wrap(
                            response.map(ResponseBody::new),
                            this.recorder,
                            *this.call_type,
                        )),
                        Err(err) => {
                            if let Some(recorder) = this.recorder.take() {
                                let error =
                                    Error::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
                                recorder.finish(Ending::ServiceError(error));
                            }
                            Err(err)
                        }
                    });
                }
            }
        }
    }
}

/// Hands the recorder to the response body, which completes the record when it ends.
fn wrap<B: Body<Data = Bytes>>(
    response: Response<B>,
    recorder: &mut Option<Recorder>,
    call_type: CallType,
) -> Response<SpendLogBody<B>> {
    let mut recorder = recorder.take().expect("polled after completion");
    recorder.status = Some(response.status().as_u16());
    recorder.response_error = response.extensions().get::<Error>().cloned();
    if let Some(caller) = response.extensions().get::<Arc<Caller>>() {
        recorder.learn_caller(caller);
    }
    recorder.api_base = response
        .extensions()
        .get::<ApiBase>()
        .map(|b| b.0.clone())
        .or(recorder.api_base.take());
    let observer = if recorder.report.is_observed() {
        None
    } else {
        observer_for(&response, call_type)
    };
    let (mut parts, body) = response.into_parts();
    // `x-request-id` echoes the client's id, else repeats the gateway's: one value, shared.
    let call_id = recorder.request_id_header();
    let request_id = recorder
        .client_request_id_header()
        .unwrap_or_else(|| call_id.clone());
    parts.headers.insert(X_LITELLM_CALL_ID, call_id);
    parts.headers.insert(X_REQUEST_ID, request_id);
    Response::from_parts(parts, SpendLogBody::new(body, recorder, observer))
}
