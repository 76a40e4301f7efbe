//! The failure hook.

use guardrail_tower_core::{CallType, Error, ErrorClass};

/// Called once for each error the layer answers with (or passes through), with its class.
///
/// Implemented for closures `FnMut(ErrorClass, &Error, CallType)`, for `()` (do nothing), and by
/// [`DefaultOnFailure`] (log through `tracing`).
pub trait OnFailure {
    /// Reports one failure.
    fn on_failure(&mut self, class: ErrorClass, error: &Error, call_type: CallType);
}

impl OnFailure for () {
    #[inline]
    fn on_failure(&mut self, _: ErrorClass, _: &Error, _: CallType) {}
}

impl<F> OnFailure for F
where
    F: FnMut(ErrorClass, &Error, CallType),
{
    fn on_failure(&mut self, class: ErrorClass, error: &Error, call_type: CallType) {
        self(class, error, call_type)
    }
}

/// Logs each failure through `tracing`, at a level that fits its class: a policy block at
/// `info` (a decision, not an outage), a client error at `debug`, an upstream failure at `warn`,
/// a guardrail failure and an internal error at `error`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOnFailure {
    _priv: (),
}

impl DefaultOnFailure {
    /// The default hook.
    pub fn new() -> Self {
        DefaultOnFailure::default()
    }
}

impl OnFailure for DefaultOnFailure {
    fn on_failure(&mut self, class: ErrorClass, error: &Error, call_type: CallType) {
        let status = error.status().as_u16();
        let message = error.message();
        let code = error.code();
        let guardrail = error.guardrail();
        match class {
            ErrorClass::PolicyBlock => tracing::info!(
                class = class.as_str(), status, %call_type, ?code, ?guardrail, message,
                "request blocked by policy"
            ),
            ErrorClass::ClientError => tracing::debug!(
                class = class.as_str(), status, %call_type, ?code, message,
                "client error"
            ),
            ErrorClass::UpstreamFailure => tracing::warn!(
                class = class.as_str(), status, %call_type, ?code, message,
                "upstream failure"
            ),
            _ => tracing::error!(
                class = class.as_str(), status, %call_type, ?code, ?guardrail, message,
                "request failed"
            ),
        }
    }
}
