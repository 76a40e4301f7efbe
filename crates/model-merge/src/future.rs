use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use guardrail_tower_core::body::ResponseBody;
use guardrail_tower_core::{BoxError, BufferedCall, CallOutcome};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::merge::Merge;

pin_project! {
    /// The response future of [`ModelGuardrailMerge`](crate::ModelGuardrailMerge).
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<Full<Bytes>>>,
    {
        #[pin]
        call: BufferedCall<B, S, Merge>,
    }
}

impl<B, S> ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>>,
{
    pub(crate) fn new(call: BufferedCall<B, S, Merge>) -> Self {
        ResponseFuture { call }
    }
}

impl<B, S, ResB> Future for ResponseFuture<B, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().call.poll(cx))? {
            CallOutcome::Called(response, ()) => response.map(ResponseBody::new),
            CallOutcome::Refused(err, call_type, _) => {
                err.to_response(call_type).map(ResponseBody::full)
            }
        }))
    }
}
