//! Shared types for guardrail-tower: the pieces every layer agrees on.
//!
//! - [`CallType`]: the endpoint a request is for (from its path), where its guardrail text lives
//!   in requests and responses ([`text`]), and its error shape.
//! - [`ParsedRequest`] and [`BufferRequest`]: the request body, buffered with a size limit and
//!   parsed once; every later layer reuses it from the request extensions.
//! - [`GuardrailSpec`], [`GuardrailSelection`] and the one gate function [`should_run`].
//! - [`Guardrail`], [`ConfiguredGuardrail`] and [`Guardrails`]: the guardrail abstraction and the
//!   one runner every layer uses.
//! - [`GuardrailLog`]: the append-only per-request log of guardrail runs, shared by handle.
//! - [`Error`]: the one error type, with its wire forms per endpoint and in-stream error events.
//! - [`sse`]: an incremental, bounded server-sent events decoder and encoder.
//!
//! The layers live in their own crates; this crate has no middleware of its own. A layer built
//! on it buffers the request once and hands the parsed request to the next:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_core::{BufferRequest, CallType, ParsedRequest, DEFAULT_BODY_LIMIT};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A minimal service that reads the parsed request the way every layer does.
//! let svc = ServiceBuilder::new()
//!     .map_future(|fut| fut)
//!     .service(service_fn(|req: http::Request<Full<Bytes>>| async move {
//!         let parsed = BufferRequest::new(req, DEFAULT_BODY_LIMIT)
//!             .await?
//!             .extensions()
//!             .get::<ParsedRequest>()
//!             .cloned()
//!             .unwrap();
//!         Ok::<_, guardrail_tower_core::Error>(parsed)
//!     }));
//! let req = http::Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)))?;
//! let parsed = svc.oneshot(req).await?;
//! assert_eq!(parsed.call_type(), CallType::ChatCompletions);
//! assert_eq!(parsed.model(), Some("gpt-4o"));
//! assert_eq!(parsed.texts(), ["hi"]);
//! # Ok(())
//! # }
//! ```

pub mod body;
mod call;
mod call_type;
mod error;
mod guardrail;
mod json_view;
mod log;
mod report;
mod request;
mod runner;
mod scope;
mod selection;
pub mod sse;
pub mod text;
mod usage;

pub use call::{BufferedCall, CallOutcome, Prepare, take_ready};
pub use call_type::{CallType, ErrorShape};
pub use error::{
    CONTENT_POLICY_VIOLATION, Error, ErrorClass, ResponsesStreamState, anthropic_type_for_status,
    openai_type_for_status,
};
pub use guardrail::{
    BoxError, BoxFuture, Decision, Guardrail, GuardrailError, GuardrailErrorKind, GuardrailFn,
    GuardrailInput, RequestMeta, SpanAction, SpanMatch, SpanMatcher, Verdict, guardrail_fn,
};
pub use log::{GuardrailAction, GuardrailLog, GuardrailLogEntry, GuardrailStatus, epoch_seconds};
pub use report::ResponseReport;
pub use request::{
    BodyType, BufferRequest, ClientRequestId, DEFAULT_BODY_LIMIT, GATEWAY_ONLY_KEYS, ParsedRequest,
    RequestId, X_LITELLM_CALL_ID, X_REQUEST_ID, set_buffered_body,
};
pub use runner::{
    Check, ConfiguredGuardrail, DuplicateGuardrail, Effect, Fallback, Guardrails, Outcome,
    Resolved, RunFuture, StreamPolicy,
};
pub use scope::{Caller, RequestState, StateKey};
pub use selection::{
    GuardrailMode, GuardrailModes, GuardrailSelection, GuardrailSpec, UnknownMode, should_run,
};
pub use usage::Usage;
