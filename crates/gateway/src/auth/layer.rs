use guardrail_tower_core::DEFAULT_BODY_LIMIT;
use tower_layer::Layer;

use super::{Authenticator, KeyAuth};

/// Applies [`KeyAuth`] to a service: the LLM routes' authentication. See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct KeyAuthLayer {
    auth: Authenticator,
    body_limit: usize,
}

impl KeyAuthLayer {
    /// A layer that accepts the keys `auth` knows.
    pub fn new(auth: Authenticator) -> Self {
        KeyAuthLayer {
            auth,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The body limit used when this layer is the first to read the request (default
    /// [`DEFAULT_BODY_LIMIT`]). The body is read only once the key is accepted.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S> Layer<S> for KeyAuthLayer {
    type Service = KeyAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyAuth::new(inner, self.auth.clone(), self.body_limit)
    }
}
