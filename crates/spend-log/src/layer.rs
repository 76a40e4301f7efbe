use std::sync::Arc;

use guardrail_tower_core::DEFAULT_BODY_LIMIT;
use tower_layer::Layer;

use crate::recorder::{Observer, PriceTable, Settings};
use crate::{SpendLog, SpendLogHandle, SpendLogObserver};

/// The default of [`SpendLogLayer::monitor_grace`].
pub const DEFAULT_MONITOR_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Applies [`SpendLog`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct SpendLogLayer {
    pub(crate) writer: SpendLogHandle,
    pub(crate) settings: Arc<Settings>,
    pub(crate) body_limit: usize,
}

impl SpendLogLayer {
    /// Writes one record per request through `writer` (a running
    /// [`SpendLogWriter`](crate::SpendLogWriter)'s handle).
    pub fn new(writer: SpendLogHandle) -> Self {
        SpendLogLayer {
            writer,
            settings: Arc::new(Settings {
                prices: PriceTable::new(),
                store_prompts: false,
                observer: None,
                monitor_grace: DEFAULT_MONITOR_GRACE,
            }),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Prices per model, for `spend`.
    pub fn prices(mut self, prices: PriceTable) -> Self {
        Arc::make_mut(&mut self.settings).prices = prices;
        self
    }

    /// Keep what guardrails said (`guardrail_response`, which may quote the prompt or the
    /// answer) in the records: LiteLLM's `store_prompts_in_spend_logs`. Off by default: the
    /// responses are redacted.
    pub fn store_prompts_in_spend_logs(mut self, store: bool) -> Self {
        Arc::make_mut(&mut self.settings).store_prompts = store;
        self
    }

    /// Shows every completed record to `observer` before it is queued (for metrics; see
    /// [`SpendLogObserver`]).
    pub fn observer(mut self, observer: impl SpendLogObserver) -> Self {
        Arc::make_mut(&mut self.settings).observer = Some(Observer(Arc::new(observer)));
        self
    }

    /// How long a request's record waits for its monitor guardrails, which run detached from
    /// the request and may finish after the response (default [`DEFAULT_MONITOR_GRACE`]). The
    /// record is written when they have finished, or when this time has passed (without the
    /// entries of those still running, and a warning).
    pub fn monitor_grace(mut self, grace: std::time::Duration) -> Self {
        Arc::make_mut(&mut self.settings).monitor_grace = grace;
        self
    }

    /// The request body limit when this layer is the first to read the request.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S> Layer<S> for SpendLogLayer {
    type Service = SpendLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SpendLog::new(inner, self.clone())
    }
}
