//! A guardrail of your own in a few lines, on the request (pre_call) and on the response
//! (post_call), run against a stub upstream. No network needed.
//!
//! ```text
//! cargo run --example custom_guardrail
//! ```

use bytes::Bytes;
use guardrail_tower::core::{
    ConfiguredGuardrail, Guardrail, GuardrailError, GuardrailInput, GuardrailMode, Guardrails,
    Verdict,
};
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

/// Blocks any text that mentions a competitor, and redacts ticket numbers.
struct CompanyPolicy;

impl Guardrail for CompanyPolicy {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        if input
            .texts()
            .iter()
            .any(|t| t.to_lowercase().contains("acme corp"))
        {
            return Ok(Verdict::block("We don't discuss competitors."));
        }
        let redacted: Vec<String> = input
            .texts()
            .iter()
            .map(|t| t.replace("TICKET-", "TICKET-#####-"))
            .collect();
        Ok(if redacted == input.texts() {
            Verdict::allow()
        } else {
            Verdict::rewrite(redacted)
        })
    }

    fn provider(&self) -> &str {
        "company_policy"
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "company-policy",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        CompanyPolicy,
    )
    .default_on(true)]);

    // A stub model that repeats the prompt.
    let model = service_fn(|req: Request<Full<Bytes>>| async move {
        let body: serde_json::Value =
            serde_json::from_slice(&req.into_body().collect().await?.to_bytes())?;
        let prompt = body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let answer = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("You asked: {prompt}")}, "finish_reason": "stop"}]
        });
        Ok::<_, BoxError>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))?,
        )
    });
    let svc = ServiceBuilder::new()
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(model);

    for prompt in [
        "What is the status of TICKET-42?",
        "Is Acme Corp any good?",
        "Hello!",
    ] {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": prompt}]});
        let req =
            Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body.to_string())))?;
        let resp = svc.clone().oneshot(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!(
            "{prompt:?}\n  -> {status} {}\n",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
