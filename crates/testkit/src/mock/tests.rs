use std::time::{Duration, Instant};

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::shapes::{reply_text, word_pieces};
use super::*;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    /// Each body frame received, in order.
    frames: Vec<Bytes>,
    /// `Err` when the body failed part way.
    end: Result<(), String>,
}

impl Answer {
    fn body(&self) -> Bytes {
        self.frames.concat().into()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("a JSON body")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The SSE events: (event type, data parsed as JSON or as a string).
    fn events(&self) -> Vec<(Option<String>, Value)> {
        let mut decoder = SseDecoder::new();
        decoder.push(self.body());
        let mut out = Vec::new();
        while let Some(event) = decoder.next_event().expect("valid SSE") {
            let data = event.data().expect("a data field");
            let data = serde_json::from_slice(data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()));
            out.push((event.event_type().map(str::to_owned), data));
        }
        assert!(
            decoder.finish().expect("valid SSE").is_none(),
            "a trailing partial event"
        );
        out
    }
}

async fn send(
    client: &HttpClient,
    method: &str,
    url: String,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let response = client
        .request(builder.body(Full::new(body)).unwrap())
        .await
        .expect("a response head");
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let end = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            Some(Err(e)) => break Err(e.to_string()),
        }
    };
    Answer {
        status: parts.status,
        headers: parts.headers,
        frames,
        end,
    }
}

async fn post(mock: &MockUpstream, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    send(
        &client(),
        "POST",
        format!("{}{path}", mock.origin()),
        Some(body),
        headers,
    )
    .await
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ],
        "stream": stream,
    })
}

fn responses(prompt: &str, stream: bool) -> Value {
    json!({"model": "gpt-4.1", "input": prompt, "stream": stream})
}

fn messages(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "stream": stream,
    })
}

fn event_types(events: &[(Option<String>, Value)]) -> Vec<&str> {
    events
        .iter()
        .map(|(ty, _)| ty.as_deref().unwrap_or(""))
        .collect()
}

#[test]
fn reply_text_follows_the_prompt() {
    assert_eq!(reply_text(" hello there ", None), "You said: hello there.");
    assert_eq!(
        reply_text("Tell me about the PROJECT", None),
        format!("You said: Tell me about the PROJECT.{SECRET_SENTENCE}")
    );
    assert_eq!(
        reply_text("my Email and the project", None),
        format!("You said: my Email and the project.{SECRET_SENTENCE}{EMAIL_SENTENCE}")
    );
    assert_eq!(reply_text("a b c", Some(2)), "You said:");
    assert_eq!(reply_text("hi", Some(5)), "You said: hi. lorem ipsum");
    assert_eq!(reply_text("hi", Some(0)), "");
    let pieces: Vec<_> = word_pieces("You said:\n two  words.").collect();
    assert_eq!(pieces, ["You", " said:", "\n two", "  words."]);
}

#[tokio::test]
async fn chat_json_has_the_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("hello world", false),
        &[],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "application/json");
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: hello world."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn chat_stream_has_the_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let mut request = chat("tell me about the project", true);
    request["stream_options"] = json!({"include_usage": true});
    let answer = post(&mock, "/v1/chat/completions", request, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "text/event-stream");
    assert_eq!(answer.end, Ok(()));
    let events = answer.events();
    let text = reply_text("tell me about the project", None);
    let words = text.split_whitespace().count();
    // role chunk, one chunk per word, finish chunk, usage chunk, [DONE]
    assert_eq!(events.len(), words + 4);
    assert!(events.iter().all(|(ty, _)| ty.is_none()));
    let (_, role) = &events[0];
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["model"], "gpt-4o-mini");
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["usage"], Value::Null);
    let deltas: Vec<&str> = events[1..=words]
        .iter()
        .map(|(_, e)| e["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(deltas.concat(), text);
    assert_eq!(deltas[1], " said:");
    let (_, finish) = &events[words + 1];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let (_, usage) = &events[words + 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 5);
    assert_eq!(usage["usage"]["completion_tokens"], words);
    assert_eq!(events[words + 3].1, "[DONE]");

    // Without include_usage: no usage chunk, and no "usage" key at all.
    let answer = post(&mock, "/v1/chat/completions", chat("hi", true), &[]).await;
    let events = answer.events();
    // role, "You", " said:", " hi.", finish, [DONE]
    assert_eq!(events.len(), 6);
    assert!(events[..5].iter().all(|(_, e)| e.get("usage").is_none()));
    assert_eq!(events[5].1, "[DONE]");
}

#[tokio::test]
async fn responses_json_and_stream_have_the_responses_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(&mock, "/v1/responses", responses("hello world", false), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-4.1");
    assert_eq!(body["output"][0]["type"], "message");
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "You said: hello world."
    );
    assert_eq!(body["usage"]["input_tokens"], 2);
    assert_eq!(body["usage"]["output_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 6);

    // The last user item of a list input.
    let request = json!({
        "model": "gpt-4.1",
        "input": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "input_text", "text": "second one"}]},
        ],
    });
    let body = post(&mock, "/v1/responses", request, &[]).await.json();
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "You said: second one."
    );

    let answer = post(&mock, "/v1/responses", responses("hello world", true), &[]).await;
    assert_eq!(answer.content_type(), "text/event-stream");
    let events = answer.events();
    assert_eq!(
        event_types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (ty, data)) in events.iter().enumerate() {
        assert_eq!(data["type"].as_str(), ty.as_deref());
        assert_eq!(data["sequence_number"], i);
    }
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let deltas: String = events[4..8]
        .iter()
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "You said: hello world.");
    assert_eq!(events[8].1["text"], "You said: hello world.");
    let completed = &events[11].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "You said: hello world."
    );
    assert_eq!(completed["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn messages_json_and_stream_have_the_anthropic_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(&mock, "/v1/messages", messages("hello world", false), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4");
    assert_eq!(
        body["content"][0],
        json!({"type": "text", "text": "You said: hello world."})
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 2);
    assert_eq!(body["usage"]["output_tokens"], 4);

    let answer = post(&mock, "/v1/messages", messages("hello world", true), &[]).await;
    let events = answer.events();
    assert_eq!(
        event_types(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for (ty, data) in &events {
        assert_eq!(data["type"].as_str(), ty.as_deref());
    }
    assert_eq!(events[0].1["message"]["model"], "claude-sonnet-4");
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 2);
    let deltas: String = events[3..7]
        .iter()
        .map(|(_, e)| {
            assert_eq!(e["delta"]["type"], "text_delta");
            e["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deltas, "You said: hello world.");
    assert_eq!(events[8].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[8].1["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn embeddings_health_and_unknown_routes() {
    let mock = MockUpstream::start().await.unwrap();
    let request = json!({"model": "text-embedding-3-small", "input": ["one two", "three"]});
    let answer = post(&mock, "/v1/embeddings", request, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let client = client();
    let health = send(
        &client,
        "GET",
        format!("{}/health", mock.origin()),
        None,
        &[],
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));

    let missing = send(
        &client,
        "GET",
        format!("{}/v1/nope", mock.origin()),
        None,
        &[],
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "unknown_url");
    assert_eq!(missing.json()["error"]["param"], Value::Null);
    let wrong = send(
        &client,
        "GET",
        format!("{}/v1/chat/completions", mock.origin()),
        None,
        &[],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);

    let bad = send(
        &client,
        "POST",
        format!("{}/v1/messages", mock.origin()),
        Some(json!([1])),
        &[],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["type"], "error");
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");

    // Without the /v1 prefix.
    let answer = post(&mock, "/chat/completions", chat("hi", false), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn events_header_sets_the_number_of_deltas_and_words() {
    let mock = MockUpstream::start().await.unwrap();
    for n in [0, 2, 7, 50] {
        let count = n.to_string();
        let headers = [(EVENTS_HEADER, count.as_str())];
        let events = post(
            &mock,
            "/v1/chat/completions",
            chat("hi there", true),
            &headers,
        )
        .await
        .events();
        assert_eq!(events.len(), n + 3, "n = {n}");
        let text: String = events[1..=n]
            .iter()
            .map(|(_, e)| e["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text.split_whitespace().count(), n);

        let events = post(&mock, "/v1/messages", messages("hi there", true), &headers)
            .await
            .events();
        let deltas = events
            .iter()
            .filter(|(ty, _)| ty.as_deref() == Some("content_block_delta"))
            .count();
        assert_eq!(deltas, n);

        let body = post(
            &mock,
            "/v1/responses",
            responses("hi there", false),
            &headers,
        )
        .await
        .json();
        let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), n);
        assert_eq!(body["usage"]["output_tokens"], n);
    }
}

#[tokio::test]
async fn delay_header_spaces_the_events_and_each_event_is_a_frame() {
    let mock = MockUpstream::start().await.unwrap();
    let started = Instant::now();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("one two", true),
        &[(DELAY_HEADER, "15"), (EVENTS_HEADER, "4")],
    )
    .await;
    // role, 4 deltas, finish, [DONE]: 7 events, 15 ms before each.
    assert!(started.elapsed() >= Duration::from_millis(7 * 15));
    assert_eq!(answer.frames.len(), 7);
    for frame in &answer.frames {
        assert!(frame.starts_with(b"data: ") && frame.ends_with(b"\n\n"));
    }

    let started = Instant::now();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("x", false),
        &[(DELAY_HEADER, "60")],
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(answer.status, StatusCode::OK);

    let bad = post(
        &mock,
        "/v1/chat/completions",
        chat("x", false),
        &[(DELAY_HEADER, "soon")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = post(
        &mock,
        "/v1/chat/completions",
        chat("x", false),
        &[(FAULT_HEADER, "boom")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never-end")
    );
}

#[tokio::test]
async fn pace_header_sends_events_on_a_fixed_schedule() {
    let mock = MockUpstream::start().await.unwrap();
    let started = Instant::now();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("one two", true),
        &[(PACE_HEADER, "50"), (EVENTS_HEADER, "4")],
    )
    .await;
    // role, 4 deltas, finish, [DONE]: 7 events, the first at once, the last 6 * 20 ms later.
    assert!(started.elapsed() >= Duration::from_millis(6 * 20));
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.frames.len(), 7);
    assert!(answer.frames.last().unwrap().starts_with(b"data: [DONE]"));

    // A non-streaming response is not paced, and is otherwise the same.
    let json = post(
        &mock,
        "/v1/chat/completions",
        chat("one two", false),
        &[(PACE_HEADER, "1")],
    )
    .await;
    assert_eq!(json.status, StatusCode::OK);

    for bad in [
        vec![(PACE_HEADER, "0")],
        vec![(PACE_HEADER, "fast")],
        vec![(PACE_HEADER, "10"), (DELAY_HEADER, "5")],
    ] {
        let answer = post(&mock, "/v1/chat/completions", chat("x", true), &bad).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(PACE_HEADER)
        );
    }
}

#[tokio::test]
async fn status_faults_answer_foreign_bodies() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("x", true),
        &[(FAULT_HEADER, "html-500")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.content_type(), "text/html");
    assert!(answer.body().starts_with(b"<!DOCTYPE html>"));
    assert!(answer.body().ends_with(b"</html>\n"));

    let answer = post(
        &mock,
        "/v1/messages",
        messages("x", false),
        &[(FAULT_HEADER, "status-503")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.content_type(), "text/plain");
    assert_eq!(
        answer.body(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(answer.end, Ok(()));
}

#[tokio::test]
async fn drop_mid_stream_sends_half_the_events_then_a_body_error() {
    let mock = MockUpstream::start().await.unwrap();
    let headers = [(FAULT_HEADER, "drop-mid-stream"), (EVENTS_HEADER, "10")];
    let answer = post(&mock, "/v1/chat/completions", chat("x", true), &headers).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.end.is_err(), "the body must fail");
    // 13 events in the full stream: 6 arrive, each whole.
    assert_eq!(answer.events().len(), 6);

    let answer = post(&mock, "/v1/responses", responses("x", true), &headers).await;
    assert!(answer.end.is_err());
    assert_eq!(answer.events().len(), 9);
}

#[tokio::test]
async fn half_event_cuts_an_event_in_the_middle() {
    let mock = MockUpstream::start().await.unwrap();
    let headers = [(FAULT_HEADER, "half-event")];
    let answer = post(
        &mock,
        "/v1/messages",
        messages("a b c d e f", true),
        &headers,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.end.is_err());
    let mut decoder = SseDecoder::new();
    decoder.push(answer.body());
    let mut whole = 0;
    while decoder.next_event().unwrap().is_some() {
        whole += 1;
    }
    assert_eq!(whole, 3);
    assert!(decoder.buffered_len() > 0, "half an event is left over");
}

#[tokio::test]
async fn half_json_sends_half_the_declared_length() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/chat/completions",
        chat("hello", false),
        &[(FAULT_HEADER, "half-json")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let declared: usize = answer.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(answer.end.is_err());
    assert!(answer.body().len() < declared);
    assert!(serde_json::from_slice::<Value>(&answer.body()).is_err());
}

#[tokio::test]
async fn hang_never_answers_and_never_end_keeps_streaming() {
    let mock = MockUpstream::start().await.unwrap();
    let hung = tokio::time::timeout(
        Duration::from_millis(200),
        post(
            &mock,
            "/v1/chat/completions",
            chat("x", false),
            &[(FAULT_HEADER, "hang")],
        ),
    )
    .await;
    assert!(hung.is_err(), "a hung request must not be answered");
    assert_eq!(mock.request_count(), 1);

    let request = Request::post(format!("{}/v1/chat/completions", mock.origin()))
        .header(FAULT_HEADER, "never-end")
        .header(DELAY_HEADER, "5")
        .body(Full::new(Bytes::from(chat("x", true).to_string())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for _ in 0..40 {
        let frame = body.frame().await.unwrap().unwrap();
        assert!(frame.is_data());
    }
    drop(body);

    // The mock still serves other requests.
    let answer = post(&mock, "/v1/chat/completions", chat("x", false), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let mock = MockUpstream::start().await.unwrap();
    post(
        &mock,
        "/v1/chat/completions",
        chat("first", false),
        &[("authorization", "Bearer sk-1")],
    )
    .await;
    post(
        &mock,
        "/v1/messages?beta=true",
        messages("second", true),
        &[],
    )
    .await;
    let client = client();
    send(
        &client,
        "GET",
        format!("{}/health", mock.origin()),
        None,
        &[],
    )
    .await;

    assert_eq!(mock.request_count(), 3);
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].method, http::Method::POST);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].header("authorization"), Some("Bearer sk-1"));
    assert_eq!(
        requests[0].json().unwrap()["messages"][1]["content"],
        "first"
    );
    assert_eq!(requests[1].path, "/v1/messages");
    assert_eq!(requests[1].query.as_deref(), Some("beta=true"));
    assert_eq!(requests[2].method, http::Method::GET);
    assert!(requests[2].body.is_empty());

    mock.set_recording(false);
    post(
        &mock,
        "/v1/chat/completions",
        chat("unrecorded", false),
        &[],
    )
    .await;
    assert_eq!(mock.request_count(), 4);
    assert_eq!(mock.requests().len(), 3);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_hundreds_of_concurrent_connections() {
    let mock = MockUpstream::start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let url = format!("{}/chat/completions", mock.base_url());
        tasks.push(tokio::spawn(async move {
            // A client per task: a connection per request, all open at once.
            let client = client();
            let answer = send(
                &client,
                "POST",
                url,
                Some(chat(&format!("n{i}"), i % 2 == 0)),
                &[],
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.end, Ok(()));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(mock.request_count(), 300);
}

#[tokio::test]
async fn dropping_the_mock_releases_hung_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let hung = tokio::spawn(async move {
        let client = client();
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(FAULT_HEADER, "hang")
            .body(Full::new(Bytes::from(chat("x", false).to_string())))
            .unwrap();
        client.request(request).await
    });
    mock.wait_for_requests(1).await;
    assert!(!hung.is_finished(), "a hang request is never answered");
    drop(mock);
    // The hung request is released (its connection closed) promptly.
    let result = tokio::time::timeout(Duration::from_secs(2), hung).await;
    assert!(result.expect("released").unwrap().is_err());
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let answer = send(&client(), "GET", format!("http://{addr}/health"), None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn wait_for_requests_returns_once_they_arrived() {
    let mock = MockUpstream::start().await.unwrap();
    mock.wait_for_requests(0).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let waiter = async {
        tokio::time::timeout(Duration::from_secs(5), mock.wait_for_requests(2))
            .await
            .expect("woken when the second request arrived");
        mock.request_count()
    };
    let requests = async {
        for i in 0..2 {
            let answer = send(
                &client(),
                "POST",
                url.clone(),
                Some(chat(&format!("r{i}"), false)),
                &[],
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK);
        }
    };
    let (seen, ()) = tokio::join!(waiter, requests);
    assert_eq!(seen, 2);
}
