use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use guardrail_tower_core::{Caller, ParsedRequest};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::keys::{
    DeleteOutcome, KeyFuture, KeyPage, KeyQuery, KeySelector, KeyStore, KeyStoreError,
    KeyStoreErrorKind, SqliteKeyStore, VirtualKey, hash_key,
};

const MASTER: &str = "sk-master-test-0123456789";

/// A key store on a temporary SQLite file, with three keys.
async fn store() -> (Arc<KeyCache>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteKeyStore::open(dir.path().join("keys.db"))
        .await
        .unwrap();
    let mut team = VirtualKey::new(hash_key("sk-team-a"));
    team.key_alias = Some("team-a".into());
    team.user_id = Some("alice".into());
    team.team_id = Some("red".into());
    team.models = vec!["gpt-a".into(), "it's".into()];
    team.metadata
        .insert("guardrails".into(), json!(["team-filter"]));
    store.insert(&team).await.unwrap();
    let mut expired = VirtualKey::new(hash_key("sk-expired"));
    expired.expires = Some(humantime::parse_rfc3339("2020-01-02T03:04:05Z").unwrap());
    store.insert(&expired).await.unwrap();
    let mut blocked = VirtualKey::new(hash_key("sk-blocked"));
    blocked.blocked = Some(true);
    store.insert(&blocked).await.unwrap();
    let mut stale = VirtualKey::new(hash_key("sk-stale-guardrail"));
    stale
        .metadata
        .insert("guardrails".into(), json!(["removed-from-config"]));
    store.insert(&stale).await.unwrap();
    let cache = Arc::new(KeyCache::new(Arc::new(store), Duration::from_secs(5)));
    (cache, dir)
}

fn authenticator(keys: &Arc<KeyCache>) -> Authenticator {
    Authenticator::new(MASTER)
        .keys(Arc::clone(keys))
        .known_guardrails(["team-filter", "other"])
}

/// What the inner service saw, answered as JSON: the selection, the caller, the credential
/// headers left.
#[derive(Clone, Default)]
struct Echo {
    calls: Arc<AtomicUsize>,
}

impl Echo {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        let calls = Arc::clone(&self.calls);
        service_fn(move |req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let parsed = req.extensions().get::<ParsedRequest>().unwrap();
                let caller = req.extensions().get::<Arc<Caller>>().unwrap();
                let credentials: Vec<&str> = CREDENTIAL_HEADERS
                    .iter()
                    .copied()
                    .filter(|h| req.headers().contains_key(*h))
                    .collect();
                let body = json!({
                    "selection": parsed.selection().names().collect::<Vec<_>>(),
                    "caller": **caller,
                    "credentials": credentials,
                });
                Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
            }
        })
    }
}

struct Answer {
    status: u16,
    body: Value,
    caller: Option<Arc<Caller>>,
}

async fn call(auth: &Authenticator, echo: &Echo, req: Request<Full<Bytes>>) -> Answer {
    let svc = KeyAuthLayer::new(auth.clone()).layer(echo.service());
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let caller = resp.extensions().get::<Arc<Caller>>().cloned();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap(),
        caller,
    }
}

fn chat(model: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        // A client trying to switch the key's guardrail off.
        "guardrails": {"team-filter": false},
        "metadata": {"guardrails": {"team-filter": false}},
    });
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn with(mut req: Request<Full<Bytes>>, name: &'static str, value: &str) -> Request<Full<Bytes>> {
    req.headers_mut().insert(name, value.parse().unwrap());
    req
}

fn openai_error(message: &str, kind: &str, param: Option<&str>, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

#[tokio::test]
async fn refusals_carry_litellm_errors_and_never_reach_the_inner_service() {
    let (keys, _dir) = store().await;
    let auth = authenticator(&keys);
    let echo = Echo::default();
    let invalid = openai_error(
        "Authentication Error, Invalid proxy server token passed. Unable to find token in cache or `LiteLLM_VerificationTokenTable`",
        "token_not_found_in_db",
        Some("key"),
        "401",
    );
    let cases: Vec<(Request<Full<Bytes>>, u16, Value)> = vec![
        (
            chat("gpt-a"),
            401,
            openai_error(
                "Authentication Error, No api key passed in.",
                "auth_error",
                None,
                "401",
            ),
        ),
        (
            with(chat("gpt-a"), "authorization", "sk-team-a"),
            401,
            openai_error(
                "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
                "auth_error",
                None,
                "401",
            ),
        ),
        (
            with(chat("gpt-a"), "authorization", "Bearer "),
            401,
            openai_error(
                "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
                "auth_error",
                None,
                "401",
            ),
        ),
        (
            with(chat("gpt-a"), "authorization", "Bearer sk-wrong"),
            401,
            invalid.clone(),
        ),
        // The master key's hash is not a key.
        (
            with(
                chat("gpt-a"),
                "authorization",
                &format!("Bearer {}", hash_key(MASTER)),
            ),
            401,
            invalid.clone(),
        ),
        // A master-key prefix or extension is not the master key.
        (
            with(
                chat("gpt-a"),
                "authorization",
                &format!("Bearer {}", &MASTER[..MASTER.len() - 1]),
            ),
            401,
            invalid.clone(),
        ),
        (
            with(chat("gpt-a"), "authorization", &format!("Bearer {MASTER}x")),
            401,
            invalid.clone(),
        ),
        (
            with(chat("gpt-a"), "authorization", "Bearer sk-blocked"),
            401,
            openai_error(
                "Authentication Error, Key is blocked. Update via `/key/unblock` if you're an admin.",
                "auth_error",
                None,
                "401",
            ),
        ),
        (
            with(chat("gpt-b"), "authorization", "Bearer sk-team-a"),
            403,
            openai_error(
                r"key not allowed to access model. This key can only access models=['gpt-a', 'it\'s']. Tried to access gpt-b",
                "key_model_access_denied",
                Some("model"),
                "403",
            ),
        ),
        (
            with(chat("gpt-a"), "authorization", "Bearer sk-stale-guardrail"),
            500,
            openai_error(
                "this key's guardrail 'removed-from-config' is not configured on the gateway; the request was not sent",
                "internal_server_error",
                None,
                "key_guardrail_not_configured",
            ),
        ),
    ];
    for (req, status, body) in cases {
        let shown = format!("{:?}", req.headers());
        let answer = call(&auth, &echo, req).await;
        assert_eq!((answer.status, &answer.body), (status, &body), "{shown}");
    }

    let answer = call(
        &auth,
        &echo,
        with(chat("gpt-a"), "authorization", "Bearer sk-expired"),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"]["type"], "expired_key");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Authentication Error - Expired Key. Key Expiry time 2020-01-02 03:04:05+00:00 and current time 20"
        ),
        "{message}"
    );
    // A known key's refusal still says who called, for the spend log.
    assert_eq!(
        answer.caller.unwrap().api_key_hash.as_deref(),
        Some(&*hash_key("sk-expired"))
    );
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_anthropic_route_answers_in_its_shape_and_takes_x_api_key() {
    let (keys, _dir) = store().await;
    let auth = authenticator(&keys);
    let echo = Echo::default();
    let messages = |key: Option<(&'static str, &str)>| {
        let mut req = Request::post("/v1/messages")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"gpt-a","max_tokens":5,"messages":[]}"#,
            )))
            .unwrap();
        if let Some((name, value)) = key {
            req = with(req, name, value);
        }
        req
    };
    let answer = call(&auth, &echo, messages(None)).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.body,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "Authentication Error, No api key passed in."}})
    );
    let answer = call(&auth, &echo, messages(Some(("x-api-key", "sk-team-a")))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["caller"]["user_api_key_alias"], "team-a");
    assert_eq!(answer.body["credentials"], json!([]));
    // x-api-key is the Anthropic clients' header: other routes do not take it.
    let answer = call(&auth, &echo, with(chat("gpt-a"), "x-api-key", "sk-team-a")).await;
    assert_eq!(answer.status, 401);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_key_s_guardrails_join_the_selection_and_credentials_are_removed() {
    let (keys, _dir) = store().await;
    let auth = authenticator(&keys);
    let echo = Echo::default();
    let mut req = with(chat("gpt-a"), "authorization", "Bearer sk-team-a");
    req = with(req, "api-key", "sk-azure-style");
    let answer = call(&auth, &echo, req).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The body's `{"team-filter": false}` switched nothing off.
    assert_eq!(answer.body["selection"], json!(["team-filter"]));
    assert_eq!(answer.body["credentials"], json!([]));
    assert_eq!(
        answer.body["caller"],
        json!({
            "user_api_key_hash": hash_key("sk-team-a"),
            "user_api_key_alias": "team-a",
            "user_api_key_user_id": "alice",
            "user_api_key_team_id": "red",
        })
    );
    assert_eq!(
        answer.caller.unwrap().key_alias.as_deref(),
        Some("team-a"),
        "the response carries the caller for the spend log"
    );

    // x-litellm-api-key wins over Authorization (which may carry another service's token).
    let req = with(
        with(chat("gpt-a"), "x-litellm-api-key", "Bearer sk-team-a"),
        "authorization",
        "Bearer sk-something-else",
    );
    let answer = call(&auth, &echo, req).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["credentials"], json!([]));
    let req = with(chat("gpt-a"), "x-litellm-api-key", MASTER);
    let answer = call(&auth, &echo, req).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body["caller"],
        json!({"user_api_key_hash": MASTER_KEY_ALIAS, "user_api_key_user_id": MASTER_USER_ID})
    );
    // The master key has no model list and no guardrails of its own.
    assert_eq!(answer.body["selection"], json!([]));
}

#[tokio::test]
async fn an_unauthenticated_body_is_never_read() {
    let (keys, _dir) = store().await;
    let auth = authenticator(&keys);
    let polls = Arc::new(AtomicUsize::new(0));
    let body = || {
        let counted = Arc::clone(&polls);
        http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(Some(Ok::<_, std::io::Error>(http_body::Frame::data(
                Bytes::from_static(b" "),
            ))))
        }))
    };
    let echo = Echo::default();
    for key in [None, Some("Bearer sk-wrong")] {
        let mut req = Request::post("/v1/chat/completions").body(body()).unwrap();
        if let Some(key) = key {
            req.headers_mut()
                .insert("authorization", key.parse().unwrap());
        }
        let resp = KeyAuthLayer::new(auth.clone())
            .layer(echo.service())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

/// A store whose database is down.
#[derive(Debug)]
struct Down;

impl KeyStore for Down {
    fn get<'a>(&'a self, _token: &'a str) -> KeyFuture<'a, Option<VirtualKey>> {
        Box::pin(async {
            Err(KeyStoreError::new(
                KeyStoreErrorKind::Unavailable,
                "cannot connect to PostgreSQL: connection refused",
            ))
        })
    }
    fn insert<'a>(&'a self, _key: &'a VirtualKey) -> KeyFuture<'a, ()> {
        unreachable!()
    }
    fn update<'a>(&'a self, _key: &'a VirtualKey) -> KeyFuture<'a, bool> {
        unreachable!()
    }
    fn delete<'a>(&'a self, _which: &'a KeySelector) -> KeyFuture<'a, DeleteOutcome> {
        unreachable!()
    }
    fn list<'a>(&'a self, _query: &'a KeyQuery) -> KeyFuture<'a, KeyPage> {
        unreachable!()
    }
}

#[tokio::test]
async fn a_key_that_cannot_be_checked_is_refused_and_the_master_key_still_works() {
    let keys = Arc::new(KeyCache::new(Arc::new(Down), Duration::from_secs(5)));
    let auth = Authenticator::new(MASTER).keys(keys);
    let echo = Echo::default();
    let answer = call(
        &auth,
        &echo,
        with(chat("m"), "authorization", "Bearer sk-any"),
    )
    .await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body,
        openai_error(
            "Authentication Error, the key could not be checked: the key database is unavailable",
            "auth_error",
            None,
            "503"
        )
    );
    let answer = call(
        &auth,
        &echo,
        with(chat("m"), "authorization", &format!("Bearer {MASTER}")),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn require_key_takes_the_master_key_or_any_key() {
    let (keys, _dir) = store().await;
    let auth = authenticator(&keys);
    let inner = service_fn(|req: Request<Full<Bytes>>| async move {
        let caller = req.extensions().get::<Arc<Caller>>().unwrap().clone();
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
            caller.api_key_hash.clone().unwrap(),
        ))))
    });
    let get = |key: Option<&str>| {
        let mut req = Request::get("/spend/logs").body(Full::default()).unwrap();
        if let Some(key) = key {
            req.headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        req
    };
    let admin = RequireKeyLayer::master_only(auth.clone()).layer(inner);
    let any = RequireKeyLayer::any_key(auth).layer(inner);
    let status = |resp: Response<_>| resp.status().as_u16();
    assert_eq!(status(admin.clone().oneshot(get(None)).await.unwrap()), 401);
    assert_eq!(
        status(admin.clone().oneshot(get(Some("sk-wrong"))).await.unwrap()),
        401
    );
    let resp = admin.clone().oneshot(get(Some("sk-team-a"))).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        openai_error(
            "Authentication Error, only the master key can call /spend/logs",
            "auth_error",
            None,
            "403"
        )
    );
    let resp = admin.oneshot(get(Some(MASTER))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        MASTER_KEY_ALIAS
    );
    let resp = any.clone().oneshot(get(Some("sk-team-a"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        status(any.clone().oneshot(get(Some("sk-expired"))).await.unwrap()),
        401
    );
    assert_eq!(status(any.oneshot(get(None)).await.unwrap()), 401);
}

#[test]
fn an_expiry_in_the_future_passes() {
    let mut row = VirtualKey::new("t");
    row.expires = Some(SystemTime::now() + Duration::from_secs(60));
    assert!(check_key(&ResolvedKey::new(&row)).is_ok());
}
