//! What `GuardedBody` (the SSE body of `StreamingGuardrailBodyLayer`) adds to a streamed response
//! checked by the content filter in exact mode (the filter's default stream policy).
//!
//! The filter (`default_on`, `post_call`) has 20 blocked words (10 BLOCK, 10 MASK) and the
//! prebuilt patterns email, us_ssn, credit_card, us_phone and ipv4, configured from YAML. The
//! streams are shaped like the recordings in `crates/protocol/testdata` (chat completions, Responses,
//! Anthropic messages): the head events, many one-word text deltas (a few non-ASCII) that match
//! nothing, and the tail events. They are fed one event per chunk, as an upstream token stream
//! arrives.
//!
//! Each iteration builds the request, runs it with `oneshot` on a current-thread runtime against
//! a stub upstream that returns the stream, and drains the response body frame by frame.
//! `bare` is the stub upstream alone; `guarded` goes through the layer. Before benchmarking, each
//! guarded stream is checked once to come out byte for byte and to log one successful run of the
//! filter (and a stream with a blocked word is checked to be cut).
//!
//! - `guarded_body_chat_1000_deltas`: per-event overhead; criterion's element throughput counts
//!   every event of the stream, so `(guarded - bare) / events` is the added time per event.
//! - `guarded_body_1MiB`: throughput in bytes of a ~1 MiB stream of each shape.

use std::convert::Infallible;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_core::{
    ConfiguredGuardrail, GuardrailLog, GuardrailMode, GuardrailStatus, Guardrails,
};
use guardrail_tower_guardrails::content_filter::{ContentFilter, ContentFilterConfig};
use guardrail_tower_streaming::{StreamPolicy, StreamingGuardrailBodyLayer};
use guardrail_tower_testkit::body::{TestBody, chunks};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

const FILTER_YAML: &str = r#"
guardrail: litellm_content_filter
mode: post_call
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

/// The text, one delta per token-like piece; it matches no keyword and no pattern.
const PASSAGE: &str = "Before the cut-over, run the end-of-month batch against a copy of \
production data on the new cluster and compare the timings. Make sure the queue consumers are \
idempotent, so that a replay after a rollback does not send an invoice twice. Keep the old \
database in read-only mode, with replication running backwards for a week. The café team in \
Zürich will review the naïve résumé of the plan — keep it short 📝. If the new database is \
slower than expected, point the service back at the old primary and replay the queue from the \
last confirmed offset.";

#[derive(Debug, Clone, Copy)]
enum Shape {
    Chat,
    Responses,
    Anthropic,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Chat => "chat",
            Shape::Responses => "responses",
            Shape::Anthropic => "anthropic",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Shape::Chat => "/v1/chat/completions",
            Shape::Responses => "/v1/responses",
            Shape::Anthropic => "/v1/messages",
        }
    }

    fn request_body(self) -> &'static str {
        match self {
            Shape::Chat => {
                r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Write a migration checklist."}]}"#
            }
            Shape::Responses => {
                r#"{"model":"gpt-4.1","stream":true,"input":"Write a migration checklist."}"#
            }
            Shape::Anthropic => {
                r#"{"model":"claude-sonnet-4-20250514","max_tokens":4096,"stream":true,"messages":[{"role":"user","content":"Write a migration checklist."}]}"#
            }
        }
    }
}

/// The text deltas: the passage's words with their leading space, cycled.
fn deltas() -> impl Iterator<Item = String> {
    let words: Vec<String> = PASSAGE
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    words.into_iter().cycle()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A stream of `shape`, one event per chunk, with text deltas until it has `min_deltas` of them
/// and is at least `min_bytes` long.
fn stream(shape: Shape, min_deltas: usize, min_bytes: usize) -> Vec<Bytes> {
    const CHAT_ID: &str = r#""id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306""#;
    const RESP_ID: &str = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b";
    const ITEM_ID: &str = "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b";
    let response_obj = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"{RESP_ID}","object":"response","created_at":1741476542,"status":"{status}","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{output}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
        )
    };

    let mut events: Vec<String> = Vec::new();
    let mut seq = 0u64;
    let mut responses_event = |kind: &str, rest: &str| {
        let e = format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{seq},{rest}}}\n\n"
        );
        seq += 1;
        e
    };
    let anthropic_event =
        |kind: &str, data: &str| format!("event: {kind}\ndata: {{\"type\":\"{kind}\",{data}}}\n\n");

    // Head.
    match shape {
        Shape::Chat => events.push(format!(
            "data: {{{CHAT_ID},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )),
        Shape::Responses => {
            let created = response_obj("in_progress", "", "null");
            events.push(responses_event("response.created", &format!("\"response\":{created}")));
            events.push(responses_event("response.in_progress", &format!("\"response\":{created}")));
            events.push(responses_event(
                "response.output_item.added",
                &format!("\"output_index\":0,\"item\":{{\"id\":\"{ITEM_ID}\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}"),
            ));
            events.push(responses_event(
                "response.content_part.added",
                &format!("\"item_id\":\"{ITEM_ID}\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"annotations\":[],\"text\":\"\"}}"),
            ));
        }
        Shape::Anthropic => {
            events.push(anthropic_event(
                "message_start",
                r#""message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}"#,
            ));
            events.push(anthropic_event(
                "content_block_start",
                r#""index":0,"content_block":{"type":"text","text":""}"#,
            ));
            events.push(anthropic_event("ping", "").replace(",}", "}"));
        }
    }

    // Text deltas.
    let mut text = String::new();
    let mut n = 0;
    let mut bytes: usize = events.iter().map(String::len).sum();
    let mut words = deltas();
    while n < min_deltas || bytes < min_bytes {
        let word = words.next().unwrap();
        let w = json_str(&word);
        text.push_str(&word);
        let e = match shape {
            Shape::Chat => format!(
                "data: {{{CHAT_ID},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{w}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ),
            Shape::Responses => responses_event(
                "response.output_text.delta",
                &format!(
                    "\"item_id\":\"{ITEM_ID}\",\"output_index\":0,\"content_index\":0,\"delta\":{w}"
                ),
            ),
            Shape::Anthropic => anthropic_event(
                "content_block_delta",
                &format!("\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{w}}}"),
            ),
        };
        bytes += e.len();
        events.push(e);
        n += 1;
    }

    // Tail.
    match shape {
        Shape::Chat => {
            events.push(format!(
                "data: {{{CHAT_ID},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
            ));
            events.push(format!(
                "data: {{{CHAT_ID},\"choices\":[],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                n + 19
            ));
            events.push("data: [DONE]\n\n".to_owned());
        }
        Shape::Responses => {
            let t = json_str(&text);
            events.push(responses_event(
                "response.output_text.done",
                &format!(
                    "\"item_id\":\"{ITEM_ID}\",\"output_index\":0,\"content_index\":0,\"text\":{t}"
                ),
            ));
            let part = format!("{{\"type\":\"output_text\",\"annotations\":[],\"text\":{t}}}");
            events.push(responses_event(
                "response.content_part.done",
                &format!("\"item_id\":\"{ITEM_ID}\",\"output_index\":0,\"content_index\":0,\"part\":{part}"),
            ));
            let item = format!(
                "{{\"id\":\"{ITEM_ID}\",\"type\":\"message\",\"status\":\"completed\",\"content\":[{part}],\"role\":\"assistant\"}}"
            );
            events.push(responses_event(
                "response.output_item.done",
                &format!("\"output_index\":0,\"item\":{item}"),
            ));
            let usage = format!(
                "{{\"input_tokens\":37,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":{n},\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":{}}}",
                n + 37
            );
            let completed = response_obj("completed", &item, &usage);
            events.push(responses_event(
                "response.completed",
                &format!("\"response\":{completed}"),
            ));
        }
        Shape::Anthropic => {
            events.push(anthropic_event("content_block_stop", r#""index":0"#));
            events.push(anthropic_event(
                "message_delta",
                &format!(
                    "\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}"
                ),
            ));
            events.push(anthropic_event("message_stop", "").replace(",}", "}"));
        }
    }
    events.into_iter().map(Bytes::from).collect()
}

fn request(shape: Shape) -> Request<Full<Bytes>> {
    Request::post(shape.path())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            shape.request_body().as_bytes(),
        )))
        .unwrap()
}

/// A stub upstream answering every request with `stream`, one event per chunk.
fn upstream(
    stream: Arc<[Bytes]>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<TestBody>, Error = Infallible, Future: Send>
+ Clone {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let body = chunks(stream.iter().cloned());
        async move {
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body)
                .unwrap())
        }
    })
}

fn layer() -> StreamingGuardrailBodyLayer {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(FILTER_YAML).unwrap();
    let filter = ContentFilter::new(config).unwrap();
    let g = ConfiguredGuardrail::new("content-filter", GuardrailMode::PostCall, filter)
        .default_on(true);
    let layer = StreamingGuardrailBodyLayer::new(Guardrails::new([g.clone()]));
    assert_eq!(layer.effective_policy(&g), StreamPolicy::Exact);
    layer
}

/// Drains a body frame by frame; returns the number of data bytes.
async fn drain<B>(body: B) -> usize
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = pin!(body);
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len();
        }
    }
    n
}

/// One request through `svc`, the body drained.
async fn run<S, B>(svc: S, shape: Shape) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let resp = svc.oneshot(request(shape)).await.unwrap();
    drain(resp.into_body()).await
}

/// Checks once that the guarded stream comes out byte for byte and that the filter ran (and
/// would have cut a stream with a blocked word).
fn check(
    rt: &tokio::runtime::Runtime,
    layer: &StreamingGuardrailBodyLayer,
    shape: Shape,
    stream: &Arc<[Bytes]>,
) {
    rt.block_on(async {
        let mut req = request(shape);
        let log = GuardrailLog::get_or_insert(&mut req);
        let resp = layer
            .layer(upstream(stream.clone()))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(out, stream.concat(), "{} stream changed", shape.name());
        let entries = log.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].guardrail_name, "content-filter");
        assert_eq!(entries[0].guardrail_status, GuardrailStatus::Success);

        // The same shape with a blocked word in the middle is cut.
        let mut bad: Vec<Bytes> = stream.iter().take(20).cloned().collect();
        let s = String::from_utf8(bad[10].to_vec()).unwrap();
        bad[10] = s.replacen("\"}", " confidential\"}", 1).into();
        let out = layer
            .layer(upstream(bad.into()))
            .oneshot(request(shape))
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            out.contains("content_policy_violation") || out.contains("event: error"),
            "{} not blocked: {out}",
            shape.name()
        );
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = layer();

    // (a) Per-event overhead on a chat stream of 1,000 deltas.
    let chat: Arc<[Bytes]> = stream(Shape::Chat, 1000, 0).into();
    check(&rt, &layer, Shape::Chat, &chat);
    let mut group = c.benchmark_group("guarded_body_chat_1000_deltas");
    group.throughput(Throughput::Elements(chat.len() as u64));
    let bare = upstream(chat.clone());
    let guarded = layer.layer(bare.clone());
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| run(black_box(bare.clone()), Shape::Chat))
    });
    group.bench_function("guarded", |b| {
        b.to_async(&rt)
            .iter(|| run(black_box(guarded.clone()), Shape::Chat))
    });
    group.finish();

    // (b), (c) Throughput of a ~1 MiB stream of each shape.
    let mut group = c.benchmark_group("guarded_body_1MiB");
    for shape in [Shape::Chat, Shape::Responses, Shape::Anthropic] {
        let s: Arc<[Bytes]> = stream(shape, 0, 1 << 20).into();
        check(&rt, &layer, shape, &s);
        let len: usize = s.iter().map(Bytes::len).sum();
        eprintln!("{}: {} events, {len} bytes", shape.name(), s.len());
        group.throughput(Throughput::Bytes(len as u64));
        let bare = upstream(s.clone());
        let guarded = layer.layer(bare.clone());
        group.bench_function(format!("{}/bare", shape.name()), |b| {
            b.to_async(&rt).iter(|| run(black_box(bare.clone()), shape))
        });
        group.bench_function(format!("{}/guarded", shape.name()), |b| {
            b.to_async(&rt)
                .iter(|| run(black_box(guarded.clone()), shape))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
