use guardrail_tower_core::{DEFAULT_BODY_LIMIT, Guardrails};
use tower_layer::Layer;

use crate::PreCallGuardrail;

/// Applies [`PreCallGuardrail`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct PreCallGuardrailLayer {
    pub(crate) guardrails: Guardrails,
    pub(crate) body_limit: usize,
    pub(crate) response_headers: bool,
}

impl PreCallGuardrailLayer {
    /// Runs these guardrails (those the gate selects for `pre_call` and `during_call`).
    pub fn new(guardrails: Guardrails) -> Self {
        PreCallGuardrailLayer {
            guardrails,
            body_limit: DEFAULT_BODY_LIMIT,
            response_headers: true,
        }
    }

    /// The body limit used when this layer is the first to read the request (default
    /// [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Whether to add the `x-litellm-applied-guardrails` and `x-guardrails-duration-ms`
    /// response headers (default: yes).
    pub fn response_headers(mut self, enabled: bool) -> Self {
        self.response_headers = enabled;
        self
    }
}

impl<S> Layer<S> for PreCallGuardrailLayer {
    type Service = PreCallGuardrail<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PreCallGuardrail::new(inner, self.clone())
    }
}
