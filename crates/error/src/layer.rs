use tower_layer::Layer;

use crate::{DefaultOnFailure, ErrorNormalize};

/// The default most bytes of an upstream error body read to normalize it: 64 KiB.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

/// Applies [`ErrorNormalize`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ErrorNormalizeLayer<F = DefaultOnFailure> {
    on_failure: F,
    max_error_body: usize,
}

impl ErrorNormalizeLayer {
    /// A layer that logs failures with [`DefaultOnFailure`].
    pub fn new() -> Self {
        ErrorNormalizeLayer {
            on_failure: DefaultOnFailure::new(),
            max_error_body: DEFAULT_MAX_ERROR_BODY,
        }
    }
}

impl Default for ErrorNormalizeLayer {
    fn default() -> Self {
        ErrorNormalizeLayer::new()
    }
}

impl<F> ErrorNormalizeLayer<F> {
    /// Replaces the failure hook (a closure `FnMut(ErrorClass, &Error, CallType)`, `()`, or an
    /// [`OnFailure`](crate::OnFailure) implementation).
    pub fn on_failure<G>(self, on_failure: G) -> ErrorNormalizeLayer<G> {
        ErrorNormalizeLayer {
            on_failure,
            max_error_body: self.max_error_body,
        }
    }

    /// The most bytes of an upstream error body read to decide whether it must be rewritten.
    /// A larger body is rewritten with a generic message and the rest is discarded.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.max_error_body = bytes;
        self
    }
}

impl<S, F: Clone> Layer<S> for ErrorNormalizeLayer<F> {
    type Service = ErrorNormalize<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorNormalize::new(inner, self.on_failure.clone(), self.max_error_body)
    }
}
