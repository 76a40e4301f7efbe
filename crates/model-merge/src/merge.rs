//! The merge step: a model's guardrails added to the request's selection.

use bytes::Bytes;
use guardrail_tower_core::{Error, Layer, ParsedRequest, Prepare, Prepared, enter_layer};
use http::Request;
use http_body_util::Full;

use crate::layer::ModelMap;

/// The merge step, run once the request is parsed.
#[derive(Debug)]
pub struct Merge {
    pub(crate) models: ModelMap,
}

impl Prepare for Merge {
    type Output = ();

    fn prepare(self, request: &mut Request<Full<Bytes>>) -> Result<Prepared<()>, Error> {
        enter_layer(request, Layer::ModelMerge)?;
        let Some(parsed) = request.extensions_mut().get_mut::<ParsedRequest>() else {
            return Ok(Prepared::new(()));
        };
        let names = parsed
            .model()
            .and_then(|model| self.models.get(model))
            .cloned();
        if let Some(names) = names {
            parsed.selection_mut().merge(names.iter().cloned());
        }
        Ok(Prepared::new(()))
    }
}
