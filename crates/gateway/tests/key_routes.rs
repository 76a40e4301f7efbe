//! The `/key/*` routes through the gateway's router: LiteLLM's request and response shapes, the
//! refusals, and what a generated key can then do.

mod support;

use bytes::Bytes;
use guardrail_gateway::app::Gateway;
use guardrail_gateway::keys::hash_key;
use guardrail_tower_testkit::mock::MockUpstream;
use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::spend_rows;
use tower::ServiceExt;

const MASTER: &str = "sk-master-routes-0123456789";

async fn gateway(spend_logs: &str, upstream: &MockUpstream) -> Gateway {
    Gateway::from_config_str(&format!(
        r#"
model_list:
  - model_name: gpt-a
    litellm_params: {{model: openai/gpt-a, api_base: "{base}", api_key: sk-up}}
  - model_name: gpt-b
    litellm_params: {{model: openai/gpt-b, api_base: "{base}", api_key: sk-up}}
guardrails:
  - guardrail_name: no-secrets
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, blocked_words: [{{keyword: classified, action: BLOCK}}]}}
general_settings:
  master_key: {MASTER}
  spend_logs: "{spend_logs}"
"#,
        base = upstream.base_url()
    ))
    .await
    .unwrap()
}

async fn call(
    gw: &Gateway,
    method: Method,
    uri: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
        ))
        .unwrap();
    let resp = gw.router().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// POSTs `body` (JSON) to `uri` with `key`: the status and the answer as JSON.
async fn post(gw: &Gateway, uri: &str, key: &str, body: Value) -> (u16, Value) {
    call(gw, Method::POST, uri, key, Some(body)).await
}

/// GETs `uri` with `key`: the status and the answer as JSON.
async fn get(gw: &Gateway, uri: &str, key: &str) -> (u16, Value) {
    call(gw, Method::GET, uri, key, None).await
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn generate_info_update_list_delete() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        &upstream,
    )
    .await;

    let (status, made) = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({
            "key_alias": "team-a",
            "duration": "30d",
            "models": ["gpt-a"],
            "metadata": {"owner": "alice"},
            "guardrails": ["no-secrets"],
            "user_id": "alice",
            "team_id": "red",
            // LiteLLM's defaults for what this gateway does not enforce are accepted.
            "max_budget": null,
            "tpm_limit": null,
            "aliases": {},
            "spend": 0,
        }),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-") && key.len() == 35, "{key}");
    assert_eq!(made["token"], hash_key(&key));
    assert_eq!(made["token_id"], hash_key(&key));
    assert_eq!(made["key_name"], format!("sk-...{}", &key[key.len() - 4..]));
    assert_eq!(made["key_alias"], "team-a");
    assert_eq!(made["models"], json!(["gpt-a"]));
    assert_eq!(
        made["metadata"],
        json!({"owner": "alice", "guardrails": ["no-secrets"]})
    );
    assert_eq!(made["guardrails"], json!(["no-secrets"]));
    assert_eq!(made["user_id"], "alice");
    assert_eq!(made["team_id"], "red");
    assert_eq!(made["created_by"], "default_user_id");
    assert_eq!(made["duration"], "30d");
    let expires = humantime::parse_rfc3339(made["expires"].as_str().unwrap()).unwrap();
    let days = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(days, 29);

    // The key works, within what it allows.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt-a", "hi"))
            .await
            .0,
        200
    );
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt-b", "hi"))
            .await
            .0,
        403
    );
    let (status, v) = post(
        &gw,
        "/v1/chat/completions",
        &key,
        chat("gpt-a", "a classified plan"),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("content_policy_violation"))
    );
    // The master key carries no guardrail: the same text passes.
    assert_eq!(
        post(
            &gw,
            "/v1/chat/completions",
            MASTER,
            chat("gpt-b", "a classified plan")
        )
        .await
        .0,
        200
    );

    // Info, by key and by hash; the hash is not shown back.
    for name in [key.clone(), hash_key(&key)] {
        let (status, info) = get(&gw, &format!("/key/info?key={name}"), MASTER).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["key"], name.as_str());
        assert_eq!(info["info"]["key_alias"], "team-a");
        assert!(info["info"].get("token").is_none());
    }
    let (status, v) = get(&gw, "/key/info?key=sk-nope", MASTER).await;
    assert_eq!(status, 404);
    assert_eq!(
        v,
        json!({"error": {"message": "Key not found in database", "type": "not_found_error", "param": "key", "code": "404"}})
    );

    // Update: other metadata keeps the key's guardrails; the new model list applies at once.
    let (status, updated) = post(
        &gw,
        "/key/update",
        MASTER,
        json!({"key": key, "models": ["gpt-b"], "metadata": {"owner": "bob"}, "duration": "-1"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["key"], key.as_str());
    assert_eq!(
        updated["metadata"],
        json!({"owner": "bob", "guardrails": ["no-secrets"]})
    );
    assert_eq!(updated["expires"], Value::Null);
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt-a", "hi"))
            .await
            .0,
        403
    );
    assert_eq!(
        post(&gw, "/v1/chat/completions", &key, chat("gpt-b", "hi"))
            .await
            .0,
        200
    );
    // Blocking takes effect at once on this replica.
    let (status, _) = post(
        &gw,
        "/key/update",
        MASTER,
        json!({"key": hash_key(&key), "blocked": true}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = post(&gw, "/v1/chat/completions", &key, chat("gpt-b", "hi")).await;
    assert_eq!(
        (status, &v["error"]["message"]),
        (
            401,
            &json!(
                "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin."
            )
        )
    );

    // Unblocking and blocking again, twice: each works from the state the other left.
    for _ in 0..2 {
        let (status, v) = post(&gw, "/key/unblock", MASTER, json!({"key": key})).await;
        assert_eq!((status, &v["blocked"]), (200, &json!(false)));
        let (status, _) = post(&gw, "/v1/chat/completions", &key, chat("gpt-b", "hi")).await;
        assert_eq!(status, 200);
        let (status, v) = post(&gw, "/key/block", MASTER, json!({"key": key})).await;
        assert_eq!((status, &v["blocked"]), (200, &json!(true)));
        let (status, _) = post(&gw, "/v1/chat/completions", &key, chat("gpt-b", "hi")).await;
        assert_eq!(status, 401);
        let (status, _) = post(&gw, "/key/block", MASTER, json!({"key": "sk-nope"})).await;
        assert_eq!(status, 404);
    }

    // List.
    let second = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"key_alias": "team-b", "team_id": "blue"}),
    )
    .await
    .1;
    let second = second["key"].as_str().unwrap().to_owned();
    let (status, listed) = get(&gw, "/key/list?size=1&page=2", MASTER).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed,
        json!({"keys": [hash_key(&key)], "total_count": 2, "current_page": 2, "total_pages": 2})
    );
    let (_, listed) = get(
        &gw,
        "/key/list?team_id=blue&return_full_object=true",
        MASTER,
    )
    .await;
    assert_eq!(listed["keys"][0]["token"], hash_key(&second));
    assert_eq!(listed["keys"][0]["key_alias"], "team-b");
    assert_eq!(get(&gw, "/key/list?size=101", MASTER).await.0, 400);
    assert_eq!(get(&gw, "/key/list?sort_by=token;--", MASTER).await.0, 400);

    // Delete: all or nothing, then the key stops working at once.
    let (status, v) = post(
        &gw,
        "/key/delete",
        MASTER,
        json!({"keys": [key, "sk-never-made"]}),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        get(&gw, &format!("/key/info?key={key}"), MASTER).await.0,
        200
    );
    let (status, v) = post(
        &gw,
        "/key/delete",
        MASTER,
        json!({"key_aliases": ["team-a", "team-b"]}),
    )
    .await;
    assert_eq!(
        (status, v),
        (200, json!({"deleted_keys": ["team-a", "team-b"]}))
    );
    let (status, v) = post(&gw, "/v1/chat/completions", &second, chat("gpt-a", "hi")).await;
    assert_eq!(
        (status, &v["error"]["type"]),
        (401, &json!("token_not_found_in_db"))
    );
}

/// The spend log sits outside key authentication (so that it records refusals too) and learns
/// who called from it: a virtual key's row has the key's hash, alias, user and team, whether the
/// request was answered, refused or left by its client before the response; a master-key row
/// has the master key's alias and user, not a hash of it; no row has a key.
#[tokio::test]
async fn each_spend_row_names_the_key_that_made_the_request() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let gw = gateway(&format!("sqlite://{}", db.display()), &upstream).await;
    let (status, made) = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"key_alias": "team-a", "user_id": "alice", "team_id": "red"}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let (status, v) = post(&gw, "/v1/chat/completions", &key, chat("gpt-a", "hi")).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(&gw, "/v1/chat/completions", MASTER, chat("gpt-b", "hello")).await;
    assert_eq!(status, 200, "{v}");
    // A client that leaves before the response: its row names the key too.
    let slow = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("x-mock-delay-ms", "5000")
        .body(axum::body::Body::from(chat("gpt-a", "slow").to_string()))
        .unwrap();
    let gone = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        gw.router().oneshot(slow),
    )
    .await;
    assert!(gone.is_err(), "the mock answered before the client left");
    // A blocked key is refused, and its row still names it.
    let (status, v) = post(&gw, "/key/block", MASTER, json!({"key": key})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(&gw, "/v1/chat/completions", &key, chat("gpt-a", "again")).await;
    assert_eq!(status, 401, "{v}");
    gw.spend_log().shutdown().await.unwrap();

    let rows = spend_rows(&db).await;
    // Newest first.
    let [blocked, left, master, by_key] = &rows[..] else {
        panic!("{rows:#?}")
    };
    for (row, model, status, error) in [
        (by_key, "gpt-a", "success", None),
        (left, "gpt-a", "failure", Some("client_disconnected")),
        (blocked, "gpt-a", "failure", Some("auth_error")),
    ] {
        assert_eq!(row.model, model);
        assert_eq!(row.status.as_str(), status);
        let error_type = row
            .metadata
            .error_information
            .as_ref()
            .map(|e| e.error_type.as_str());
        assert_eq!(error_type, error, "{row:#?}");
        assert_eq!(row.api_key.as_deref(), Some(hash_key(&key).as_str()));
        assert_eq!(row.user.as_deref(), Some("alice"));
        let meta = serde_json::to_value(&row.metadata).unwrap();
        assert_eq!(meta["user_api_key_alias"], "team-a", "{meta}");
        assert_eq!(meta["user_api_key_user_id"], "alice", "{meta}");
        assert_eq!(meta["user_api_key_team_id"], "red", "{meta}");
    }
    assert_eq!(master.model, "gpt-b");
    assert_eq!(master.api_key.as_deref(), Some("litellm_proxy_master_key"));
    assert_eq!(master.user.as_deref(), Some("default_user_id"));
    let meta = serde_json::to_value(&master.metadata).unwrap();
    assert_eq!(meta["user_api_key_user_id"], "default_user_id", "{meta}");
    assert!(meta.get("user_api_key_alias").is_none(), "{meta}");
    let everything = format!("{rows:?}");
    assert!(!everything.contains(&key) && !everything.contains(MASTER));
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        &upstream,
    )
    .await;
    let generate = |body: Value| post(&gw, "/key/generate", MASTER, body);
    for (body, param, needle) in [
        (
            json!({"max_budget": 10}),
            "body",
            "'max_budget' is not supported",
        ),
        (
            json!({"gaurdrails": ["no-secrets"]}),
            "body",
            "'gaurdrails' is not supported",
        ),
        (
            json!({"guardrails": ["nope"]}),
            "guardrails",
            "guardrail 'nope' is not configured",
        ),
        (
            json!({"metadata": {"guardrails": ["nope"]}}),
            "guardrails",
            "guardrail 'nope' is not configured",
        ),
        (
            json!({"duration": "soon"}),
            "duration",
            "invalid duration 'soon'",
        ),
        (json!({"models": "gpt-a"}), "models", "must be a list"),
        (
            json!({"key": "not-sk-prefixed-key"}),
            "key",
            "must start with 'sk-'",
        ),
        (json!({"key_alias": ""}), "key_alias", "non-empty"),
        (json!({"blocked": "yes"}), "blocked", "true or false"),
        (
            json!({"max_parallel_requests": 0}),
            "max_parallel_requests",
            "a whole number above zero, or null",
        ),
        (
            json!({"max_parallel_requests": -1}),
            "max_parallel_requests",
            "a whole number above zero, or null",
        ),
        (
            json!({"max_parallel_requests": "2"}),
            "max_parallel_requests",
            "a whole number above zero, or null",
        ),
        (
            json!({"max_parallel_requests": 1.5}),
            "max_parallel_requests",
            "a whole number above zero, or null",
        ),
        (
            json!({"max_parallel_requests": 2_147_483_648_u64}),
            "max_parallel_requests",
            "a whole number above zero, or null",
        ),
    ] {
        let (status, v) = generate(body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    assert_eq!(generate(json!({"key_alias": "dup"})).await.0, 200);
    let (status, v) = generate(json!({"key_alias": "dup"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["message"],
        "Key with alias 'dup' already exists. Unique key aliases across all keys are required."
    );
    // A key of one's own: it works, and cannot be made twice.
    let (status, v) = generate(json!({"key": "sk-my-own-key-value-1234"})).await;
    assert_eq!(
        (status, &v["key"]),
        (200, &json!("sk-my-own-key-value-1234"))
    );
    assert_eq!(
        generate(json!({"key": "sk-my-own-key-value-1234"})).await.0,
        400
    );
    let (status, v) = post(&gw, "/key/delete", MASTER, json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["message"],
        "At least one of 'keys' or 'key_aliases' must be provided."
    );
    let (status, v) = post(
        &gw,
        "/key/update",
        MASTER,
        json!({"key": "sk-nope", "models": []}),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["type"]),
        (404, &json!("not_found_error"))
    );
    let req = Request::post("/key/generate")
        .header("authorization", format!("Bearer {MASTER}"))
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    assert_eq!(gw.router().oneshot(req).await.unwrap().status(), 400);
}

#[tokio::test]
async fn without_a_database_or_a_master_key_virtual_keys_are_unavailable() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &format!("jsonl://{}", dir.path().join("s.jsonl").display()),
        &upstream,
    )
    .await;
    let (status, v) = post(&gw, "/key/generate", MASTER, json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "virtual_keys_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("need a database")
    );
    // The master key still works.
    assert_eq!(
        post(&gw, "/v1/chat/completions", MASTER, chat("gpt-a", "hi"))
            .await
            .0,
        200
    );

    let open = Gateway::from_config_str(&format!(
        "model_list:\n  - model_name: gpt-a\n    litellm_params: {{model: openai/gpt-a, api_base: \"{}\"}}\n",
        upstream.base_url()
    ))
    .await
    .unwrap();
    assert!(!open.requires_keys());
    let (status, v) = post(&open, "/key/generate", "anything", json!({})).await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("master_key"),
        "{v}"
    );
    // Open: no key needed, and the routes answer as before.
    let req = Request::get("/spend/logs")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(open.router().oneshot(req).await.unwrap().status(), 200);
    // Non-loopback listening needs a master key or an explicit opt-in.
    let public: std::net::SocketAddr = "0.0.0.0:4000".parse().unwrap();
    let err = open.check_exposure(public, false).unwrap_err();
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(open.check_exposure(public, true).is_ok());
    assert!(
        open.check_exposure("127.0.0.1:4000".parse().unwrap(), false)
            .is_ok()
    );
    assert!(
        open.check_exposure("[::1]:4000".parse().unwrap(), false)
            .is_ok()
    );
    assert!(gw.check_exposure(public, false).is_ok());
}

/// A key's `max_parallel_requests`: while as many requests made with it as it allows run (a
/// stream counts until its last byte is sent), another is a 429 that says so, with
/// `retry-after`, and its spend-log row; once one ends, the next is served. The master key, and
/// a key whose limit is lifted (`null`), are not limited. Over real sockets.
#[tokio::test]
async fn a_key_runs_at_most_its_max_parallel_requests_at_once() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let gw = gateway(&format!("sqlite://{}", db.display()), &upstream).await;
    let (status, made) = post(
        &gw,
        "/key/generate",
        MASTER,
        json!({"key_alias": "one-at-a-time", "max_parallel_requests": 1}),
    )
    .await;
    assert_eq!((status, &made["max_parallel_requests"]), (200, &json!(1)));
    let key = made["key"].as_str().unwrap().to_owned();
    let running = support::serve(gw).await;
    let url = running.url("/v1/chat/completions");

    // A stream of 20 events at 20 a second: about a second of body after its head.
    let mut stream = chat("gpt-a", "hello");
    stream["stream"] = json!(true);
    let paced = || {
        Request::post(&url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("x-mock-events", "20")
            .header("x-mock-events-per-second", "20")
            .body(http_body_util::Full::new(Bytes::from(stream.to_string())))
            .unwrap()
    };
    let first = support::client().request(paced()).await.unwrap();
    assert_eq!(first.status(), 200);

    // While it streams, a second request with the key is refused; the master key's is not.
    let one = chat("gpt-a", "hi").to_string();
    let (status, headers, body) = support::call(Method::POST, &url, Some(&key), Some(&one)).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": {
            "message": "Max parallel request limit reached: this key's max_parallel_requests \
                        is 1; retry when one of its requests has ended",
            "type": "rate_limit_error", "param": null, "code": "max_parallel_requests_reached"}})
    );
    assert_eq!(
        support::call(Method::POST, &url, Some(MASTER), Some(&one))
            .await
            .0,
        200
    );

    // The stream read to its end: the key's place is free again.
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"),
        "{body:?}"
    );
    assert_eq!(
        support::call(Method::POST, &url, Some(&key), Some(&one))
            .await
            .0,
        200
    );

    // Lifted: no limit.
    let (status, _, _) = support::call(
        Method::POST,
        &running.url("/key/update"),
        Some(MASTER),
        Some(&json!({"key": key, "max_parallel_requests": null}).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let held = support::client().request(paced()).await.unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(
        support::call(Method::POST, &url, Some(&key), Some(&one))
            .await
            .0,
        200
    );
    drop(held);

    // Every request made with the key has its row; the refused one as a 429 failure.
    running.stop().await.unwrap();
    let rows: Vec<_> = spend_rows(&db)
        .await
        .into_iter()
        .filter(|r| r.api_key.as_deref() == Some(hash_key(&key).as_str()))
        .collect();
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.metadata.http_status == 429)
        .collect();
    assert_eq!(refused.len(), 1, "{rows:#?}");
    assert_eq!(refused[0].status.as_str(), "failure");
}
