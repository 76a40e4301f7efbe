//! The health probes over real sockets: `/health/liveliness` and `/health/readiness` answer
//! without a key, report the spend-log database and each guardrail service by name and status
//! only, answer 503 when the database is down, and a storm of probes opens one connection per
//! service.

mod support;

use std::net::SocketAddr;

use guardrail_gateway::app::Gateway;
use http::Method;
use serde_json::{Value, json};
use support::{call, call_json, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const MASTER: &str = "sk-master-health-0123456789";

/// A guardrail service stand-in that accepts connections and reports each one's peer.
async fn listening_service() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((_stream, peer)) = listener.accept().await {
            if tx.send(peer).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn config(spend_logs: &str, up: SocketAddr, down: SocketAddr) -> String {
    format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:9/v1"}}
guardrails:
  - guardrail_name: words
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, blocked_words: [{{keyword: x, action: BLOCK}}]}}
  - guardrail_name: remote-up
    litellm_params: {{guardrail: generic_guardrail_api, mode: pre_call, api_base: "http://user:pw-secret@{up}", api_key: sk-svc-secret}}
  - guardrail_name: remote-down
    litellm_params: {{guardrail: generic_guardrail_api, mode: post_call, api_base: "http://{down}", unreachable_fallback: fail_open}}
general_settings:
  master_key: {MASTER}
  spend_logs: "{spend_logs}"
"#
    )
}

#[tokio::test]
async fn readiness_names_each_guardrail_and_the_database_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _accepted) = listening_service().await;
    let down = closed_port().await;
    let db = format!("sqlite://{}", dir.path().join("spend.db").display());
    let served = serve(
        Gateway::from_config_str(&config(&db, up, down))
            .await
            .unwrap(),
    )
    .await;

    // No key needed: they are health probes.
    let (status, _, body) = call(Method::GET, &served.url("/health/readiness"), None, None).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, 200, "{text}");
    for secret in [
        "127.0.0.1",
        &up.port().to_string(),
        &down.port().to_string(),
        "pw-secret",
        "sk-svc-secret",
        "spend.db",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let mut value: Value = serde_json::from_str(&text).unwrap();
    value["litellm_version"] = json!("-");
    assert_eq!(
        value,
        json!({
            "status": "degraded",
            "db": "connected",
            "cache": null,
            "litellm_version": "-",
            "success_callbacks": [],
            "spend_logs": {
                "backend": "sqlite",
                "writer": "running",
                "queue_depth": 0,
                "pending": 0,
                "written": 0,
                "retried": 0,
                "failed_writes": 0,
                "dead_lettered": 0,
                "dropped": 0,
            },
            "guardrails": [
                {"guardrail_name": "words", "status": "local"},
                {"guardrail_name": "remote-up", "status": "reachable"},
                {"guardrail_name": "remote-down", "status": "unreachable"},
            ],
        })
    );

    let (status, value) =
        call_json(Method::GET, &served.url("/health/liveliness"), None, None).await;
    assert_eq!((status, value), (200, json!("I'm alive!")));
    let (status, value) = call_json(Method::GET, &served.url("/health/liveness"), None, None).await;
    assert_eq!((status, value), (200, json!("I'm alive!")));
}

#[tokio::test]
async fn a_storm_of_probes_opens_one_connection_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let (up, mut accepted) = listening_service().await;
    let down = closed_port().await;
    let db = format!("sqlite://{}", dir.path().join("spend.db").display());
    let served = serve(
        Gateway::from_config_str(&config(&db, up, down))
            .await
            .unwrap(),
    )
    .await;
    let url = served.url("/health/readiness");
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { call_json(Method::GET, &url, None, None).await })
        })
        .collect();
    for probe in probes {
        let (status, value) = probe.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(value["guardrails"][1]["status"], "reachable");
    }
    // A connection of our own after the probes: the service accepts in arrival order, so
    // everything before it is the probes'.
    let marker = TcpStream::connect(up).await.unwrap().local_addr().unwrap();
    let mut probe_connections = 0;
    while accepted.recv().await.unwrap() != marker {
        probe_connections += 1;
    }
    assert_eq!(probe_connections, 1);
}

#[tokio::test]
async fn readiness_is_503_while_the_spend_log_database_is_down() {
    let (up, _accepted) = listening_service().await;
    let down = closed_port().await;
    // Nothing listens there: the gateway starts (records wait for the database) but is not
    // ready.
    let pg = format!("postgres://postgres:pg-secret@{down}/test");
    let served = serve(
        Gateway::from_config_str(&config(&pg, up, down))
            .await
            .unwrap(),
    )
    .await;
    let (status, _, body) = call(Method::GET, &served.url("/health/readiness"), None, None).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(
        !text.contains("pg-secret") && !text.contains(&down.port().to_string()),
        "{text}"
    );
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["status"], "unhealthy");
    assert_eq!(value["db"], "disconnected");
    assert_eq!(value["spend_logs"]["backend"], "postgres");
    // Liveness is not readiness.
    let (status, _) = call_json(Method::GET, &served.url("/health/liveliness"), None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_json_lines_spend_log_has_no_database_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _accepted) = listening_service().await;
    let jsonl = format!("jsonl://{}", dir.path().join("spend.jsonl").display());
    let served = serve(
        Gateway::from_config_str(&config(&jsonl, up, up))
            .await
            .unwrap(),
    )
    .await;
    let (status, value) =
        call_json(Method::GET, &served.url("/health/readiness"), None, None).await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["status"], "healthy");
    assert_eq!(value["db"], "Not connected");
    assert_eq!(value["spend_logs"]["backend"], "jsonl");
}
