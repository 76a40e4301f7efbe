use guardrail_tower_core::sse::DEFAULT_MAX_EVENT_SIZE;
use guardrail_tower_core::{ConfiguredGuardrail, DEFAULT_BODY_LIMIT, Guardrails, StreamPolicy};
use tower_layer::Layer;

use crate::StreamingGuardrailBody;

/// The default most bytes of a JSON response read to check it: 16 MiB.
pub const DEFAULT_MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// Applies [`StreamingGuardrailBody`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct StreamingGuardrailBodyLayer {
    pub(crate) guardrails: Guardrails,
    pub(crate) policy: StreamPolicy,
    pub(crate) max_event_size: usize,
    pub(crate) max_json_body: usize,
    pub(crate) body_limit: usize,
}

impl StreamingGuardrailBodyLayer {
    /// Runs these guardrails (those the gate selects for `post_call`) on responses.
    ///
    /// Streams are checked with each guardrail's own policy
    /// ([`ConfiguredGuardrail::stream_policy`]), else [`StreamPolicy::Exact`] for guardrails
    /// with a span matcher (the content filter), else this layer's policy
    /// ([`StreamPolicy::DEFAULT_WINDOW`] unless set with [`policy`](Self::policy)).
    pub fn new(guardrails: Guardrails) -> Self {
        StreamingGuardrailBodyLayer {
            guardrails,
            policy: StreamPolicy::DEFAULT_WINDOW,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            max_json_body: DEFAULT_MAX_JSON_BODY,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The stream policy for guardrails that set none and have no span matcher.
    pub fn policy(mut self, policy: StreamPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The largest single SSE event accepted; a larger one ends the stream with an in-band
    /// error (default 1 MiB).
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// The largest JSON response read to check it; a larger one is refused with a 502
    /// (default [`DEFAULT_MAX_JSON_BODY`]).
    pub fn max_json_body(mut self, bytes: usize) -> Self {
        self.max_json_body = bytes;
        self
    }

    /// The request body limit when this layer is the first to read the request.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The policy one guardrail gets on a stream.
    pub fn effective_policy(&self, guardrail: &ConfiguredGuardrail) -> StreamPolicy {
        let has_matcher = guardrail.span_matcher().is_some();
        let fallback = match self.policy {
            StreamPolicy::Exact if !has_matcher => StreamPolicy::DEFAULT_WINDOW,
            policy => policy,
        };
        match guardrail.configured_stream_policy() {
            Some(StreamPolicy::Exact) if !has_matcher => {
                tracing::warn!(
                    guardrail = guardrail.name(),
                    "the exact stream policy needs a span matcher; using the layer's policy"
                );
                fallback
            }
            Some(policy) => policy,
            None if has_matcher => StreamPolicy::Exact,
            None => fallback,
        }
    }
}

impl<S> Layer<S> for StreamingGuardrailBodyLayer {
    type Service = StreamingGuardrailBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamingGuardrailBody::new(inner, self.clone())
    }
}
