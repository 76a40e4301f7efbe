//! Layer order cannot be wrong in silence: every order of `ModelGuardrailMergeLayer`,
//! `PreCallGuardrailLayer` and `StreamingGuardrailBodyLayer` either works (model-level
//! guardrails applied on the way in and out, the request masked before the streaming layer and
//! the upstream see it, a blocked word in the response blocked, JSON and streamed) or refuses its
//! requests with a 500 `misordered_layers` naming the two layers, without calling the upstream.
//! Each order is driven through `oneshot`; two are also served over real sockets in front of the
//! mock upstream.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower::core::{
    BoxError, ConfiguredGuardrail, GuardrailInput, GuardrailMode, Guardrails, StreamPolicy,
    Verdict, guardrail_fn,
};
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::model_merge::ModelGuardrailMergeLayer;
use guardrail_tower::pre_call::PreCallGuardrailLayer;
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::{post_json, send, serve};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::util::BoxCloneService;
use tower::{Layer as _, ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L {
    Merge,
    PreCall,
    Streaming,
}

/// The six orders, outermost first.
const ORDERS: [[L; 3]; 6] = [
    [L::Merge, L::PreCall, L::Streaming],
    [L::Merge, L::Streaming, L::PreCall],
    [L::PreCall, L::Merge, L::Streaming],
    [L::PreCall, L::Streaming, L::Merge],
    [L::Streaming, L::Merge, L::PreCall],
    [L::Streaming, L::PreCall, L::Merge],
];

/// What each order does with a request: works, or is refused naming (outer, inner) and why.
fn expected(order: [L; 3]) -> Option<(&'static str, &'static str, &'static str)> {
    const MERGE: &str = "ModelGuardrailMergeLayer";
    const PRE: &str = "PreCallGuardrailLayer";
    const STREAM: &str = "StreamingGuardrailBodyLayer";
    const SKIPPED: &str = "model-level guardrails would be skipped";
    const UNMASKED: &str = "post-call guardrails would see the request before pre-call masking";
    match order {
        [L::Merge, L::PreCall, L::Streaming] => None,
        // The streaming layer saw the request first: the pre-call layer inside it refuses.
        [L::Merge, L::Streaming, L::PreCall] => Some((PRE, STREAM, UNMASKED)),
        // The merge inside the pre-call layer (seed bug 000).
        [L::PreCall, L::Merge, L::Streaming] => Some((MERGE, PRE, SKIPPED)),
        [L::PreCall, L::Streaming, L::Merge] => Some((MERGE, PRE, SKIPPED)),
        [L::Streaming, L::Merge, L::PreCall] => Some((MERGE, STREAM, SKIPPED)),
        [L::Streaming, L::PreCall, L::Merge] => Some((PRE, STREAM, UNMASKED)),
        _ => unreachable!(),
    }
}

fn misordered(outer: &str, inner: &str, why: &str) -> Value {
    json!({"error": {
        "message": format!(
            "misordered guardrail-tower layers: {outer} must be outside {inner} (add it earlier in \
             the ServiceBuilder); here it runs inside it, where {why}"
        ),
        "type": "internal_server_error",
        "param": null,
        "code": "misordered_layers",
    }})
}

fn blocked() -> Value {
    json!({"error": {
        "message": "Content blocked: keyword 'forbidden' detected",
        "type": "invalid_request_error",
        "param": null,
        "code": "content_policy_violation",
    }})
}

fn filter(yaml: &str) -> ContentFilter {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(yaml).unwrap();
    ContentFilter::new(config).unwrap()
}

/// What the post-call side saw of the request (`RequestMeta::body`), per check.
type Seen = Arc<Mutex<Vec<Value>>>;

/// `pii` (default on, pre_call): masks `secret`. `model-words` (model-level only, pre_call and
/// post_call): blocks `forbidden`. `spy` (default on, post_call): records the request body the
/// streaming layer hands to post-call guardrails, and allows.
fn guardrails(spy_seen: Seen) -> Guardrails {
    let spy = guardrail_fn(move |input: GuardrailInput| {
        if let Some(body) = input.meta().body() {
            spy_seen.lock().unwrap().push(body.clone());
        }
        async { Ok(Verdict::allow()) }
    });
    Guardrails::new([
        // First, so it runs before the block.
        // Checking at the end of a stream, it holds nothing back.
        ConfiguredGuardrail::new("spy", GuardrailMode::PostCall, spy)
            .default_on(true)
            .stream_policy(StreamPolicy::EndOfStream),
        ConfiguredGuardrail::new(
            "pii",
            GuardrailMode::PreCall,
            filter("blocked_words: [{keyword: secret, action: MASK}]"),
        )
        .default_on(true),
        ConfiguredGuardrail::new(
            "model-words",
            [GuardrailMode::PreCall, GuardrailMode::PostCall],
            filter("blocked_words: [{keyword: forbidden, action: BLOCK}]"),
        ),
    ])
}

fn merge() -> ModelGuardrailMergeLayer {
    ModelGuardrailMergeLayer::new().model("gpt-guarded", ["model-words"])
}

type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

/// The first event of [`STREAM`], released before the block.
const FIRST_EVENT: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"this is \"}}]}\n\n";

/// The upstream's stream: the blocked word in its second event.
const STREAM: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"this is \"}}]}\n\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"forbidden\"}}]}\n\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                      data: [DONE]\n\n";

/// An upstream that records each request body it gets and answers with the blocked word, as
/// JSON or as a stream.
fn upstream(received: Seen) -> Svc {
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let received = received.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            let body: Value = serde_json::from_slice(&body)?;
            let stream = body["stream"] == true;
            received.lock().unwrap().push(body);
            let response = if stream {
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Full::new(Bytes::from_static(STREAM.as_bytes())))?
            } else {
                let json = json!({"id": "c", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "this is forbidden"}}]});
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json.to_string())))?
            };
            Ok::<_, BoxError>(response.map(|b| b.map_err(|e| match e {}).boxed_unsync()))
        }
    });
    BoxCloneService::new(svc)
}

fn boxed<S, B>(svc: S) -> Svc
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        svc.map_response(|r: Response<B>| r.map(|b| b.map_err(Into::into).boxed_unsync())),
    )
}

/// The three layers in `order` (outermost first) over `inner`.
fn stack(order: [L; 3], guardrails: &Guardrails, inner: Svc) -> Svc {
    order.iter().rev().fold(inner, |svc, layer| match layer {
        L::Merge => boxed(merge().layer(svc)),
        L::PreCall => boxed(PreCallGuardrailLayer::new(guardrails.clone()).layer(svc)),
        L::Streaming => boxed(StreamingGuardrailBodyLayer::new(guardrails.clone()).layer(svc)),
    })
}

fn chat(content: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": "gpt-guarded", "stream": stream,
                      "messages": [{"role": "user", "content": content}]});
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn call(svc: &Svc, req: Request<Full<Bytes>>) -> (u16, String) {
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn every_order_works_or_refuses_naming_the_layers() {
    for order in ORDERS {
        let (received, spy_seen) = (Seen::default(), Seen::default());
        let svc = stack(
            order,
            &guardrails(spy_seen.clone()),
            upstream(received.clone()),
        );
        let requests = [
            chat("my secret plan", false),
            chat("a forbidden plan", false),
            chat("my secret plan", true),
        ];
        let [masked, blocked_pre, streamed] = requests;
        match expected(order) {
            None => {
                // Masked before the upstream; the model-level guardrail blocks the word in
                // the JSON response.
                let (status, body) = call(&svc, masked).await;
                assert_eq!((status, json_of(&body)), (400, blocked()), "{order:?}");
                let masked_content = "my [KEYWORD_REDACTED] plan";
                let got = received.lock().unwrap().clone();
                assert_eq!(got.len(), 1, "{order:?}");
                assert_eq!(got[0]["messages"][0]["content"], masked_content);
                // The streaming layer saw the masked request, never the original.
                let spied = spy_seen.lock().unwrap().clone();
                assert_eq!(spied.len(), 1, "{order:?}");
                assert_eq!(spied[0]["messages"][0]["content"], masked_content);

                // The model-level guardrail blocks the request: nothing goes upstream.
                let (status, body) = call(&svc, blocked_pre).await;
                assert_eq!((status, json_of(&body)), (400, blocked()), "{order:?}");
                assert_eq!(received.lock().unwrap().len(), 1, "{order:?}");

                // And the word in a stream: what came before it, then the in-band error.
                let (status, body) = call(&svc, streamed).await;
                assert_eq!(status, 200, "{order:?}");
                assert_eq!(
                    body,
                    format!("{FIRST_EVENT}data: {}\n\ndata: [DONE]\n\n", blocked()),
                    "{order:?}"
                );
                assert_eq!(received.lock().unwrap().len(), 2, "{order:?}");
                for seen in spy_seen.lock().unwrap().iter() {
                    assert_eq!(seen["messages"][0]["content"], masked_content);
                }
            }
            Some((outer, inner, why)) => {
                // Every request is refused the same way, streamed or not, and nothing reaches
                // the upstream.
                for req in [masked, blocked_pre, streamed] {
                    let (status, body) = call(&svc, req).await;
                    assert_eq!(
                        (status, json_of(&body)),
                        (500, misordered(outer, inner, why)),
                        "{order:?}"
                    );
                }
                assert!(received.lock().unwrap().is_empty(), "{order:?}");
                assert!(spy_seen.lock().unwrap().is_empty(), "{order:?}");
            }
        }
    }
}

#[tokio::test]
async fn the_whole_stack_used_twice_is_fine() {
    // A global stack and a route's own: the same layers twice, in the right order each time.
    let (received, spy_seen) = (Seen::default(), Seen::default());
    let g = guardrails(spy_seen.clone());
    let inner = stack(
        [L::Merge, L::PreCall, L::Streaming],
        &g,
        upstream(received.clone()),
    );
    let svc = stack([L::Merge, L::PreCall, L::Streaming], &g, inner);
    let (status, body) = call(&svc, chat("my secret plan", false)).await;
    assert_eq!((status, json_of(&body)), (400, blocked()));
    assert_eq!(received.lock().unwrap().len(), 1);
    assert_eq!(
        received.lock().unwrap()[0]["messages"][0]["content"],
        "my [KEYWORD_REDACTED] plan"
    );
}

/// The mock upstream's reply to a prompt with `project` names BLUEBIRD; `model-words` blocks it
/// on the way out when the model-level guardrails were merged.
fn socket_guardrails() -> Guardrails {
    Guardrails::new([
        ConfiguredGuardrail::new(
            "pii",
            GuardrailMode::PreCall,
            filter("blocked_words: [{keyword: secret, action: MASK}]"),
        )
        .default_on(true),
        ConfiguredGuardrail::new(
            "model-words",
            [GuardrailMode::PreCall, GuardrailMode::PostCall],
            filter("blocked_words: [{keyword: BLUEBIRD, action: BLOCK}]"),
        ),
    ])
}

#[tokio::test]
async fn over_real_sockets_the_right_order_guards_and_a_wrong_one_refuses() {
    let mock = MockUpstream::start().await.unwrap();
    let origin = mock.origin();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let forward = service_fn(move |mut req: Request<Full<Bytes>>| {
        *req.uri_mut() = format!("{origin}{}", req.uri().path()).parse().unwrap();
        client.request(req)
    });
    let g = socket_guardrails();
    let right = serve(
        ServiceBuilder::new()
            .layer(merge())
            .layer(PreCallGuardrailLayer::new(g.clone()))
            .layer(StreamingGuardrailBodyLayer::new(g.clone()))
            .service(forward.clone()),
    )
    .await;
    // Seed bug 000: the merge inside the pre-call layer.
    let wrong = serve(
        ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(g.clone()))
            .layer(merge())
            .layer(StreamingGuardrailBodyLayer::new(g))
            .service(forward),
    )
    .await;
    let request = |stream: bool| {
        json!({"model": "gpt-guarded", "stream": stream,
               "messages": [{"role": "user", "content": "my secret project"}]})
        .to_string()
    };
    let bluebird = json!({"error": {
        "message": "Content blocked: keyword 'bluebird' detected",
        "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}});

    let resp = send(post_json(
        &right.url("/v1/chat/completions"),
        &request(false),
    ))
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body, bluebird);
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].json().unwrap()["messages"][0]["content"],
        "my [KEYWORD_REDACTED] project"
    );
    let resp = send(post_json(
        &right.url("/v1/chat/completions"),
        &request(true),
    ))
    .await;
    assert_eq!(resp.status(), 200);
    let body = std::str::from_utf8(resp.body()).unwrap();
    assert!(
        body.ends_with(&format!("data: {bluebird}\n\ndata: [DONE]\n\n")),
        "{body}"
    );
    assert!(!body.contains("BLUEBIRD"), "{body}");
    assert_eq!(mock.request_count(), 2);

    for stream in [false, true] {
        let resp = send(post_json(
            &wrong.url("/v1/chat/completions"),
            &request(stream),
        ))
        .await;
        assert_eq!(resp.status(), 500);
        let body: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            body,
            misordered(
                "ModelGuardrailMergeLayer",
                "PreCallGuardrailLayer",
                "model-level guardrails would be skipped"
            )
        );
    }
    assert_eq!(
        mock.request_count(),
        2,
        "a refused request is never forwarded"
    );
}
