//! Security review, as tests: clients cannot switch guardrails off,
//! hostile sizes are refused early, hostile config is an error rather than a hang, and access
//! control over real sockets: every route refuses a missing, wrong, revoked or expired key (and
//! a key for another model), no client credential reaches the upstream or a guardrail service,
//! a key's guardrail cannot be switched off, and replicas on one PostgreSQL honour each other's
//! keys (when `GUARDRAIL_TOWER_TEST_PG_URL` is set).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use guardrail_gateway::config::GatewayConfig;
use guardrail_gateway::keys::{KeyStore, SqliteKeyStore, VirtualKey, hash_key};
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::{TestServer, send};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{config, start};

#[tokio::test]
async fn clients_cannot_switch_default_on_or_model_level_guardrails_off() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, _running) = start(&config(&upstream, &dir.path().join("s.db"))).await;
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
    let (url, _running) = start(&config(&upstream, &dir.path().join("s.db"))).await;
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

// ---------------------------------------------------------------------------------------------
// Access control
// ---------------------------------------------------------------------------------------------

const MASTER: &str = "sk-master-SECRET-0123456789";
const UPSTREAM_KEY: &str = "sk-upstream-SECRET-1234";
const ANTHROPIC_KEY: &str = "sk-ant-upstream-SECRET-9876";
const SERVICE_KEY: &str = "sk-guardrail-service-SECRET-4321";

/// A Generic Guardrail API service that allows everything and records every request it gets.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

impl Recorder {
    async fn start(&self) -> TestServer {
        let seen = self.clone();
        guardrail_tower_testkit::serve(tower::service_fn(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                seen.0.lock().unwrap().push((parts.headers, body));
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(br#"{"action":"NONE"}"#)))
                        .unwrap(),
                )
            }
        }))
        .await
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.0.lock().unwrap().clone()
    }
}

/// A gateway with a master key, two OpenAI models and an Anthropic one, a remote guardrail
/// (`remote`, default on, pre and post call, asked to forward every credential header) when a
/// service is given, and `key-filter` (off unless a key or a request selects it).
fn access_config(
    upstream: &MockUpstream,
    spend_logs: &str,
    service: Option<&str>,
    ttl: f64,
) -> String {
    let remote = service.map_or(String::new(), |url| {
        format!(
            "  - guardrail_name: remote\n    litellm_params: {{guardrail: generic_guardrail_api, mode: [pre_call, post_call], default_on: true, api_base: \"{url}\", api_key: {SERVICE_KEY}, extra_headers: [authorization, x-litellm-api-key, x-api-key, api-key, cookie], stream_policy: end_of_stream}}\n"
        )
    });
    format!(
        r#"
model_list:
  - model_name: guarded
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: {UPSTREAM_KEY}}}
  - model_name: other-model
    litellm_params: {{model: openai/gpt-4o, api_base: "{base}", api_key: {UPSTREAM_KEY}}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: {ANTHROPIC_KEY}}}
guardrails:
{remote}  - guardrail_name: key-filter
    litellm_params: {{guardrail: litellm_content_filter, mode: [pre_call, post_call], blocked_words: [{{keyword: restricted, action: BLOCK}}]}}
general_settings:
  master_key: {MASTER}
  spend_logs: "{spend_logs}"
  user_api_key_cache_ttl: {ttl}
"#,
        base = upstream.base_url(),
        origin = upstream.origin(),
    )
}

/// A request with an optional `Authorization: Bearer` key.
fn request(
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let body = match body {
        Some(body) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::default(),
    };
    req.body(body).unwrap()
}

async fn json_of(resp: Response<Bytes>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = serde_json::from_slice(resp.body())
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(resp.body()).into_owned()));
    (status, body)
}

/// `POST /key/generate` with the master key; returns the new key.
async fn generate(url: &str, body: Value) -> String {
    let (status, v) = json_of(
        send(request(
            Method::POST,
            &format!("{url}/key/generate"),
            Some(MASTER),
            Some(body),
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

/// The spend-log rows, once there are at least `n`.
async fn rows(url: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = json_of(
            send(request(
                Method::GET,
                &format!("{url}/spend/logs?limit=1000"),
                Some(MASTER),
                None,
            ))
            .await,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let rows = v.as_array().unwrap().clone();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spend log never reached {n} rows: {}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat_body(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn every_route_refuses_missing_wrong_revoked_expired_and_other_model_keys() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (url, _running) = start(&access_config(
        &upstream,
        &format!("sqlite://{}", db.display()),
        None,
        5.0,
    ))
    .await;

    let revoked = generate(&url, json!({"key_alias": "revoked"})).await;
    let (status, v) = json_of(
        send(request(
            Method::POST,
            &format!("{url}/key/delete"),
            Some(MASTER),
            Some(json!({"keys": [revoked]})),
        ))
        .await,
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"deleted_keys": [revoked]})));
    let other_model = generate(&url, json!({"models": ["other-model"]})).await;
    // An expired key, written straight into the gateway's database.
    let expired = "sk-expired-SECRET-abcdefgh";
    let mut row = VirtualKey::new(hash_key(expired));
    row.expires = Some(SystemTime::now() - Duration::from_secs(60));
    SqliteKeyStore::open(&db)
        .await
        .unwrap()
        .insert(&row)
        .await
        .unwrap();

    let chat = chat_body("guarded", "hello", false);
    let llm: Vec<(&str, Value)> = vec![
        ("/v1/chat/completions", chat.clone()),
        ("/chat/completions", chat.clone()),
        (
            "/v1/responses",
            json!({"model": "guarded", "input": "hello"}),
        ),
        (
            "/v1/messages",
            json!({"model": "guarded", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}),
        ),
    ];
    let admin: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/spend/logs", None),
        (Method::GET, "/spend/logs/blocks", None),
        (Method::GET, "/key/list", None),
        (Method::GET, "/key/info?key=sk-anything", None),
        (Method::POST, "/key/generate", Some(json!({}))),
        (
            Method::POST,
            "/key/update",
            Some(json!({"key": other_model, "models": []})),
        ),
        (
            Method::POST,
            "/key/delete",
            Some(json!({"keys": [other_model]})),
        ),
        (
            Method::POST,
            "/key/block",
            Some(json!({"key": other_model})),
        ),
        (
            Method::POST,
            "/key/unblock",
            Some(json!({"key": other_model})),
        ),
    ];
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("missing", None, "auth_error"),
        (
            "wrong",
            Some("sk-wrong-SECRET-key"),
            "token_not_found_in_db",
        ),
        ("revoked", Some(&revoked), "token_not_found_in_db"),
        ("expired", Some(expired), "expired_key"),
        ("other model", Some(&other_model), ""),
    ];
    let mut llm_requests = 0;
    for (case, key, kind) in cases {
        for (path, body) in &llm {
            let (status, v) = json_of(
                send(request(
                    Method::POST,
                    &format!("{url}{path}"),
                    key,
                    Some(body.clone()),
                ))
                .await,
            )
            .await;
            llm_requests += 1;
            let anthropic = *path == "/v1/messages";
            if case == "other model" {
                assert_eq!(status, 403, "{case} {path}: {v}");
                // Both shapes keep the message at error.message.
                let message = &v["error"]["message"];
                assert_eq!(
                    message,
                    "key not allowed to access model. This key can only access models=['other-model']. Tried to access guarded",
                    "{path}"
                );
            } else {
                assert_eq!(status, 401, "{case} {path}: {v}");
                if anthropic {
                    assert_eq!(v["type"], "error", "{path}");
                    assert_eq!(v["error"]["type"], "authentication_error", "{path}");
                } else {
                    assert_eq!(v["error"]["type"], kind, "{case} {path}: {v}");
                }
            }
        }
        for (method, path, body) in &admin {
            let (status, v) = json_of(
                send(request(
                    method.clone(),
                    &format!("{url}{path}"),
                    key,
                    body.clone(),
                ))
                .await,
            )
            .await;
            let want = if case == "other model" { 403 } else { 401 };
            assert_eq!(status, want, "{case} {method} {path}: {v}");
        }
        // Any other path needs a valid key before it says 404.
        let (status, _) =
            json_of(send(request(Method::GET, &format!("{url}/v1/models"), key, None)).await).await;
        assert_eq!(
            status,
            if case == "other model" { 404 } else { 401 },
            "{case}"
        );
    }
    // The health probes stay open.
    for path in [
        "/health",
        "/health/liveliness",
        "/health/liveness",
        "/health/readiness",
    ] {
        let resp = send(request(Method::GET, &format!("{url}{path}"), None, None)).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    // The key the admin routes refused to act for still works: nothing was changed or deleted.
    let (status, _) = json_of(
        send(request(
            Method::POST,
            &format!("{url}/v1/chat/completions"),
            Some(&other_model),
            Some(chat_body("other-model", "hello", false)),
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    llm_requests += 1;

    // Nothing refused was forwarded, and each refusal left exactly one spend-log row.
    assert_eq!(upstream.request_count(), 1);
    let rows = rows(&url, llm_requests).await;
    assert_eq!(rows.len(), llm_requests);
    let statuses: Vec<u64> = rows
        .iter()
        .map(|r| r["metadata"]["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 16);
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 4);
    let text = serde_json::to_string(&rows).unwrap();
    for secret in [
        MASTER,
        &revoked,
        &other_model,
        expired,
        "sk-wrong-SECRET-key",
    ] {
        assert!(!text.contains(secret), "a key in the spend log");
    }
}

#[tokio::test]
async fn no_client_credential_reaches_the_upstream_or_a_guardrail_service() {
    let upstream = MockUpstream::start().await.unwrap();
    let recorder = Recorder::default();
    let service = recorder.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, _running) = start(&access_config(
        &upstream,
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        Some(&service.url("")),
        5.0,
    ))
    .await;
    let key = generate(&url, json!({"key_alias": "team-a"})).await;
    let client_secrets = [
        MASTER,
        key.as_str(),
        "sk-client-authorization-SECRET",
        "sk-client-x-api-key-SECRET",
        "sk-client-azure-SECRET",
        "sk-client-cookie-SECRET",
    ];
    let mut sent = 0;
    for stream in [false, true] {
        for (path, body, key_header) in [
            (
                "/v1/chat/completions",
                chat_body("guarded", "hello", stream),
                "x-litellm-api-key",
            ),
            (
                "/v1/chat/completions",
                chat_body("guarded", "hello", stream),
                "authorization",
            ),
            (
                "/v1/messages",
                json!({"model": "claude", "max_tokens": 5, "stream": stream, "messages": [{"role": "user", "content": "hello"}]}),
                "x-api-key",
            ),
        ] {
            for valid in [key.as_str(), MASTER] {
                // The valid key in its header, and stray credentials in every other.
                let mut req = Request::post(format!("{url}{path}"))
                    .header("content-type", "application/json")
                    .header("api-key", "sk-client-azure-SECRET")
                    .header("cookie", "session=sk-client-cookie-SECRET");
                req = match key_header {
                    "x-litellm-api-key" => req
                        .header("x-litellm-api-key", valid)
                        .header("authorization", "Bearer sk-client-authorization-SECRET")
                        .header("x-api-key", "sk-client-x-api-key-SECRET"),
                    "authorization" => req
                        .header("authorization", format!("Bearer {valid}"))
                        .header("x-api-key", "sk-client-x-api-key-SECRET"),
                    _ => req.header("x-api-key", valid),
                };
                let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
                let resp = send(req).await;
                assert_eq!(
                    resp.status(),
                    200,
                    "{path} {key_header} stream={stream}: {:?}",
                    resp.body()
                );
                sent += 1;
            }
        }
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), sent);
    for req in &seen {
        match req.path.as_str() {
            "/v1/messages" => {
                assert_eq!(req.header("x-api-key"), Some(ANTHROPIC_KEY));
                assert_eq!(req.header("authorization"), None);
            }
            _ => {
                assert_eq!(
                    req.header("authorization").unwrap(),
                    format!("Bearer {UPSTREAM_KEY}")
                );
                assert_eq!(req.header("x-api-key"), None);
            }
        }
        for name in ["x-litellm-api-key", "api-key", "cookie"] {
            assert_eq!(req.header(name), None, "{name} reached the upstream");
        }
        let all = format!("{:?} {}", req.headers, String::from_utf8_lossy(&req.body));
        for secret in client_secrets {
            assert!(
                !all.contains(secret),
                "a client credential reached the upstream"
            );
        }
    }
    let calls = recorder.requests();
    assert!(
        calls.len() >= 2 * sent,
        "pre and post call on every request: {}",
        calls.len()
    );
    for (headers, body) in &calls {
        assert_eq!(headers.get("x-api-key").unwrap(), SERVICE_KEY);
        let all = format!("{headers:?} {}", String::from_utf8_lossy(body));
        for secret in client_secrets {
            assert!(
                !all.contains(secret),
                "a client credential reached the guardrail service: {all}"
            );
        }
    }
}

#[tokio::test]
async fn a_key_s_guardrail_blocks_and_the_request_cannot_switch_it_off() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, _running) = start(&access_config(
        &upstream,
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        None,
        5.0,
    ))
    .await;
    let key = generate(
        &url,
        json!({"key_alias": "filtered", "guardrails": ["key-filter"]}),
    )
    .await;
    for stream in [false, true] {
        let mut body = chat_body("guarded", "a restricted question", stream);
        body["guardrails"] = json!({"key-filter": false});
        body["metadata"] = json!({"guardrails": {"key-filter": false}, "disable_guardrails": true});
        body["disable_global_guardrails"] = json!(true);
        let mut req = request(
            Method::POST,
            &format!("{url}/v1/chat/completions"),
            Some(&key),
            Some(body.clone()),
        );
        req.headers_mut()
            .insert("x-litellm-disable-guardrails", "true".parse().unwrap());
        let (status, v) = json_of(send(req).await).await;
        assert_eq!(status, 400, "stream={stream}: {v}");
        assert_eq!(v["error"]["code"], "content_policy_violation");
        // The master key carries no guardrail of its own: the same request passes.
        let (status, _) = json_of(
            send(request(
                Method::POST,
                &format!("{url}/v1/chat/completions"),
                Some(MASTER),
                Some(body),
            ))
            .await,
        )
        .await;
        assert_eq!(status, 200);
    }
    // The post-call side too: the key's guardrail checks what comes back.
    let body = json!({"model": "guarded", "stream": true, "messages": [{"role": "user", "content": "say restricted"}]});
    let resp = send(request(
        Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(&key),
        Some(body),
    ))
    .await;
    let text = String::from_utf8_lossy(resp.body()).into_owned();
    assert!(
        resp.status() == 400 || text.contains("content_policy_violation"),
        "{} {text}",
        resp.status()
    );
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("a restricted question"))
            .count(),
        2
    );
}

// ---------------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL
// ---------------------------------------------------------------------------------------------

fn pg_url() -> Option<String> {
    match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            None
        }
    }
}

#[tokio::test]
async fn two_replicas_on_one_postgres_honour_keys_created_and_deleted_on_the_other() {
    let Some(pg) = pg_url() else { return };
    let (admin, connection) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .expect("GUARDRAIL_TOWER_TEST_PG_URL is set but PostgreSQL cannot be reached");
    tokio::spawn(connection);
    let schema = format!("replicas_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let sep = if pg.contains('?') { '&' } else { '?' };
    let db = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
    let upstream = MockUpstream::start().await.unwrap();
    // A short cache: a replica sees another's changes within 200 ms.
    // Records cut off when the test ends go to a dead-letter file here, not the working directory.
    let dead_letters = tempfile::tempdir().unwrap();
    let config = format!(
        "{}  spend_logs_dead_letter_path: \"{}\"\n",
        access_config(&upstream, &db, None, 0.2),
        dead_letters.path().join("dead.jsonl").display()
    );
    let (a, _running_a) = start(&config).await;
    let (b, _running_b) = start(&config).await;
    let call = |replica: &str, key: &str| {
        send(request(
            Method::POST,
            &format!("{replica}/v1/chat/completions"),
            Some(key),
            Some(chat_body("guarded", "hello", false)),
        ))
    };

    // Created on A, used on B.
    let key = generate(&a, json!({"key_alias": "shared"})).await;
    assert_eq!(call(&b, &key).await.status(), 200);
    // Listed on B.
    let (_, listed) = json_of(
        send(request(
            Method::GET,
            &format!("{b}/key/list?key_alias=shared"),
            Some(MASTER),
            None,
        ))
        .await,
    )
    .await;
    assert_eq!(listed["keys"], json!([hash_key(&key)]));

    // Deleted on A: refused on A at once, and on B within the cache TTL.
    let (status, _) = json_of(
        send(request(
            Method::POST,
            &format!("{a}/key/delete"),
            Some(MASTER),
            Some(json!({"key_aliases": ["shared"]})),
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(call(&a, &key).await.status(), 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = call(&b, &key).await;
        if resp.status() == 401 {
            let (_, v) = json_of(resp).await;
            assert_eq!(v["error"]["type"], "token_not_found_in_db");
            break;
        }
        assert_eq!(resp.status(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "replica B still accepts a deleted key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The other way round, with an update: B restricts a key made on B; A honours it.
    let key = generate(&b, json!({"key_alias": "narrowed"})).await;
    assert_eq!(call(&a, &key).await.status(), 200);
    let (status, _) = json_of(
        send(request(
            Method::POST,
            &format!("{b}/key/update"),
            Some(MASTER),
            Some(json!({"key": key, "models": ["other-model"]})),
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(call(&b, &key).await.status(), 403);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call(&a, &key).await.status() != 403 {
        assert!(
            std::time::Instant::now() < deadline,
            "replica A never saw the update"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
