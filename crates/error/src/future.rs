use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{BodyType, BoxError, CallType, Error, ResponseReport};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Response, response};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::OnFailure;
use crate::classify::upstream_error;

pin_project! {
    /// The response future of [`ErrorNormalize`](crate::ErrorNormalize).
    pub struct ResponseFuture<F, B, H> {
        #[pin]
        state: State<F, B>,
        call_type: CallType,
        on_failure: H,
        max_error_body: usize,
        report: Option<ResponseReport>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] fut: F },
        /// Reading an upstream error body to see whether it has the endpoint's shape.
        Reading {
            parts: Option<response::Parts>,
            #[pin]
            body: B,
            buf: BytesMut,
        },
        Failed { error: Option<Error> },
    }
}

impl<F, B, H> ResponseFuture<F, B, H> {
    pub(crate) fn new(fut: F, call_type: CallType, on_failure: H, max_error_body: usize) -> Self {
        ResponseFuture {
            state: State::Inner { fut },
            call_type,
            on_failure,
            max_error_body,
            report: None,
        }
    }

    /// Where to report a stream that the upstream cut after its head (for the spend log).
    pub(crate) fn with_report(mut self, report: Option<ResponseReport>) -> Self {
        self.report = report;
        self
    }

    pub(crate) fn error(error: Error, call_type: CallType, on_failure: H) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            call_type,
            on_failure,
            max_error_body: 0,
            report: None,
        }
    }
}

impl<F, B, H, E> Future for ResponseFuture<F, B, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    H: OnFailure,
{
    type Output = Result<Response<ResponseBody<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => match ready!(fut.poll(cx)) {
                    Ok(response) => {
                        if let Some(err) = response.extensions().get::<Error>() {
                            // Already normalized by an inner layer: keep it exactly.
                            this.on_failure
                                .on_failure(err.class(), err, *this.call_type);
                            return Poll::Ready(Ok(response.map(ResponseBody::new)));
                        }
                        let status = response.status();
                        if !status.is_client_error() && !status.is_server_error() {
                            // A stream the upstream cuts after the head ends with the
                            // endpoint's in-band error, not a cut body.
                            let event_stream = BodyType::of(response.headers().get(CONTENT_TYPE))
                                == BodyType::EventStream;
                            return Poll::Ready(Ok(if event_stream {
                                let call_type = *this.call_type;
                                let report = this.report.take();
                                response.map(|b| ResponseBody::stream(b, call_type, report))
                            } else {
                                response.map(ResponseBody::new)
                            }));
                        }
                        let (parts, body) = response.into_parts();
                        this.state.set(State::Reading {
                            parts: Some(parts),
                            body,
                            buf: BytesMut::new(),
                        });
                    }
                    Err(err) => {
                        let err: BoxError = err.into();
                        let err = crate::classify_error(&*err);
                        this.state.set(State::Failed { error: Some(err) });
                    }
                },
                StateProj::Reading {
                    parts,
                    mut body,
                    buf,
                } => {
                    let mut truncated = false;
                    loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    if buf.len() + data.len() > *this.max_error_body {
                                        truncated = true;
                                        let room = this.max_error_body.saturating_sub(buf.len());
                                        buf.put_slice(&data[..room]);
                                        break;
                                    }
                                    buf.put_slice(&data);
                                }
                            }
                            Some(Err(_)) => {
                                truncated = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    let parts = parts
                        .take()
                        .expect("ResponseFuture polled after completion");
                    let bytes = buf.split().freeze();
                    let response = normalize_upstream(
                        parts,
                        bytes,
                        truncated,
                        *this.call_type,
                        this.on_failure,
                    );
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    let err = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    this.on_failure
                        .on_failure(err.class(), &err, *this.call_type);
                    return Poll::Ready(Ok(err
                        .to_response(*this.call_type)
                        .map(ResponseBody::full)));
                }
            }
        }
    }
}

/// An upstream error response: passed through byte for byte when its body already has the
/// endpoint's shape, else rewritten into it with the upstream status and headers kept.
fn normalize_upstream<B, H: OnFailure>(
    mut parts: response::Parts,
    bytes: Bytes,
    truncated: bool,
    call_type: CallType,
    on_failure: &mut H,
) -> Response<ResponseBody<B>> {
    let encoded = parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let verdict = if encoded {
        // A compressed body cannot be read here; its status still tells what happened.
        Err(
            upstream_error(call_type, parts.status, &parts.headers, b"", false)
                .unwrap_or_else(|e| e),
        )
    } else {
        upstream_error(call_type, parts.status, &parts.headers, &bytes, truncated)
    };
    match verdict {
        Ok(err) => {
            on_failure.on_failure(err.class(), &err, call_type);
            parts.extensions.insert(err);
            Response::from_parts(parts, ResponseBody::full(bytes))
        }
        Err(err) => {
            on_failure.on_failure(err.class(), &err, call_type);
            let mut response = err.to_response(call_type);
            for name in [
                CONTENT_TYPE,
                CONTENT_LENGTH,
                CONTENT_ENCODING,
                TRANSFER_ENCODING,
            ] {
                parts.headers.remove(name);
            }
            let headers = std::mem::take(response.headers_mut());
            parts.headers.extend(headers);
            let extensions = std::mem::take(response.extensions_mut());
            parts.extensions.extend(extensions);
            let (_, body) = response.into_parts();
            Response::from_parts(parts, ResponseBody::full(body))
        }
    }
}
