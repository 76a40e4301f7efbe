//! The time `PreCallGuardrailLayer` adds to a request, with one content filter.
//!
//! The filter (`default_on`, `pre_call`) has 20 blocked words (10 BLOCK, 10 MASK) and the
//! prebuilt patterns email (MASK), us_ssn (BLOCK), credit_card (BLOCK), us_phone (MASK) and
//! ipv4 (MASK), configured from YAML as LiteLLM's `litellm_params`. The request is a ~1.5 KiB
//! chat completion (system prompt and three turns) that matches nothing.
//!
//! Each iteration builds the request and runs it with `oneshot` on a current-thread runtime; the
//! upstream echoes the request body as its response body (so the masked case can be checked).
//!
//! - `upstream_only`: the trivial upstream alone (the baseline).
//! - `parse_only`: `BufferRequest` (buffer and parse the JSON once) then the upstream.
//! - `layer_not_selected`: the layer with the filter configured but not selected (not
//!   `default_on`, not asked for): buffering, parsing and the gate.
//! - `layer_pass`: the layer running the filter; the request passes unchanged.
//! - `layer_masked`: the same request with one email address, masked: the body is re-serialized.
//!
//! `layer_pass - upstream_only` is the layer's cost per request.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_core::{
    BufferRequest, ConfiguredGuardrail, DEFAULT_BODY_LIMIT, GuardrailMode, Guardrails,
};
use guardrail_tower_guardrails::content_filter::{ContentFilter, ContentFilterConfig};
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

const FILTER_YAML: &str = r#"
guardrail: litellm_content_filter
mode: pre_call
patterns:
  - {pattern_type: prebuilt, pattern_name: email, action: MASK}
  - {pattern_type: prebuilt, pattern_name: us_ssn, action: BLOCK}
  - {pattern_type: prebuilt, pattern_name: credit_card, action: BLOCK}
  - {pattern_type: prebuilt, pattern_name: us_phone, action: MASK}
  - {pattern_type: prebuilt, pattern_name: ipv4, action: MASK}
blocked_words:
  - {keyword: project-nightingale, action: BLOCK, description: Internal codename}
  - {keyword: confidential, action: BLOCK}
  - {keyword: internal only, action: BLOCK}
  - {keyword: trade secret, action: BLOCK}
  - {keyword: acquisition target, action: BLOCK}
  - {keyword: layoff list, action: BLOCK}
  - {keyword: salary band, action: BLOCK}
  - {keyword: root password, action: BLOCK}
  - {keyword: private key, action: BLOCK}
  - {keyword: do not distribute, action: BLOCK}
  - {keyword: acme corp, action: MASK}
  - {keyword: globex, action: MASK}
  - {keyword: initech, action: MASK}
  - {keyword: umbrella, action: MASK}
  - {keyword: hooli, action: MASK}
  - {keyword: vandelay, action: MASK}
  - {keyword: wonka, action: MASK}
  - {keyword: stark industries, action: MASK}
  - {keyword: wayne enterprises, action: MASK}
  - {keyword: cyberdyne, action: MASK}
"#;

/// A ~1.5 KiB chat completion request; `extra` is appended to the last user message.
fn request_body(extra: &str) -> Bytes {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 800,
        "user": "user-8841",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a software team. \
                Answer concisely, prefer bullet points, and say so when you are not sure. \
                Never invent command-line flags; if a tool's behaviour depends on its version, \
                ask which version is in use before answering."},
            {"role": "user", "content": "We are moving our billing service to a new cluster \
                next month. What should we check before the cut-over so that invoices keep \
                going out on time, and how do we roll back if the new database is slower than \
                expected under the end-of-month load?"},
            {"role": "assistant", "content": "Before the cut-over: run the end-of-month batch \
                against a copy of production data on the new cluster and compare timings; make \
                sure the queue consumers are idempotent so a replay after rollback does not \
                send an invoice twice; keep the old database in read-only mode with replication \
                running backwards for a week. Roll back by pointing the service at the old \
                primary and replaying the queue from the last confirmed offset."},
            {"role": "user", "content": format!("Thanks. Can you turn that into a checklist \
                with owners as placeholders, and add a step for telling the support team \
                what to say if customers ask about delayed invoices?{extra}")},
        ],
    });
    let bytes = serde_json::to_vec(&body).unwrap();
    assert!((1024..=2048).contains(&bytes.len()), "{}", bytes.len());
    bytes.into()
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// The trivial upstream: echoes the request body.
async fn echo(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(req.into_body()))
}

fn guardrails(default_on: bool) -> Guardrails {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(FILTER_YAML).unwrap();
    let filter = ContentFilter::new(config).unwrap();
    Guardrails::new([
        ConfiguredGuardrail::new("content-filter", GuardrailMode::PreCall, filter)
            .default_on(default_on),
    ])
}

/// Runs `svc` once on `body` and returns the response body the upstream echoed, checking the
/// status and whether the filter ran.
async fn check_once<S, B>(svc: S, body: &Bytes, ran: bool) -> Bytes
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let resp = svc.oneshot(request(body)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-litellm-applied-guardrails").is_some(),
        ran
    );
    resp.into_body().collect().await.unwrap().to_bytes()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clean = request_body("");
    let with_email = request_body(" If anything is unclear, write to jane.doe@example.com.");

    let upstream = service_fn(echo);
    let layered = PreCallGuardrailLayer::new(guardrails(true)).layer(upstream);
    let not_selected = PreCallGuardrailLayer::new(guardrails(false)).layer(upstream);

    // The filter runs, the clean request passes byte for byte, the email is masked.
    rt.block_on(async {
        assert_eq!(check_once(layered.clone(), &clean, true).await, clean);
        assert_eq!(check_once(not_selected.clone(), &clean, false).await, clean);
        let masked = check_once(layered.clone(), &with_email, true).await;
        let masked = String::from_utf8(masked.to_vec()).unwrap();
        assert!(masked.contains("[EMAIL_REDACTED]") && !masked.contains("jane.doe"));
    });

    let mut group = c.benchmark_group("pre_call_chat_1k5");
    group.throughput(Throughput::Elements(1));
    group.bench_function("upstream_only", |b| {
        b.to_async(&rt)
            .iter(|| upstream.oneshot(request(black_box(&clean))))
    });
    group.bench_function("parse_only", |b| {
        b.to_async(&rt).iter(|| async {
            let req = BufferRequest::new(request(black_box(&clean)), DEFAULT_BODY_LIMIT)
                .await
                .unwrap();
            upstream.oneshot(req).await
        })
    });
    group.bench_function("layer_not_selected", |b| {
        b.to_async(&rt)
            .iter(|| not_selected.clone().oneshot(request(black_box(&clean))))
    });
    group.bench_function("layer_pass", |b| {
        b.to_async(&rt)
            .iter(|| layered.clone().oneshot(request(black_box(&clean))))
    });
    group.bench_function("layer_masked", |b| {
        b.to_async(&rt)
            .iter(|| layered.clone().oneshot(request(black_box(&with_email))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
