//! `request_parsing`: any body, under any endpoint and content type, through
//! [`ParsedRequest::parse`], then a rewrite of its guardrail texts.
//!
//! Input: a path byte (picks the call type through [`CallType::from_path`]), a content-type
//! byte (absent, one of a few real ones, or the next `b % 32` bytes as the header value), an
//! edit byte (how the texts are changed), then the body.
//!
//! Checks: no panic; a parsed request keeps the bytes; a body without JSON has no texts; a
//! rewrite with the wrong number of texts is refused and changes nothing; after
//! `set_texts(x)`, `texts()` is `x`; the re-serialized bytes parse again, to the same texts,
//! model, stream flag, user and guardrail selection.

use bytes::Bytes;
use guardrail_tower_core::{CallType, ParsedRequest};
use http::HeaderValue;

use super::common::{Input, show};

/// Paths for every call type, with prefixed mounts, a trailing `/` and near misses.
pub const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/chat/completions",
    "/openai/v1/chat/completions/",
    "/v1/responses",
    "/v1/messages",
    "/anthropic/v1/messages",
    "/messages",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/threads/t/messages",
    "/v1/models",
];

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON"),
    Some("application/vnd.api+json"),
    Some("text/plain"),
    Some(""),
    Some("multipart/form-data; boundary=x"),
];

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let path = PATHS[usize::from(input.byte()) % PATHS.len()];
    let call_type = CallType::from_path(path);
    let ct = usize::from(input.byte());
    let content_type = match CONTENT_TYPES.get(ct % (CONTENT_TYPES.len() + 1)) {
        Some(fixed) => fixed.map(HeaderValue::from_static),
        None => {
            let n = usize::from(input.byte() % 32);
            HeaderValue::from_bytes(input.take(n)).ok()
        }
    };
    let edit = input.byte();
    let body = input.rest();

    let Ok(mut parsed) = ParsedRequest::parse(
        call_type,
        Bytes::copy_from_slice(body),
        content_type.as_ref(),
    ) else {
        return;
    };
    assert_eq!(parsed.call_type(), call_type);
    assert!(parsed.bytes() == body, "the parsed request keeps the bytes");
    let texts = parsed.texts();
    if parsed.json().is_none() {
        assert!(texts.is_empty(), "no JSON, no texts");
    }

    let mut wrong = texts.clone();
    wrong.push(String::from("one too many"));
    assert!(
        parsed.set_texts(&wrong).is_err(),
        "a wrong count is refused"
    );
    assert!(parsed.bytes() == body, "a refused rewrite changes nothing");
    assert_eq!(parsed.texts(), texts);

    let new: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| edited(edit.wrapping_add(i as u8), t))
        .collect();
    parsed
        .set_texts(&new)
        .expect("a rewrite with one text per text is accepted");
    assert_eq!(
        parsed.texts(),
        new,
        "texts() after set_texts(x) is x, for {path} body {:?}",
        show(body)
    );
    if parsed.json().is_none() {
        assert!(
            parsed.bytes() == body,
            "a body without JSON is not rewritten"
        );
        return;
    }
    let reparsed = ParsedRequest::parse(
        call_type,
        parsed.bytes().clone(),
        Some(&HeaderValue::from_static("application/json")),
    )
    .unwrap_or_else(|e| {
        panic!(
            "the re-serialized body {:?} does not parse: {e}",
            show(parsed.bytes())
        )
    });
    assert_eq!(
        reparsed.texts(),
        new,
        "the re-serialized body has the new texts"
    );
    assert_eq!(reparsed.model(), parsed.model());
    assert_eq!(reparsed.stream(), parsed.stream());
    assert_eq!(reparsed.user(), parsed.user());
    assert_eq!(reparsed.selection(), parsed.selection());
}

/// A changed text: kept, emptied, masked, upper-cased, replaced by JSON-hostile characters, or
/// reversed.
fn edited(how: u8, text: &str) -> String {
    match how % 6 {
        0 => text.to_owned(),
        1 => String::new(),
        2 => format!("{text} [EMAIL_REDACTED]"),
        3 => text.to_uppercase(),
        4 => String::from("\"\\\u{0}\n\u{7f}\u{2028}\u{1F600}</script>"),
        _ => text.chars().rev().collect(),
    }
}
