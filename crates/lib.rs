//! guardrail-tower: tower middleware for LLM gateways.
//!
//! Guardrails, OpenAI-style errors and spend logs as layers that compose with
//! [`tower::ServiceBuilder`](https://docs.rs/tower/latest/tower/struct.ServiceBuilder.html) in
//! front of any upstream LLM client service. Each layer lives in its own crate and is
//! re-exported here behind a feature of the same name (all on by default), so either depend on
//! this crate or on one layer crate alone.
//!
//! | module | layer | feature |
//! |---|---|---|
//! | [`error`] | `ErrorNormalizeLayer`: every error in the endpoint's own shape, with the right status | `error` |
//! | [`model_merge`] | `ModelGuardrailMergeLayer`: a model's configured guardrails merged into the request's selection | `model-merge` |
//! | [`pre_call`] | `PreCallGuardrailLayer`: `pre_call` and `during_call` guardrails on the request | `pre-call` |
//! | [`streaming`] | `StreamingGuardrailBodyLayer`: `post_call` guardrails on JSON and SSE responses, in-band error events | `streaming` |
//! | [`spend_log`] | `SpendLogLayer`: one spend-log record per request, to SQLite, PostgreSQL or JSON lines | `spend-log` (`postgres` adds the PostgreSQL sink) |
//! | [`guardrails`] | built-in guardrails: the LiteLLM-compatible content filter, the Generic Guardrail API client, OpenAI moderation, Amazon Bedrock Guardrails, Aim | `guardrails` |
//! | [`core`] | shared types: call types, the guardrail gate, the guardrail log, errors, SSE | always |
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower::error::ErrorNormalizeLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any upstream client service: here, one whose load balancer answers with HTML.
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, BoxError>(
//!         Response::builder()
//!             .status(503)
//!             .header("content-type", "text/html")
//!             .body(Full::new(Bytes::from_static(b"<html>Service Unavailable</html>")))
//!             .unwrap(),
//!     )
//! });
//!
//! let gateway = ServiceBuilder::new()
//!     .layer(ErrorNormalizeLayer::new())
//!     .service(upstream);
//!
//! let req = Request::post("/v1/messages").body(Full::default()).unwrap();
//! let resp = gateway.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 503);
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"type":"error","error":{"type":"overloaded_error","message":"upstream returned 503 Service Unavailable (HTML body omitted)"}}"#
//! );
//! # }
//! ```

pub use guardrail_tower_core as core;

#[cfg(feature = "error")]
#[doc(inline)]
pub use guardrail_tower_error as error;

#[cfg(feature = "model-merge")]
#[doc(inline)]
pub use guardrail_tower_model_merge as model_merge;

#[cfg(feature = "pre-call")]
#[doc(inline)]
pub use guardrail_tower_pre_call as pre_call;

#[cfg(feature = "streaming")]
#[doc(inline)]
pub use guardrail_tower_streaming as streaming;

#[cfg(feature = "spend-log")]
#[doc(inline)]
pub use guardrail_tower_spend_log as spend_log;

#[cfg(feature = "guardrails")]
#[doc(inline)]
pub use guardrail_tower_guardrails as guardrails;
