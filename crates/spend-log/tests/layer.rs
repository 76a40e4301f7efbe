//! SpendLogLayer through `oneshot`: exactly one record for every way a request can end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::{ConfiguredGuardrail, GuardrailMode, Guardrails, Verdict, guardrail_fn};
use guardrail_tower_spend_log::{
    ApiBase, ChannelSink, ModelPrice, PriceTable, SpendLogHandle, SpendLogLayer, SpendLogWriter,
    SpendRecord, SpendStatus,
};
use guardrail_tower_testkit::body::{self, TestBody};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

fn writer() -> (SpendLogHandle, UnboundedReceiver<SpendRecord>) {
    let (sink, rx) = ChannelSink::new();
    let handle = SpendLogWriter::new()
        .linger(Duration::from_millis(1))
        .spawn(sink);
    (handle, rx)
}

/// Flushes the writer and returns every record it wrote.
async fn records(
    handle: SpendLogHandle,
    mut rx: UnboundedReceiver<SpendRecord>,
) -> Vec<SpendRecord> {
    handle.shutdown().await.unwrap();
    let mut out = Vec::new();
    while let Ok(record) = rx.try_recv() {
        out.push(record);
    }
    out
}

fn upstream(
    response: Response<TestBody>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<TestBody>,
    Error = BoxError,
    Future = std::future::Ready<Result<Response<TestBody>, BoxError>>,
> + Clone {
    let response = Arc::new(Mutex::new(Some(response)));
    service_fn(move |_req: Request<Full<Bytes>>| {
        std::future::ready(Ok(response.lock().unwrap().take().expect("one request")))
    })
}

fn chat_request(stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": "gpt-guarded", "stream": stream, "user": "alice", "messages": [{"role": "user", "content": "hi"}]});
    Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-live-secret")
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn json_response(body: &'static str) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(body::chunks([body]))
        .unwrap()
}

const CHAT_JSON: &str = r#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#;

#[tokio::test]
async fn a_successful_json_request_writes_every_field() {
    let (handle, rx) = writer();
    let prices = PriceTable::new().model(
        "gpt-guarded",
        ModelPrice {
            input_cost_per_token: 0.001,
            output_cost_per_token: 0.002,
        },
    );
    let mut response = json_response(CHAT_JSON);
    response
        .extensions_mut()
        .insert(ApiBase("http://127.0.0.1:9000/v1".into()));
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()).prices(prices))
        .service(upstream(response));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        CHAT_JSON
    );
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.request_id, "req-42");
    assert_eq!(r.call_type, "acompletion");
    assert_eq!(r.status, SpendStatus::Success);
    assert_eq!(r.model, "gpt-guarded");
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert_eq!(r.api_base.as_deref(), Some("http://127.0.0.1:9000/v1"));
    let key = r.api_key.as_deref().unwrap();
    assert_eq!(key.len(), 64);
    assert!(!serde_json::to_string(r).unwrap().contains("sk-live-secret"));
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (10, 20, 30)
    );
    assert!((r.spend - 0.05).abs() < 1e-9);
    assert!(r.completion_start_time.is_some());
    assert!(r.end_time >= r.start_time);
    assert_eq!(
        meta(r),
        json!({"guardrail_information": [], "error_information": null, "http_status": 200, "stream": false})
    );
}

#[tokio::test]
async fn an_inner_error_writes_one_failure() {
    let (handle, rx) = writer();
    let failing = service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<TestBody>, BoxError>("connection pool exhausted".into())
    });
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(failing);
    let err = svc.oneshot(chat_request(false)).await.unwrap_err();
    assert_eq!(err.to_string(), "connection pool exhausted");
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Failure);
    assert_eq!(
        meta(&records[0])["error_information"]["error_message"],
        "connection pool exhausted"
    );
    assert_eq!(meta(&records[0])["http_status"], 500);
}

#[tokio::test]
async fn no_body_completes_at_the_response() {
    let (handle, rx) = writer();
    let empty = Response::builder()
        .status(204)
        .body(body::chunks(Vec::<Bytes>::new()).exact())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(empty));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    // Written even though the body is never polled.
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Success);
    assert_eq!(meta(&records[0])["http_status"], 204);
    drop(resp);
}

#[tokio::test]
async fn an_exact_length_body_completes_without_being_polled_to_none() {
    let (handle, rx) = writer();
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(body::chunks([CHAT_JSON]).exact())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let mut body = svc.oneshot(chat_request(false)).await.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), CHAT_JSON);
    // The client stops here: it saw the whole declared length. No more polls, and no drop yet.
    let records_now = {
        let handle = handle.clone();
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle.stats().written
    };
    assert_eq!(records_now, 1);
    let records = records(handle, rx).await;
    std::mem::forget(body);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Success);
    assert_eq!(records[0].total_tokens, 30);
}

#[tokio::test]
async fn trailers_end_the_request() {
    let (handle, rx) = writer();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let response = Response::new(body::chunks(["data"]).with_trailers(trailers));
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let collected = svc
        .oneshot(chat_request(false))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert!(collected.trailers().is_some());
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Success);
}

#[tokio::test]
async fn a_body_error_writes_one_failure() {
    let (handle, rx) = writer();
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .body(body::chunks(["data: {\"choices\":[]}\n\n"]).then_error("upstream reset mid-stream"))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let result = svc
        .oneshot(chat_request(true))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    assert!(result.is_err());
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Failure);
    assert_eq!(
        meta(&records[0])["error_information"]["error_code"],
        "upstream_stream_error"
    );
    assert_eq!(
        meta(&records[0])["error_information"]["error_message"],
        "upstream reset mid-stream"
    );
    assert_eq!(meta(&records[0])["stream"], true);
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_writes_one_failure() {
    let (handle, rx) = writer();
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .body(
            body::chunks([
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            ])
            .then_pending(),
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let mut body = svc.oneshot(chat_request(true)).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, SpendStatus::Failure);
    assert_eq!(
        meta(&records[0])["error_information"]["error_code"],
        "client_disconnected"
    );
    assert!(records[0].completion_start_time.is_some());
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_response_writes_one_failure() {
    let (handle, rx) = writer();
    let slow = service_fn(|_req: Request<Full<Bytes>>| async {
        std::future::pending::<()>().await;
        Ok::<Response<TestBody>, BoxError>(Response::new(body::chunks([""])))
    });
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(slow);
    let timed_out =
        tokio::time::timeout(Duration::from_millis(20), svc.oneshot(chat_request(false))).await;
    assert!(timed_out.is_err());
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        meta(&records[0])["error_information"]["error_code"],
        "client_disconnected"
    );
    assert_eq!(records[0].model, "gpt-guarded");
}

#[tokio::test]
async fn bad_request_bodies_write_one_failure() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()).body_limit(32))
        .service(upstream(json_response("{}")));
    let req = Request::post("/v1/messages")
        .body(Full::new(Bytes::from_static(b"{\"model\":")))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    resp.into_body().collect().await.unwrap();
    let big = Request::post("/v1/messages")
        .body(Full::new(Bytes::from(vec![b' '; 64])))
        .unwrap();
    let resp = svc.oneshot(big).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    resp.into_body().collect().await.unwrap();
    let mut records = records(handle, rx).await;
    records.sort_by_key(|r| r.metadata.http_status);
    assert_eq!(records.len(), 2);
    assert_eq!(
        meta(&records[0])["error_information"]["error_code"],
        "invalid_json"
    );
    assert_eq!(
        meta(&records[1])["error_information"]["error_code"],
        "request_too_large"
    );
    assert!(
        records
            .iter()
            .all(|r| r.call_type == "anthropic_messages" && r.status == SpendStatus::Failure)
    );
}

#[tokio::test]
async fn usage_is_read_from_each_kind_of_stream() {
    let cases = [
        (
            "/v1/chat/completions",
            include_str!("../../protocol/testdata/openai_chat.sse"),
            (19, 21, 40),
        ),
        (
            "/v1/responses",
            include_str!("../../protocol/testdata/openai_responses.sse"),
            (37, 11, 48),
        ),
        (
            "/v1/messages",
            include_str!("../../protocol/testdata/anthropic_messages.sse"),
            (25, 15, 40),
        ),
    ];
    for (path, stream, (prompt, completion, total)) in cases {
        let (handle, rx) = writer();
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body::chunks(
                stream
                    .split_inclusive("\n\n")
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ))
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(SpendLogLayer::new(handle.clone()))
            .service(upstream(response));
        let req = Request::post(path)
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","stream":true,"messages":[]}"#,
            )))
            .unwrap();
        let out = svc
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(out, stream, "passed through unchanged");
        let records = records(handle, rx).await;
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (prompt, completion, total),
            "{path}"
        );
        assert_eq!(r.status, SpendStatus::Success);
    }
}

fn blocker() -> ConfiguredGuardrail {
    ConfiguredGuardrail::new(
        "block-words",
        GuardrailMode::PreCall,
        guardrail_fn(|input| async move {
            Ok(if input.texts().iter().any(|t| t.contains("forbidden")) {
                Verdict::block("Blocked: forbidden")
            } else {
                Verdict::allow()
            })
        }),
    )
    .default_on(true)
}

/// The guardrail information of a blocked request to `path`, with times zeroed.
async fn blocked_guardrail_information(path: &str, body: &str) -> (Value, Value) {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()).store_prompts_in_spend_logs(true))
        .layer(guardrail_tower_error::ErrorNormalizeLayer::new())
        .layer(guardrail_tower_pre_call::PreCallGuardrailLayer::new(
            Guardrails::new([blocker()]),
        ))
        .service(upstream(json_response("{}")));
    let req = Request::post(path)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    resp.into_body().collect().await.unwrap();
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let mut info = meta(&records[0])["guardrail_information"].clone();
    for entry in info.as_array_mut().unwrap() {
        for time in ["start_time", "end_time", "duration"] {
            assert!(entry[time].as_f64().is_some());
            entry[time] = json!(0);
        }
    }
    (info, meta(&records[0])["error_information"].clone())
}

/// Regression after the production bug: a pre_call block on /v1/responses had a null
/// guardrail_information in the spend log while the same block on /v1/chat/completions had it.
#[tokio::test]
async fn a_block_on_responses_is_recorded_exactly_like_one_on_chat() {
    let chat = blocked_guardrail_information(
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"forbidden"}]}"#,
    )
    .await;
    let responses =
        blocked_guardrail_information("/v1/responses", r#"{"model":"m","input":"forbidden"}"#)
            .await;
    let anthropic = blocked_guardrail_information(
        "/v1/messages",
        r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"forbidden"}]}"#,
    )
    .await;
    assert_eq!(
        chat.0,
        json!([{
            "guardrail_name": "block-words",
            "guardrail_provider": "custom",
            "guardrail_mode": "pre_call",
            "guardrail_status": "guardrail_intervened",
            "guardrail_action": "block",
            "guardrail_response": "Blocked: forbidden",
            "start_time": 0, "end_time": 0, "duration": 0
        }])
    );
    assert_eq!(responses, chat);
    assert_eq!(anthropic.0, chat.0);
    assert_eq!(chat.1["error_class"], "policy_block");
    assert_eq!(chat.1["error_code"], "content_policy_violation");
}

#[tokio::test]
async fn guardrail_responses_are_redacted_by_default() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .layer(guardrail_tower_pre_call::PreCallGuardrailLayer::new(
            Guardrails::new([blocker()]),
        ))
        .service(upstream(json_response("{}")));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"forbidden"}]}"#,
        )))
        .unwrap();
    svc.oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let records = records(handle, rx).await;
    let entry = &meta(&records[0])["guardrail_information"][0];
    assert_eq!(entry["guardrail_action"], "block");
    assert!(
        entry["guardrail_response"]
            .as_str()
            .unwrap()
            .starts_with("[redacted")
    );
}

#[tokio::test]
async fn an_in_band_block_after_the_200_is_a_failure_with_its_guardrail() {
    let (handle, rx) = writer();
    let post = ConfiguredGuardrail::new(
        "no-corner",
        GuardrailMode::PostCall,
        guardrail_fn(|input| async move {
            Ok(if input.texts().iter().any(|t| t.contains("corner")) {
                Verdict::block("no corners")
            } else {
                Verdict::allow()
            })
        }),
    )
    .default_on(true);
    let stream = include_str!("../../protocol/testdata/openai_chat.sse");
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .body(body::chunks(
            stream
                .split_inclusive("\n\n")
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .layer(guardrail_tower_streaming::StreamingGuardrailBodyLayer::new(
            Guardrails::new([post]),
        ))
        .service(upstream(response));
    let resp = svc.oneshot(chat_request(true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let out = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&out).contains("no corners"));
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.status, SpendStatus::Failure);
    assert_eq!(meta(r)["http_status"], 200);
    assert_eq!(meta(r)["error_information"]["error_class"], "policy_block");
    assert_eq!(meta(r)["error_information"]["guardrail"], "no-corner");
    assert_eq!(
        meta(r)["guardrail_information"][0]["guardrail_mode"],
        "post_call"
    );
}

/// A record's metadata as the JSON a store holds.
fn meta(record: &SpendRecord) -> serde_json::Value {
    serde_json::to_value(&record.metadata).unwrap()
}
