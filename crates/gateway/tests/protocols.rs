//! The HTTP versions the gateway serves over real sockets: HTTP/1.1, and HTTP/2 with prior
//! knowledge (h2c), told apart by the connection's first bytes; and a connection that never
//! sends a byte does not hold up a graceful shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use guardrail_gateway::app::Gateway;
use guardrail_tower_spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::serve;

async fn gateway(upstream: &MockUpstream, dir: &tempfile::TempDir) -> Gateway {
    Gateway::from_config_str(&format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-up}}
guardrails:
  - guardrail_name: words
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, default_on: true, blocked_words: [{{keyword: forbidden, action: BLOCK}}]}}
general_settings:
  spend_logs: "sqlite://{db}"
"#,
        base = upstream.base_url(),
        db = dir.path().join("spend.db").display(),
    ))
    .await
    .unwrap()
}

fn chat(url: &str, content: &str) -> Request<Full<Bytes>> {
    let body = format!(r#"{{"model":"gpt","messages":[{{"role":"user","content":"{content}"}}]}}"#);
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// An HTTP/1.1 client and an HTTP/2 client with prior knowledge (h2c), each keeping its
/// connection alive between requests.
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn clients() -> (HttpClient, HttpClient) {
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let http2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    (http1, http2)
}

#[tokio::test]
async fn http1_and_http2_with_prior_knowledge_are_both_served() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve(gateway(&upstream, &dir).await).await;
    let url = running.url("/v1/chat/completions");
    let (http1, http2) = clients();
    for (client, version) in [(http1, Version::HTTP_11), (http2, Version::HTTP_2)] {
        // Two requests each, so the second reuses the connection.
        for (content, status) in [("hello", 200), ("a forbidden plan", 400)] {
            let resp = client.request(chat(&url, content)).await.unwrap();
            assert_eq!((resp.version(), resp.status().as_u16()), (version, status));
            let body: Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            match status {
                200 => assert!(
                    body["choices"][0]["message"]["content"].is_string(),
                    "{body}"
                ),
                _ => assert_eq!(body["error"]["code"], "content_policy_violation", "{body}"),
            }
        }
    }
    // One row per request, whatever the protocol.
    running.stop().await.unwrap();
    let store = SqliteSink::open(dir.path().join("spend.db")).await.unwrap();
    assert_eq!(store.query(&SpendLogFilter::new()).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_does_not_hold_up_shutdown() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve(gateway(&upstream, &dir).await).await;
    let silent = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The grace period is 30 s: a connection still waiting for its first byte is closed at
    // once, not waited for.
    tokio::time::timeout(Duration::from_secs(5), running.stop())
        .await
        .expect("the gateway stopped without waiting for the silent connection")
        .unwrap();
    drop(silent);
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve(gateway(&upstream, &dir).await).await;
    let url = running.url("/v1/chat/completions");
    let (http1, http2) = clients();
    for client in [&http1, &http2] {
        let resp = client.request(chat(&url, "hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    // Both clients keep their connection open and idle. The grace period is 30 s: an idle
    // connection is told to close at once, not waited for.
    tokio::time::timeout(Duration::from_secs(5), running.stop())
        .await
        .expect("the gateway stopped without waiting for idle keep-alive connections")
        .unwrap();
    drop((http1, http2));
}
