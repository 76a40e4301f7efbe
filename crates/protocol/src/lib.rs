//! The wire formats guardrail-tower reads and writes, one home per decision:
//!
//! - [`CallType`]: the endpoint a request is for (chat completions, Responses, Anthropic
//!   messages, text completions, embeddings), known from its path.
//! - [`text`]: the one text view per wire format: where the guardrail text lives in a request
//!   body, a JSON response and a stream event, read and written back (masking) by the same code.
//! - [`Error`]: the one error type, with its wire form per endpoint (OpenAI or Anthropic shape)
//!   and its in-stream error events once a stream's head was sent.
//! - [`Usage`]: token counts from a response or its stream events.
//! - [`json::JsonView`]: a borrowed view of a JSON document, parsed by `serde_json` itself.
//! - [`BodyType`]: what a `content-type` says about a body.
//!
//! It knows nothing of guardrails or middleware; the layers build on it:
//!
//! ```text
//!   guardrail-tower-sse        the SSE codec
//!            ▲ used by
//!   guardrail-tower-protocol   call types, text views, error shapes, usage          ◀━━ this crate
//!            ▲ used by
//!   guardrail-tower-core       guardrail trait, selection, runner, request context
//!            ▲ used by
//!   the five layers            error, model-merge, pre-call, streaming, spend-log
//!            ▲ used by
//!   guardrail-gateway          the gateway binary: config, routes, forwarder
//! ```
//!
//! A service that answers
//! in the endpoint's own error shape:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_protocol::{CallType, Error};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().service(service_fn(|req: Request<()>| async move {
//!     let call_type = CallType::from_path(req.uri().path());
//!     let err = Error::new(StatusCode::TOO_MANY_REQUESTS, "slow down");
//!     Ok::<Response<Bytes>, std::convert::Infallible>(err.to_response(call_type))
//! }));
//! let resp = svc.oneshot(Request::post("/v1/messages").body(()).unwrap()).await.unwrap();
//! assert_eq!(resp.status(), 429);
//! assert_eq!(
//!     resp.body(),
//!     r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#
//! );
//! # }
//! ```

mod body_type;
mod call_type;
mod error;
pub mod json;
mod plain;
pub mod text;
mod usage;

pub use body_type::BodyType;
pub use call_type::{CallType, ErrorShape};
pub use error::{
    CONTENT_POLICY_VIOLATION, Error, ErrorClass, ResponsesStreamState, anthropic_type_for_status,
    openai_type_for_status,
};
pub use usage::{Usage, UsageFromEnd};

/// `bytes` as text when they are UTF-8, as strictly as [`std::str::from_utf8`] checks them, but
/// by SIMD (`simdutf8`): a few times fewer instructions a byte on the documents every request
/// and response is checked as (about one a byte for the standard library's word-at-a-time
/// check over ASCII).
#[inline]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    simdutf8::basic::from_utf8(bytes).ok()
}
