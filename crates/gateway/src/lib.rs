//! guardrail-gateway: a ready LLM gateway composed from guardrail-tower's layers, configured
//! with a LiteLLM-style YAML file.
//!
//! ```text
//! guardrail-gateway serve --config config.yaml [--listen 127.0.0.1:4000] [--allow-unauthenticated] [--metrics]
//! guardrail-gateway demo
//! ```
//!
//! Routes: `POST /v1/chat/completions` (and `/chat/completions`), `POST /v1/responses`,
//! `POST /v1/messages`, the health probes (`GET /health`, `/health/liveliness`,
//! `/health/liveness`, `/health/readiness`), `GET /spend/logs` (`request_id`, `start_date`,
//! `end_date`, `status`, `limit`, `offset`), `GET /spend/logs/blocks` (guardrail blocks per
//! guardrail per day), LiteLLM's guardrail routes (`GET /guardrails/list`,
//! `POST /guardrails/apply_guardrail`: see [`guardrail_routes`]), the virtual-key routes
//! (`/key/generate`, `/key/info`, `/key/update`, `/key/delete`, `/key/list`: see
//! [`keys::routes`]), and with metrics on `GET /metrics` (LiteLLM's Prometheus metrics: see
//! [`metrics`]). With `general_settings.master_key`, every
//! route but the health probes needs a key ([`auth`]). Each LLM route composes, outermost
//! first, `SpendLogLayer`, [`KeyAuthLayer`](auth::KeyAuthLayer) (with a master key),
//! `ErrorNormalizeLayer`, `ModelGuardrailMergeLayer`, `PreCallGuardrailLayer`,
//! `StreamingGuardrailBodyLayer` and the upstream timeout in front of [`upstream::Forward`], a
//! pooled client that forwards to the model's `api_base` with the deployment's model name and
//! key. A layer the config gives nothing to do is left out of the routes: the three guardrail
//! layers when no guardrail is configured, the model-merge layer when no model has guardrails
//! of its own, the pre-call layer when no guardrail runs on requests, the streaming layer when
//! none runs on responses. Streams pass through
//! with no buffering beyond what the guardrail policy needs.
//! SIGINT and SIGTERM shut down gracefully and flush the spend log; SIGHUP (or
//! `POST /config/reload`) reloads the config file ([`reload`]). The health probes are described
//! in [`health`], the OpenTelemetry traces (`OTEL_EXPORTER_OTLP_ENDPOINT`) in [`telemetry`].
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
//!  └────────┬──────────────────────────────────▲──────────────┘ ◀━━ per route, from a LiteLLM config
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ... ◀━━ upstream::Forward
//! ```
//!
//! The same pieces serve as a library: build a [`Gateway`](app::Gateway) from a config and nest
//! its router in your own axum app, or use [`app::router`] with your own client and spend-log
//! writer. The example below runs against the mock upstream of `guardrail-tower-testkit`
//! (OpenAI- and Anthropic-compatible, with fault injection), which also serves the `demo`
//! subcommand, the end-to-end tests and the load benchmark.
//!
//! ```
//! use guardrail_gateway::app::Gateway;
//! use guardrail_tower_testkit::mock::MockUpstream;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = MockUpstream::start().await.unwrap();
//! let config = format!(r#"
//! model_list:
//!   - model_name: gpt-guarded
//!     litellm_params: {{model: openai/gpt-4o-mini, api_base: "{}", api_key: sk-test}}
//! guardrails:
//!   - guardrail_name: block-words
//!     litellm_params:
//!       guardrail: litellm_content_filter
//!       mode: pre_call
//!       default_on: true
//!       blocked_words: [{{keyword: forbidden, action: BLOCK}}]
//! "#, upstream.base_url());
//! let gateway = Gateway::from_config_str(&config).await.unwrap();
//!
//! let request = http::Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(axum::body::Body::from(r#"{"model":"gpt-guarded","messages":[{"role":"user","content":"a forbidden question"}]}"#))
//!     .unwrap();
//! // The router is a tower service: put your own middleware around it.
//! let app = ServiceBuilder::new()
//!     .concurrency_limit(256)
//!     .service(gateway.router());
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 400);
//! assert_eq!(upstream.request_count(), 0); // blocked before the upstream was called
//! # }
//! ```

pub mod app;
pub mod auth;
pub mod config;
mod drain;
pub mod guardrail_routes;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod process;
pub mod reload;
pub mod request_bytes;
pub mod slow_client;
pub mod telemetry;
pub mod upstream;
