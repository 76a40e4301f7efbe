//! `ErrorNormalizeLayer` in front of an upstream that fails three ways (the mock upstream's
//! fault injection): each failure reaches the client in the shape its endpoint's SDK parses,
//! with the right status.
//!
//! ```text
//! cargo run --example normalized_error
//! ```

mod support;

use std::time::Duration;

use bytes::Bytes;
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower_testkit::mock::{FAULT_HEADER, Fault};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// One way the upstream fails: the endpoint, and the fault the mock injects.
pub(crate) const FAILURES: [(&str, Fault, &str); 3] = [
    (
        "/v1/chat/completions",
        Fault::Html500,
        "a load balancer answers with an HTML page",
    ),
    (
        "/v1/messages",
        Fault::Status503,
        "a proxy answers with plain text",
    ),
    ("/v1/responses", Fault::Hang, "the upstream never answers"),
];

/// Sends one request per [`FAILURES`] entry through `ErrorNormalizeLayer` and a `timeout`, in
/// front of the upstream at `upstream_base`; returns what the client gets for each: the status
/// and the body.
pub(crate) async fn failures(
    upstream_base: &str,
    timeout: Duration,
) -> Result<Vec<(StatusCode, Bytes)>, BoxError> {
    let service = ServiceBuilder::new()
        .layer(ErrorNormalizeLayer::new())
        .timeout(timeout)
        .service(support::forward(upstream_base.to_owned(), None));

    let mut seen = Vec::new();
    for (path, fault, _) in FAILURES {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header(FAULT_HEADER, fault.as_str())
            .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o-mini"}"#)))?;
        let resp = service.clone().oneshot(req).await?; // never an Err: the error type is Infallible
        let status = resp.status();
        seen.push((status, resp.into_body().collect().await?.to_bytes()));
    }
    Ok(seen)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // The faults are the mock's: this example always runs against it.
    let mock = guardrail_tower_testkit::mock::MockUpstream::start().await?;
    let seen = failures(&mock.base_url(), Duration::from_secs(2)).await?;
    for ((path, _, what), (status, body)) in FAILURES.iter().zip(seen) {
        println!(
            "POST {path} ({what})\n  -> {status}\n  {}\n",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
