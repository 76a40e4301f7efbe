use std::collections::HashMap;
use std::sync::Arc;

use guardrail_tower_core::DEFAULT_BODY_LIMIT;
use tower_layer::Layer;

use crate::ModelGuardrailMerge;

/// The model map: the `model` a client sends → that model's guardrail names.
pub(crate) type ModelMap = Arc<HashMap<String, Arc<[Arc<str>]>>>;

/// Applies [`ModelGuardrailMerge`] to a service. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ModelGuardrailMergeLayer {
    models: ModelMap,
    body_limit: usize,
}

impl ModelGuardrailMergeLayer {
    /// A layer with no models configured (nothing is merged until [`model`](Self::model) is
    /// called).
    pub fn new() -> Self {
        ModelGuardrailMergeLayer {
            models: Arc::default(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Attaches guardrails to a model name, as a client sends it in `model` (exact match). A
    /// second call for the same model replaces its list.
    pub fn model<I>(mut self, model: impl Into<String>, guardrails: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Arc<str>>,
    {
        let names: Arc<[Arc<str>]> = guardrails.into_iter().map(Into::into).collect();
        Arc::make_mut(&mut self.models).insert(model.into(), names);
        self
    }

    /// The body limit used when this layer is the first to read the request (default
    /// [`DEFAULT_BODY_LIMIT`]).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The guardrails attached to `model`.
    pub fn guardrails_for(&self, model: &str) -> Option<&[Arc<str>]> {
        self.models.get(model).map(|names| &**names)
    }
}

impl Default for ModelGuardrailMergeLayer {
    fn default() -> Self {
        ModelGuardrailMergeLayer::new()
    }
}

impl<M, G, N> FromIterator<(M, G)> for ModelGuardrailMergeLayer
where
    M: Into<String>,
    G: IntoIterator<Item = N>,
    N: Into<Arc<str>>,
{
    fn from_iter<T: IntoIterator<Item = (M, G)>>(iter: T) -> Self {
        iter.into_iter()
            .fold(ModelGuardrailMergeLayer::new(), |layer, (model, names)| {
                layer.model(model, names)
            })
    }
}

impl<S> Layer<S> for ModelGuardrailMergeLayer {
    type Service = ModelGuardrailMerge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ModelGuardrailMerge::new(inner, self.models.clone(), self.body_limit)
    }
}
