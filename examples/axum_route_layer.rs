//! The layers in front of handlers the app wrote itself, not a proxy: an axum app's own
//! OpenAI-compatible endpoint, guarded with `Router::route_layer`.
//!
//! The app is a support assistant. Its handler for `POST /support/v1/chat/completions` puts the
//! company's system prompt first, picks the model itself and asks the model API; the guardrails
//! check what users send and what the assistant answers, and every call is in the spend log.
//! `GET /health` and `GET /support/hours` are plain handlers without the layers: `route_layer`
//! wraps only the routes of the router it is called on (and never answers an unmatched path).
//!
//! ```text
//! cargo run --example axum_route_layer                # the model API: a mock on loopback
//! curl localhost:3001/support/v1/chat/completions -d '{"messages":[{"role":"user","content":"How do I reset my password?"}]}'
//! ```

mod support;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use guardrail_tower::core::{CallType, ConfiguredGuardrail, Error, GuardrailMode, Guardrails};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig, HttpClient};
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::spend_log::{JsonlSink, SpendLogHandle, SpendLogLayer, SpendLogWriter};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{BoxError, ServiceBuilder};

/// What the assistant is told before every conversation.
pub(crate) const SYSTEM_PROMPT: &str = "You are the support assistant of Example Corp. Answer \
     questions about our products only.";

/// The model the app uses, whatever the client asks for.
pub(crate) const MODEL: &str = "gpt-4o-mini";

/// The app's state: where its model API is.
#[derive(Clone)]
struct Assistant {
    model_base: String,
    api_key: Option<String>,
    client: HttpClient,
}

/// The app's own endpoint. The body it gets is the one the guardrails checked (and masked).
async fn support_chat(State(app): State<Assistant>, body: Bytes) -> Response {
    match ask_model(&app, &body).await {
        Ok(response) => response,
        // Errors in the endpoint's own shape (ErrorNormalizeLayer keeps it as it is).
        Err(err) => Error::upstream_unavailable(err)
            .to_response(CallType::ChatCompletions)
            .map(axum::body::Body::from),
    }
}

async fn ask_model(app: &Assistant, body: &[u8]) -> Result<Response, BoxError> {
    let mut request: Value = serde_json::from_slice(body)?;
    let messages = request["messages"]
        .as_array_mut()
        .ok_or("`messages` must be a list")?;
    messages.insert(0, json!({"role": "system", "content": SYSTEM_PROMPT}));
    request["model"] = json!(MODEL);

    let mut call = Request::post(format!("{}/chat/completions", app.model_base))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(key) = &app.api_key {
        call = call.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let call = call.body(Full::new(Bytes::from(serde_json::to_vec(&request)?)))?;
    // The model's answer streams back as it arrives (JSON, or SSE when `stream` is true).
    let answer = app.client.request(call).await?;
    Ok(answer.map(axum::body::Body::new))
}

async fn hours() -> axum::Json<Value> {
    axum::Json(json!({"open": "09:00", "close": "17:00", "timezone": "UTC"}))
}

async fn health() -> &'static str {
    "ok"
}

/// The app: its own handlers, the guardrail layers on the assistant's route only.
pub(crate) fn app(
    model_base: &str,
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
    let assistant = Assistant {
        model_base: model_base.to_owned(),
        api_key: api_key.map(str::to_owned),
        client: HttpClient::new(),
    };

    let guarded = Router::new()
        .route("/support/v1/chat/completions", post(support_chat))
        .route_layer(
            ServiceBuilder::new()
                .layer(SpendLogLayer::new(spend_log))
                .layer(ErrorNormalizeLayer::new())
                .layer(PreCallGuardrailLayer::new(guardrails.clone()))
                .layer(StreamingGuardrailBodyLayer::new(guardrails)),
        )
        .with_state(assistant);
    Ok(Router::new()
        .route("/health", get(health))
        .route("/support/hours", get(hours))
        .merge(guarded))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = support::Upstream::from_env().await?;
    let log_path = std::env::temp_dir().join("guardrail-tower-route-layer-example.jsonl");
    let spend_log = SpendLogWriter::new().spawn(JsonlSink::open(&log_path).await?);

    let app = app(&upstream.base, upstream.key.as_deref(), spend_log.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!(
        "listening on http://127.0.0.1:3001 (spend log: {})",
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
