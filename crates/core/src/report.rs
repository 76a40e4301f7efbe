//! What a response turned out to be, shared between layers by handle.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Error, Usage};

/// A per-request report of what the response body carried, written by the layer that reads the
/// body (the streaming guardrail layer decodes every event anyway) and read by the spend-log
/// layer when the request ends, so the same SSE bytes are not walked twice.
///
/// The spend-log layer inserts one into the request extensions; a layer that finds one there
/// fills it and marks the response as observed.
#[derive(Debug, Clone, Default)]
pub struct ResponseReport {
    inner: Arc<Mutex<ReportInner>>,
}

#[derive(Debug, Default)]
struct ReportInner {
    observed: bool,
    usage: Option<Usage>,
    in_band_error: Option<Error>,
}

impl ResponseReport {
    /// An empty report.
    pub fn new() -> Self {
        ResponseReport::default()
    }

    fn lock(&self) -> MutexGuard<'_, ReportInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the response body as read by an inner layer, which reports its usage and in-band
    /// errors here.
    pub fn set_observed(&self) {
        self.lock().observed = true;
    }

    /// Whether an inner layer reads the response body and reports here.
    pub fn is_observed(&self) -> bool {
        self.lock().observed
    }

    /// Records the usage.
    pub fn set_usage(&self, usage: Usage) {
        self.lock().usage = Some(usage);
    }

    /// The usage, if reported.
    pub fn usage(&self) -> Option<Usage> {
        self.lock().usage
    }

    /// Records an error sent in-band, after the response head (a guardrail block mid-stream, an
    /// upstream error event).
    pub fn set_in_band_error(&self, error: Error) {
        let mut inner = self.lock();
        if inner.in_band_error.is_none() {
            inner.in_band_error = Some(error);
        }
    }

    /// The first in-band error, if any.
    pub fn in_band_error(&self) -> Option<Error> {
        self.lock().in_band_error.clone()
    }
}
