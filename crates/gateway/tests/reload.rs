//! Hot reload over real sockets: `POST /config/reload` under load (no failed request, no
//! dropped stream, the new guardrails and models for what comes after, the old ones for what
//! was in flight), refusals that keep the running config, and `SIGHUP` to the binary.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use guardrail_gateway::app::Gateway;
use guardrail_tower_testkit::mock::{EVENTS_HEADER, MockUpstream};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::{call_json, serve, spend_rows};
use tokio::sync::mpsc;

const MASTER: &str = "sk-master-reload-0123456789";

/// `words` blocked before the call, `post_words` in the response; the models listed.
fn config(base: &str, models: &[&str], words: &[&str], post_words: &[&str], extra: &str) -> String {
    config_with(base, models, None, words, post_words, extra)
}

/// [`config`], plus a model `gated` served by `gated` when given.
fn config_with(
    base: &str,
    models: &[&str],
    gated: Option<&str>,
    words: &[&str],
    post_words: &[&str],
    extra: &str,
) -> String {
    let mut models: String = models
        .iter()
        .map(|m| {
            format!(
                "  - model_name: {m}\n    litellm_params: {{model: openai/{m}, api_base: \"{base}\", api_key: sk-up}}\n"
            )
        })
        .collect();
    if let Some(gated) = gated {
        models.push_str(&format!(
            "  - model_name: gated\n    litellm_params: {{model: openai/gated, api_base: \"{gated}\"}}\n"
        ));
    }
    let list = |words: &[&str]| {
        words
            .iter()
            .map(|w| format!("{{keyword: {w}, action: BLOCK}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"model_list:
{models}guardrails:
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      default_on: true
      blocked_words: [{pre}]
  - guardrail_name: block-replies
    litellm_params:
      guardrail: litellm_content_filter
      mode: post_call
      default_on: true
      blocked_words: [{post}]
general_settings:
  master_key: {MASTER}
{extra}"#,
        pre = list(words),
        post = list(post_words),
    )
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn chat(url: &str, model: &str, prompt: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]});
    Request::post(format!("{url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER}"))
        .header("content-type", "application/json")
        .header(EVENTS_HEADER, "8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// One request read whole: whether it succeeded completely (a 200 with a JSON completion, or
/// a stream of content events that ends with `[DONE]` and carries no error event).
async fn complete(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    stream: bool,
) -> Result<(), String> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("no response: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body cut: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let ok = if stream {
        text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\"")
    } else {
        serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v["choices"][0]["message"]["content"].is_string())
    };
    if ok {
        Ok(())
    } else {
        Err(format!("incomplete: {text}"))
    }
}

/// A chat upstream whose streams send one event, then wait until `gate` opens, then send
/// ` charlie`, the finish and `[DONE]`: a stream that is in flight for as long as a test says.
async fn gated_upstream(
    gate: tokio::sync::watch::Receiver<bool>,
) -> guardrail_tower_testkit::TestServer {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn event(content: Option<&str>, finish: Option<&str>) -> Bytes {
        let delta = match content {
            Some(c) => json!({"content": c}),
            None => json!({}),
        };
        let chunk = json!({"id": "chatcmpl-gated", "object": "chat.completion.chunk", "created": 0, "model": "gated",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {chunk}\n\n"))
    }
    guardrail_tower_testkit::serve(tower::service_fn(
        move |_req: Request<hyper::body::Incoming>| {
            let mut gate = gate.clone();
            async move {
                let head = futures_util::stream::iter([event(Some("You said:"), None)]);
                let rest = futures_util::stream::once(async move {
                    let _ = gate.wait_for(|open| *open).await;
                    futures_util::stream::iter([
                        event(Some(" charlie"), None),
                        event(None, Some("stop")),
                        Bytes::from_static(b"data: [DONE]\n\n"),
                    ])
                })
                .flatten();
                let body = StreamBody::new(
                    head.chain(rest)
                        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
                );
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body)
                        .unwrap(),
                )
            }
        },
    ))
    .await
}

/// The status of a chat request to model `m1` at `url` whose message is `word`, with the
/// master key.
async fn status_of_word(url: &str, word: &str) -> u16 {
    let body = format!(r#"{{"model":"m1","messages":[{{"role":"user","content":"{word}"}}]}}"#);
    call_json(
        Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(MASTER),
        Some(&body),
    )
    .await
    .0
}

async fn reload(url: &str) -> (u16, Value) {
    call_json(
        Method::POST,
        &format!("{url}/config/reload"),
        Some(MASTER),
        None,
    )
    .await
}

async fn write(path: &Path, text: &str) {
    tokio::fs::write(path, text).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_drops_nothing_and_what_follows_sees_the_new_config() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_recording(false);
    let base = upstream.base_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let gated = gated_upstream(gate).await;
    let gated = gated.url("/v1");
    write(
        &path,
        &config_with(&base, &["m1"], Some(&gated), &["alpha"], &["zulu"], ""),
    )
    .await;
    let served = serve(Gateway::from_config_file(&path).await.unwrap()).await;
    let url = served.url("");

    // Before: "bravo" passes, "charlie" in a reply passes, m2 does not exist.
    let c = client();
    complete(&c, chat(&url, "m1", "bravo", false), false)
        .await
        .unwrap();
    complete(&c, chat(&url, "m1", "charlie", false), false)
        .await
        .unwrap();
    let (status, _) = call_json(
        Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(MASTER),
        Some(r#"{"model":"m2","messages":[{"role":"user","content":"hi"}]}"#),
    )
    .await;
    assert_eq!(status, 400);

    // Streams in flight across the reload: their upstream holds them open until after it,
    // then sends "charlie", which the new config blocks in responses.
    let mut long_streams = Vec::new();
    for _ in 0..4 {
        let resp = c.request(chat(&url, "gated", "hi", true)).await.unwrap();
        assert_eq!(resp.status(), 200);
        long_streams.push(resp);
    }

    // Load: 6 clients, streamed and whole requests, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (url, stop, failed, done) =
                (url.clone(), stop.clone(), failed.clone(), done_tx.clone());
            tokio::spawn(async move {
                let c = client();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let stream = n % 2 == 0;
                    if let Err(e) = complete(
                        &c,
                        chat(&url, "m1", &format!("hello {w} {n}"), stream),
                        stream,
                    )
                    .await
                    {
                        eprintln!("worker {w} request {n} failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    let _ = done.send(());
                }
                n
            })
        })
        .collect();
    drop(done_tx);
    // 120 requests before the reload...
    for _ in 0..120 {
        done_rx.recv().await.unwrap();
    }
    write(
        &path,
        &config_with(
            &base,
            &["m1", "m2"],
            Some(&gated),
            &["alpha", "bravo"],
            &["zulu", "charlie"],
            "",
        ),
    )
    .await;
    let (status, answer) = reload(&url).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"status": "reloaded", "models": ["m1", "m2", "gated"], "guardrails": ["block-words", "block-replies"], "warnings": []})
    );
    // ... and 120 after it.
    for _ in 0..120 {
        done_rx.recv().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total >= 240, "{total}");
    eprintln!("{total} requests under load across the reload, none failed");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests out of {total}"
    );

    // The streams that started before the reload finish whole, under the old guardrails,
    // though what their upstream sends after it would now be blocked.
    open_gate.send(true).unwrap();
    for resp in long_streams {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains(" charlie"), "{text}");
        assert!(!text.contains("content_policy_violation"), "{text}");
    }
    // A stream started now is cut at "charlie" with the in-band error.
    let resp = c.request(chat(&url, "gated", "hi", true)).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(" charlie") && text.contains("content_policy_violation"),
        "{text}"
    );

    // After: the new word is blocked before the call, the new reply word in the response,
    // and the new model answers.
    let (status, body) = call_json(
        Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(MASTER),
        Some(r#"{"model":"m1","messages":[{"role":"user","content":"say bravo"}]}"#),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("content_policy_violation")),
        "{body}"
    );
    let (status, body) = call_json(
        Method::POST,
        &format!("{url}/v1/chat/completions"),
        Some(MASTER),
        Some(r#"{"model":"m1","messages":[{"role":"user","content":"charlie"}]}"#),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("content_policy_violation")),
        "{body}"
    );
    complete(&c, chat(&url, "m2", "hi", false), false)
        .await
        .unwrap();
    let (status, list) = call_json(
        Method::GET,
        &format!("{url}/guardrails/list"),
        Some(MASTER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        list["guardrails"][0]["litellm_params"]["blocked_words"][1]["keyword"],
        "bravo"
    );
}

#[tokio::test]
async fn an_invalid_or_refused_config_keeps_the_running_one() {
    let upstream = MockUpstream::start().await.unwrap();
    let base = upstream.base_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let db = format!("sqlite://{}", dir.path().join("spend.db").display());
    let settings = format!("  spend_logs: \"{db}\"\n");
    write(
        &path,
        &config(&base, &["m1"], &["alpha"], &["zulu"], &settings),
    )
    .await;
    let served = serve(Gateway::from_config_file(&path).await.unwrap()).await;
    let url = served.url("");
    let blocked = |word: &'static str| {
        let url = url.clone();
        async move { status_of_word(&url, word).await == 400 }
    };
    assert!(blocked("alpha").await);

    // An unknown guardrail type: 400 naming the key and line; "alpha" still blocked.
    let bad = config(&base, &["m1"], &["bravo"], &["zulu"], &settings).replace(
        "guardrail: litellm_content_filter\n      mode: post_call",
        "guardrail: no_such_type\n      mode: post_call",
    );
    write(&path, &bad).await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(
        body["error"]["param"],
        "guardrails[1].litellm_params.guardrail"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown guardrail type 'no_such_type'") && message.contains("line 13"),
        "{message}"
    );
    assert!(blocked("alpha").await);
    assert!(!blocked("bravo").await);

    // Not YAML at all.
    write(&path, "model_list: [\n").await;
    let (status, body) = reload(&url).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_config")),
        "{body}"
    );
    assert!(blocked("alpha").await);

    // Removing the master key is refused.
    write(
        &path,
        &config(&base, &["m1"], &["bravo"], &["zulu"], &settings)
            .replace(&format!("  master_key: {MASTER}\n"), ""),
    )
    .await;
    let (status, body) = reload(&url).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("reload_refused")),
        "{body}"
    );
    assert!(blocked("alpha").await);

    // A new spend-log target is kept for the next start, with a warning; the rest applies.
    let other = format!(
        "  spend_logs: \"sqlite://{}\"\n",
        dir.path().join("other.db").display()
    );
    write(
        &path,
        &config(&base, &["m1"], &["bravo"], &["zulu"], &other),
    )
    .await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["warnings"],
        json!([
            "general_settings.spend_logs cannot change while the gateway runs: the old value is kept until a restart"
        ])
    );
    assert!(blocked("bravo").await);
    assert!(!blocked("alpha").await);
    assert!(!dir.path().join("other.db").exists());

    // Reloading needs the master key.
    let (status, _) = call_json(Method::POST, &format!("{url}/config/reload"), None, None).await;
    assert_eq!(status, 401);

    // A gateway built from a string has no file to read again.
    let from_string = serve(
        Gateway::from_config_str(&config(&base, &["m1"], &["alpha"], &["zulu"], ""))
            .await
            .unwrap(),
    )
    .await;
    let (status, body) = reload(&from_string.url("")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("reload_unavailable")),
        "{body}"
    );
}

/// The next line of the gateway's log that contains `needle`.
#[cfg(unix)]
async fn next_with(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("the gateway logs in time")
            .expect("the gateway is still running");
        if line.contains(needle) {
            return line;
        }
    }
}

/// `SIGHUP` to the binary: the config is read again; an invalid one is logged and refused.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_an_invalid_config_is_logged_and_refused() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let upstream = MockUpstream::start().await.unwrap();
    let base = upstream.base_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    write(&path, &config(&base, &["m1"], &["alpha"], &["zulu"], "")).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = next_with(&mut lines, "guardrail-gateway listening").await;
    let addr = listening
        .split("listen=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let url = format!("http://{addr}");
    assert_eq!(status_of_word(&url, "bravo").await, 200);

    let pid = child.id().to_string();
    let hup = || {
        let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    };
    write(&path, &config(&base, &["m1"], &["bravo"], &["zulu"], "")).await;
    hup();
    let line = next_with(&mut lines, "config reloaded").await;
    assert!(line.contains("guardrails=2"), "{line}");
    assert_eq!(status_of_word(&url, "bravo").await, 400);
    assert_eq!(status_of_word(&url, "alpha").await, 200);

    write(&path, "guardrails: 7\n").await;
    hup();
    let line = next_with(&mut lines, "config reload refused").await;
    assert!(
        line.contains("guardrails") && line.contains("must be a list"),
        "{line}"
    );
    assert_eq!(status_of_word(&url, "bravo").await, 400);

    child.kill().unwrap();
    child.wait().unwrap();
}

/// The value of one metric line of a scrape (`name{labels} value`), 0 when absent.
fn metric(scrape: &str, line: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(url: &str) -> String {
    let resp = client()
        .request(
            Request::get(format!("{url}/metrics"))
                .header("authorization", format!("Bearer {MASTER}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn metrics_keep_counting_across_a_reload() {
    let upstream = MockUpstream::start().await.unwrap();
    let base = upstream.base_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let db = format!("sqlite://{}", dir.path().join("spend.db").display());
    let settings =
        format!("  spend_logs: \"{db}\"\nlitellm_settings:\n  callbacks: [prometheus]\n");
    write(&path, &config(&base, &["m1"], &["alpha"], &[], &settings)).await;
    let served = serve(Gateway::from_config_file(&path).await.unwrap()).await;
    let url = served.url("");
    let blocks = "litellm_guardrail_requests_total{guardrail_name=\"block-words\",status=\"intervened\",hook_type=\"pre_call\"}";
    let requests =
        "litellm_proxy_total_requests_metric_total{requested_model=\"m1\",status_code=\"400\"}";

    assert_eq!(status_of_word(&url, "alpha").await, 400);
    // The row is written, then counted: wait for the scrape to show it.
    let mut before = String::new();
    for _ in 0..200 {
        before = scrape(&url).await;
        if metric(&before, blocks) >= 1.0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metric(&before, blocks), 1.0, "{before}");

    // A new word list: the counters go on from where they were.
    write(&path, &config(&base, &["m1"], &["bravo"], &[], &settings)).await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of_word(&url, "bravo").await, 400);
    let mut after = String::new();
    for _ in 0..200 {
        after = scrape(&url).await;
        if metric(&after, blocks) >= 2.0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(metric(&after, blocks), 2.0, "{after}");
    assert_eq!(metric(&after, requests), 2.0, "{after}");
}

/// A config without guardrails leaves the three guardrail layers out of the stack (none of them
/// would have anything to do). What the gateway guarantees does not depend on them: a body it
/// cannot read is refused and logged, a guardrail a request names selects nothing and is not
/// forwarded, a stream the upstream cuts still ends with the endpoint's error event; and a reload
/// that adds a guardrail puts the layers back for the requests that follow (the model-merge
/// layer only once a model has guardrails of its own, the streaming layer only while a
/// guardrail runs on responses).
#[tokio::test]
async fn without_guardrails_the_guarantees_hold_and_a_reload_adds_the_layers() {
    let upstream = MockUpstream::start().await.unwrap();
    let base = upstream.base_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let db = format!("sqlite://{}", dir.path().join("spend.db").display());
    let settings = format!("  spend_logs: \"{db}\"\n  max_request_body_bytes: 4096\n");
    let origin = upstream.origin();
    let plain = format!(
        "model_list:\n  - model_name: m1\n    litellm_params: {{model: openai/m1, api_base: \"{base}\", api_key: sk-up}}\n  - model_name: a1\n    litellm_params: {{model: anthropic/a1, api_base: \"{origin}\", api_key: sk-ant}}\ngeneral_settings:\n  master_key: {MASTER}\n{settings}"
    );
    write(&path, &plain).await;
    let served = serve(Gateway::from_config_file(&path).await.unwrap()).await;
    let url = served.url("");
    // A POST of `body` to `path` with the master key: the status and the whole body.
    let to = |path: &str,
              content_type: &'static str,
              extra: Option<(&'static str, &'static str)>,
              body: String| {
        let mut req = Request::post(format!("{url}{path}"))
            .header("authorization", format!("Bearer {MASTER}"))
            .header("content-type", content_type);
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        async move {
            let resp = client().request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let send =
        |content_type: &'static str, extra: Option<(&'static str, &'static str)>, body: String| {
            to("/v1/chat/completions", content_type, extra, body)
        };

    // No guardrail: the word passes, and a guardrail the request names selects nothing and
    // stays out of what the upstream gets.
    assert_eq!(status_of_word(&url, "alpha").await, 200);
    let named = json!({"model": "m1", "guardrails": ["block-words"], "messages": [{"role": "user", "content": "alpha"}]});
    let (status, body) = send("application/json", None, named.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let forwarded = upstream.requests().last().unwrap().json().unwrap();
    assert_eq!(forwarded.get("guardrails"), None, "{forwarded}");
    assert_eq!(forwarded["messages"][0]["content"], "alpha");

    // What the guardrail layers would have refused, the spend log's reading of the request
    // refuses with the same code: not JSON, too large, compressed.
    let (status, body) = send("text/plain", None, "alpha".into()).await;
    assert_eq!(status, 415, "{body}");
    assert!(
        body.contains("\"code\":\"unsupported_media_type\""),
        "{body}"
    );
    let large = json!({"model": "m1", "messages": [{"role": "user", "content": "a".repeat(5000)}]});
    let (status, body) = send("application/json", None, large.to_string()).await;
    assert_eq!(status, 413, "{body}");
    let gzip = Some(("content-encoding", "gzip"));
    let (status, body) = send("application/json", gzip, "\u{1f}\u{8b}".into()).await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("compressed request bodies"), "{body}");
    assert_eq!(
        upstream.request_count(),
        2,
        "nothing refused reached the upstream"
    );

    // A stream the upstream cuts midway ends with the error event and the terminator.
    let cut = Some((
        guardrail_tower_testkit::mock::FAULT_HEADER,
        "drop-mid-stream",
    ));
    let stream =
        json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "hello"}]});
    let (status, body) = send("application/json", cut, stream.to_string()).await;
    assert_eq!(status, 200);
    assert!(
        body.ends_with(
            "data: {\"error\":{\"message\":\"the upstream stopped sending the stream before it ended\",\"type\":\"bad_gateway_error\",\"param\":null,\"code\":\"upstream_stream_error\"}}\n\ndata: [DONE]\n\n"
        ),
        "{body}"
    );

    // The Responses API's and Anthropic's streams end with their own error events.
    let responses = json!({"model": "m1", "stream": true, "input": "hello"});
    let (status, body) = to(
        "/v1/responses",
        "application/json",
        cut,
        responses.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let failed = body
        .rsplit_once("event: response.failed\ndata: ")
        .map(|(_, e)| e);
    let failed: Value =
        serde_json::from_str(failed.unwrap_or_else(|| panic!("{body}")).trim()).unwrap();
    assert_eq!(failed["response"]["status"], "failed", "{body}");
    assert_eq!(
        failed["response"]["error"]["code"], "upstream_stream_error",
        "{body}"
    );
    let messages = json!({"model": "a1", "stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]});
    let (status, body) = to(
        "/v1/messages",
        "application/json",
        cut,
        messages.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"the upstream stopped sending the stream before it ended\"}}\n\n"
        ),
        "{body}"
    );

    // A reload with a guardrail: the layers are back, and the word is blocked.
    write(
        &path,
        &config(&base, &["m1"], &["alpha"], &["zulu"], &settings),
    )
    .await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of_word(&url, "alpha").await, 400);
    assert_eq!(status_of_word(&url, "bravo").await, 200);

    // A model's own guardrail, not on by default: the merge layer (left out while no model
    // had guardrails) is back with it, for that model only.
    let model_level = format!(
        "model_list:\n  - model_name: m1\n    litellm_params: {{model: openai/m1, api_base: \"{base}\", api_key: sk-up, guardrails: [per-model]}}\n  - model_name: m2\n    litellm_params: {{model: openai/m2, api_base: \"{base}\", api_key: sk-up}}\nguardrails:\n  - guardrail_name: per-model\n    litellm_params:\n      guardrail: litellm_content_filter\n      mode: pre_call\n      blocked_words: [{{keyword: charlie, action: BLOCK}}]\ngeneral_settings:\n  master_key: {MASTER}\n{settings}"
    );
    write(&path, &model_level).await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(status_of_word(&url, "charlie").await, 400);
    let other = json!({"model": "m2", "messages": [{"role": "user", "content": "charlie"}]});
    let (status, body) = send("application/json", None, other.to_string()).await;
    assert_eq!(status, 200, "{body}");
    // No guardrail runs on responses there, so the streaming layer is left out too: a stream
    // passes whole.
    let stream = json!({"model": "m2", "stream": true, "messages": [{"role": "user", "content": "charlie"}]});
    let (status, body) = send("application/json", None, stream.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with("data: [DONE]\n\n") && !body.contains("error"),
        "{body}"
    );
    assert!(body.contains("charlie"), "{body}");

    // Guardrails on responses only: the pre-call layer is left out. The word reaches the
    // upstream as sent, and the reply that repeats it is blocked, whole or streamed; what the
    // pre-call layer would have refused is still refused before the upstream.
    let post_only = format!(
        "model_list:\n  - model_name: m1\n    litellm_params: {{model: openai/m1, api_base: \"{base}\", api_key: sk-up}}\nguardrails:\n  - guardrail_name: replies\n    litellm_params:\n      guardrail: litellm_content_filter\n      mode: post_call\n      default_on: true\n      blocked_words: [{{keyword: delta, action: BLOCK}}]\ngeneral_settings:\n  master_key: {MASTER}\n{settings}"
    );
    write(&path, &post_only).await;
    let (status, body) = reload(&url).await;
    assert_eq!(status, 200, "{body}");
    let before = upstream.request_count();
    let delta = json!({"model": "m1", "messages": [{"role": "user", "content": "delta"}]});
    let (status, body) = send("application/json", None, delta.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Content blocked: keyword 'delta' detected"),
        "{body}"
    );
    let forwarded = upstream.requests().last().unwrap().json().unwrap();
    assert_eq!(forwarded["messages"][0]["content"], "delta");
    let stream =
        json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "delta"}]});
    let (status, body) = send("application/json", None, stream.to_string()).await;
    assert_eq!(status, 200);
    let (sent, error) = body
        .split_once("data: {\"error\"")
        .unwrap_or_else(|| panic!("{body}"));
    // What the client read before the block: the words before the keyword, not the keyword.
    let read: String = sent
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(read.trim_end(), "You said:", "{body}");
    assert!(
        error.contains("Content blocked: keyword 'delta' detected")
            && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    let (status, body) = send("text/plain", None, "delta".into()).await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = send("application/json", None, large.to_string()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        upstream.request_count(),
        before + 2,
        "nothing refused reached the upstream"
    );

    // Every request left its row (newest first), the refused ones and the cut stream as
    // failures.
    served.stop().await.unwrap();
    let rows = spend_rows(&dir.path().join("spend.db")).await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "failure", "failure", "failure", "failure", "success", "success", "failure", "success",
            "failure", "failure", "failure", "failure", "failure", "failure", "failure", "success",
            "success"
        ],
        "{rows:#?}"
    );
}
