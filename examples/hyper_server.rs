//! The whole stack on a bare hyper server (no framework), with a hyper-util client upstream.
//!
//! ```text
//! UPSTREAM_BASE=http://127.0.0.1:9000/v1 cargo run --example hyper_server
//! curl localhost:8080/v1/chat/completions -d '{"model":"m","messages":[{"role":"user","content":"this is forbidden"}]}'
//! ```

mod support;

use guardrail_tower::core::{ConfiguredGuardrail, GuardrailMode, Guardrails};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::spend_log::{JsonlSink, SpendLogLayer, SpendLogWriter};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::{BoxError, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let config: ContentFilterConfig =
        serde_yaml_ng::from_str("blocked_words: [{keyword: forbidden, action: BLOCK}]")?;
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "block-words",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        ContentFilter::new(config)?,
    )
    .default_on(true)]);
    let log_path = std::env::temp_dir().join("guardrail-tower-hyper-example.jsonl");
    let spend_log = SpendLogWriter::new().spawn(JsonlSink::open(&log_path).await?);

    let stack = ServiceBuilder::new()
        .layer(SpendLogLayer::new(spend_log.clone()))
        .layer(ErrorNormalizeLayer::new())
        .layer(ModelGuardrailMergeLayer::new().model("gpt-guarded", ["block-words"]))
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(support::forward(
            support::upstream_base(),
            std::env::var("OPENAI_API_KEY").ok(),
        ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!(
        "listening on http://127.0.0.1:8080 (spend log: {})",
        log_path.display()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let service = TowerToHyperService::new(stack.clone());
                tokio::spawn(async move {
                    if let Err(e) = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        eprintln!("connection error: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    spend_log.shutdown().await?;
    Ok(())
}
