//! The content filter on a corpus of tricky inputs (`testdata/content_filter/corpus.yaml`):
//! adjacent numbers, separators, long email local parts, digits of other scripts, invisible
//! characters, letter case, split and wildcard keywords. Each case's output is pinned exactly,
//! through `check_texts`, through the pre-call layer, and through the streaming layer with the
//! case streamed in pieces split at every character.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use guardrail_tower_core::{ConfiguredGuardrail, Decision, GuardrailMode, Guardrails};
use guardrail_tower_guardrails::content_filter::{ContentFilter, ContentFilterConfig};
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::body;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Deserialize)]
struct Corpus {
    filter: ContentFilterConfig,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    input: String,
    #[serde(default)]
    masked: Option<String>,
    #[serde(default)]
    blocked: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    allowed: bool,
    /// What LiteLLM does differently (documentation only).
    #[serde(default)]
    #[allow(dead_code)]
    litellm: Option<String>,
    /// Why the output is what it is (documentation only).
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// The text after masking (the input itself when nothing matches).
    Text(String),
    /// The block message, and a part of the input no blocked stream may release.
    Blocked { message: String, secret: String },
}

impl Case {
    fn expect(&self) -> Expect {
        match (&self.masked, &self.blocked, self.allowed) {
            (Some(masked), None, false) => Expect::Text(masked.clone()),
            (None, Some(message), false) => Expect::Blocked {
                message: message.clone(),
                secret: self
                    .secret
                    .clone()
                    .unwrap_or_else(|| panic!("{}: a blocked case names its secret", self.name)),
            },
            (None, None, true) => Expect::Text(self.input.clone()),
            _ => panic!(
                "{}: exactly one of masked, blocked, allowed: true",
                self.name
            ),
        }
    }
}

fn corpus() -> (ContentFilter, Vec<Case>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/content_filter/corpus.yaml");
    let corpus: Corpus = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(corpus.cases.len() >= 60, "the corpus is complete");
    (ContentFilter::new(corpus.filter).unwrap(), corpus.cases)
}

fn guardrails(filter: ContentFilter, mode: GuardrailMode) -> Guardrails {
    Guardrails::new([ConfiguredGuardrail::new("corpus-filter", mode, filter).default_on(true)])
}

/// Fails with every case whose output differs, not just the first.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn check_texts_gives_the_pinned_output() {
    let (filter, cases) = corpus();
    let mut failures = Vec::new();
    for case in &cases {
        let got = match filter.check_texts(&[case.input.as_str()]).decision() {
            Decision::Allow => Expect::Text(case.input.clone()),
            Decision::Rewrite { texts } => Expect::Text(texts[0].clone()),
            Decision::Block { message } => Expect::Blocked {
                message: message.clone(),
                secret: case.secret.clone().unwrap_or_default(),
            },
            other => panic!("{}: unexpected {other:?}", case.name),
        };
        if got != case.expect() {
            failures.push(format!("{}: {:?}\n    got {got:?}", case.name, case.input));
        }
    }
    report(failures);
}

#[tokio::test]
async fn the_pre_call_layer_sends_the_pinned_request_or_blocks() {
    let (filter, cases) = corpus();
    let guardrails = guardrails(filter, GuardrailMode::PreCall);
    let mut failures = Vec::new();
    for case in &cases {
        let seen: Arc<Mutex<Option<Value>>> = Arc::default();
        let upstream_seen = seen.clone();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(guardrails.clone()))
            .service(service_fn(move |req: Request<Full<Bytes>>| {
                let seen = upstream_seen.clone();
                async move {
                    let bytes = req.into_body().collect().await.unwrap().to_bytes();
                    *seen.lock().unwrap() = Some(serde_json::from_slice(&bytes).unwrap());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                }
            }));
        let body = json!({"model": "m", "messages": [{"role": "user", "content": case.input}]});
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        let status = resp.status();
        let answer: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let upstream = seen.lock().unwrap().take();
        let ok = match case.expect() {
            Expect::Text(text) => {
                status == 200
                    && upstream
                        .as_ref()
                        .is_some_and(|b| b["messages"][0]["content"] == text.as_str())
            }
            Expect::Blocked { message, .. } => {
                status == 400
                    && upstream.is_none()
                    && answer["error"]["message"] == message.as_str()
            }
        };
        if !ok {
            failures.push(format!(
                "{}: {:?}\n    status {status}, answer {answer}, upstream saw {upstream:?}",
                case.name, case.input
            ));
        }
    }
    report(failures);
}

/// A chat completion stream of `deltas`.
fn chat_stream(deltas: &[&str]) -> String {
    let mut s = String::new();
    for d in deltas {
        let data = json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": null}]});
        s.push_str(&format!("data: {data}\n\n"));
    }
    s.push_str(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    s.push_str("data: [DONE]\n\n");
    s
}

/// What a client reads from a guarded stream: the text, and the in-band error message if any.
async fn stream_through(
    layer: &StreamingGuardrailBodyLayer,
    deltas: &[&str],
) -> (String, Option<String>) {
    let sse = chat_stream(deltas);
    // One SSE event per body chunk, so the layer sees every delta on its own.
    let chunks: Vec<String> = sse.split_inclusive("\n\n").map(str::to_owned).collect();
    let response = Arc::new(Mutex::new(Some(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body::chunks(chunks))
            .unwrap(),
    )));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, Infallible>(
                response.lock().unwrap().take().unwrap(),
            ))
        }));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
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
    let mut decoder = SseDecoder::new();
    decoder.push(out);
    let (mut text, mut error) = (String::new(), None);
    while let Some(event) = decoder.next_event().unwrap() {
        let Some(data) = event.data() else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        if let Some(message) = v["error"]["message"].as_str() {
            error = Some(message.to_owned());
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, error)
}

#[tokio::test]
async fn the_streaming_layer_releases_the_pinned_text_at_every_split() {
    let (filter, cases) = corpus();
    let layer = StreamingGuardrailBodyLayer::new(guardrails(filter, GuardrailMode::PostCall));
    let mut failures = Vec::new();
    for case in &cases {
        let input = case.input.as_str();
        let bounds: Vec<usize> = input.char_indices().map(|(i, _)| i).skip(1).collect();
        // Two pieces split at every character, and one piece per character.
        let mut splits: Vec<Vec<&str>> = bounds
            .iter()
            .map(|&k| vec![&input[..k], &input[k..]])
            .collect();
        splits.push(vec![input]);
        splits.push(
            input
                .char_indices()
                .map(|(i, c)| &input[i..i + c.len_utf8()])
                .collect(),
        );
        for deltas in splits {
            let (text, error) = stream_through(&layer, &deltas).await;
            let ok = match case.expect() {
                Expect::Text(want) => error.is_none() && text == want,
                Expect::Blocked { message, secret } => {
                    error.as_deref() == Some(message.as_str()) && !text.contains(secret.as_str())
                }
            };
            if !ok {
                failures.push(format!(
                    "{}: deltas {deltas:?}\n    client read {text:?}, error {error:?}",
                    case.name
                ));
                break;
            }
        }
    }
    report(failures);
}
