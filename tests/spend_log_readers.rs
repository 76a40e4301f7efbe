//! The spend log records what a stream carried, its usage and the upstream's own error events,
//! the same whichever layer read the stream for it: the spend-log layer alone, the error layer
//! inside it (which frames every stream into whole events anyway), or the streaming guardrail
//! layer with a post-call guardrail. One stream is framed for the log once, by the innermost
//! layer that frames it; the record does not depend on which one that was.

use std::time::Duration;

use bytes::Bytes;
use guardrail_tower::core::{ConfiguredGuardrail, GuardrailMode, Guardrails, StreamPolicy};
use guardrail_tower::error::ErrorNormalizeLayer;
use guardrail_tower::guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower::spend_log::{
    ChannelSink, SpendLogLayer, SpendLogWriter, SpendRecord, SpendStatus,
};
use guardrail_tower::streaming::StreamingGuardrailBodyLayer;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, ServiceExt, service_fn};

type Svc =
    BoxCloneService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L {
    SpendLog,
    Error,
    Streaming,
}

/// The stacks, outermost first. Where the spend-log layer is innermost or alone it reads the
/// stream itself; otherwise the error layer or the streaming layer inside it does.
const STACKS: [&[L]; 6] = [
    &[L::SpendLog],
    &[L::SpendLog, L::Error],
    &[L::Error, L::SpendLog],
    &[L::SpendLog, L::Error, L::Streaming],
    &[L::SpendLog, L::Streaming, L::Error],
    &[L::SpendLog, L::Streaming],
];

fn boxed<S, B>(svc: S) -> Svc
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        svc.map_response(|r: Response<B>| r.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into),
    )
}

/// A post-call content filter that finds nothing in these streams.
fn guardrails() -> Guardrails {
    let config: ContentFilterConfig =
        serde_yaml_ng::from_str("blocked_words: [{keyword: zebra, action: BLOCK}]").unwrap();
    Guardrails::new([ConfiguredGuardrail::new(
        "words",
        GuardrailMode::PostCall,
        ContentFilter::new(config).unwrap(),
    )
    .default_on(true)
    .stream_policy(StreamPolicy::Exact)])
}

/// An upstream answering every request with `stream`, as server-sent events.
fn upstream(stream: &'static str) -> Svc {
    boxed(service_fn(move |_req: Request<Full<Bytes>>| async move {
        Ok::<_, BoxError>(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(stream.as_bytes())))?,
        )
    }))
}

/// The record of one streamed request to `path` through `stack`, and the body the client got.
async fn record(stack: &[L], path: &str, stream: &'static str) -> (SpendRecord, Bytes) {
    let (sink, mut rx) = ChannelSink::new();
    let handle = SpendLogWriter::new()
        .linger(Duration::from_millis(1))
        .spawn(sink);
    let svc = stack
        .iter()
        .rev()
        .fold(upstream(stream), |svc, layer| match layer {
            L::SpendLog => boxed(SpendLogLayer::new(handle.clone()).layer(svc)),
            L::Error => boxed(ErrorNormalizeLayer::new().layer(svc)),
            L::Streaming => boxed(StreamingGuardrailBodyLayer::new(guardrails()).layer(svc)),
        });
    let body = if path == "/v1/messages" {
        json!({"model": "claude", "stream": true, "max_tokens": 10,
               "messages": [{"role": "user", "content": "hi"}]})
    } else {
        json!({"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
    };
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "{stack:?}");
    let got = response.into_body().collect().await.unwrap().to_bytes();
    handle.shutdown().await.unwrap();
    let record = rx.try_recv().expect("one record");
    assert!(rx.try_recv().is_err(), "one record only");
    (record, got)
}

/// What the log says about a stream: status, tokens and the error's class, code and message.
///
/// When the upstream reported no usage, only the estimated prompt tokens are compared: the
/// completion tokens are then estimated from the text released to the client, which only the
/// streaming layer counts (it reads every delta's text; the others frame events, not texts).
fn summary(record: &SpendRecord) -> Value {
    let meta = serde_json::to_value(&record.metadata).unwrap();
    let error = &meta["error_information"];
    let tokens = if meta["usage_estimated"] == true {
        json!([record.prompt_tokens, "estimated"])
    } else {
        json!([
            record.prompt_tokens,
            record.completion_tokens,
            record.total_tokens
        ])
    };
    json!({
        "status": match record.status {
            SpendStatus::Success => "success",
            SpendStatus::Failure => "failure",
        },
        "tokens": tokens,
        "error": [&error["error_class"], &error["error_code"], &error["error_message"]],
    })
}

/// A content delta whose text says "error" and "usage": content, neither an error nor usage.
macro_rules! delta {
    () => {
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"an \\\"error\\\" and its usage\"}}]}\n\n"
    };
}

/// An Anthropic stream's first event, with the input tokens.
macro_rules! message_start {
    () => {
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n"
    };
}

#[tokio::test]
async fn every_reader_of_a_stream_logs_the_same_usage_and_errors() {
    let chat = "/v1/chat/completions";
    let cases: [(&str, &'static str, Value); 5] = [
        (
            chat,
            concat!(
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"an \\\"error\\\" and its usage\"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n",
                "data: [DONE]\n\n",
            ),
            json!({"status": "success", "tokens": [3, 5, 8], "error": [null, null, null]}),
        ),
        (
            // An upstream's own content filter, in-band after the 200: a policy block.
            chat,
            concat!(
                delta!(),
                "data: {\"error\":{\"message\":\"flagged by the provider\",\"type\":\"invalid_request_error\",\"code\":\"content_policy_violation\"}}\n\n",
                "data: [DONE]\n\n",
            ),
            json!({"status": "failure", "tokens": [1, "estimated"],
                   "error": ["policy_block", "content_policy_violation", "flagged by the provider"]}),
        ),
        (
            // The code beside the error object, as some servers send it.
            chat,
            concat!(
                delta!(),
                "data: {\"error\":{\"message\":\"overloaded\"},\"code\":\"server_error\"}\n\n",
                "data: [DONE]\n\n",
            ),
            json!({"status": "failure", "tokens": [1, "estimated"],
                   "error": ["upstream_failure", "server_error", "overloaded"]}),
        ),
        (
            "/v1/messages",
            concat!(
                message_start!(),
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello\"}}\n\n",
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ),
            json!({"status": "success", "tokens": [7, 4, 11], "error": [null, null, null]}),
        ),
        (
            "/v1/messages",
            concat!(
                message_start!(),
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            ),
            json!({"status": "failure", "tokens": [7, 1, 8],
                   "error": ["upstream_failure", "502", "Overloaded"]}),
        ),
    ];
    for (path, stream, want) in cases {
        for stack in STACKS {
            let (record, got) = record(stack, path, stream).await;
            assert_eq!(summary(&record), want, "{stack:?} on {path}:\n{stream}");
            // Every reader passes the stream through unchanged.
            assert_eq!(got, stream.as_bytes(), "{stack:?}");
        }
    }
}
