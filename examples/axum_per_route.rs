//! An axum router where each route gets the layers it needs: `/v1/chat/completions` gets all
//! five, `/v1/embeddings` only error normalization and the spend log.
//!
//! ```text
//! cargo run --example axum_per_route                  # against a mock upstream on loopback
//! UPSTREAM_BASE=https://api.openai.com/v1 OPENAI_API_KEY=sk-... cargo run --example axum_per_route
//! curl localhost:3000/v1/chat/completions -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
//! ```

mod support;

use axum::Router;
use axum::routing::post_service;
use guardrail_tower::core::{ConfiguredGuardrail, GuardrailMode, Guardrails};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::spend_log::{JsonlSink, SpendLogHandle, SpendLogLayer, SpendLogWriter};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use tower::{BoxError, ServiceBuilder};

/// The router: the whole stack on chat completions, errors and spend log on embeddings, both in
/// front of the same upstream (an OpenAI-compatible base URL and its key).
pub(crate) fn app(
    upstream_base: &str,
    api_key: Option<&str>,
    spend_log: SpendLogHandle,
) -> Result<Router, BoxError> {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(
        "blocked_words: [{keyword: forbidden, action: BLOCK}]\n\
         patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]",
    )?;
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "content-filter",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        ContentFilter::new(config)?,
    )
    .default_on(true)]);
    let forward = support::forward(upstream_base.to_owned(), api_key.map(str::to_owned));

    let chat = ServiceBuilder::new()
        .layer(SpendLogLayer::new(spend_log.clone()))
        .layer(ErrorNormalizeLayer::new())
        .layer(ModelGuardrailMergeLayer::new())
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(forward.clone());
    let embeddings = ServiceBuilder::new()
        .layer(SpendLogLayer::new(spend_log))
        .layer(ErrorNormalizeLayer::new())
        .service(forward);

    Ok(Router::new()
        .route("/v1/chat/completions", post_service(chat))
        .route("/v1/embeddings", post_service(embeddings)))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = support::Upstream::from_env().await?;
    let log_path = std::env::temp_dir().join("guardrail-tower-axum-example.jsonl");
    let spend_log = SpendLogWriter::new().spawn(JsonlSink::open(&log_path).await?);

    let app = app(&upstream.base, upstream.key.as_deref(), spend_log.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://127.0.0.1:3000 (spend log: {})",
        log_path.display()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    spend_log.shutdown().await?;
    Ok(())
}
