//! The append-only guardrail log, shared by handle between layers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::GuardrailMode;

/// The outcome of one guardrail run, with LiteLLM's `guardrail_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailStatus {
    /// The guardrail ran and allowed.
    Success,
    /// The guardrail blocked or rewrote.
    GuardrailIntervened,
    /// The guardrail errored or was unreachable (including fail-open pass-throughs).
    GuardrailFailedToRespond,
    /// The guardrail was selected but did not run (an earlier guardrail already blocked).
    NotRun,
}

impl GuardrailStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailStatus::Success => "success",
            GuardrailStatus::GuardrailIntervened => "guardrail_intervened",
            GuardrailStatus::GuardrailFailedToRespond => "guardrail_failed_to_respond",
            GuardrailStatus::NotRun => "not_run",
        }
    }
}

/// What happened to the text: `allow`, `block` or `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailAction {
    /// Passed unchanged.
    Allow,
    /// Blocked (including a fail-closed failure).
    Block,
    /// Rewritten.
    Mask,
}

impl GuardrailAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailAction::Allow => "allow",
            GuardrailAction::Block => "block",
            GuardrailAction::Mask => "mask",
        }
    }
}

/// One guardrail run, with the field names LiteLLM uses in `guardrail_information`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardrailLogEntry {
    /// The configured name.
    pub guardrail_name: String,
    /// The implementation (e.g. `litellm_content_filter`).
    pub guardrail_provider: String,
    /// When it ran.
    pub guardrail_mode: GuardrailMode,
    /// The outcome.
    pub guardrail_status: GuardrailStatus,
    /// What happened to the text.
    pub guardrail_action: GuardrailAction,
    /// What the guardrail said.
    pub guardrail_response: Value,
    /// Start, epoch seconds.
    pub start_time: f64,
    /// End, epoch seconds.
    pub end_time: f64,
    /// Seconds.
    pub duration: f64,
    /// Entities masked, per entity type (`{"EMAIL": 2}`), where masking applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_entity_count: Option<BTreeMap<String, u64>>,
}

/// The per-request guardrail log: append-only, shared by an `Arc`, so entries written by an
/// inner layer reach the spend-log layer even when the inner layer then returns an error.
///
/// It also knows the checks that run detached from the request (monitor guardrails, see
/// [`ConfiguredGuardrail::monitor`](crate::ConfiguredGuardrail::monitor)): they append their
/// entries when they finish, possibly after the response; [`settled`](GuardrailLog::settled)
/// waits for them.
#[derive(Clone, Default)]
pub struct GuardrailLog {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<Vec<GuardrailLogEntry>>,
    /// The guardrails of the detached runs still in flight, one list per run.
    detached: Mutex<Vec<(u64, Vec<Arc<str>>)>>,
    next_run: std::sync::atomic::AtomicU64,
    settled: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The locks are never held across user code, so poisoning cannot leave them half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GuardrailLog {
    /// An empty log.
    pub fn new() -> Self {
        GuardrailLog::default()
    }

    /// The log of `request`, if a layer made one.
    pub fn of<B>(request: &http::Request<B>) -> Option<&GuardrailLog> {
        crate::scope::Shared::of(request.extensions())?.log.as_ref()
    }

    /// The log of `request`: the one an outer layer made, else a new one, kept with the
    /// request so that layers inside write to it too.
    pub fn get_or_insert<B>(request: &mut http::Request<B>) -> GuardrailLog {
        crate::scope::Shared::of_mut(request.extensions_mut())
            .log
            .get_or_insert_default()
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<GuardrailLogEntry>> {
        lock(&self.inner.entries)
    }

    /// Appends an entry.
    pub fn push(&self, entry: GuardrailLogEntry) {
        let mut entries = self.lock();
        if entries.capacity() == 0 {
            // A request usually logs a check or two (a pre-call and a post-call one): room for
            // two rather than the four a first push reserves. An entry is about 180 bytes, kept
            // for as long as the request, which for a stream is minutes.
            entries.reserve_exact(2);
        }
        entries.push(entry);
    }

    /// A copy of the entries so far.
    pub fn entries(&self) -> Vec<GuardrailLogEntry> {
        self.lock().clone()
    }

    /// Hands the entries so far to `f` without copying them, under the log's lock: `f` must not
    /// use this log (it would wait for itself).
    pub fn with_entries<R>(&self, f: impl FnOnce(&[GuardrailLogEntry]) -> R) -> R {
        f(&self.lock())
    }

    /// The number of entries so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether any entry blocked.
    pub fn any_blocked(&self) -> bool {
        self.lock()
            .iter()
            .any(|e| e.guardrail_action == GuardrailAction::Block)
    }

    /// Whether two handles share one log.
    pub fn ptr_eq(&self, other: &GuardrailLog) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// LiteLLM's `applied_guardrails`: the names of the guardrails that ran (every entry but
    /// `not_run` ones), each once, in the order they first ran.
    pub fn applied_guardrails(&self) -> Vec<String> {
        applied_guardrails(&self.lock())
    }

    /// [`applied_guardrails`](GuardrailLog::applied_guardrails) of a copy of the entries.
    pub fn applied_of(entries: &[GuardrailLogEntry]) -> Vec<String> {
        applied_guardrails(entries)
    }

    /// The same names, borrowed: those of `entries` that ran, then `also` (guardrails known to
    /// have been applied whose entries are not there yet, such as detached monitors), each
    /// once, in the order they first appear.
    pub fn applied_names<'a>(
        entries: &'a [GuardrailLogEntry],
        also: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a str> {
        let mut applied: Vec<&str> = Vec::new();
        let ran = entries
            .iter()
            .filter(|e| e.guardrail_status != GuardrailStatus::NotRun)
            .map(|e| e.guardrail_name.as_str());
        for name in ran.chain(also) {
            if !applied.contains(&name) {
                applied.push(name);
            }
        }
        applied
    }

    /// Marks a detached run of `guardrails` as in flight until the returned guard is dropped
    /// (when the run has appended its entries, or was cancelled).
    pub fn detach(&self, guardrails: Vec<Arc<str>>) -> DetachedRun {
        let id = self
            .inner
            .next_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.inner.detached).push((id, guardrails));
        DetachedRun {
            log: self.clone(),
            id,
        }
    }

    /// The number of detached runs still in flight.
    pub fn detached_in_flight(&self) -> usize {
        lock(&self.inner.detached).len()
    }

    /// The guardrails of the detached runs still in flight.
    pub fn detached_guardrails(&self) -> Vec<Arc<str>> {
        lock(&self.inner.detached)
            .iter()
            .flat_map(|(_, names)| names.iter().cloned())
            .collect()
    }

    /// Resolves once no detached run is in flight.
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.detached_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Unique names of the entries that ran, in order.
pub(crate) fn applied_guardrails(entries: &[GuardrailLogEntry]) -> Vec<String> {
    GuardrailLog::applied_names(entries, [])
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// A detached guardrail run in flight (see [`GuardrailLog::detach`]); dropping it marks the run
/// finished.
pub struct DetachedRun {
    log: GuardrailLog,
    id: u64,
}

impl fmt::Debug for DetachedRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedRun").field("id", &self.id).finish()
    }
}

impl Drop for DetachedRun {
    fn drop(&mut self) {
        lock(&self.log.inner.detached).retain(|(id, _)| *id != self.id);
        self.log.inner.settled.notify_waiters();
    }
}

impl fmt::Debug for GuardrailLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.lock().iter()).finish()
    }
}

/// Seconds since the epoch, as a float (the log's time format).
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_to_exactly_the_litellm_names() {
        let entry = GuardrailLogEntry {
            guardrail_name: "pii".into(),
            guardrail_provider: "litellm_content_filter".into(),
            guardrail_mode: GuardrailMode::PreCall,
            guardrail_status: GuardrailStatus::GuardrailIntervened,
            guardrail_action: GuardrailAction::Mask,
            guardrail_response: serde_json::json!({"masked": 2}),
            start_time: 1.5,
            end_time: 2.0,
            duration: 0.5,
            masked_entity_count: Some(BTreeMap::from([("EMAIL".to_string(), 2)])),
        };
        let v = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "guardrail_name": "pii",
                "guardrail_provider": "litellm_content_filter",
                "guardrail_mode": "pre_call",
                "guardrail_status": "guardrail_intervened",
                "guardrail_action": "mask",
                "guardrail_response": {"masked": 2},
                "start_time": 1.5,
                "end_time": 2.0,
                "duration": 0.5,
                "masked_entity_count": {"EMAIL": 2}
            })
        );
        let back: GuardrailLogEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, entry);

        let no_mask = GuardrailLogEntry {
            masked_entity_count: None,
            guardrail_status: GuardrailStatus::GuardrailFailedToRespond,
            ..entry
        };
        let v = serde_json::to_value(&no_mask).unwrap();
        assert!(v.get("masked_entity_count").is_none());
        assert_eq!(v["guardrail_status"], "guardrail_failed_to_respond");
    }

    #[test]
    fn shared_handle_sees_appends() {
        let log = GuardrailLog::new();
        let inner = log.clone();
        assert!(log.ptr_eq(&inner));
        inner.push(GuardrailLogEntry {
            guardrail_name: "g".into(),
            guardrail_provider: "custom".into(),
            guardrail_mode: GuardrailMode::PostCall,
            guardrail_status: GuardrailStatus::GuardrailIntervened,
            guardrail_action: GuardrailAction::Block,
            guardrail_response: Value::Null,
            start_time: 0.0,
            end_time: 0.0,
            duration: 0.0,
            masked_entity_count: None,
        });
        assert_eq!(log.len(), 1);
        assert!(log.any_blocked());
    }
}
