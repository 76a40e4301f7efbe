//! Credentials never leak: neither the client's key nor the upstream key appears in any log line
//! (at any level) or in any spend-log row; nor the master key or a virtual key, whatever a
//! client does with them (generate, use, use for a model the key may not call, revoke, reuse).

use bytes::Bytes;
use guardrail_tower::spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::send;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

mod support;

use support::{config, start};

#[path = "support/logs.rs"]
mod logs;

use logs::Captured;

// The only test in this binary, with the capture as the global subscriber: every log line of
// every task reaches it. (A thread-local subscriber misses callsites that a concurrent test had
// already registered without one, which made this check flaky.)
#[tokio::test(flavor = "multi_thread")]
async fn keys_never_appear_in_logs_or_spend_rows() {
    let captured = Captured::install();

    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (url, running) = start(&config(&upstream, &db)).await;
    for content in ["hello", "forbidden", "restricted"] {
        let body = json!({"model": "guarded", "messages": [{"role": "user", "content": content}]})
            .to_string();
        let req = Request::post(format!("{url}/v1/chat/completions"))
            .header("authorization", "Bearer sk-client-SECRET-5678")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(req).await;
    }
    // The upstream got its own key, never the client's.
    let seen = upstream.requests();
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-upstream-SECRET-1234")
    );
    // Stopping the gateway flushes its spend log; then every row is in the file.
    running.stop().await.unwrap();
    let store = SqliteSink::open(&db).await.unwrap();
    let rows = store.query(&SpendLogFilter::new()).await.unwrap();
    let rows: Vec<Value> = serde_json::from_value(serde_json::to_value(rows).unwrap()).unwrap();
    assert_eq!(rows.len(), 3, "one row per request: {rows:#?}");

    // A gateway with a master key: a virtual key is generated, used, refused, revoked.
    const MASTER: &str = "sk-master-SECRET-9999-abcdef";
    let keyed = format!(
        "{}  master_key: {MASTER}\n",
        config(&upstream, &dir.path().join("k.db"))
    );
    let (kurl, krunning) = start(&keyed).await;
    let admin = |method: &str, path: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(format!("{kurl}{path}"))
            .header("authorization", format!("Bearer {MASTER}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let made: Value = serde_json::from_slice(
        send(admin(
            "POST",
            "/key/generate",
            json!({"models": ["guarded"], "key_alias": "logged"}),
        ))
        .await
        .body(),
    )
    .unwrap();
    let virtual_key = made["key"].as_str().unwrap().to_owned();
    let mut keyed_requests = 0;
    for (key, model) in [
        (virtual_key.as_str(), "guarded"),
        (virtual_key.as_str(), "other"),
        ("sk-wrong-SECRET-7777", "guarded"),
        (MASTER, "guarded"),
    ] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
        let req = Request::post(format!("{kurl}/v1/chat/completions"))
            .header("x-litellm-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        send(req).await;
        keyed_requests += 1;
    }
    send(admin(
        "GET",
        &format!("/key/info?key={virtual_key}"),
        json!({}),
    ))
    .await;
    send(admin("POST", "/key/delete", json!({"keys": [virtual_key]}))).await;
    let req = Request::post(format!("{kurl}/v1/chat/completions"))
        .header("authorization", format!("Bearer {virtual_key}"))
        .body(Full::new(Bytes::from_static(b"{\"model\":\"guarded\"}")))
        .unwrap();
    send(req).await;
    keyed_requests += 1;
    // Stopping flushes the spend log: then every row is in the file.
    krunning.stop().await.unwrap();
    let store = SqliteSink::open(dir.path().join("k.db")).await.unwrap();
    let keyed_rows = store.query(&SpendLogFilter::new()).await.unwrap();
    let keyed_rows: Vec<Value> =
        serde_json::from_value(serde_json::to_value(keyed_rows).unwrap()).unwrap();
    assert_eq!(keyed_rows.len(), keyed_requests, "one row per request");

    let rows_text = serde_json::to_string(&(&rows, &keyed_rows)).unwrap();
    let logs = captured.text();
    assert!(
        logs.contains("virtual key generated"),
        "the capture sees the key routes' logs"
    );
    for secret in [MASTER, virtual_key.as_str(), "sk-wrong-SECRET-7777"] {
        assert!(!rows_text.contains(secret), "a key in a spend row");
        assert!(!logs.contains(secret), "a key in the logs");
    }
    assert!(
        logs.contains("request blocked by policy"),
        "the capture sees the gateway's logs"
    );
    for secret in ["sk-client-SECRET-5678", "sk-upstream-SECRET-1234"] {
        assert!(!rows_text.contains(secret), "{secret} in a spend row");
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
    // The key is stored as its SHA-256 hash.
    assert!(
        rows.iter()
            .all(|r| r["api_key"].as_str().is_some_and(|k| k.len() == 64))
    );
}
