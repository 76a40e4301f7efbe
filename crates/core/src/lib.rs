//! The guardrail engine every guardrail-tower layer shares: one home for each decision about
//! which guardrail runs, how it runs, and what a request carries between layers.
//!
//! - [`ParsedRequest`] and [`BufferRequest`]: the request body, buffered with a size limit and
//!   parsed once; every later layer reuses it from the request extensions, with the request's
//!   [`RequestId`], [`RequestState`] and (from an authentication layer) [`Caller`].
//! - [`GuardrailSpec`], [`GuardrailSelection`] and the one gate function [`should_run`].
//! - [`Guardrail`], [`ConfiguredGuardrail`] and [`Guardrails`]: the guardrail abstraction and the
//!   one runner every layer uses.
//! - [`GuardrailLog`]: the append-only per-request log of guardrail runs, shared by handle.
//!
//! The wire formats (call types, text views, error shapes, usage) live in
//! `guardrail-tower-protocol` and the SSE codec in `guardrail-tower-sse`; the names used
//! everywhere are re-exported here ([`CallType`], [`Error`], [`text`], [`sse`], ...).
//!
//! ```text
//!   request ──► SpendLog ─► ErrorNormalize ─► ModelMerge ─► PreCall ─► StreamingBody ─► upstream
//!                  │              │                │            │             │
//!                  └──────────────┴──── core: ParsedRequest, selection, gate, runner, log
//! ```
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
mod guardrail;
mod json_body;
mod log;
mod order;
mod report;
mod request;
mod runner;
mod scope;
mod selection;
mod watch;

pub use call::{BufferedCall, CallOutcome, Prepare, Prepared, take_ready};
pub use guardrail::{
    BoxError, BoxFuture, Decision, Guardrail, GuardrailError, GuardrailErrorKind, GuardrailFn,
    GuardrailInput, RequestMeta, SpanAction, SpanMatch, SpanMatcher, StreamWindow, Verdict,
    guardrail_fn,
};
pub use guardrail_tower_protocol::{
    BodyType, CONTENT_POLICY_VIOLATION, CallType, Error, ErrorClass, ErrorShape,
    ResponsesStreamState, Usage, UsageFromEnd, anthropic_type_for_status, json,
    openai_type_for_status, text,
};
pub use guardrail_tower_sse as sse;
pub use log::{
    DetachedRun, GuardrailAction, GuardrailLog, GuardrailLogEntry, GuardrailStatus, epoch_seconds,
};
pub use order::{Layer, enter_layer};
pub use report::ResponseReport;
pub use request::{
    BufferRequest, ClientRequestId, DEFAULT_BODY_LIMIT, GATEWAY_ONLY_KEYS, ParsedRequest,
    RequestId, X_LITELLM_CALL_ID, X_REQUEST_ID, call_type_of, set_buffered_body,
    set_content_length,
};
pub use runner::{
    Check, ConfiguredGuardrail, DuplicateGuardrail, Effect, Fallback, Guardrails, Outcome,
    Resolved, RunFuture, StreamPolicy, run_detached,
};
pub use scope::{Caller, RequestState, StateKey};
pub use selection::{
    GuardrailMode, GuardrailModes, GuardrailSelection, GuardrailSpec, UnknownMode, should_run,
};
pub use watch::{StreamWatch, upstream_error_event};
