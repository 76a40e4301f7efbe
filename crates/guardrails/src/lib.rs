//! Built-in guardrails for guardrail-tower.
//!
//! - [`content_filter`]: a `litellm_content_filter`-compatible keyword and pattern filter
//!   (BLOCK or MASK), configured exactly as LiteLLM configures it. It is deterministic and
//!   exposes a span matcher, so streamed responses are checked exactly.
//! - [`generic_api`]: a client for the LiteLLM Generic Guardrail API, so guardrail services
//!   written for LiteLLM work unchanged.
//! - [`openai_moderation`]: an OpenAI-compatible `/v1/moderations` check.
//! - [`bedrock`]: Amazon Bedrock Guardrails (`ApplyGuardrail`, SigV4-signed).
//! - [`aim`]: Aim Security (`/fw/v1/analyze`), with per-request de-anonymization.
//! - [`http`]: the pooled HTTP(S) client they share (also usable to forward to upstream LLMs).
//!
//! Each implements [`Guardrail`](guardrail_tower_core::Guardrail); wrap it in a
//! [`ConfiguredGuardrail`](guardrail_tower_core::ConfiguredGuardrail) with a name and modes, and
//! hand the list to the layers.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode, Guardrails};
//! use guardrail_tower_guardrails::{ContentFilter, ContentFilterConfig};
//! use guardrail_tower_pre_call::PreCallGuardrailLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The same settings a LiteLLM config would carry under `litellm_params`.
//! let config: ContentFilterConfig = serde_yaml_ng::from_str(r#"
//!     blocked_words: [{keyword: forbidden, action: BLOCK}]
//!     patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]
//! "#).unwrap();
//! let filter = ContentFilter::new(config).unwrap();
//! let guardrails = Guardrails::new([
//!     ConfiguredGuardrail::new("content-filter", GuardrailMode::PreCall, filter).default_on(true),
//! ]);
//!
//! // The upstream echoes the request body it received.
//! let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
//!     let body = req.into_body().collect().await.unwrap().to_bytes();
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(PreCallGuardrailLayer::new(guardrails))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from_static(
//!     br#"{"model":"m","messages":[{"role":"user","content":"write to jane@corp.com"}]}"#,
//! ))).unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! let seen = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(seen, r#"{"model":"m","messages":[{"role":"user","content":"write to [EMAIL_REDACTED]"}]}"#);
//! # }
//! ```

pub mod aim;
pub mod bedrock;
pub mod content_filter;
pub mod generic_api;
pub mod http;
pub mod openai_moderation;
mod support;
pub use aim::{AimGuardrail, AimGuardrailConfig};
pub use bedrock::{BedrockGuardrail, BedrockGuardrailConfig};
pub use content_filter::{ContentFilter, ContentFilterConfig, ContentFilterError};
pub use generic_api::{GenericGuardrailApi, GenericGuardrailApiConfig};
pub use http::{ConfigError, HttpClient, shared_client};
pub use openai_moderation::{OpenAiModeration, OpenAiModerationConfig};
