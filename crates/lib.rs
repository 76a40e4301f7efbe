//! guardrail-tower: tower middleware for LLM gateways.
//!
//! Guardrails, OpenAI- and Anthropic-shaped errors and spend logs as five layers that compose
//! with [`tower::ServiceBuilder`](https://docs.rs/tower/latest/tower/struct.ServiceBuilder.html)
//! in front of any upstream LLM client service: per route in an axum app, on a bare hyper
//! server, or inside an existing Rust gateway, around the client it already has. Each layer works
//! alone and in any combination; the request body is read and parsed once and shared through the
//! request extensions. Each layer lives in its own crate and is re-exported here behind a
//! feature of the same name, so depend on this crate or on one layer crate alone.
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘ ◀━━ this crate: every layer, by feature
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! | module | layer | feature |
//! |---|---|---|
//! | `spend_log` | `SpendLogLayer`: one spend-log record per request, for every endpoint and outcome | `spend-log` (default) |
//! | `error` | `ErrorNormalizeLayer`: every error in the endpoint's own shape, with the right status | `error` (default) |
//! | `model_merge` | `ModelGuardrailMergeLayer`: a model's configured guardrails merged into the request's selection | `model-merge` (default) |
//! | `pre_call` | `PreCallGuardrailLayer`: `pre_call` and `during_call` guardrails on the request | `pre-call` (default) |
//! | `streaming` | `StreamingGuardrailBodyLayer`: `post_call` guardrails on JSON and SSE responses, in-band error events | `streaming` (default) |
//! | `guardrails` | built-in guardrails: the LiteLLM-compatible content filter; with `guardrails-http`, the Generic Guardrail API client, OpenAI moderation, Presidio, Lakera Guard, Azure AI Content Safety, Amazon Bedrock Guardrails and Aim | `guardrails`, `guardrails-http` |
//! | [`core`] | the guardrail trait and engine, call types, errors, the SSE codec | always |
//!
//! # Features
//!
//! The default features are the five layers alone: no database, no TLS stack, no HTTP client
//! (`tests/features.rs` checks the dependency tree). Everything that needs one is opt-in:
//!
//! | feature | adds | brings |
//! |---|---|---|
//! | `error`, `model-merge`, `pre-call`, `streaming`, `spend-log` (default) | one layer each; the spend log with its channel sink and your own `SpendLogSink`s | tower, http, tokio (time, sync) |
//! | `sqlite` | the embedded SQLite spend-log sink | a bundled SQLite (`rusqlite`) |
//! | `postgres` | the PostgreSQL spend-log sink | `tokio-postgres` |
//! | `jsonl` | the JSON-lines spend-log sink | nothing more |
//! | `guardrails` | the content filter | `regex`, `aho-corasick` |
//! | `guardrails-http` | the HTTP-based guardrails and their pooled HTTP(S) client | hyper, hyper-util, rustls |
//!
//! # Example
//!
//! The whole stack, with a guardrail of your own (the built-in ones are in the `guardrails`
//! feature) and the spend log going to a channel:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower::core::{
//!     ConfiguredGuardrail, GuardrailInput, GuardrailMode, Guardrails, Verdict, guardrail_fn,
//! };
//! use guardrail_tower::error::ErrorNormalizeLayer;
//! use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
//! use guardrail_tower::pre_call::PreCallGuardrailLayer;
//! use guardrail_tower::spend_log::{ChannelSink, SpendLogLayer, SpendLogWriter, SpendStatus};
//! use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // No API keys in prompts or answers.
//! let no_keys = guardrail_fn(|input: GuardrailInput| async move {
//!     Ok(if input.texts().iter().any(|t| t.contains("sk-")) {
//!         Verdict::block("API keys are not allowed")
//!     } else {
//!         Verdict::allow()
//!     })
//! });
//! let guardrails = Guardrails::new([ConfiguredGuardrail::new(
//!     "no-keys",
//!     [GuardrailMode::PreCall, GuardrailMode::PostCall],
//!     no_keys,
//! )
//! .default_on(true)]);
//! let (sink, mut records) = ChannelSink::new();
//! let spend_log = SpendLogWriter::new().spawn(sink);
//!
//! // Any upstream client service: here, a stub model.
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let answer = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}]}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from_static(answer.as_bytes())))
//!             .unwrap(),
//!     )
//! });
//!
//! let gateway = ServiceBuilder::new()
//!     .layer(SpendLogLayer::new(spend_log.clone()))
//!     .layer(ErrorNormalizeLayer::new())
//!     .layer(ModelGuardrailMergeLayer::new())
//!     .layer(PreCallGuardrailLayer::new(guardrails.clone()))
//!     .layer(StreamingGuardrailBodyLayer::new(guardrails))
//!     .service(upstream);
//!
//! let request = Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"m","messages":[{"role":"user","content":"my key is sk-123"}]}"#,
//!     )))
//!     .unwrap();
//! let response = gateway.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 400);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"error":{"message":"API keys are not allowed","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
//! );
//!
//! spend_log.shutdown().await.unwrap(); // flushes
//! assert_eq!(records.recv().await.unwrap().status, SpendStatus::Failure);
//! # }
//! ```
//!
//! One layer alone works the same way: `ErrorNormalizeLayer` in front of an upstream whose load
//! balancer answers with HTML gives the client the endpoint's own error shape:
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
//!
//! More in `examples/` of the repository, each run by a test: per-route axum stacks,
//! `route_layer` over an app's own handlers, a bare hyper server, the layers in front of a
//! reqwest-based upstream service, a custom guardrail, error normalization.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use guardrail_tower_core as core;

#[cfg(feature = "error")]
#[cfg_attr(docsrs, doc(cfg(feature = "error")))]
#[doc(inline)]
pub use guardrail_tower_error as error;

#[cfg(feature = "model-merge")]
#[cfg_attr(docsrs, doc(cfg(feature = "model-merge")))]
#[doc(inline)]
pub use guardrail_tower_model_merge as model_merge;

#[cfg(feature = "pre-call")]
#[cfg_attr(docsrs, doc(cfg(feature = "pre-call")))]
#[doc(inline)]
pub use guardrail_tower_pre_call as pre_call;

#[cfg(feature = "streaming")]
#[cfg_attr(docsrs, doc(cfg(feature = "streaming")))]
#[doc(inline)]
pub use guardrail_tower_streaming as streaming;

#[cfg(feature = "spend-log")]
#[cfg_attr(docsrs, doc(cfg(feature = "spend-log")))]
#[doc(inline)]
pub use guardrail_tower_spend_log as spend_log;

#[cfg(feature = "guardrails")]
#[cfg_attr(docsrs, doc(cfg(feature = "guardrails")))]
#[doc(inline)]
pub use guardrail_tower_guardrails as guardrails;
