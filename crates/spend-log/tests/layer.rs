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

/// An upstream response streaming `body` as server-sent events.
fn event_stream(body: TestBody) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// A streaming chat request through the spend-log layer alone, answered with `response`: the
/// body the client receives.
async fn stream_through_log(
    handle: &SpendLogHandle,
    response: Response<TestBody>,
) -> Result<Bytes, BoxError> {
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let body = svc.oneshot(chat_request(true)).await.unwrap().into_body();
    Ok(body.collect().await?.to_bytes())
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
    let call_id = resp.headers()["x-litellm-call-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        CHAT_JSON
    );
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    // The key is the gateway's own id, returned as x-litellm-call-id; the client's id is data.
    assert_eq!(r.request_id, call_id);
    assert_eq!(uuid_version(&r.request_id), 7);
    assert_eq!(r.client_request_id.as_deref(), Some("req-42"));
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
        json!({"guardrail_information": [], "applied_guardrails": [], "error_information": null, "http_status": 200, "stream": false})
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
    // Whether or not the body says it ended after its last bytes: a server that sent the
    // announced length stops polling there (hyper does), and the request was served whole.
    for body in [
        body::chunks([CHAT_JSON]).exact(),
        body::chunks([CHAT_JSON]).exact_without_end(),
    ] {
        let (handle, rx) = writer();
        let response = Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(SpendLogLayer::new(handle.clone()))
            .service(upstream(response));
        let mut body = svc.oneshot(chat_request(false)).await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), CHAT_JSON);
        // The client stops here: it saw the whole declared length. No more polls, and no drop:
        // the record must already be on its way.
        let records = records(handle, rx).await;
        std::mem::forget(body);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status, SpendStatus::Success);
        assert_eq!(records[0].total_tokens, 30);
    }
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
    let response = event_stream(
        body::chunks(["data: {\"choices\":[]}\n\n"]).then_error("upstream reset mid-stream"),
    );
    assert!(stream_through_log(&handle, response).await.is_err());
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
async fn an_upstream_error_event_in_a_stream_is_a_failure_however_it_is_spaced() {
    let content = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"an \\\"error\\\" is a word\"}}]}\n\n";
    let errors = [
        "data: {\"error\":{\"message\":\"overloaded\",\"code\":\"server_error\"}}\n\n",
        "data: { \"error\" : { \"message\": \"overloaded\", \"code\": \"server_error\" } }\n\n",
        "data:{\"id\":\"x\",\"error\":{\"message\":\"overloaded\",\"code\":\"server_error\"}}\r\n\r\n",
    ];
    for error in errors {
        for with_error in [false, true] {
            let (handle, rx) = writer();
            let mut events = vec![content.to_owned()];
            if with_error {
                events.push(error.to_owned());
            }
            events.push("data: [DONE]\n\n".to_owned());
            let response = event_stream(body::chunks(events.clone()));
            let out = stream_through_log(&handle, response).await.unwrap();
            assert_eq!(out, events.concat(), "passed through unchanged");
            let records = records(handle, rx).await;
            assert_eq!(records.len(), 1);
            let r = &records[0];
            if with_error {
                assert_eq!(r.status, SpendStatus::Failure, "{error}");
                assert_eq!(meta(r)["error_information"]["error_code"], "server_error");
                assert_eq!(meta(r)["error_information"]["error_message"], "overloaded");
            } else {
                // A delta whose text says "error" is content, not an error.
                assert_eq!(r.status, SpendStatus::Success);
                assert_eq!(meta(r)["error_information"], Value::Null);
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_goes_away_mid_stream_writes_one_failure() {
    let (handle, rx) = writer();
    let response = event_stream(
        body::chunks(["data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"])
            .then_pending(),
    );
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
        let response = event_stream(body::chunks(
            stream
                .split_inclusive("\n\n")
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ));
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
    let response = event_stream(body::chunks(
        stream
            .split_inclusive("\n\n")
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ));
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

/// The version of a UUID in its hyphenated text form.
fn uuid_version(id: &str) -> u32 {
    assert_eq!(id.len(), 36, "{id}");
    id[14..15].parse().unwrap()
}

/// A service answering every request with a fresh copy of `body` (JSON).
fn json_upstream(
    body: &'static str,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<TestBody>,
    Error = BoxError,
    Future = std::future::Ready<Result<Response<TestBody>, BoxError>>,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| std::future::ready(Ok(json_response(body))))
}

/// Regression for the audit hole: with the client's `x-request-id` as the key (and
/// `INSERT OR IGNORE`), three requests with one header left one row.
#[tokio::test]
async fn reused_and_forged_request_ids_never_merge_or_hide_rows() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(
        guardrail_tower_spend_log::SqliteSink::open(dir.path().join("spend.db"))
            .await
            .unwrap(),
    );
    let handle = SpendLogWriter::new()
        .linger(Duration::from_millis(1))
        .spawn(Arc::clone(&sink));
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(json_upstream(CHAT_JSON));
    let send = |client_id: String| {
        let svc = svc.clone();
        async move {
            let mut req = chat_request(false);
            req.headers_mut()
                .insert("x-request-id", client_id.parse().unwrap());
            let resp = svc.oneshot(req).await.unwrap();
            let call_id = resp.headers()["x-litellm-call-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(resp.headers()["x-request-id"], client_id.as_str());
            resp.into_body().collect().await.unwrap();
            call_id
        }
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(send("dup".to_owned()).await);
    }
    // A client sending another request's gateway id as its own id.
    ids.push(send(ids[0].clone()).await);
    handle.shutdown().await.unwrap();

    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "{ids:?}");
    use guardrail_tower_spend_log::{SpendLogFilter, SpendLogStore};
    let rows = sink.query(&SpendLogFilter::new()).await.unwrap();
    assert_eq!(rows.len(), 4, "4 requests, 4 rows");
    let dup = sink
        .query(&SpendLogFilter::new().client_request_id("dup"))
        .await
        .unwrap();
    assert_eq!(dup.len(), 3);
    let first = sink
        .query(&SpendLogFilter::new().request_id(ids[0].clone()))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].client_request_id.as_deref(), Some("dup"));
    let forged = sink
        .query(&SpendLogFilter::new().client_request_id(ids[0].clone()))
        .await
        .unwrap();
    assert_eq!(forged.len(), 1);
    assert_eq!(forged[0].request_id, ids[3]);
}

#[tokio::test]
async fn without_a_client_id_the_response_carries_the_gateway_id_twice() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(json_upstream(CHAT_JSON));
    let mut req = chat_request(false);
    // An invalid id (a space) is ignored like a missing one.
    req.headers_mut()
        .insert("x-request-id", "has space".parse().unwrap());
    let resp = svc.oneshot(req).await.unwrap();
    let call_id = resp.headers()["x-litellm-call-id"].clone();
    assert_eq!(resp.headers()["x-request-id"], call_id);
    resp.into_body().collect().await.unwrap();
    let records = records(handle, rx).await;
    assert_eq!(records[0].request_id, call_id.to_str().unwrap());
    assert_eq!(records[0].client_request_id, None);
}

#[tokio::test]
async fn an_authenticated_caller_is_recorded_with_litellm_names() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(json_upstream(CHAT_JSON));
    let caller = guardrail_tower_core::Caller::with_key_hash("f".repeat(64))
        .key_alias("ci-key")
        .user_id("user-7")
        .team_id("team-3")
        .org_id("org-1");
    // With a body `user`, it wins; without, the caller's user id is the `user`.
    let mut with_user = chat_request(false);
    with_user.extensions_mut().insert(Arc::new(caller.clone()));
    let body = json!({"model": "gpt-guarded", "messages": [{"role": "user", "content": "hi"}]});
    let mut without_user = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-live-secret")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    without_user.extensions_mut().insert(Arc::new(caller));
    for req in [with_user, without_user] {
        let resp = svc.clone().oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.api_key,
            Some("f".repeat(64)),
            "the caller's hash, not the bearer's"
        );
        let m = meta(r);
        assert_eq!(m["user_api_key_alias"], "ci-key");
        assert_eq!(m["user_api_key_user_id"], "user-7");
        assert_eq!(m["user_api_key_team_id"], "team-3");
        assert_eq!(m["user_api_key_org_id"], "org-1");
    }
    assert_eq!(records[0].user.as_deref(), Some("alice"));
    assert_eq!(records[1].user.as_deref(), Some("user-7"));
}

/// An authentication layer inside the spend log (the gateway's order: the log outermost, so it
/// records refusals too) hands the caller back in the response's extensions; the record takes it
/// from there, and its key hash wins over the hash of the bearer key.
#[tokio::test]
async fn a_caller_found_by_an_inner_layer_is_recorded_from_the_response() {
    let (handle, rx) = writer();
    let caller = Arc::new(
        guardrail_tower_core::Caller::with_key_hash("litellm_proxy_master_key")
            .key_alias("ci-key")
            .user_id("user-7")
            .team_id("team-3"),
    );
    let found = Arc::clone(&caller);
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .map_response(move |mut resp: Response<TestBody>| {
            resp.extensions_mut().insert(Arc::clone(&found));
            resp
        })
        .service(json_upstream(CHAT_JSON));
    let body = json!({"model": "gpt-guarded", "messages": [{"role": "user", "content": "hi"}]});
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-live-secret")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.api_key.as_deref(), Some("litellm_proxy_master_key"));
    assert_eq!(r.user.as_deref(), Some("user-7"));
    let m = meta(r);
    assert_eq!(m["user_api_key_alias"], "ci-key");
    assert_eq!(m["user_api_key_user_id"], "user-7");
    assert_eq!(m["user_api_key_team_id"], "team-3");
    assert!(m.get("user_api_key_org_id").is_none(), "{m}");
}

/// An authentication layer inside the spend log names the caller in the `ResponseReport` the log
/// put in the request: the record names the caller even when the client leaves before any
/// response.
#[tokio::test]
async fn a_caller_named_in_the_report_is_recorded_when_the_client_leaves_first() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let report = guardrail_tower_core::ResponseReport::of(&req)
                .expect("the spend log leaves a report in the request");
            report.set_caller(&Arc::new(
                guardrail_tower_core::Caller::with_key_hash("h-1").key_alias("ci-key"),
            ));
            // The upstream never answers.
            std::future::pending::<Result<Response<TestBody>, BoxError>>().await
        }));
    let gone =
        tokio::time::timeout(Duration::from_millis(50), svc.oneshot(chat_request(false))).await;
    assert!(gone.is_err());
    let records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.api_key.as_deref(), Some("h-1"));
    assert_eq!(meta(r)["user_api_key_alias"], "ci-key");
    let error = r.metadata.error_information.as_ref().unwrap();
    assert_eq!(error.error_type, "client_disconnected");
}

#[tokio::test]
async fn without_a_caller_the_bearer_key_is_hashed_and_no_caller_fields_are_written() {
    let (handle, rx) = writer();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(json_upstream(CHAT_JSON));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let records = records(handle, rx).await;
    // SHA-256("sk-live-secret").
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(b"sk-live-secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(records[0].api_key, Some(expected));
    let m = meta(&records[0]);
    for key in [
        "user_api_key_alias",
        "user_api_key_user_id",
        "user_api_key_team_id",
        "user_api_key_org_id",
    ] {
        assert!(m.get(key).is_none(), "{key} in {m}");
    }
}

/// A JSON response far above any buffer the layer could keep: the usage after 6 MiB of
/// content is still read.
/// A JSON body of a known length is read from its end only when one frame holds all of it:
/// cut after a nested `usage` object, the first of two frames would look, walked from its end,
/// like a document whose last member is that `usage`.
#[tokio::test]
async fn usage_is_read_from_the_end_only_of_a_body_in_one_frame() {
    const NESTED: &str = r#"{"choices":[{"usage":{"total_tokens":9}}"#;
    const REST: &str = r#"],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
    for frames in [
        vec![format!("{NESTED}{REST}")],
        vec![NESTED.into(), REST.into()],
    ] {
        let r = record_of_json(StatusCode::OK, frames.clone()).await;
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (1, 2, 3),
            "{frames:?}"
        );
    }
}

/// An upstream's JSON error, with no layer inside to report it, is read from the body: in one
/// frame of a known length (never read from its end, which reads only the usage) and in two.
#[tokio::test]
async fn an_upstream_json_error_is_recorded_in_one_frame_or_two() {
    const ERROR: &str =
        r#"{"error":{"message":"slow down","type":"rate_limit_error"},"usage":null}"#;
    for frames in [
        vec![ERROR.to_owned()],
        vec![ERROR[..12].into(), ERROR[12..].into()],
    ] {
        let r = record_of_json(StatusCode::TOO_MANY_REQUESTS, frames.clone()).await;
        assert_eq!(r.status, SpendStatus::Failure, "{frames:?}");
        assert_eq!(
            meta(&r)["error_information"]["error_message"],
            "slow down",
            "{frames:?}"
        );
        assert_eq!(meta(&r)["http_status"], 429, "{frames:?}");
    }
}

/// The one record of a chat request answered with a JSON body of `frames`, its length known.
async fn record_of_json(status: StatusCode, frames: Vec<String>) -> SpendRecord {
    let (handle, rx) = writer();
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body::chunks(frames).exact())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let mut records = records(handle, rx).await;
    assert_eq!(records.len(), 1);
    records.remove(0)
}

#[tokio::test]
async fn usage_is_read_from_a_6_mib_json_response() {
    let (handle, rx) = writer();
    let content = "lorem ipsum \"usage\": {} ".repeat(6 * 1024 * 1024 / 24 + 1);
    let body = format!(
        r#"{{"id":"c","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}}}}],"usage":{{"prompt_tokens":7,"completion_tokens":1500000,"total_tokens":1500007}}}}"#
    );
    assert!(body.len() > 6 * 1024 * 1024);
    let chunks: Vec<Bytes> = Bytes::from(body.clone())
        .chunks(64 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let response = Response::builder()
        .header("content-type", "application/json")
        .body(body::chunks(chunks))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .service(upstream(response));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), body.len());
    let records = records(handle, rx).await;
    let r = &records[0];
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (7, 1_500_000, 1_500_007)
    );
    assert!(!r.metadata.usage_estimated);
}

/// An SSE body of chat chunks carrying `texts`, then (if given) a usage chunk, then `[DONE]`.
fn chat_stream(texts: &[&str], usage: Option<(u64, u64)>) -> Response<TestBody> {
    let mut events: Vec<String> = texts
        .iter()
        .map(|t| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}], "usage": null})
            )
        })
        .collect();
    if let Some((p, c)) = usage {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
        ));
    }
    events.push("data: [DONE]\n\n".to_owned());
    event_stream(body::chunks(events))
}

/// The text deltas a client read from a chat stream.
fn delivered_text(sse: &[u8]) -> String {
    String::from_utf8_lossy(sse)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn no_corner(policy: Option<guardrail_tower_core::StreamPolicy>) -> ConfiguredGuardrail {
    let g = ConfiguredGuardrail::new(
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
    match policy {
        Some(p) => g.stream_policy(p),
        None => g,
    }
}

/// Regression: a stream blocked after the 200 was recorded with 0 tokens.
#[tokio::test]
async fn a_stream_blocked_before_the_usage_event_records_an_estimate_of_what_was_delivered() {
    let (handle, rx) = writer();
    let texts = [
        "Hello", " there,", " the", " café", " ☕", " is", " open", " until", " late", ";",
        " turn", " at", " the", " corner", " and", " walk", " on",
    ];
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .layer(guardrail_tower_streaming::StreamingGuardrailBodyLayer::new(
            Guardrails::new([no_corner(Some(
                guardrail_tower_core::StreamPolicy::Window {
                    chars: 8,
                    overlap: 8,
                },
            ))]),
        ))
        .service(upstream(chat_stream(&texts, Some((12, 40)))));
    let resp = svc.oneshot(chat_request(true)).await.unwrap();
    let out = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&out).contains("no corners"));
    let delivered = delivered_text(&out);
    assert!(
        !delivered.is_empty() && !delivered.contains("corner"),
        "{delivered:?}"
    );
    let records = records(handle, rx).await;
    let r = &records[0];
    assert_eq!(r.status, SpendStatus::Failure);
    let chars = delivered.chars().count() as u64;
    assert_eq!(r.completion_tokens, chars.div_ceil(4), "{delivered:?}");
    // The prompt, "hi": one token.
    assert_eq!(
        (r.prompt_tokens, r.total_tokens),
        (1, 1 + chars.div_ceil(4))
    );
    assert!(r.metadata.usage_estimated);
    assert_eq!(meta(r)["usage_estimated"], true);
}

#[tokio::test]
async fn a_stream_blocked_after_the_usage_event_records_the_upstream_usage() {
    let (handle, rx) = writer();
    let texts = ["Hello", " there,", " turn", " at", " the", " corner"];
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .layer(guardrail_tower_streaming::StreamingGuardrailBodyLayer::new(
            Guardrails::new([no_corner(Some(
                guardrail_tower_core::StreamPolicy::EndOfStream,
            ))]),
        ))
        .service(upstream(chat_stream(&texts, Some((12, 40)))));
    let resp = svc.oneshot(chat_request(true)).await.unwrap();
    let out = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&out).contains("no corners"));
    let records = records(handle, rx).await;
    let r = &records[0];
    assert_eq!(r.status, SpendStatus::Failure);
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (12, 40, 52)
    );
    assert!(!r.metadata.usage_estimated);
    assert!(meta(r).get("usage_estimated").is_none());
}

/// A record's metadata as the JSON a store holds.
fn meta(record: &SpendRecord) -> serde_json::Value {
    serde_json::to_value(&record.metadata).unwrap()
}

/// A monitor that would block `word`, answering once `release` is notified.
fn gated_monitor(
    name: &'static str,
    mode: GuardrailMode,
    word: &'static str,
    release: Arc<tokio::sync::Notify>,
) -> ConfiguredGuardrail {
    ConfiguredGuardrail::new(
        name,
        mode,
        guardrail_fn(move |input: guardrail_tower_core::GuardrailInput| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(if input.texts().iter().any(|t| t.contains(word)) {
                    Verdict::block(format!("'{word}' is not allowed"))
                } else {
                    Verdict::allow()
                })
            }
        }),
    )
    .default_on(true)
    .monitor(true)
}

#[tokio::test]
async fn the_record_waits_for_monitors_and_carries_their_would_be_blocks() {
    let (handle, mut rx) = writer();
    let (pre_release, post_release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let guardrails = Guardrails::new([
        gated_monitor(
            "pre-trial",
            GuardrailMode::PreCall,
            "hi",
            pre_release.clone(),
        ),
        gated_monitor(
            "post-trial",
            GuardrailMode::PostCall,
            "hello",
            post_release.clone(),
        ),
    ]);
    let observed = Arc::new(Mutex::new(Vec::new()));
    let seen = observed.clone();
    let svc = ServiceBuilder::new()
        .layer(
            SpendLogLayer::new(handle.clone())
                .store_prompts_in_spend_logs(true)
                .observer(move |r: &SpendRecord| seen.lock().unwrap().push(r.clone())),
        )
        .layer(guardrail_tower_pre_call::PreCallGuardrailLayer::new(
            guardrails.clone(),
        ))
        .layer(guardrail_tower_streaming::StreamingGuardrailBodyLayer::new(
            guardrails,
        ))
        .service(upstream(json_response(CHAT_JSON)));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-litellm-applied-guardrails"],
        "pre-trial,post-trial"
    );
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        CHAT_JSON
    );
    // The response is complete; the record waits for the monitors.
    assert_eq!(handle.stats().deferred, 1);
    assert!(rx.try_recv().is_err());
    assert!(observed.lock().unwrap().is_empty());
    pre_release.notify_one();
    post_release.notify_one();
    let record = rx
        .recv()
        .await
        .expect("the record, once the monitors answered");
    assert_eq!(handle.stats().deferred, 0);
    assert_eq!(record.status, SpendStatus::Success);
    assert_eq!(
        record.metadata.applied_guardrails,
        ["pre-trial", "post-trial"]
    );
    let entries = meta(&record)["guardrail_information"].clone();
    let mut got: Vec<(String, String, String, String, Value)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["guardrail_name"].as_str().unwrap().to_owned(),
                e["guardrail_mode"].as_str().unwrap().to_owned(),
                e["guardrail_status"].as_str().unwrap().to_owned(),
                e["guardrail_action"].as_str().unwrap().to_owned(),
                e["guardrail_response"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let row = |name: &str, mode: &str, word: &str| {
        (
            name.to_owned(),
            mode.to_owned(),
            "guardrail_intervened".to_owned(),
            "allow".to_owned(),
            json!(format!("'{word}' is not allowed")),
        )
    };
    assert_eq!(
        got,
        [
            row("post-trial", "post_call", "hello"),
            row("pre-trial", "pre_call", "hi")
        ]
    );
    // The observer saw the same record, once.
    assert_eq!(*observed.lock().unwrap(), [record]);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_for_a_record_still_waiting_for_its_monitors() {
    let (handle, mut rx) = writer();
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = ServiceBuilder::new()
        .layer(SpendLogLayer::new(handle.clone()))
        .layer(guardrail_tower_pre_call::PreCallGuardrailLayer::new(
            Guardrails::new([gated_monitor(
                "trial",
                GuardrailMode::PreCall,
                "hi",
                release.clone(),
            )]),
        ))
        .service(upstream(json_response(CHAT_JSON)));
    let resp = svc.oneshot(chat_request(false)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(handle.stats().deferred, 1);
    let shutdown = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown().await }
    });
    release.notify_one();
    shutdown.await.unwrap().unwrap();
    let record = rx.try_recv().expect("written before the writer stopped");
    assert_eq!(record.metadata.applied_guardrails, ["trial"]);
    assert_eq!(handle.stats().written, 1);
}
