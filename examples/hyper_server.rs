//! The whole stack on a bare hyper server (no framework), with a hyper-util client upstream.
//!
//! ```text
//! cargo run --example hyper_server                    # against a mock upstream on loopback
//! UPSTREAM_BASE=http://127.0.0.1:9000/v1 cargo run --example hyper_server
//! curl localhost:8080/v1/chat/completions -d '{"model":"gpt-guarded","messages":[{"role":"user","content":"this is forbidden"}]}'
//! ```

mod support;

use std::future::Future;

use bytes::Bytes;
use guardrail_tower::core::{ConfiguredGuardrail, GuardrailMode, Guardrails};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::spend_log::{JsonlSink, SpendLogHandle, SpendLogLayer, SpendLogWriter};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::{Request, Response};
use hyper::body::{Body, Incoming};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{BoxError, Service, ServiceBuilder};

/// The stack: `block-words` runs on every request and response (`default_on`); `pii-mask` masks
/// email addresses, but only for the model `gpt-guarded` (a model-level guardrail).
pub(crate) fn stack(
    upstream_base: String,
    api_key: Option<String>,
    spend_log: SpendLogHandle,
) -> Result<
    impl Service<
        Request<Incoming>,
        Response = Response<impl Body<Data = Bytes, Error = impl Into<BoxError>> + Send + 'static>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    BoxError,
> {
    let words: ContentFilterConfig =
        serde_yaml_ng::from_str("blocked_words: [{keyword: forbidden, action: BLOCK}]")?;
    let emails: ContentFilterConfig = serde_yaml_ng::from_str(
        "patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]",
    )?;
    let guardrails = Guardrails::new([
        ConfiguredGuardrail::new(
            "block-words",
            [GuardrailMode::PreCall, GuardrailMode::PostCall],
            ContentFilter::new(words)?,
        )
        .default_on(true),
        ConfiguredGuardrail::new(
            "pii-mask",
            [GuardrailMode::PreCall, GuardrailMode::PostCall],
            ContentFilter::new(emails)?,
        ),
    ]);
    Ok(ServiceBuilder::new()
        .layer(SpendLogLayer::new(spend_log))
        .layer(ErrorNormalizeLayer::new())
        .layer(ModelGuardrailMergeLayer::new().model("gpt-guarded", ["pii-mask"]))
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(support::forward(upstream_base, api_key)))
}

/// Serves `stack` on `listener`, HTTP/1.1 and HTTP/2, one task per connection, until `shutdown`
/// resolves.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    stack: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut shutdown = std::pin::pin!(shutdown);
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
            () = &mut shutdown => return Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = support::Upstream::from_env().await?;
    let log_path = std::env::temp_dir().join("guardrail-tower-hyper-example.jsonl");
    let spend_log = SpendLogWriter::new().spawn(JsonlSink::open(&log_path).await?);
    let stack = stack(
        upstream.base.clone(),
        upstream.key.clone(),
        spend_log.clone(),
    )?;

    let listener = TcpListener::bind("127.0.0.1:8080").await?;
    println!(
        "listening on http://127.0.0.1:8080 (spend log: {})",
        log_path.display()
    );
    serve(listener, stack, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    spend_log.shutdown().await?;
    Ok(())
}
