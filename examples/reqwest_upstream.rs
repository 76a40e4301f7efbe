//! The layers in front of the upstream service an existing gateway already has: here a
//! `tower::Service` built on `reqwest` (rustls, no default features), not this project's own
//! forwarder. The layers need nothing from it but `Service<http::Request<Full<Bytes>>>`
//! returning an `http::Response` whose body is an `http_body::Body`, which `reqwest::Body` is.
//!
//! ```text
//! cargo run --example reqwest_upstream                # against a mock upstream on loopback
//! UPSTREAM_BASE=https://api.openai.com/v1 OPENAI_API_KEY=sk-... cargo run --example reqwest_upstream
//! curl localhost:3002/v1/chat/completions -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! ```

mod support;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::post_service;
use bytes::Bytes;
use guardrail_tower::core::{ConfiguredGuardrail, Error, GuardrailMode, Guardrails};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::spend_log::{JsonlSink, SpendLogHandle, SpendLogLayer, SpendLogWriter};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceBuilder};

/// The gateway's existing upstream client: forwards `/v1/...` to `{base}/...` with its own key.
///
/// Only the content type and `accept` of the client's request go upstream: the client's
/// credentials and other headers stay at the gateway.
#[derive(Debug, Clone)]
pub(crate) struct ReqwestUpstream {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl ReqwestUpstream {
    /// A client for the OpenAI-compatible API at `base` (e.g. `https://api.openai.com/v1`).
    pub(crate) fn new(base: &str, api_key: Option<&str>) -> Result<Self, BoxError> {
        // reqwest is built without a default crypto provider; this uses rustls' `ring` one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(ReqwestUpstream {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            api_key: api_key.map(str::to_owned),
        })
    }
}

impl Service<Request<Full<Bytes>>> for ReqwestUpstream {
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(())) // reqwest pools and queues connections itself
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let path = req.uri().path();
        let url = format!("{}{}", self.base, path.strip_prefix("/v1").unwrap_or(path));
        let mut call = self.client.request(req.method().clone(), url);
        for name in [CONTENT_TYPE, ACCEPT] {
            if let Some(value) = req.headers().get(&name) {
                call = call.header(name, value);
            }
        }
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        Box::pin(async move {
            // The guardrail layers hand over the buffered (and possibly masked) body.
            let body = req.into_body().collect().await?.to_bytes();
            let response = call.body(body).send().await.map_err(upstream_error)?;
            Ok(Response::from(response))
        })
    }
}

/// reqwest's timeouts and connect failures as the errors `ErrorNormalizeLayer` answers with 504
/// and 502; anything else is classified from its source chain.
fn upstream_error(err: reqwest::Error) -> BoxError {
    if err.is_timeout() {
        Error::upstream_timeout(&err).into()
    } else if err.is_connect() {
        Error::upstream_unavailable(&err).into()
    } else {
        err.into()
    }
}

/// The gateway's routes, each with the whole stack in front of the reqwest upstream.
pub(crate) fn gateway(
    upstream: ReqwestUpstream,
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
    let stack = ServiceBuilder::new()
        .layer(SpendLogLayer::new(spend_log))
        .layer(ErrorNormalizeLayer::new())
        .layer(ModelGuardrailMergeLayer::new())
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(upstream);
    Ok(["/v1/chat/completions", "/v1/responses", "/v1/messages"]
        .into_iter()
        .fold(Router::new(), |router, path| {
            router.route(path, post_service(stack.clone()))
        }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = support::Upstream::from_env().await?;
    let log_path = std::env::temp_dir().join("guardrail-tower-reqwest-example.jsonl");
    let spend_log = SpendLogWriter::new().spawn(JsonlSink::open(&log_path).await?);
    let client = ReqwestUpstream::new(&upstream.base, upstream.key.as_deref())?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3002").await?;
    println!(
        "listening on http://127.0.0.1:3002 (spend log: {})",
        log_path.display()
    );
    axum::serve(listener, gateway(client, spend_log.clone())?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    spend_log.shutdown().await?;
    Ok(())
}
