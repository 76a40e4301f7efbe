//! Built-in guardrails for guardrail-tower: what the pre-call and streaming layers run.
//!
//! A guardrail is anything that implements [`Guardrail`](guardrail_tower_core::Guardrail). This
//! crate ships the ones a LiteLLM config names, configured with the same keys:
//!
//! - [`content_filter`] (always built): a `litellm_content_filter`-compatible keyword and pattern
//!   filter (BLOCK or MASK). Local, deterministic, no network; it exposes a span matcher, so
//!   streamed responses are checked exactly.
//! - `generic_api` (feature `http`): a client for the LiteLLM Generic Guardrail API, so guardrail
//!   services written for LiteLLM work unchanged.
//! - `openai_moderation` (feature `http`): an OpenAI-compatible `/v1/moderations` check.
//! - `presidio` (feature `http`): PII masking (or blocking) with Microsoft Presidio, with
//!   placeholders restored in the response of the same request (`output_parse_pii`).
//! - `lakera` (feature `http`): Lakera Guard v2 (block, monitor, PII masking).
//! - `azure` (feature `http`): Azure AI Content Safety text moderation (severity thresholds per
//!   category) and Prompt Shields.
//! - `bedrock` (feature `http`): Amazon Bedrock Guardrails (`ApplyGuardrail`, SigV4-signed).
//! - `aim` (feature `http`): Aim Security (`/fw/v1/analyze`), with per-request de-anonymization.
//! - `http` (feature `http`): the pooled HTTP(S) client (hyper, rustls) they share, also usable
//!   to forward to upstream LLMs.
//!
//! Wrap a guardrail in a [`ConfiguredGuardrail`](guardrail_tower_core::ConfiguredGuardrail) with
//! a name and its modes, and hand the list to the layers that run guardrails:
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │ ◀── its guardrails run here
//!  │ StreamingGuardrailBodyLayer  checks the response         │ ◀── its guardrails run here
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! # Features
//!
//! | feature | what it adds | dependencies it brings |
//! |---|---|---|
//! | (none, the default) | [`ContentFilter`] | `regex`, `aho-corasick`, `memchr`, `serde_yaml_ng` |
//! | `http` | `GenericGuardrailApi`, `OpenAiModeration`, `HttpClient`, and every guardrail that calls a service | `hyper`, `hyper-util`, `hyper-rustls` (rustls, `ring`), `tokio` |
//!
//! The rule for new guardrails: one that only looks at the text it is given is built always; one
//! that calls a service over the network (a moderation API, a hosted guardrail provider, a
//! classifier behind HTTP) lives in its own module gated by `#[cfg(feature = "http")]`, and so do
//! its re-exports and its tests (`required-features = ["http"]` or `#![cfg(feature = "http")]`),
//! so that the content filter alone never compiles an HTTP client or a TLS stack. The facade
//! crate `guardrail-tower` exposes these as its `guardrails` and `guardrails-http` features.
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

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod content_filter;
pub use content_filter::{ContentFilter, ContentFilterConfig, ContentFilterError};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod generic_api;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod openai_moderation;
#[cfg(feature = "http")]
pub use generic_api::{GenericGuardrailApi, GenericGuardrailApiConfig};
#[cfg(feature = "http")]
pub use http::{ConfigError, HttpClient, set_request_hook, shared_client};
#[cfg(feature = "http")]
pub use openai_moderation::{OpenAiModeration, OpenAiModerationConfig};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod aim;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod azure;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod bedrock;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod lakera;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod presidio;
#[cfg(feature = "http")]
mod support;
#[cfg(feature = "http")]
pub use aim::{AimGuardrail, AimGuardrailConfig};
#[cfg(feature = "http")]
pub use azure::{
    AzurePromptShield, AzurePromptShieldConfig, AzureTextModeration, AzureTextModerationConfig,
};
#[cfg(feature = "http")]
pub use bedrock::{BedrockGuardrail, BedrockGuardrailConfig};
#[cfg(feature = "http")]
pub use lakera::{LakeraV2, LakeraV2Config, OnFlagged};
#[cfg(feature = "http")]
pub use presidio::{PiiAction, Presidio, PresidioConfig};
