//! The streaming layer with the real content filter (exact mode): latency and the properties a
//! deployment relies on, over streams split anywhere.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use guardrail_tower_core::sse::SseDecoder;
use guardrail_tower_core::{ConfiguredGuardrail, Guardrail, GuardrailMode, Guardrails};
use guardrail_tower_guardrails::{ContentFilter, ContentFilterConfig};
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::body::{self, TestBody};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn filter() -> ContentFilter {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(
        "blocked_words: [{keyword: forbidden, action: BLOCK}]\n\
         patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]",
    )
    .unwrap();
    ContentFilter::new(config).unwrap()
}

fn layer() -> StreamingGuardrailBodyLayer {
    StreamingGuardrailBodyLayer::new(Guardrails::new([ConfiguredGuardrail::new(
        "content-filter",
        GuardrailMode::PostCall,
        filter(),
    )
    .default_on(true)]))
}

fn chat_event(text: &str) -> String {
    let data = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {data}\n\n")
}

fn chat_stream(deltas: &[String]) -> String {
    let mut s = String::new();
    for d in deltas {
        s.push_str(&chat_event(d));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    s.push_str("data: [DONE]\n\n");
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn run(upstream_body: TestBody) -> String {
    let response = Arc::new(Mutex::new(Some(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(upstream_body)
            .unwrap(),
    )));
    let svc = ServiceBuilder::new().layer(layer()).service(service_fn(
        move |_req: Request<Full<Bytes>>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(
                response.lock().unwrap().take().unwrap(),
            ))
        },
    ));
    let req = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"stream":true,"messages":[]}"#,
        )))
        .unwrap();
    let out = svc
        .oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(out.to_vec()).unwrap()
}

/// The text deltas a client reads.
fn client_text(sse: &str) -> String {
    let mut d = SseDecoder::new();
    d.push(Bytes::copy_from_slice(sse.as_bytes()));
    let mut text = String::new();
    while let Some(e) = d.next_event().unwrap() {
        let Some(data) = e.data() else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            continue;
        };
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    text
}

#[test]
fn clean_prose_flows_one_event_behind_at_most() {
    // Each delta is a word with its leading space; a word is settled once the next one starts.
    let deltas: Vec<String> =
        "The quick brown fox jumps over the lazy dog and keeps running far away"
            .split(' ')
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_owned()
                } else {
                    format!(" {w}")
                }
            })
            .collect();
    let stream = chat_stream(&deltas);
    let rt = runtime();
    // Feed events one at a time and count how far the output lags behind the input.
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = body::chunks(
        stream
            .split_inclusive("\n\n")
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    )
    .count_polls(polls.clone());
    let response = Arc::new(Mutex::new(Some(
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap(),
    )));
    let out = rt.block_on(async {
        let svc = ServiceBuilder::new().layer(layer()).service(service_fn(
            move |_req: Request<Full<Bytes>>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(
                    response.lock().unwrap().take().unwrap(),
                ))
            },
        ));
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(br#"{"messages":[]}"#)))
            .unwrap();
        let mut body = svc.oneshot(req).await.unwrap().into_body();
        let (mut out, mut frames, mut lag) = (String::new(), 0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            out.push_str(std::str::from_utf8(&data).unwrap());
            frames += 1;
            lag = lag.max(
                polls
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .saturating_sub(frames),
            );
        }
        assert!(lag <= 2, "exact mode held {lag} events back");
        out
    });
    assert_eq!(out, stream, "clean text passes byte for byte");
}

#[test]
fn a_blocked_word_at_the_very_end_is_caught_at_the_end_of_the_stream() {
    let rt = runtime();
    let stream = chat_stream(&["All".into(), " is".into(), " forbidden".into()]);
    let out = rt.block_on(run(body::chunks([stream])));
    // Every allowed character up to the blocked word, and nothing of it.
    assert_eq!(client_text(&out), "All is ");
    assert!(out.contains("Content blocked: keyword 'forbidden' detected"));
    assert!(out.ends_with("data: [DONE]\n\n"));
}

/// Splits `text` into deltas at `cuts` (char positions).
/// The words (indices into [`WORDS`]) with addresses inserted (position, which one), streamed as
/// deltas cut at `cuts` and an upstream body cut at `chunk_cuts`: the client reads the whole
/// text masked, and the stream ends with `[DONE]`.
fn streams_as_the_whole_text_masked(
    words: &[usize],
    emails: &[(usize, usize)],
    cuts: &[usize],
    chunk_cuts: &[usize],
) -> Result<(), TestCaseError> {
    let text = with_addresses(words, emails).join(" ");
    let expected = masked(&text);
    let stream = chat_stream(&body::deltas(&text, cuts));
    let out = runtime().block_on(run(body::split_anywhere(stream.as_bytes(), chunk_cuts)));
    prop_assert_eq!(client_text(&out), expected);
    prop_assert!(out.ends_with("data: [DONE]\n\n"));
    Ok(())
}

/// The words (indices into [`WORDS`]) with addresses inserted (position, which one).
fn with_addresses(words: &[usize], emails: &[(usize, usize)]) -> Vec<&'static str> {
    let addresses = ["jane@corp.com", "a.b+c@example.org", "x@y.io"];
    let mut ws: Vec<&str> = words.iter().map(|i| WORDS[*i]).collect();
    for &(at, which) in emails {
        ws.insert(at.min(ws.len()), addresses[which]);
    }
    ws
}

/// `text` as the filter masks it whole.
fn masked(text: &str) -> String {
    match filter().check_texts(&[text]).decision() {
        guardrail_tower_core::Decision::Rewrite { texts } => texts[0].clone(),
        _ => text.to_owned(),
    }
}

const WORDS: &[&str] = &[
    "the",
    "report",
    "is",
    "ready,",
    "contact",
    "me",
    "at",
    "ok",
    "forbiddenly",
    "unforbidden",
    "done.",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_blocked_word_split_anywhere_never_reaches_the_client(
        words in proptest::collection::vec(0usize..WORDS.len(), 0..30),
        at in 0usize..30,
        cuts in proptest::collection::vec(any::<usize>(), 0..25),
        chunk_cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut ws: Vec<&str> = words.iter().map(|i| WORDS[*i]).collect();
        ws.insert(at.min(ws.len()), "forbidden");
        let text = ws.join(" ");
        let stream = chat_stream(&body::deltas(&text, &cuts));
        let out = runtime().block_on(run(body::split_anywhere(stream.as_bytes(), &chunk_cuts)));
        let seen = client_text(&out);
        // The blocked word (on word boundaries) never appears; look-alikes may.
        let leaked = seen.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w.eq_ignore_ascii_case("forbidden"));
        prop_assert!(!leaked, "leaked in {:?}", seen);
        prop_assert!(out.contains("Content blocked: keyword 'forbidden' detected"));
        prop_assert!(text.starts_with(&seen), "the client saw a prefix of the text");
        // ...and all of it up to the blocked word.
        let blocked_at = ws.iter().position(|w| *w == "forbidden").unwrap();
        let before = ws[..blocked_at].join(" ");
        prop_assert!(seen.trim_end() == before.trim_end(), "{:?} vs {:?}", seen, before);
    }

    /// Addresses before a blocked word, the stream cut anywhere (so an address and the word
    /// often share an event, or a chunk of events scanned at once): the client reads the text
    /// up to the word with every address masked.
    #[test]
    fn a_block_releases_the_text_before_it_masked(
        words in proptest::collection::vec(0usize..WORDS.len(), 0..20),
        emails in proptest::collection::vec((0usize..20, 0usize..3), 1..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..25),
        chunk_cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut ws = with_addresses(&words, &emails);
        let before = ws.join(" ");
        ws.extend(["forbidden", "tail"]);
        let text = ws.join(" ");
        let stream = chat_stream(&body::deltas(&text, &cuts));
        let out = runtime().block_on(run(body::split_anywhere(stream.as_bytes(), &chunk_cuts)));
        let seen = client_text(&out);
        prop_assert!(!seen.contains('@'), "an address went out: {:?}", seen);
        prop_assert!(out.contains("Content blocked: keyword 'forbidden' detected"));
        let want = masked(&before);
        prop_assert_eq!(seen.trim_end(), want.trim_end());
    }

    #[test]
    fn streamed_masking_equals_masking_the_whole_text(
        words in proptest::collection::vec(0usize..WORDS.len(), 1..30),
        emails in proptest::collection::vec((0usize..30, 0usize..3), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..25),
        chunk_cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        streams_as_the_whole_text_masked(&words, &emails, &cuts, &chunk_cuts)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Streams of several kilobytes, dozens of addresses among the words, cut into hundreds of
    /// chunks: what the client reads is the whole text masked, as with short streams.
    #[test]
    fn long_streams_mask_as_the_whole_text(
        words in proptest::collection::vec(0usize..WORDS.len(), 300..900),
        emails in proptest::collection::vec((0usize..900, 0usize..3), 40..120),
        cuts in proptest::collection::vec(any::<usize>(), 50..200),
        chunk_cuts in proptest::collection::vec(any::<usize>(), 200..600),
    ) {
        streams_as_the_whole_text_masked(&words, &emails, &cuts, &chunk_cuts)?;
    }
}

#[test]
fn a_blocked_word_inside_a_hyphenated_word_is_blocked_after_the_allowed_part() {
    let rt = runtime();
    let stream = chat_stream(&["un-forbidden thoughts".into()]);
    let out = rt.block_on(run(body::chunks([stream])));
    assert_eq!(client_text(&out), "un-");
    assert!(out.contains("Content blocked: keyword 'forbidden' detected"));
}

#[test]
fn the_filter_is_a_span_matcher() {
    assert!(filter().span_matcher().is_some());
}
