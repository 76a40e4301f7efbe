//! Built-in guardrails for guardrail-tower.
//!
//! - [`content_filter`]: a `litellm_content_filter`-compatible keyword and pattern filter
//!   (BLOCK or MASK), configured exactly as LiteLLM configures it.
//! - [`generic_api`]: a client for the LiteLLM Generic Guardrail API, so guardrail services
//!   written for LiteLLM work unchanged.
//! - [`openai_moderation`]: an OpenAI-compatible `/v1/moderations` check.
//! - [`http`]: the pooled HTTP(S) client they share.

pub mod content_filter;
pub mod generic_api;
pub mod http;
pub mod openai_moderation;
