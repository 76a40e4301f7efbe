//! OpenTelemetry over real sockets: the binary with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at
//! an OTLP/HTTP collector stand-in that decodes what it receives. One trace per request, a
//! span per layer and per guardrail run (name, mode, verdict, duration), and `traceparent` on
//! the upstream request and on the guardrail service's.

#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_testkit::mock::MockUpstream;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;

const MASTER: &str = "sk-master-telemetry-0123456789";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP collector: decodes each export and sends its spans on.
async fn collector() -> (
    guardrail_tower_testkit::TestServer,
    mpsc::UnboundedReceiver<Span>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server =
        guardrail_tower_testkit::serve(tower::service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let export = ExportTraceServiceRequest::decode(body).unwrap();
                for resource in export.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let _ = tx.send(span);
                        }
                    }
                }
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        }))
        .await;
    (server, rx)
}

/// A Generic Guardrail API service that allows everything and records each `traceparent`.
async fn guardrail_service(seen: Arc<Mutex<Vec<String>>>) -> guardrail_tower_testkit::TestServer {
    guardrail_tower_testkit::serve(tower::service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let traceparent = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(traceparent);
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(
                        json!({"action": "NONE"}).to_string(),
                    )))
                    .unwrap(),
            )
        }
    }))
    .await
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &str, collector: &str, dir: &std::path::Path) -> Gateway {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the gateway logs until it listens")
            .unwrap();
        if let Some(addr) = line.split("listen=").nth(1) {
            break format!("http://{}", addr.split_whitespace().next().unwrap());
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("gateway: {line}");
        }
    });
    Gateway { child, url }
}

async fn chat(url: &str, prompt: &str, traceparent: Option<&str>) -> u16 {
    let mut req = Request::post(format!("{url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER}"))
        .header("content-type", "application/json");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let body = json!({"model": "m", "messages": [{"role": "user", "content": prompt}]});
    let resp = guardrail_tower_testkit::client()
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_request_with_a_span_per_layer_and_guardrail_and_traceparent_onward() {
    let (collector, mut spans) = collector().await;
    let upstream = MockUpstream::start().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = guardrail_service(Arc::clone(&seen)).await;
    let dir = tempfile::tempdir().unwrap();
    // The model names a guardrail of its own (one that is on by default anyway), and a
    // `post_call` guardrail that no request selects is configured, so that the model-merge and
    // streaming layers are in the stack: a config without either leaves the layer out.
    let config = format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "{base}", api_key: sk-up, guardrails: [remote-check]}}
guardrails:
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{{keyword: forbidden, action: BLOCK}}]
  - guardrail_name: remote-check
    litellm_params:
      guardrail: generic_guardrail_api
      mode: pre_call
      default_on: true
      api_base: "{service}"
  - guardrail_name: replies
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      blocked_words: [{{keyword: forbidden, action: BLOCK}}]
general_settings:
  master_key: {MASTER}
  spend_logs: "sqlite://{db}"
"#,
        base = upstream.base_url(),
        service = service.url(""),
        db = dir.path().join("spend.db").display(),
    );
    let gateway = start(&config, &collector.url(""), dir.path());

    // A blocked request, in a trace the client started.
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_parent = "b7ad6b7169203331";
    let traceparent = format!("00-{client_trace}-{client_parent}-01");
    assert_eq!(
        chat(&gateway.url, "a forbidden question", Some(&traceparent)).await,
        400
    );
    // An allowed one.
    assert_eq!(chat(&gateway.url, "a fine question", None).await, 200);

    // Every span of both requests, as exported: the blocked one's request span, 5 layers and
    // 1 guardrail; the allowed one's request span, 6 layers, 2 guardrails and the upstream.
    let mut all: Vec<Span> = Vec::new();
    while all.len() < 17 {
        let span = tokio::time::timeout(Duration::from_secs(30), spans.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the gateway exports its spans: {:#?}",
                    all.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
            .unwrap();
        all.push(span);
    }
    let by_id: HashMap<String, &Span> = all.iter().map(|s| (hex(&s.span_id), s)).collect();
    let roots: Vec<&Span> = all
        .iter()
        .filter(|s| s.name == "POST /v1/chat/completions")
        .collect();
    assert_eq!(
        roots.len(),
        2,
        "{:#?}",
        all.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let status_of = |s: &Span| match attr(s, "http.response.status_code") {
        Some(Any::IntValue(n)) => *n,
        other => panic!("{other:?}"),
    };
    let blocked = *roots.iter().find(|s| status_of(s) == 400).unwrap();
    let allowed = *roots.iter().find(|s| status_of(s) == 200).unwrap();
    assert_ne!(blocked.trace_id, allowed.trace_id, "one trace per request");

    // The blocked request continues the client's trace.
    assert_eq!(hex(&blocked.trace_id), client_trace);
    assert_eq!(hex(&blocked.parent_span_id), client_parent);
    assert_eq!(attr_str(blocked, "http.request.method"), "POST");

    // The chain of one trace, outermost first: each span the child of the one before.
    let chain = |root: &Span, leaf_name: &str| -> Vec<String> {
        let leaf = all
            .iter()
            .find(|s| s.trace_id == root.trace_id && s.name == leaf_name)
            .unwrap_or_else(|| panic!("no {leaf_name} span"));
        let mut names = vec![leaf.name.clone()];
        let mut at = leaf;
        while !at.parent_span_id.is_empty() && at.span_id != root.span_id {
            at = match by_id.get(&hex(&at.parent_span_id)) {
                Some(parent) => parent,
                None => break,
            };
            names.push(at.name.clone());
        }
        names.reverse();
        names
    };
    assert_eq!(
        chain(blocked, "guardrail block-words"),
        [
            "POST /v1/chat/completions",
            "spend_log",
            "key_auth",
            "error_normalize",
            "model_guardrail_merge",
            "pre_call_guardrails",
            "guardrail block-words",
        ]
    );
    let in_trace = |root: &Span| -> Vec<&Span> {
        all.iter().filter(|s| s.trace_id == root.trace_id).collect()
    };
    let blocked_spans = in_trace(blocked);
    assert_eq!(blocked_spans.len(), 7);
    let guard = blocked_spans
        .iter()
        .find(|s| s.name == "guardrail block-words")
        .unwrap();
    assert_eq!(attr_str(guard, "guardrail.name"), "block-words");
    assert_eq!(attr_str(guard, "guardrail.mode"), "pre_call");
    assert_eq!(attr_str(guard, "guardrail.verdict"), "block");
    assert_eq!(
        attr_str(guard, "guardrail.provider"),
        "litellm_content_filter"
    );
    assert!(matches!(attr(guard, "guardrail.duration_ms"), Some(Any::DoubleValue(d)) if *d >= 0.0));
    assert!(guard.end_time_unix_nano >= guard.start_time_unix_nano);
    // Blocked before the upstream and before the next guardrail.
    assert!(
        !blocked_spans
            .iter()
            .any(|s| s.name == "upstream" || s.name == "guardrail remote-check")
    );

    // The allowed request: both guardrails allowed, and the upstream span.
    let allowed_spans = in_trace(allowed);
    assert_eq!(
        allowed_spans.len(),
        10,
        "{:#?}",
        allowed_spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for name in ["guardrail block-words", "guardrail remote-check"] {
        let g = allowed_spans.iter().find(|s| s.name == name).unwrap();
        assert_eq!(attr_str(g, "guardrail.verdict"), "allow", "{name}");
        assert_eq!(attr_str(g, "guardrail.mode"), "pre_call", "{name}");
    }
    assert_eq!(
        chain(allowed, "upstream"),
        [
            "POST /v1/chat/completions",
            "spend_log",
            "key_auth",
            "error_normalize",
            "model_guardrail_merge",
            "pre_call_guardrails",
            "streaming_guardrails",
            "upstream",
        ]
    );
    let up = allowed_spans.iter().find(|s| s.name == "upstream").unwrap();
    assert_eq!(attr_str(up, "gen_ai.request.model"), "m");

    // traceparent onward: the upstream got the upstream span's context, the guardrail service
    // its guardrail span's.
    let trace = hex(&allowed.trace_id);
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].header("traceparent"),
        Some(format!("00-{trace}-{}-01", hex(&up.span_id)).as_str())
    );
    let remote = allowed_spans
        .iter()
        .find(|s| s.name == "guardrail remote-check")
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [format!("00-{trace}-{}-01", hex(&remote.span_id))]
    );
    drop(gateway);
}
