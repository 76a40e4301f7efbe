use std::borrow::Cow;

use proptest::prelude::*;

use super::super::stream::{End, EventRead};
use super::super::{Role, Side, TextKey, TextKind};
use super::CommonRequest;
use crate::json::{JsonView, read_object};
use crate::{CallType, Usage};

/// What the general reader makes of `data`: `None` when it is not JSON.
fn general(call_type: CallType, data: &[u8]) -> Option<Result<EventRead<'static>, String>> {
    let view = JsonView::parse(data).ok()?;
    Some(
        call_type
            .read_event(None, &view)
            .map(owned)
            .map_err(|e| e.to_string()),
    )
}

fn owned(read: EventRead<'_>) -> EventRead<'static> {
    EventRead {
        texts: read
            .texts
            .into_iter()
            .map(|(k, r, t)| (k, r, Cow::Owned(t.into_owned())))
            .collect(),
        ends: read.ends,
        terminal: read.terminal,
        has_usage: read.has_usage,
        announces_response: read.announces_response,
        upstream_error: read.upstream_error,
        sequence_number: read.sequence_number,
        media: read.media,
    }
}

/// The common reader's result for `data`, after checking that it agrees with the general one
/// whenever it reads the event at all.
fn common(call_type: CallType, data: &str) -> Option<EventRead<'static>> {
    if let Some(plain) = super::read_plain_event(data.as_bytes()) {
        assert_eq!(
            read_object(data.as_bytes(), super::ChunkVisitor).map(owned),
            Some(owned(plain)),
            "the plain reader disagrees with the visitor on {data}"
        );
    }
    let fast = call_type.read_common_event(data.as_bytes()).map(owned);
    if let Some(fast) = &fast {
        assert_eq!(
            general(call_type, data.as_bytes()),
            Some(Ok(fast.clone())),
            "the readers disagree on {data}"
        );
    }
    fast
}

fn content(index: u64, text: &str) -> (TextKey, Role, Cow<'static, str>) {
    let key = TextKey {
        index,
        kind: TextKind::Content,
        sub: 0,
    };
    (key, Role::Delta, Cow::Owned(text.to_owned()))
}

#[test]
fn the_chunks_streams_are_made_of_are_read_without_a_view() {
    let head = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","service_tier":"default","system_fingerprint":"fp","choices":["#;
    let cases: &[(&str, EventRead<'static>)] = &[
        (
            r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}"#,
            EventRead {
                texts: smallvec::smallvec![content(0, "")],
                ..EventRead::default()
            },
        ),
        (
            r#"{"index":0,"delta":{"content":"Hello \"there\"\n"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            EventRead {
                texts: smallvec::smallvec![content(0, "Hello \"there\"\n")],
                ..EventRead::default()
            },
        ),
        (
            r#"{"index":1,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
            EventRead {
                ends: vec![End::Index(1)],
                ..EventRead::default()
            },
        ),
        (
            r#"{"delta":{"content":"a"}},{"delta":{"content":"b"},"finish_reason":"length"}]}"#,
            EventRead {
                texts: smallvec::smallvec![content(0, "a"), content(1, "b")],
                ends: vec![End::Index(1)],
                ..EventRead::default()
            },
        ),
        (
            r#"],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
            EventRead {
                has_usage: true,
                ..EventRead::default()
            },
        ),
    ];
    for (rest, want) in cases {
        let data = format!("{head}{rest}");
        for call_type in [CallType::ChatCompletions, CallType::Other] {
            assert_eq!(common(call_type, &data).as_ref(), Some(want), "{data}");
        }
    }
    // An error event, escaped member names and a BOM-free document with spaces.
    let read = common(
        CallType::ChatCompletions,
        r#" { "error" : { "message" : "overloaded" } , "ch\u006fices" : [ { "d\u0065lta" : { "c\u006fntent" : "x" } } ] } "#,
    )
    .unwrap();
    assert!(read.upstream_error);
    assert_eq!(read.texts[..], [content(0, "x")]);
}

#[test]
fn every_other_shape_is_left_to_the_general_reader() {
    let left = [
        // Text the common shape does not carry.
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"x"}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"audio":{"transcript":"x"}}}]}"#,
        r#"{"choices":[{"index":0,"text":"legacy"}]}"#,
        r#"{"choices":[{"index":0,"delta":{"annotations":[]}}]}"#,
        // Members written twice: the general reader takes the last one.
        r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"a"},"delta":{"content":"b"}}]}"#,
        r#"{"choices":[],"choices":[{"delta":{"content":"b"}}]}"#,
        r#"{"choices":[{"index":0,"index":1,"delta":{"content":"a"}}]}"#,
        r#"{"usage":null,"usage":{"total_tokens":1},"choices":[]}"#,
        r#"{"choices":[{"delta":{"content":"a","c\u006fntent":"b"}}]}"#,
        // Shapes the general reader refuses or reads differently.
        r#"{"choices":{"0":{"delta":{"content":"a"}}}}"#,
        r#"{"choices":[["index",{"content":"a"}]]}"#,
        r#"{"choices":[{"delta":["a"]}]}"#,
        r#"{"choices":[{"delta":{"content":5}}]}"#,
        r#"{"choices":[{"index":"0","delta":{"content":"a"}}]}"#,
        r#"{"choices":[{"index":-1,"delta":{"content":"a"}}]}"#,
        r#"{"choices":[{"index":1.0,"delta":{"content":"a"}}]}"#,
        r#"[{"choices":[{"delta":{"content":"a"}}]}]"#,
        // Not JSON, or not all of it.
        r#"{"choices":[{"delta":{"content":"a"}}]} x"#,
        r#"{"choices":[{"delta":{"content":"a"}}]"#,
        "[DONE]",
    ];
    for data in left {
        assert_eq!(
            common(CallType::ChatCompletions, data),
            None,
            "read by the common reader: {data}"
        );
    }
    let chunk = r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#;
    for call_type in [
        CallType::Responses,
        CallType::AnthropicMessages,
        CallType::TextCompletions,
        CallType::Embeddings,
    ] {
        assert_eq!(call_type.read_common_event(chunk.as_bytes()), None);
    }
    // Invalid UTF-8 inside a string.
    assert_eq!(
        CallType::ChatCompletions
            .read_common_event(b"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}"),
        None
    );
}

/// A member of a generated document: its name, and the member written as JSON (the name
/// escaped one time in five when `escape` says).
fn member(
    names: &'static [&'static str],
    value: BoxedStrategy<String>,
    escape: bool,
) -> BoxedStrategy<(&'static str, String)> {
    (proptest::sample::select(names), 0..5u8, value)
        .prop_map(move |(name, one_in_five, value)| {
            let written = if escape && one_in_five == 0 {
                // The first letter as a \u escape.
                let mut chars = name.chars();
                let first = chars.next().unwrap();
                format!("\\u{:04x}{}", first as u32, chars.as_str())
            } else {
                name.to_owned()
            };
            (name, format!("\"{written}\":{value}"))
        })
        .boxed()
}

/// An object of generated members; a name is written twice in one object in eight.
fn object(members: BoxedStrategy<(&'static str, String)>) -> BoxedStrategy<String> {
    (proptest::collection::vec(members, 0..5), 0..8u8)
        .prop_map(|(members, twice)| {
            let mut names = Vec::new();
            let mut kept = Vec::new();
            for (name, member) in members {
                if twice == 0 || !names.contains(&name) {
                    names.push(name);
                    kept.push(member);
                }
            }
            format!("{{{}}}", kept.join(","))
        })
        .boxed()
}

fn one_of(values: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(values)
        .prop_map(str::to_owned)
        .boxed()
}

fn delta(escape: bool) -> BoxedStrategy<String> {
    let content = prop_oneof![
        6 => one_of(&["null", "\"\"", "\"word \"", "\"esc\\\"aped\\n\"", "\"\\u00e9t\\u00e9\""]),
        1 => one_of(&["5", "[{\"type\":\"text\",\"text\":\"p\"}]"]),
    ];
    let other = prop_oneof![
        2 => one_of(&["null"]),
        1 => one_of(&["\"x\"", "[]", "{}", "{\"transcript\":\"t\"}"]),
    ];
    let members = prop_oneof![
        6 => member(&["content"], content.boxed(), escape),
        2 => member(&["role"], one_of(&["\"assistant\"", "null", "1"]), escape),
        1 => member(
            &["refusal", "reasoning_content", "reasoning", "tool_calls", "function_call", "audio", "name", "annotations"],
            other.boxed(), escape),
    ]
    .boxed();
    prop_oneof![6 => object(members), 1 => one_of(&["null", "[]", "\"d\""])].boxed()
}

fn choice(escape: bool) -> BoxedStrategy<String> {
    let members = prop_oneof![
        6 => member(&["delta"], delta(escape), escape),
        2 => member(&["index"], one_of(&["0", "1", "2", "null", "18446744073709551615"]), escape),
        1 => member(&["index"], one_of(&["\"1\"", "-1", "1.5"]), escape),
        2 => member(&["finish_reason"], one_of(&["null", "\"stop\"", "\"length\"", "0"]), escape),
        1 => member(&["text"], one_of(&["null", "\"t\""]), escape),
        1 => member(&["logprobs", "message"], one_of(&["null", "{\"content\":\"m\"}"]), escape),
    ]
    .boxed();
    prop_oneof![8 => object(members), 1 => one_of(&["null", "[]", "\"c\""])].boxed()
}

fn chunk() -> BoxedStrategy<String> {
    chunk_with(true)
}

/// A generated chunk, whose names are escaped now and then when `escape` says.
fn chunk_with(escape: bool) -> BoxedStrategy<String> {
    let choices = prop_oneof![
        6 => proptest::collection::vec(choice(escape), 0..3).prop_map(|c| format!("[{}]", c.join(","))),
        1 => one_of(&["null", "{}", "\"c\""]),
    ]
    .boxed();
    let members = prop_oneof![
        8 => member(&["choices"], choices, escape),
        1 => member(&["usage", "error"], one_of(&["null", "{}", "{\"total_tokens\":2}", "\"e\""]), escape),
        1 => member(&["id", "model", "type", "object"], one_of(&["\"chatcmpl-1\"", "\"message\"", "null", "\"esc\\\"aped\\n\\u00e9\\/\""]), escape),
        1 => member(&["created", "system_fingerprint"], not_a_value(), escape),
    ]
    .boxed();
    prop_oneof![10 => object(members), 1 => one_of(&["[]", "\"s\"", "null"])].boxed()
}

/// Values a skipped member may hold, among them what `serde::de::IgnoredAny` lets through and
/// a whole-document parse refuses (a number out of range, lone surrogates).
fn not_a_value() -> BoxedStrategy<String> {
    prop_oneof![
        6 => one_of(&["1", "0.25", "-2.5E+3", "1e250", "1.5e-400", "123456789012345678901234567890", "\"fp\""]),
        1 => one_of(&["1e400", "-1e400", "\"\\ud800\"", "[\"\\udc00x\"]", "{\"a\":1e999}", "\"\\x\"", "\"\\u00g0\"", "\"a\\\""]),
    ]
    .boxed()
}

/// The generated document with spaces and line ends around its punctuation, or as it is.
fn spaced(data: String, spaces: bool) -> String {
    if spaces {
        data.replace(',', " ,\n ").replace(':', " : ")
    } else {
        data
    }
}

/// The document cut at a point picked by `cut` (on a character boundary): a document the
/// general reader rejects, or another one.
fn cut_at(data: &str, cut: usize) -> &str {
    let mut at = cut % (data.len() + 1);
    while !data.is_char_boundary(at) {
        at -= 1;
    }
    &data[..at]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the chunk, damaged or not, the common reader either leaves it to the general
    /// reader or reads exactly what the general reader does (`common` asserts it).
    #[test]
    fn the_common_reader_agrees_with_the_general_one(
        data in chunk(),
        spaces in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let data = spaced(data, spaces);
        for call_type in [CallType::ChatCompletions, CallType::Other] {
            common(call_type, &data);
            common(call_type, cut_at(&data, cut));
        }
    }
}

/// Checks that `generator`'s documents take both ways: read by the common reader with some
/// text (`read` gives `Some(true)`), and left to the general reader (`None`). The properties
/// are only worth something if they do.
fn reaches_both_readers(generator: BoxedStrategy<String>, read: impl Fn(&str) -> Option<bool>) {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut with_text, mut left) = (0, 0);
    for _ in 0..4096 {
        let document = generator.new_tree(&mut runner).unwrap().current();
        match read(&document) {
            Some(true) => with_text += 1,
            Some(false) => {}
            None => left += 1,
        }
    }
    assert!(
        with_text > 100 && left > 100,
        "read {with_text}, left {left}"
    );
}

#[test]
fn the_generator_reaches_both_readers() {
    reaches_both_readers(chunk(), |data| {
        common(CallType::ChatCompletions, data).map(|read| read.has_text())
    });
}

/// The generated chunks take both ways through the plain reader too: read by hand, and left
/// to the visitor (an escaped name, a float, a lone surrogate...).
#[test]
fn the_generator_reaches_the_plain_reader_and_past_it() {
    reaches_both_readers(chunk_with(false), |data| {
        common(CallType::ChatCompletions, data);
        super::read_plain_event(data.as_bytes()).map(|read| read.has_text())
    });
}

/// The chunks streams are made of, read by hand: the bench's, with escapes and non-ASCII text
/// in the content, with usage, with an error; and what the hand reader leaves to the visitor,
/// which reads it.
#[test]
fn plain_chunks_are_read_by_hand() {
    let read = |data: &str| super::read_plain_event(data.as_bytes()).map(owned);
    let chunk = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796492003,"model":"m","service_tier":"default","system_fingerprint":"fp_mock","choices":[{"index":0,"delta":{"content":" said:"},"logprobs":null,"finish_reason":null}]}"#;
    assert_eq!(
        read(chunk),
        Some(EventRead {
            texts: smallvec::smallvec![content(0, " said:")],
            ..EventRead::default()
        })
    );
    let escaped = r#"{"choices":[{"index":1,"delta":{"role":"assistant","content":"line\n\"q\" \u00e9t\u00e9 \ud83d\ude00 ü"},"finish_reason":"stop"}],"usage":{"total_tokens":3}}"#;
    assert_eq!(
        read(escaped),
        Some(EventRead {
            texts: smallvec::smallvec![content(1, "line\n\"q\" été 😀 ü")],
            ends: vec![End::Index(1)],
            has_usage: true,
            ..EventRead::default()
        })
    );
    let numbers = r#"{"choices":[{"index":0,"delta":{"content":"a"},"scores":{"content":[{"token":"a","logprob":-0.0125,"top_logprobs":[]},{"logprob":-1.5E-7},{"logprob":12e+2}]}}]}"#;
    assert_eq!(
        read(numbers),
        Some(EventRead {
            texts: smallvec::smallvec![content(0, "a")],
            ..EventRead::default()
        })
    );
    let error = r#" {"error": {"message": "overloaded", "code": 529}} "#;
    assert_eq!(
        read(error),
        Some(EventRead {
            upstream_error: true,
            ..EventRead::default()
        })
    );
    for (left, why) in [
        (
            r#"{"choices":[{"delta":{"content":"a"}}],"\u0069d":"x"}"#,
            "an escaped name",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a"}}],"id":"x\ud83d\ude00"}"#,
            "a surrogate escaped in a skipped string",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a"},"scores":{"content":[{"logprob":-5e-300}]}}]}"#,
            "an exponent above 250",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a"},"scores":{"content":[{"logprob":-.5}]}}]}"#,
            "a number without its integer part",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a\ud800"}}]}"#,
            "a lone surrogate",
        ),
        (
            r#"{"created":12345678901234567890,"choices":[]}"#,
            "an integer of 20 digits",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a"}}]} x"#,
            "something after the object",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            "content twice",
        ),
        (
            r#"{"choices":[{"delta":{"content":"a","refusal":"no"}}]}"#,
            "a refusal",
        ),
        (
            "{\"choices\":[{\"delta\":{\"content\":\"a\tb\"}}]}",
            "a raw tab in a string",
        ),
    ] {
        assert_eq!(read(left), None, "{why}: {left}");
        common(CallType::ChatCompletions, left);
    }
    // Log probabilities repeat the text as tokens: both readers give up, and the general
    // reader refuses them.
    let logprobs = r#"{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"token":"a","logprob":-0.0125,"top_logprobs":[]}]}}]}"#;
    assert_eq!(read(logprobs), None);
    assert_eq!(
        read_object(logprobs.as_bytes(), super::ChunkVisitor).map(owned),
        None
    );
    let refused = general(CallType::ChatCompletions, logprobs.as_bytes())
        .unwrap()
        .unwrap_err();
    assert!(
        refused.starts_with("'choices[0].logprobs' holds the text's tokens"),
        "{refused}"
    );
}

/// Content strings put in place of a chunk's content, between its quotes: strings JSON allows
/// (plain, escaped, non-ASCII)...
const CONTENTS: [&[u8]; 7] = [
    b"",
    b"x",
    b"a longer piece of text, with punctuation.",
    b"esc\\\"aped\\n",
    b"\\u00e9t\\u00e9 \\ud83d\\ude00",
    b"\xc3\xa9t\xc3\xa9",
    b"a\\\\",
];

/// ... and bytes that are not one JSON string there: a lone surrogate, an unknown escape, a
/// quote that ends the string early, a backslash that escapes the closing quote, a raw tab,
/// bytes that are not UTF-8.
const NOT_CONTENTS: [&[u8]; 7] = [
    b"\\ud800",
    b"\\x",
    b"a\"b",
    b"a\"}, \"b",
    b"a\\",
    b"a\tb",
    b"\xff",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A chunk that is the last one with another content string reads as it reads alone, and
    /// the reader reads it from the string alone when that is a JSON string.
    #[test]
    fn a_chunk_like_the_last_one_reads_as_it_reads_alone(
        data in chunk_with(false),
        spaces in any::<bool>(),
        content in 0..CONTENTS.len() + NOT_CONTENTS.len(),
    ) {
        let data = spaced(data, spaces);
        let alone = |data: &[u8]| CallType::ChatCompletions.read_common_event(data).map(owned);
        let mut reader = super::ChunkReader::default();
        prop_assert_eq!(reader.read(CallType::ChatCompletions, data.as_bytes()).map(owned), alone(data.as_bytes()));
        let mut at = super::ContentAt::None;
        let read = super::read_plain_event_at(data.as_bytes(), &mut at);
        let (Some(read), super::ContentAt::One(open, close)) = (read, at) else {
            return Ok(());
        };
        let (string, valid) = match CONTENTS.get(content) {
            Some(string) => (*string, true),
            None => (NOT_CONTENTS[content - CONTENTS.len()], false),
        };
        let mut next = data.as_bytes()[..=open].to_vec();
        next.extend_from_slice(string);
        next.extend_from_slice(&data.as_bytes()[close..]);
        // Remembered only when the chunk had one text.
        let remembered = read.texts.len() == 1;
        prop_assert_eq!(reader.read_like_last(&next).is_some(), remembered && valid, "{}", String::from_utf8_lossy(&next));
        prop_assert_eq!(reader.read(CallType::ChatCompletions, &next).map(owned), alone(&next));
    }
}

/// The reader takes each chunk of a stream as it comes: the first one (a role), the pieces of
/// content (read from their strings), one that differs (the finish), and a chunk that differs
/// only in a member between the two (not read from its string).
#[test]
fn the_chunks_of_a_stream_are_read_from_their_content_strings() {
    let chunk = |delta: &str, finish: &str| {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1796492003,"model":"m","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        )
    };
    let stream = [
        chunk(r#"{"role":"assistant","content":""}"#, "null"),
        chunk(r#"{"content":"Hel"}"#, "null"),
        chunk(r#"{"content":"lo\n"}"#, "null"),
        chunk(r#"{"content":" \"you\""}"#, "null"),
        chunk(r#"{"content":"!"}"#, r#""stop""#),
        chunk(r#"{}"#, r#""stop""#),
    ];
    let mut reader = super::ChunkReader::default();
    let mut from_string = Vec::new();
    for data in &stream {
        from_string.push(reader.read_like_last(data.as_bytes()).is_some());
        read_as_alone(&mut reader, data);
    }
    assert_eq!(from_string, [false, false, true, true, false, false]);
    let texts: Vec<_> = stream
        .iter()
        .filter_map(|data| reader.read(CallType::ChatCompletions, data.as_bytes()))
        .flat_map(|read| read.texts.into_iter().map(|(_, _, text)| text.into_owned()))
        .collect();
    assert_eq!(texts, ["", "Hel", "lo\n", " \"you\"", "!"]);
}

/// Reads `data` with `reader`, checking that it reads as the chunk reads alone.
fn read_as_alone(reader: &mut super::ChunkReader, data: &str) {
    assert_eq!(
        reader
            .read(CallType::ChatCompletions, data.as_bytes())
            .map(owned),
        CallType::ChatCompletions
            .read_common_event(data.as_bytes())
            .map(owned),
        "{data}"
    );
}

/// The reader keeps the bytes around a chunk's content, not the content: a long piece of
/// content is remembered around as a short one is, and a chunk whose other bytes are too many
/// to keep is read in full, each time, as it reads alone.
#[test]
fn the_reader_keeps_what_surrounds_the_content_within_a_bound() {
    let chunk = |id: &str, content: &str| {
        format!(r#"{{"id":"{id}","choices":[{{"index":0,"delta":{{"content":"{content}"}}}}]}}"#)
    };
    let long = "x".repeat(64 * 1024);
    for (id, remembered) in [("c1".to_owned(), true), ("i".repeat(5000), false)] {
        let mut reader = super::ChunkReader::default();
        for content in [long.as_str(), "a", long.as_str()] {
            read_as_alone(&mut reader, &chunk(&id, content));
            assert!(reader.last.len() <= 4096);
        }
        let data = chunk(&id, "b");
        assert_eq!(
            reader.read_like_last(data.as_bytes()).is_some(),
            remembered,
            "{}",
            id.len()
        );
    }
}

#[test]
fn a_member_skipped_is_checked_as_the_general_reader_checks_it() {
    for value in [
        "1e400",
        "-1e400",
        r#""\ud800""#,
        r#"["\udc00x"]"#,
        r#"{"a":1e999}"#,
    ] {
        let data =
            format!(r#"{{"created":{value},"choices":[{{"index":0,"delta":{{"content":"a"}}}}]}}"#);
        assert_eq!(
            general(CallType::ChatCompletions, data.as_bytes()),
            None,
            "{data}"
        );
        assert_eq!(common(CallType::ChatCompletions, &data), None, "{data}");
        let body = format!(r#"{{"created":{value},"choices":[{{"message":{{"content":"a"}}}}]}}"#);
        assert_eq!(common_response(&body), None, "{body}");
        assert!(
            CallType::ChatCompletions
                .response_texts_and_usage(body.as_bytes())
                .is_err()
        );
    }
}

// ------------------------------------------------------------------------- whole responses

/// A message's `annotations` are skipped only when `null` or empty: the titles of cited pages
/// in a longer list, and a list of another shape, go to the general reader (which reads the
/// first and refuses the second).
#[test]
fn annotations_are_skipped_only_when_empty() {
    let body = |annotations: &str| {
        format!(
            r#"{{"choices":[{{"index":0,"message":{{"content":"a","annotations":{annotations}}}}}]}}"#
        )
    };
    for annotations in ["null", "[]", " [ ] "] {
        let body = body(annotations);
        assert!(
            super::read_plain_response(body.as_bytes()).is_some(),
            "{body}"
        );
        assert_eq!(common_response(&body).unwrap().0, ["a"], "{body}");
    }
    for annotations in [
        r#"[{"type":"url_citation","url_citation":{"title":"t","url":"u"}}]"#,
        r#""x""#,
        "{}",
    ] {
        let body = body(annotations);
        assert!(
            super::read_plain_response(body.as_bytes()).is_none(),
            "{body}"
        );
        assert!(
            read_object(body.as_bytes(), super::ResponseVisitor).is_none(),
            "{body}"
        );
        assert_eq!(common_response(&body), None, "{body}");
    }
    let cited = body(r#"[{"type":"url_citation","url_citation":{"title":"t","url":"u"}}]"#);
    assert_eq!(general_response(&cited).unwrap().0, ["a", "t"]);
}

/// What the general reader makes of a response body: `None` when it refuses it.
fn general_response(body: &str) -> Option<(Vec<String>, Option<Usage>)> {
    let call_type = CallType::ChatCompletions;
    let view = JsonView::parse(body.as_bytes()).ok()?;
    let usage = Usage::from_response_view(call_type, &view);
    let mut texts = Vec::new();
    call_type
        .read_texts(Side::Response, &view, |_, t| texts.push(t.into_owned()))
        .ok()?;
    Some((texts, usage))
}

/// The common reader's result for a response body, after checking that it agrees with the
/// general one whenever it reads the body at all.
fn common_response(body: &str) -> Option<(Vec<String>, Option<Usage>)> {
    if let Some((texts, counts)) = super::read_plain_response(body.as_bytes()) {
        let (want_texts, want_counts) = read_object(body.as_bytes(), super::ResponseVisitor)
            .unwrap_or_else(|| panic!("the plain reader read what the visitor refuses: {body}"));
        assert_eq!(texts, want_texts, "the plain reader disagrees on {body}");
        let usage = |counts: Option<crate::usage::Counts>| {
            counts.and_then(|c| c.usage(CallType::ChatCompletions))
        };
        assert_eq!(
            usage(counts),
            usage(want_counts),
            "the plain reader disagrees on {body}"
        );
    }
    let fast = CallType::ChatCompletions.read_common_response(body.as_bytes());
    if let Some(fast) = &fast {
        assert_eq!(
            general_response(body).as_ref(),
            Some(fast),
            "the readers disagree on {body}"
        );
    }
    fast
}

#[test]
fn the_common_response_is_read_without_a_view() {
    // An OpenAI response as it comes, refusal and annotations included.
    let body = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1796466856,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"You said: \"hi\".","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":45,"completion_tokens":47,"total_tokens":92,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"service_tier":"default","system_fingerprint":"fp"}"#;
    let usage = Usage {
        prompt_tokens: 45,
        completion_tokens: 47,
        total_tokens: 92,
    };
    assert_eq!(
        common_response(body),
        Some((vec![r#"You said: "hi"."#.to_owned()], Some(usage)))
    );
    let read = [
        // Two choices, in order; a null message; no usage; a null `usage`.
        (
            r#"{"choices":[{"message":{"content":"a"}},{"message":null},{"message":{"content":"b","tool_calls":null}}]}"#,
            (vec!["a".to_owned(), "b".to_owned()], None),
        ),
        (r#"{"choices":null,"usage":null}"#, (vec![], None)),
        (
            r#"{"\u0063hoices":[{"message":{"content":null}}],"usage":{"input_tokens":2,"output_tokens":1}}"#,
            (
                vec![],
                Some(Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    total_tokens: 3,
                }),
            ),
        ),
    ];
    for (body, expected) in read {
        assert_eq!(common_response(body), Some(expected), "{body}");
    }
    // Left to the general reader: other texts, other shapes, members written twice.
    for body in [
        r#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#,
        r#"{"choices":[{"message":{"content":[{"type":"text","text":"p"}]}}]}"#,
        r#"{"choices":[{"message":{"content":"a","reasoning_content":"r"}}]}"#,
        r#"{"choices":[{"message":{"content":"a","thinking_blocks":[{"type":"thinking","thinking":"t"}]}}]}"#,
        r#"{"choices":[{"message":{"content":"a","provider_specific_fields":{"x":"y"}}}]}"#,
        r#"{"choices":[{"text":"legacy"}]}"#,
        r#"{"choices":[{"message":{"content":"a"}}],"usage":5}"#,
        r#"{"choices":[{"message":{"content":"a","content":"b"}}]}"#,
        r#"{"choices":[],"choices":[{"message":{"content":"b"}}]}"#,
        r#"{"choices":[{"message":{"content":"a"}}],"usage":{},"usage":{"total_tokens":1}}"#,
        r#"{"choices":{}}"#,
        r#"{"choices":["c"]}"#,
        r#"[]"#,
        r#"{"choices":[]}x"#,
    ] {
        assert_eq!(
            common_response(body),
            None,
            "read by the common reader: {body}"
        );
    }
    let chat = r#"{"choices":[{"message":{"content":"a"}}]}"#;
    for call_type in NOT_CHAT {
        assert_eq!(call_type.read_common_response(chat.as_bytes()), None);
    }
}

/// The call types whose documents the response and request readers leave.
const NOT_CHAT: [CallType; 5] = [
    CallType::Responses,
    CallType::AnthropicMessages,
    CallType::TextCompletions,
    CallType::Embeddings,
    CallType::Other,
];

fn message(escape: bool) -> BoxedStrategy<String> {
    let content = prop_oneof![
        6 => one_of(&["null", "\"\"", "\"word \"", "\"esc\\\"aped\\n\"", "\"\\u00e9t\\u00e9\""]),
        1 => one_of(&["5", "[{\"type\":\"text\",\"text\":\"p\"}]", "\"\\ud800\""]),
    ];
    let other = prop_oneof![
        2 => one_of(&["null"]),
        1 => one_of(&["\"x\"", "[]", "{}", "{\"transcript\":\"t\"}", "[{\"function\":{\"arguments\":\"a\"}}]"]),
    ];
    let members = prop_oneof![
        6 => member(&["content"], content.boxed(), escape),
        2 => member(&["role", "annotations"], one_of(&["\"assistant\"", "null", "[]", "1e400"]), escape),
        1 => member(
            &["refusal", "reasoning_content", "reasoning", "tool_calls", "function_call", "audio", "name",
                "thinking_blocks", "tool_call_id", "extra"],
            other.boxed(), escape),
    ]
    .boxed();
    prop_oneof![6 => object(members), 1 => one_of(&["null", "[]", "\"m\""])].boxed()
}

fn response_choice(escape: bool) -> BoxedStrategy<String> {
    let members = prop_oneof![
        6 => member(&["message"], message(escape), escape),
        2 => member(&["index"], one_of(&["0", "1", "null", "\"1\"", "-1"]), escape),
        2 => member(&["finish_reason", "logprobs"], one_of(&["null", "\"stop\"", "{}"]), escape),
        1 => member(&["text", "delta"], one_of(&["null", "\"t\"", "{\"content\":\"d\"}"]), escape),
    ]
    .boxed();
    prop_oneof![8 => object(members), 1 => one_of(&["null", "[]", "\"c\""])].boxed()
}

fn response() -> BoxedStrategy<String> {
    response_with(true)
}

/// A generated response, whose names are escaped now and then when `escape` says.
fn response_with(escape: bool) -> BoxedStrategy<String> {
    let choices = prop_oneof![
        6 => proptest::collection::vec(response_choice(escape), 0..3).prop_map(|c| format!("[{}]", c.join(","))),
        1 => one_of(&["null", "{}", "\"c\""]),
    ]
    .boxed();
    let usage = one_of(&[
        "{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}",
        "{\"prompt_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":1},\"prompt_tokens\":5}",
        "{\"input_tokens\":2,\"output_tokens\":1,\"cache_read_input_tokens\":9}",
        "{\"prompt_tokens\":-1,\"completion_tokens\":1.5,\"total_tokens\":\"3\"}",
        "{\"total_tokens\":1e400}",
        "{}",
        "null",
        "5",
    ]);
    let members = prop_oneof![
        8 => member(&["choices"], choices, escape),
        2 => member(&["usage"], usage, escape),
        1 => member(&["id", "model", "object", "error"], one_of(&["\"chatcmpl-1\"", "null", "{}"]), escape),
        1 => member(&["created", "system_fingerprint"], not_a_value(), escape),
    ]
    .boxed();
    prop_oneof![10 => object(members), 1 => one_of(&["[]", "\"s\"", "null"])].boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the response, damaged or not, the common reader either leaves it to the
    /// general reader or reads exactly the texts and usage the general reader does
    /// (`common_response` asserts it).
    #[test]
    fn the_common_response_reader_agrees_with_the_general_one(
        body in response(),
        spaces in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let body = spaced(body, spaces);
        common_response(&body);
        common_response(cut_at(&body, cut));
    }

    /// Whatever the request, damaged or not, the common reader either leaves it to the general
    /// path or reads exactly the model, stream flag, user and texts the general path does
    /// (`common_request` asserts it).
    #[test]
    fn the_common_request_reader_agrees_with_the_general_one(
        body in request(),
        spaces in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let body = spaced(body, spaces);
        common_request(&body);
        common_request(cut_at(&body, cut));
    }
}

#[test]
fn the_response_generator_reaches_both_readers() {
    reaches_both_readers(response(), |body| {
        common_response(body).map(|(texts, _)| !texts.is_empty())
    });
}

/// The generated responses take both ways through the plain reader too.
#[test]
fn the_response_generator_reaches_the_plain_reader_and_past_it() {
    reaches_both_readers(response_with(false), |body| {
        common_response(body);
        super::read_plain_response(body.as_bytes()).map(|(texts, _)| !texts.is_empty())
    });
}

/// What the general path (a view, then the walker) makes of a request body, as the gateway's
/// request parser reads it: `None` when the view or the walker refuses it, and `Err` when it
/// selects guardrails or carries a key the gateway removes (the common reader must leave
/// those).
fn general_request(body: &str) -> Option<Result<CommonRequest<'static>, ()>> {
    let view = JsonView::parse(body.as_bytes()).ok()?;
    let text = |v: Option<&JsonView<'_>>| {
        v.and_then(JsonView::as_str)
            .map(|s| Cow::Owned(s.to_owned()))
    };
    let metadata = view.get("metadata");
    let mut texts = Vec::new();
    CallType::ChatCompletions
        .read_texts(Side::Request, &view, |_, t| {
            texts.push(Cow::Owned(t.into_owned()))
        })
        .ok()?;
    if ["guardrails", "litellm_metadata"]
        .iter()
        .any(|k| view.get(k).is_some())
        || metadata.and_then(|m| m.get("guardrails")).is_some()
    {
        return Some(Err(()));
    }
    Some(Ok(CommonRequest {
        model: text(view.get("model")),
        stream: view.get("stream") == Some(&JsonView::Bool(true)),
        user: text(view.get("user")).or_else(|| text(metadata.and_then(|m| m.get("user_id")))),
        texts,
    }))
}

/// The common reader's result for a request body, after checking that it agrees with the
/// general path whenever it reads the body at all.
fn common_request(body: &str) -> Option<CommonRequest<'static>> {
    if let Some(plain) = super::read_plain_request(body.as_bytes()) {
        assert_eq!(
            read_object(body.as_bytes(), super::RequestVisitor),
            Some(plain),
            "the plain reader disagrees with the visitor on {body}"
        );
    }
    let fast = CallType::ChatCompletions
        .read_common_request(body.as_bytes())
        .map(|read| CommonRequest {
            model: read.model.map(|m| Cow::Owned(m.into_owned())),
            stream: read.stream,
            user: read.user.map(|u| Cow::Owned(u.into_owned())),
            texts: read
                .texts
                .into_iter()
                .map(|t| Cow::Owned(t.into_owned()))
                .collect(),
        });
    if let Some(fast) = &fast {
        assert_eq!(
            general_request(body),
            Some(Ok(fast.clone())),
            "the readers disagree on {body}"
        );
    }
    fast
}

#[test]
fn the_common_request_is_read_without_a_view() {
    let bench = include_str!("../../../../../bench/chat.json");
    let read = common_request(bench).expect("the bench's request is of the common shape");
    assert_eq!(read.model.as_deref(), Some("bench-model"));
    assert_eq!(read.user.as_deref(), Some("bench-user-42"));
    assert!(!read.stream);
    assert_eq!(read.texts.len(), 4);
    assert!(read.texts[0].starts_with("You are a helpful assistant"));
    // Borrowed from the body where it holds them as they are; decoded where escaped.
    let body = r#"{"model":"m","stream":true,"metadata":{"user_id":"u"},"tools":null,"messages":[
        {"role":"system","content":"plain"},{"role":"user","content":"caf\u00e9","name":null},
        {"role":"assistant","content":null,"refusal":null},{"role":"tool","content":""}]}"#;
    let read = CallType::ChatCompletions
        .read_common_request(body.as_bytes())
        .unwrap();
    assert!(matches!(read.texts[0], Cow::Borrowed("plain")));
    assert!(matches!(&read.texts[1], Cow::Owned(t) if t == "café"));
    assert_eq!(read.texts.len(), 3);
    assert_eq!((read.stream, read.user.as_deref()), (true, Some("u")));
    common_request(body);
    // `user` first, then `metadata.user_id` (Anthropic's place for it), wherever they stand.
    for body in [
        r#"{"metadata":{"user_id":"b"},"user":"a","messages":[]}"#,
        r#"{"user":"a","metadata":{"user_id":"b"},"messages":[]}"#,
        r#"{"user":null,"metadata":{"user_id":"b"},"messages":[]}"#,
    ] {
        let want = if body.contains(r#""user":"a""#) {
            "a"
        } else {
            "b"
        };
        assert_eq!(
            common_request(body).unwrap().user.as_deref(),
            Some(want),
            "{body}"
        );
    }
}

#[test]
fn every_other_request_is_left_to_the_general_reader() {
    let left = [
        // Content parts, a name, tool calls, tool definitions: texts the walker reads.
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"a","name":"n"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":"{}"}}]}]}"#,
        r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"description":"d"}}]}"#,
        r#"{"model":"m","messages":[],"tools":[{"type":"custom","custom":{"description":"d"}}]}"#,
        r#"{"model":"m","messages":[],"functions":[{"name":"f","description":"d"}]}"#,
        r#"{"model":"m","messages":[],"prediction":{"type":"content","content":"p"}}"#,
        r#"{"model":"m","messages":[{"role":"assistant","content":"a","thinking_blocks":[{"type":"thinking","thinking":"t"}]}]}"#,
        // Members nobody here knows, which may hold text: an upstream's own (vLLM's
        // `documents` and `chat_template`), a message's.
        r#"{"model":"m","messages":[],"documents":[{"text":"d"}]}"#,
        r#"{"model":"m","messages":[],"chat_template":"t"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"a","extra":"x"}]}"#,
        // A guardrail selection, LiteLLM's metadata.
        r#"{"model":"m","messages":[],"guardrails":["g"]}"#,
        r#"{"model":"m","messages":[],"guardrails":null}"#,
        r#"{"model":"m","messages":[],"metadata":{"guardrails":["g"]}}"#,
        r#"{"model":"m","messages":[],"litellm_metadata":{}}"#,
        // What the general path refuses: no messages, a message that is not an object.
        r#"{"model":"m"}"#,
        r#"{"model":"m","messages":[null]}"#,
        r#"{"model":"m","messages":{}}"#,
        // A member it reads written twice; not JSON; skipped values JSON refuses.
        r#"{"model":"a","model":"b","messages":[]}"#,
        r#"{"model":"m","messages":[{"content":"a","content":"b"}]}"#,
        r#"{"model":"m","messages":[]"#,
        r#"{"model":"m","messages":[],"temperature":1e400}"#,
        r#"{"model":"m","messages":[],"metadata":{"x":"\ud800"}}"#,
        r#"[]"#,
    ];
    for body in left {
        assert_eq!(
            common_request(body),
            None,
            "read by the common reader: {body}"
        );
    }
    let chat = r#"{"model":"m","messages":[]}"#;
    assert!(common_request(chat).is_some());
    // Members known to hold no text, and unknown ones that are `null`, are skipped.
    let read = common_request(
        r#"{"model":"m","temperature":0.5,"stop":["x"],"tool_choice":"auto","extra":null,
            "messages":[{"role":"tool","tool_call_id":"c","content":"out","annotations":[],"extra":null}]}"#,
    )
    .expect("read by the common reader");
    assert_eq!(read.texts, ["out"]);
    for call_type in NOT_CHAT {
        assert_eq!(call_type.read_common_request(chat.as_bytes()), None);
    }
}

fn request() -> BoxedStrategy<String> {
    request_with(true)
}

/// A generated request, whose names are escaped now and then when `escape` says.
fn request_with(escape: bool) -> BoxedStrategy<String> {
    let messages = prop_oneof![
        8 => proptest::collection::vec(message(escape), 0..4).prop_map(|m| format!("[{}]", m.join(","))),
        1 => one_of(&["null", "{}", "\"m\""]),
    ]
    .boxed();
    let metadata = one_of(&[
        "{\"user_id\":\"u\"}",
        "{\"user_id\":5,\"tags\":[\"t\"]}",
        "{\"user_id\":\"a\",\"user_id\":\"b\"}",
        "{\"guardrails\":[\"g\"]}",
        "{\"x\":1e400,\"user_id\":\"u\"}",
        "null",
        "\"m\"",
        "[1]",
    ]);
    let members = prop_oneof![
        8 => member(&["messages"], messages, escape),
        3 => member(&["model", "user"], one_of(&["\"gpt\"", "\"esc\\u00e9\"", "null", "5", "{}", "[\"x\"]"]), escape),
        2 => member(&["stream"], one_of(&["true", "false", "null", "\"true\"", "1"]), escape),
        3 => member(&["metadata"], metadata, escape),
        1 => member(&["tools", "functions"], one_of(&["null", "[]", "[{\"type\":\"function\",\"function\":{\"description\":\"d\"}}]", "[{\"description\":\"d\"}]"]), escape),
        1 => member(&["documents", "chat_template", "prediction"], one_of(&["null", "\"t\"", "[{\"text\":\"t\"}]", "{\"content\":\"t\"}"]), escape),
        1 => member(&["guardrails", "litellm_metadata"], one_of(&["null", "[\"g\"]", "{}"]), escape),
        2 => member(&["temperature", "max_tokens", "n"], not_a_value(), escape),
    ]
    .boxed();
    prop_oneof![10 => object(members), 1 => one_of(&["[]", "\"s\"", "null"])].boxed()
}

#[test]
fn the_request_generator_reaches_both_readers() {
    reaches_both_readers(request(), |body| {
        common_request(body).map(|read| !read.texts.is_empty())
    });
}

/// The generated requests take both ways through the plain reader too.
#[test]
fn the_request_generator_reaches_the_plain_reader_and_past_it() {
    reaches_both_readers(request_with(false), |body| {
        common_request(body);
        super::read_plain_request(body.as_bytes()).map(|read| !read.texts.is_empty())
    });
}
