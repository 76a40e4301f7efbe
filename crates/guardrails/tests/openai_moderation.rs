//! The OpenAI moderation guardrail against a real local HTTP server: the request, the URL rule,
//! flagged and clean answers, and failures.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, Decision, Guardrail, GuardrailErrorKind, GuardrailInput, GuardrailMode, RequestId,
    RequestMeta,
};
use guardrail_tower_guardrails::http::HttpClient;
use guardrail_tower_guardrails::openai_moderation::{OpenAiModeration, OpenAiModerationConfig};
use guardrail_tower_testkit::{TestServer, serve};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tower::service_fn;

/// One request the fake moderation endpoint received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A moderation endpoint that records requests and always answers `status` with `answer`.
async fn endpoint(status: u16, answer: Value) -> (TestServer, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let answer = answer.to_string();
        async move {
            let path = req.uri().path().to_owned();
            let headers = req.headers().clone();
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(Received {
                path,
                headers,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap(),
            )
        }
    });
    (serve(svc).await, log)
}

fn moderation(api_base: String, api_key: Option<&str>) -> OpenAiModeration {
    let mut config = OpenAiModerationConfig::default();
    config.api_base = api_base;
    config.api_key = api_key.map(str::to_owned);
    config.timeout = Some(0.5);
    OpenAiModeration::with_client(config, HttpClient::new()).expect("valid config")
}

fn input(texts: &[&str]) -> GuardrailInput {
    let meta = RequestMeta::new(RequestId::from("req-1"), CallType::ChatCompletions);
    GuardrailInput::new(
        texts.iter().map(|t| t.to_string()).collect(),
        Side::Request,
        GuardrailMode::PreCall,
        Arc::new(meta),
    )
}

fn flagged_answer() -> Value {
    json!({
        "id": "modr-1",
        "model": "omni-moderation-latest",
        "results": [
            {"flagged": false,
             "categories": {"harassment": false, "violence": false},
             "category_scores": {"harassment": 0.01, "violence": 0.02}},
            {"flagged": true,
             "categories": {"harassment": true, "violence": true, "hate": false},
             "category_scores": {"harassment": 0.93, "violence": 0.81, "hate": 0.1}}
        ]
    })
}

#[tokio::test]
async fn flagged_text_is_blocked_naming_the_categories() {
    let (server, log) = endpoint(200, flagged_answer()).await;
    let guard = moderation(server.url("/v1"), Some("sk-test"));
    let verdict = guard
        .check(&input(&["hello", "you are awful"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Block {
            message: "Violated OpenAI moderation policy: flagged for harassment, violence".into()
        }
    );
    assert_eq!(
        verdict.detail().unwrap(),
        &json!({
            "flagged": true,
            "violated_categories": ["harassment", "violence"],
            "category_scores": {"harassment": 0.93, "violence": 0.81}
        })
    );

    let got = log.lock().unwrap()[0].clone();
    assert_eq!(got.path, "/v1/moderations");
    assert_eq!(got.headers["authorization"], "Bearer sk-test");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        got.body,
        json!({"model": "omni-moderation-latest", "input": ["hello", "you are awful"]})
    );
}

#[tokio::test]
async fn clean_text_is_allowed() {
    let answer = json!({"id": "modr-2", "results": [{"flagged": false, "categories": {}}]});
    let (server, log) = endpoint(200, answer.clone()).await;
    let guard = moderation(server.url(""), None);
    let verdict = guard.check(&input(&["good morning"])).await.unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert_eq!(verdict.detail(), Some(&answer));
    let got = log.lock().unwrap()[0].clone();
    assert!(got.headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_url_accepts_a_base_with_or_without_v1() {
    let answer = json!({"results": [{"flagged": false}]});
    let (server, log) = endpoint(200, answer).await;
    for base in ["", "/", "/v1", "/v1/", "/v1/moderations"] {
        let guard = moderation(server.url(base), Some("k"));
        assert_eq!(guard.endpoint().path(), "/v1/moderations", "{base:?}");
        guard.check(&input(&["x"])).await.unwrap();
    }
    let guard = moderation(server.url("/openai"), Some("k"));
    guard.check(&input(&["x"])).await.unwrap();
    let paths: Vec<String> = log.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v1/moderations",
            "/v1/moderations",
            "/v1/moderations",
            "/v1/moderations",
            "/v1/moderations",
            "/openai/v1/moderations"
        ]
    );
}

#[tokio::test]
async fn empty_input_is_not_sent() {
    let (server, log) = endpoint(200, json!({"results": []})).await;
    let guard = moderation(server.url(""), None);
    let verdict = guard.check(&input(&["", "  "])).await.unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn errors_are_classified() {
    let (unauthorized, _l1) = endpoint(401, json!({"error": {"message": "bad key"}})).await;
    let err = moderation(unauthorized.url(""), Some("wrong"))
        .check(&input(&["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("bad key"), "{err}");

    let (unavailable, _l2) = endpoint(502, json!({})).await;
    let err = moderation(unavailable.url(""), None)
        .check(&input(&["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable);

    let (odd, _l3) = endpoint(200, json!({"id": "no results"})).await;
    let err = moderation(odd.url(""), None)
        .check(&input(&["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
}
