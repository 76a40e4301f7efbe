//! Layer order cannot be wrong in silence.
//!
//! Each guardrail-tower layer notes in the request extensions that it has seen the request. A
//! layer that finds a layer already there that must run inside it refuses the request with a
//! 500 naming both layers and the fix, and logs it once: a stack built in the wrong order fails
//! on its first request instead of skipping guardrails or spend-log records.
//!
//! | layer | must be outside | else |
//! |---|---|---|
//! | `SpendLogLayer` | the merge, pre-call and streaming layers | requests they refuse would have no record |
//! | `ModelGuardrailMergeLayer` | the pre-call and streaming layers | model-level guardrails would be skipped |
//! | `PreCallGuardrailLayer` | the streaming layer | post-call guardrails would see the request before pre-call masking, and a pre-call block would not reach the streaming layer's record |
//!
//! `ErrorNormalizeLayer` works anywhere. A layer used twice (a global stack and a route's own)
//! is fine: the order is checked where each layer first sees the request.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, StatusCode};

use crate::Error;

/// A guardrail-tower layer whose place in the stack matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layer {
    /// `SpendLogLayer`.
    SpendLog,
    /// `ModelGuardrailMergeLayer`.
    ModelMerge,
    /// `PreCallGuardrailLayer`.
    PreCall,
    /// `StreamingGuardrailBodyLayer`.
    Streaming,
}

impl Layer {
    const ALL: [Layer; 4] = [
        Layer::SpendLog,
        Layer::ModelMerge,
        Layer::PreCall,
        Layer::Streaming,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The layers that must run inside this one (come after it in a `ServiceBuilder`).
    fn inner(self) -> &'static [Layer] {
        match self {
            Layer::SpendLog => &[Layer::ModelMerge, Layer::PreCall, Layer::Streaming],
            Layer::ModelMerge => &[Layer::PreCall, Layer::Streaming],
            Layer::PreCall => &[Layer::Streaming],
            Layer::Streaming => &[],
        }
    }

    /// The type name users write.
    pub fn name(self) -> &'static str {
        match self {
            Layer::SpendLog => "SpendLogLayer",
            Layer::ModelMerge => "ModelGuardrailMergeLayer",
            Layer::PreCall => "PreCallGuardrailLayer",
            Layer::Streaming => "StreamingGuardrailBodyLayer",
        }
    }

    fn consequence(self) -> &'static str {
        match self {
            Layer::SpendLog => "requests the inner layers refuse would have no spend-log record",
            Layer::ModelMerge => "model-level guardrails would be skipped",
            Layer::PreCall => "post-call guardrails would see the request before pre-call masking",
            Layer::Streaming => "",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static LOGGED: [AtomicBool; 4] = [
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
    AtomicBool::new(false),
];

/// Notes that `layer` sees `request`, or refuses it when a layer that must run inside `layer`
/// already saw it: a 500 naming both layers.
///
/// ```
/// use guardrail_tower_core::{Layer, enter_layer};
///
/// let mut request = http::Request::new(());
/// enter_layer(&mut request, Layer::ModelMerge).unwrap();
/// enter_layer(&mut request, Layer::PreCall).unwrap();
/// // A merge layer inside the pre-call layer would skip model-level guardrails:
/// let mut request = http::Request::new(());
/// enter_layer(&mut request, Layer::PreCall).unwrap();
/// let err = enter_layer(&mut request, Layer::ModelMerge).unwrap_err();
/// assert_eq!(err.status(), 500);
/// assert!(err.message().contains("ModelGuardrailMergeLayer must be outside PreCallGuardrailLayer"));
/// ```
pub fn enter_layer<B>(request: &mut Request<B>, layer: Layer) -> Result<(), Error> {
    let trail = &mut crate::scope::Shared::of_mut(request.extensions_mut()).trail;
    let seen = *trail;
    *trail |= layer.bit();
    if seen & layer.bit() != 0 {
        // Used again (a global stack and a route's own): its first place was checked.
        return Ok(());
    }
    let Some(inner) = layer.inner().iter().find(|l| seen & l.bit() != 0) else {
        return Ok(());
    };
    let message = format!(
        "misordered guardrail-tower layers: {layer} must be outside {inner} (add it earlier in \
         the ServiceBuilder); here it runs inside it, where {}",
        layer.consequence()
    );
    let index = Layer::ALL.iter().position(|l| *l == layer).unwrap_or(0);
    if !LOGGED[index].swap(true, Ordering::Relaxed) {
        tracing::error!("{message}");
    }
    Err(Error::new(StatusCode::INTERNAL_SERVER_ERROR, message).with_code("misordered_layers"))
}
