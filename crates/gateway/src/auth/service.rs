use std::task::{Context, Poll};

use bytes::Bytes;
use guardrail_tower_core::{BoxError, CallType, take_ready};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::future::{KeyAuthBody, KeyAuthFuture};
use super::{Authenticator, KeyAuthLayer};

/// Authenticates each request of an LLM route before anything else reads it. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct KeyAuth<S> {
    inner: S,
    auth: Authenticator,
    body_limit: usize,
}

impl<S> KeyAuth<S> {
    pub(crate) fn new(inner: S, auth: Authenticator, body_limit: usize) -> Self {
        KeyAuth {
            inner,
            auth,
            body_limit,
        }
    }

    /// A layer accepting the keys `auth` knows.
    pub fn layer(auth: Authenticator) -> KeyAuthLayer {
        KeyAuthLayer::new(auth)
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

impl<S, B, ResB> Service<Request<B>> for KeyAuth<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = Response<KeyAuthBody<ResB>>;
    type Error = S::Error;
    type Future = KeyAuthFuture<B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call_type = CallType::from_path(request.uri().path());
        let check = self.auth.check(request.headers(), call_type);
        let inner = take_ready(&mut self.inner);
        KeyAuthFuture::new(
            check,
            request,
            inner,
            self.auth.clone(),
            self.body_limit,
            call_type,
        )
    }
}
