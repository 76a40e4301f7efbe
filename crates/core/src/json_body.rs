//! A parsed JSON request body, shared by the parsed request and the guardrails' request
//! context: its bytes, where its texts lie, and its `Value`, built on first use.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

/// A JSON request body, built into a `serde_json::Value` only when something asks for one (a
/// guardrail that reads the whole body, a rewrite); shared by the parsed request and every
/// [`RequestMeta`](crate::RequestMeta) made from it, so it is built at most once.
#[derive(Debug)]
pub(crate) struct JsonBody {
    pub(crate) bytes: Bytes,
    pub(crate) value: OnceLock<Arc<Value>>,
    /// Where the request's guardrail texts lie, found while the body was parsed; `None` for a
    /// body built as a `Value` (its texts are read from the `Value`).
    pub(crate) texts: Option<Vec<TextSpan>>,
}

/// One guardrail text of a parsed body: a range of its bytes, or the text itself when the JSON
/// string had escapes.
#[derive(Debug)]
pub(crate) enum TextSpan {
    Bytes(std::ops::Range<usize>),
    Unescaped(String),
}

impl JsonBody {
    /// A body whose bytes were already checked to be one JSON document, with its texts.
    pub(crate) fn validated(bytes: Bytes, texts: Vec<TextSpan>) -> Self {
        JsonBody {
            bytes,
            value: OnceLock::new(),
            texts: Some(texts),
        }
    }

    /// A body already built.
    pub(crate) fn built(value: Arc<Value>) -> Self {
        JsonBody {
            bytes: Bytes::new(),
            value: OnceLock::from(value),
            texts: None,
        }
    }

    /// The body as a `Value`, built on first use.
    pub(crate) fn value(&self) -> &Arc<Value> {
        self.value.get_or_init(|| {
            // The bytes were parsed by the same serde_json parser when the request was read
            // (`JsonView` accepts exactly what `Value` does), so this cannot fail.
            Arc::new(guardrail_tower_protocol::json::from_slice(&self.bytes).unwrap_or(Value::Null))
        })
    }
}
