//! What a response turned out to be, and who asked for it, shared between layers by handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::{Caller, Error, Usage};

/// A per-request report of what the response body carried, written by the layer that reads the
/// body (the streaming guardrail layer decodes every event anyway, the error layer frames every
/// stream; see [`StreamWatch`](crate::StreamWatch)) and read by the spend-log layer when the
/// request ends, so the same SSE bytes are not walked twice; and of who called, written by an
/// authentication layer inside the spend log ([`set_caller`](Self::set_caller)), so the record
/// names the caller however the request ends (the client gone before the response too).
///
/// The spend-log layer makes one for the request ([`get_or_insert`](Self::get_or_insert)); a
/// layer that finds one ([`of`](Self::of)) fills it and marks the response as observed.
#[derive(Debug, Clone, Default)]
pub struct ResponseReport {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    report: Mutex<ReportInner>,
    /// Who called, once an authentication layer said so (the first caller set stays).
    caller: OnceLock<Arc<Caller>>,
    /// Characters of response text released to the client (counted on every event: an atomic,
    /// not the lock).
    delivered_chars: AtomicU64,
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

    /// The report of `request`, if a layer made one.
    pub fn of<B>(request: &http::Request<B>) -> Option<&ResponseReport> {
        crate::scope::Shared::of(request.extensions())?
            .report
            .as_ref()
    }

    /// The report of `request`: the one an outer layer made, else a new one, kept with the
    /// request so that layers inside fill it.
    pub fn get_or_insert<B>(request: &mut http::Request<B>) -> ResponseReport {
        crate::scope::Shared::of_mut(request.extensions_mut())
            .report
            .get_or_insert_default()
            .clone()
    }

    /// Records who called, as an authentication layer established it; a report that already
    /// names a caller keeps it.
    pub fn set_caller(&self, caller: &Arc<Caller>) {
        let _ = self.inner.caller.set(Arc::clone(caller));
    }

    /// Who called, once an authentication layer said so.
    pub fn caller(&self) -> Option<&Arc<Caller>> {
        self.inner.caller.get()
    }

    fn lock(&self) -> MutexGuard<'_, ReportInner> {
        self.inner
            .report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    /// Counts `text` as response text released to the client (the text deltas of a stream, as
    /// sent). When a stream ends early (a block, a failure, a client that left) without the
    /// upstream's usage, the spend log estimates the completion tokens from this.
    pub fn add_delivered_text(&self, text: &str) {
        if !text.is_empty() {
            let chars = text.chars().count() as u64;
            self.inner
                .delivered_chars
                .fetch_add(chars, Ordering::Relaxed);
        }
    }

    /// Characters of response text released to the client so far (see
    /// [`add_delivered_text`](ResponseReport::add_delivered_text)).
    pub fn delivered_chars(&self) -> u64 {
        self.inner.delivered_chars.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_text_is_counted_in_characters_across_clones() {
        let report = ResponseReport::new();
        let handle = report.clone();
        assert_eq!(report.delivered_chars(), 0);
        handle.add_delivered_text("héllo ");
        handle.add_delivered_text("");
        report.add_delivered_text("世界");
        assert_eq!(report.delivered_chars(), 8);
        assert_eq!(handle.delivered_chars(), 8);
    }
}
