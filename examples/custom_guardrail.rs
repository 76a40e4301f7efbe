//! A guardrail of your own in a few lines, on the request (pre_call) and on the response
//! (post_call): it blocks any mention of a competitor and redacts ticket numbers.
//!
//! ```text
//! cargo run --example custom_guardrail                # against a mock upstream on loopback
//! ```

mod support;

use bytes::Bytes;
use guardrail_tower::core::{
    ConfiguredGuardrail, Guardrail, GuardrailError, GuardrailInput, GuardrailMode, Guardrails,
    Verdict,
};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Blocks any text that mentions a competitor, and redacts ticket numbers (`TICKET-42` becomes
/// `TICKET-***`).
#[derive(Debug)]
pub(crate) struct CompanyPolicy;

impl Guardrail for CompanyPolicy {
    async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
        if input
            .texts()
            .iter()
            .any(|t| t.to_lowercase().contains("acme corp"))
        {
            return Ok(Verdict::block("We don't discuss competitors."));
        }
        let redacted: Vec<String> = input.texts().iter().map(|t| redact_tickets(t)).collect();
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

/// `TICKET-` followed by digits: the digits become `***`. Already redacted text is unchanged,
/// so the response (which may quote the redacted request) is not redacted twice.
pub(crate) fn redact_tickets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("TICKET-") {
        let (before, after) = rest.split_at(at + "TICKET-".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("***");
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Sends `prompt` as a chat completion through the policy, in front of the upstream at
/// `upstream_base`; returns what the client gets: the status and the body.
pub(crate) async fn ask(
    upstream_base: &str,
    api_key: Option<&str>,
    prompt: &str,
) -> Result<(StatusCode, Bytes), BoxError> {
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "company-policy",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        CompanyPolicy,
    )
    .default_on(true)]);
    let svc = ServiceBuilder::new()
        .layer(ErrorNormalizeLayer::new())
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(support::forward(
            upstream_base.to_owned(),
            api_key.map(str::to_owned),
        ));

    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": prompt}]});
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = svc.oneshot(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let upstream = support::Upstream::from_env().await?;
    for prompt in [
        "What is the status of TICKET-42?",
        "Is Acme Corp any good?",
        "Hello!",
    ] {
        let (status, body) = ask(&upstream.base, upstream.key.as_deref(), prompt).await?;
        println!(
            "{prompt:?}\n  -> {status} {}\n",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
