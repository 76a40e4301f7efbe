//! Security review, as tests: clients cannot switch guardrails off,
//! hostile sizes are refused early, hostile config is an error rather than a hang.

use std::time::Duration;

use bytes::Bytes;
use guardrail_gateway::config::GatewayConfig;
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::send;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{config, start};

#[tokio::test]
async fn clients_cannot_switch_default_on_or_model_level_guardrails_off() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop, _task) = start(&config(&upstream, &dir.path().join("s.db"))).await;
    for content in ["forbidden", "restricted"] {
        let body = json!({
            "model": "guarded",
            "messages": [{"role": "user", "content": content}],
            "guardrails": {"always": false, "model-level": false},
            "metadata": {"guardrails": {"always": false, "model-level": false}},
            "litellm_metadata": {"guardrails": {"always": false}},
            "disable_global_guardrails": true,
            "skip_guardrails": true,
        })
        .to_string();
        let req = Request::post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-litellm-disable-guardrails", "true")
            .header("x-litellm-guardrails", "")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send(req).await;
        assert_eq!(resp.status(), 400, "{content}");
        let v: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"]["code"], "content_policy_violation");
        // Blocked by the guardrail that owns the word: `always` (default_on) for one,
        // `model-level` (the deployment's) for the other.
        assert_eq!(
            v["error"]["message"],
            format!("Content blocked: keyword '{content}' detected")
        );
    }
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop, _task) = start(&config(&upstream, &dir.path().join("s.db"))).await;
    // Claim 1 GB and send only the head: the answer must come without the body.
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{\"model\":")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("answered at once")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("\"code\":\"request_too_large\""), "{head}");
    assert_eq!(upstream.request_count(), 0);
}

#[test]
fn a_pathological_regex_is_a_config_error_not_a_hang() {
    // On a thread, so that a hang fails this test instead of stalling the suite. The bound
    // detects a hang; it is no speed target (the compile-size limit answers in milliseconds).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(GatewayConfig::from_yaml(
            "guardrails:\n  - guardrail_name: evil\n    litellm_params:\n      guardrail: litellm_content_filter\n      mode: pre_call\n      patterns:\n        - {pattern_type: regex, pattern: '\\w{1000}{1000}', name: evil, action: BLOCK}\n",
        ));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the config is refused, not compiled forever")
        .unwrap_err();
    assert_eq!(err.key(), "guardrails[0].litellm_params.patterns");
    assert_eq!(err.line(), Some(6));
    assert!(err.message().contains("evil"), "{}", err.message());
}
