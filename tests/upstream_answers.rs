//! What of an upstream's answer reaches the client, over real sockets: only the response headers
//! that describe the response, pace retries or name the upstream's request (never its cookies,
//! its origin's policies, the gateway's account ids (in headers or in an error's message), or
//! the gateway's own headers written by
//! the upstream), and no refusal of the gateway's own credentials or redirect (a 502 that names
//! neither what the upstream said nor where it pointed; the operator's log has what it said,
//! with the deployment's key masked).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Response as AxumResponse};
use axum::routing::post;
use bytes::Bytes;
use guardrail_tower::spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::{post_json, send};
use http::Response;
use serde_json::{Value, json};

#[path = "support/logs.rs"]
mod logs;

use logs::Captured;

const UPSTREAM_KEY: &str = "sk-upstream-SECRET-4242";

/// The headers of an upstream that answers like a hosted API behind a CDN: everything a client
/// must not receive, beside what it may.
const UPSTREAM_HEADERS: &[(&str, &str)] = &[
    // Kept.
    ("x-ratelimit-remaining-requests", "99"),
    ("x-ratelimit-reset-tokens", "6ms"),
    ("anthropic-ratelimit-requests-remaining", "49"),
    ("retry-after", "2"),
    ("retry-after-ms", "1500"),
    ("x-should-retry", "false"),
    ("cache-control", "no-cache"),
    // Dropped.
    (
        "set-cookie",
        "__cf_bm=upstream-session; path=/; domain=.api.example.com",
    ),
    ("alt-svc", "h3=\":443\"; ma=86400"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("openai-organization", "org-internal-acme"),
    ("openai-project", "proj_internal"),
    ("anthropic-organization-id", "0b7f-internal"),
    ("server", "cloudflare"),
    ("via", "1.1 internal-lb.corp"),
    ("x-envoy-upstream-service-time", "12"),
    ("x-litellm-applied-guardrails", "content-filter"),
    ("x-guardrails-duration-ms", "1.000"),
    ("x-litellm-call-id", "spoofed-id"),
    ("x-request-id", "req_upstream_1"),
    ("request-id", "req_upstream_2"),
];

const KEPT: &[&str] = &[
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "cache-control",
];

/// The upstream: answers by the client's `x-case` header (forwarded like any other).
async fn upstream(headers: HeaderMap) -> AxumResponse<Body> {
    let case = headers
        .get("x-case")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("json")
        .to_owned();
    let mut response = AxumResponse::builder();
    for (name, value) in UPSTREAM_HEADERS {
        response = response.header(*name, *value);
    }
    let chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    });
    let (status, content_type, body) = match case.as_str() {
        "json" => (200, "application/json", chat.to_string()),
        "stream" => (
            200,
            "text/event-stream",
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n".to_owned(),
        ),
        "429" => (
            429,
            "application/json",
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.to_owned(),
        ),
        // OpenAI's answer to a wrong key quotes part of it; this one quotes all of it.
        "401" => (
            401,
            "application/json",
            format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {UPSTREAM_KEY}. You can find your API key at https://platform.example.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
            ),
        ),
        "403" => (
            403,
            "application/json",
            r#"{"error":{"message":"Project proj_internal does not have access to model gpt-4o-mini","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#.to_owned(),
        ),
        // OpenAI's rate limit names the organization the gateway's key belongs to.
        "429-org" => (
            429,
            "application/json",
            r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-AbCdEf1234567890GhIjKl12 on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#.to_owned(),
        ),
        "302" => (302, "text/html", "<a href=\"http://10.0.0.7/internal\">moved</a>".to_owned()),
        other => panic!("unknown case {other}"),
    };
    if status == 302 {
        response = response.header("location", "http://10.0.0.7/internal");
    }
    response
        .status(status)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap()
}

async fn call(url: &str, case: &str, stream: bool) -> Response<Bytes> {
    let body =
        json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
    let mut request = post_json(&format!("{url}/v1/chat/completions"), &body.to_string());
    request
        .headers_mut()
        .insert("x-case", case.parse().unwrap());
    send(request).await
}

fn assert_only_kept_headers(response: &Response<Bytes>, case: &str) {
    for (name, value) in UPSTREAM_HEADERS {
        let got: Vec<_> = response.headers().get_all(*name).iter().collect();
        if KEPT.contains(name) {
            assert_eq!(got, [*value], "{case}: {name} is forwarded as sent");
        } else if *name == "x-litellm-call-id" || *name == "x-request-id" {
            // The gateway's own id, never the upstream's.
            assert_eq!(got.len(), 1, "{case}: {name}");
            assert!(
                !got[0].to_str().unwrap().contains("upstream"),
                "{case}: {name}"
            );
            assert_ne!(got[0], "spoofed-id", "{case}");
        } else {
            assert!(got.is_empty(), "{case}: {name} reached the client: {got:?}");
        }
    }
}

// One test in this binary: it installs the global log capture.
#[tokio::test(flavor = "multi_thread")]
async fn only_what_belongs_to_the_client_reaches_it() {
    let captured = Captured::install();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = Router::new().route("/v1/chat/completions", post(upstream));
        axum::serve(listener, app).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: {UPSTREAM_KEY}}}
general_settings:
  spend_logs: "sqlite://{db}"
"#,
        db = db.display()
    );
    let gateway = guardrail_gateway::app::Gateway::from_config_str(&config)
        .await
        .unwrap();
    let running = gateway
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let url = running.url("");

    // Answers that pass: a JSON response, a stream, a rate limit with its body as sent.
    let response = call(&url, "json", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_only_kept_headers(&response, "json");
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "hi");

    let response = call(&url, "stream", true).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_only_kept_headers(&response, "stream");
    assert!(response.body().ends_with(b"data: [DONE]\n\n"));

    let response = call(&url, "429", false).await;
    assert_eq!(response.status(), 429);
    assert_only_kept_headers(&response, "429");
    assert_eq!(
        response.body(),
        r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
    );

    // The gateway's account id in a rate limit's message: masked, the rest as sent.
    let response = call(&url, "429-org", false).await;
    assert_eq!(response.status(), 429);
    assert_only_kept_headers(&response, "429-org");
    assert_eq!(
        serde_json::from_slice::<Value>(response.body()).unwrap(),
        json!({"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-*** on requests per min (RPM): Limit 3, Used 3, Requested 1.",
                         "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );

    // Answers about the gateway: a 502 naming neither what the upstream said nor where it
    // pointed, and none of its headers.
    for (case, message, code) in [
        (
            "401",
            "the upstream of model 'm' refused the gateway's credentials (401 Unauthorized)",
            "upstream_auth_error",
        ),
        (
            "403",
            "the upstream of model 'm' refused the gateway's credentials (403 Forbidden)",
            "upstream_auth_error",
        ),
        (
            "302",
            "the upstream of model 'm' redirected the request, which the gateway does not follow (302 Found)",
            "upstream_redirect",
        ),
    ] {
        let response = call(&url, case, false).await;
        assert_eq!(response.status(), 502, "{case}");
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": message, "type": "bad_gateway_error", "param": null, "code": code}}),
            "{case}"
        );
        for (name, _) in UPSTREAM_HEADERS {
            if *name != "x-litellm-call-id" && *name != "x-request-id" {
                assert!(!response.headers().contains_key(*name), "{case}: {name}");
            }
        }
        assert!(!response.headers().contains_key("location"), "{case}");
        // A stream gets the same answer before its first byte.
        let streamed = call(&url, case, true).await;
        assert_eq!(streamed.status(), 502, "{case}");
        assert_eq!(streamed.body(), response.body(), "{case}");
    }

    // The operator's log says what the upstream said, with the deployment's key masked.
    let logged = captured.text();
    assert!(
        logged.contains("Incorrect API key provided: <redacted>."),
        "the 401's message is logged: {logged}"
    );
    assert!(
        logged.contains("Project proj_internal does not have access"),
        "{logged}"
    );
    assert!(
        !logged.contains(UPSTREAM_KEY),
        "the key reached a log line: {logged}"
    );

    // Every request has its spend-log row: the refusals as failures with the client's status.
    running.stop().await.unwrap();
    let store = SqliteSink::open(&db).await.unwrap();
    let rows = store.query(&SpendLogFilter::new()).await.unwrap();
    let rows: Vec<Value> = serde_json::from_value(serde_json::to_value(rows).unwrap()).unwrap();
    assert_eq!(rows.len(), 10, "{rows:#?}");
    let failures: Vec<_> = rows
        .iter()
        .filter(|r| r["metadata"]["http_status"] == 502)
        .collect();
    assert_eq!(failures.len(), 6, "{rows:#?}");
    assert!(
        failures.iter().all(|r| r["status"] == "failure"),
        "{failures:#?}"
    );
    assert!(
        !serde_json::to_string(&rows).unwrap().contains(UPSTREAM_KEY),
        "the key reached a spend-log row"
    );
}
