//! Every split of a corpus of real-shaped OpenAI chat, Responses and Anthropic streams decodes to
//! the same events, in `\n`, `\r\n` and `\r` line-end variants.

use bytes::Bytes;
use guardrail_tower_sse::{RawEvent, SseDecoder, SseEvent};
use proptest::prelude::*;

const CORPUS: [(&str, &str); 3] = [
    (
        "chat",
        include_str!("../../protocol/testdata/openai_chat.sse"),
    ),
    (
        "responses",
        include_str!("../../protocol/testdata/openai_responses.sse"),
    ),
    (
        "anthropic",
        include_str!("../../protocol/testdata/anthropic_messages.sse"),
    ),
];

fn variants() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, text) in CORPUS {
        out.push((format!("{name}/lf"), text.as_bytes().to_vec()));
        out.push((
            format!("{name}/crlf"),
            text.replace('\n', "\r\n").into_bytes(),
        ));
        out.push((format!("{name}/cr"), text.replace('\n', "\r").into_bytes()));
    }
    out
}

/// One event's `event`, `data`, `id`, `retry` and completeness.
type Fields = (
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<u64>,
    bool,
);

/// The fields of each event a client would see, and all raw bytes joined (what passes on).
type Decoded = (Vec<Fields>, Vec<u8>);

fn decode(chunks: impl IntoIterator<Item = Bytes>) -> Decoded {
    let mut decoder = SseDecoder::new();
    let mut events: Vec<SseEvent> = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event().unwrap() {
            events.push(event);
        }
    }
    while let Some(event) = decoder.finish().unwrap() {
        events.push(event);
    }
    summarize(&events)
}

/// [`decode`] through the framing-only calls, each event parsed afterwards: the raw bytes of
/// every event, and its fields once parsed, must be those `next_event` gives.
fn decode_raw(chunks: impl IntoIterator<Item = Bytes>) -> Decoded {
    let mut decoder = SseDecoder::new();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut keep = |event: guardrail_tower_sse::RawEvent| {
        let raw = event.raw().clone();
        let complete = event.is_complete();
        let parsed = event.parse();
        assert_eq!(parsed.raw(), &raw);
        assert_eq!(parsed.is_complete(), complete);
        events.push(parsed);
    };
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_raw().unwrap() {
            keep(event);
        }
    }
    while let Some(event) = decoder.finish_raw().unwrap() {
        keep(event);
    }
    summarize(&events)
}

fn summarize(events: &[SseEvent]) -> Decoded {
    let raw = events.iter().flat_map(|e| e.raw().to_vec()).collect();
    // Field-less events (comments, keep-alives, a stray line end) only pass through: the raw
    // bytes cover them.
    let fields = events
        .iter()
        .filter(|e| {
            !e.is_empty() || e.event_type().is_some() || e.id().is_some() || e.retry().is_some()
        })
        .map(|e| {
            (
                e.event_type().map(str::to_owned),
                e.data().map(<[u8]>::to_vec),
                e.id().map(<[u8]>::to_vec),
                e.retry(),
                e.is_complete(),
            )
        })
        .collect();
    (fields, raw)
}

/// Asserts equality, reporting the first differing event readably.
fn assert_same(got: &Decoded, want: &Decoded, what: &str) {
    if got == want {
        return;
    }
    assert_eq!(got.0.len(), want.0.len(), "{what}: event count");
    for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
        let show = |e: &Fields| {
            format!(
                "event={:?} data={:?} complete={}",
                e.0,
                e.1.as_ref()
                    .map(|d| String::from_utf8_lossy(d).into_owned()),
                e.4
            )
        };
        assert_eq!(show(g), show(w), "{what}: event {i}");
    }
    assert!(got.1 == want.1, "{what}: raw bytes differ");
}

fn split_at(stream: &[u8], points: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = points.iter().map(|p| p % (stream.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain([stream.len()]) {
        chunks.push(Bytes::copy_from_slice(&stream[last..p]));
        last = p;
    }
    chunks
}

#[test]
fn reference_decodes_are_sane() {
    for (name, stream) in variants() {
        let (events, raw) = decode([Bytes::from(stream.clone())]);
        assert_eq!(raw, stream, "{name}: raw bytes pass through");
        assert!(events.len() >= 10, "{name}: {} events", events.len());
        assert!(events.iter().all(|e| e.4), "{name}: every event complete");
        // Every data payload is one JSON document or [DONE].
        for e in &events {
            if let Some(data) = &e.1 {
                assert!(
                    data == b"[DONE]" || serde_json::from_slice::<serde_json::Value>(data).is_ok(),
                    "{name}: {}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
}

#[test]
fn every_single_split_point() {
    for (name, stream) in variants() {
        let reference = decode([Bytes::from(stream.clone())]);
        for i in 0..=stream.len() {
            assert_same(
                &decode(split_at(&stream, &[i])),
                &reference,
                &format!("{name}: split at {i}"),
            );
        }
    }
}

#[test]
fn framing_alone_gives_the_same_events_at_every_split_point() {
    let mut streams = variants();
    // A byte-order mark and a `\r\n` split between events are where an event's fields start
    // after its first byte.
    for (name, stream) in variants() {
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(&stream);
        streams.push((format!("{name}/bom"), with_bom));
    }
    for (name, stream) in streams {
        let reference = decode([Bytes::from(stream.clone())]);
        assert!(!reference.0.is_empty(), "{name}");
        for i in 0..=stream.len() {
            assert_same(
                &decode_raw(split_at(&stream, &[i])),
                &reference,
                &format!("{name}: split at {i}"),
            );
        }
        let bytes = stream.iter().map(|b| Bytes::copy_from_slice(&[*b]));
        assert_same(
            &decode_raw(bytes),
            &reference,
            &format!("{name}: byte by byte"),
        );
    }
}

#[test]
fn one_byte_at_a_time() {
    for (name, stream) in variants() {
        let reference = decode([Bytes::from(stream.clone())]);
        let chunks = stream.iter().map(|b| Bytes::copy_from_slice(&[*b]));
        assert_same(&decode(chunks), &reference, &name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_multi_split(which in 0usize..9, points in proptest::collection::vec(any::<usize>(), 0..40)) {
        let (name, stream) = &variants()[which];
        let reference = decode([Bytes::from(stream.clone())]);
        let got = decode(split_at(stream, &points));
        prop_assert!(got == reference, "{}: split at {:?} differs", name, points);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_pass_through(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        points in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = decode([Bytes::from(data.clone())]);
        prop_assert_eq!(&whole.1, &data);
        let split = decode(split_at(&data, &points));
        prop_assert!(split.0 == whole.0, "events differ");
        prop_assert!(split.1 == data, "raw bytes differ");
    }
}

/// Events of every kind for generated streams: single `data:` lines (the kind a chunk may pass
/// without framing) among typed events, comments, several data lines, `\r` line ends, stray
/// blank lines and an event cut short.
const EVENTS: [&str; 13] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    // A byte-order mark is skipped at the stream's start only; anywhere else it is part of
    // the field name.
    "\u{feff}data: bom\n\n",
    "data:x\n\n",
    "data:\n\n",
    "data: [DONE]\n\n",
    "event: message_delta\ndata: {}\n\n",
    ": keep-alive\n\n",
    "data: a\ndata: b\n\n",
    "data: crlf\r\n\r\n",
    "data: cr\r\r",
    "\n",
    "id: 7\ndata: i\n\n",
    "data: no blank line\n",
];

/// An event's raw bytes and the fields a reader sees in it.
fn framed(event: RawEvent) -> (Bytes, Vec<u8>) {
    (event.raw().clone(), event.fields().to_vec())
}

/// Decodes `chunks` twice: framing every chunk, and passing as they are the chunks
/// [`SseDecoder::is_whole_data_events`] accepts. A chunk passed must be exactly what framing
/// makes of it (single `data:` line events that join to the chunk), and every event framed
/// after it the same in both, fields included (the decoder's state unchanged by the chunks
/// passed). Returns how many chunks were passed.
fn passing_whole_chunks_agrees(chunks: &[Bytes]) -> usize {
    let (mut framing, mut passing) = (SseDecoder::new(), SseDecoder::new());
    let (mut all, mut passed) = (Vec::new(), Vec::new());
    let mut count = 0;
    for chunk in chunks {
        let whole = passing.is_whole_data_events(chunk);
        framing.push(chunk.clone());
        let mut events = Vec::new();
        while let Some(event) = framing.next_raw().unwrap() {
            events.push(framed(event));
        }
        if whole {
            count += 1;
            let raw: Vec<u8> = events.iter().flat_map(|(raw, _)| raw.to_vec()).collect();
            assert_eq!(raw, chunk.to_vec(), "passed {chunk:?}");
            for (event, _) in &events {
                let lines = event.iter().filter(|&&b| b == b'\n').count();
                assert!(
                    event.starts_with(b"data:") && event.ends_with(b"\n\n") && lines == 2,
                    "{event:?} in a chunk passed"
                );
            }
            passed.extend(events.iter().cloned());
        } else {
            passing.push(chunk.clone());
            while let Some(event) = passing.next_raw().unwrap() {
                passed.push(framed(event));
            }
        }
        all.extend(events);
    }
    while let Some(event) = framing.finish_raw().unwrap() {
        all.push(framed(event));
    }
    while let Some(event) = passing.finish_raw().unwrap() {
        passed.push(framed(event));
    }
    assert_eq!(all, passed);
    count
}

#[test]
fn chunks_of_whole_data_events_pass_in_the_corpus() {
    let mut passed = 0;
    for (_, stream) in variants() {
        // One chunk per event, as upstreams write them, and splits anywhere.
        let text = Bytes::from(stream);
        let mut chunks = Vec::new();
        let mut start = 0;
        for end in memchr::memmem::find_iter(&text, b"\n\n") {
            chunks.push(text.slice(start..end + 2));
            start = end + 2;
        }
        chunks.push(text.slice(start..));
        passed += passing_whole_chunks_agrees(&chunks);
        passing_whole_chunks_agrees(&split_at(&text, &[7, 100, 101, 350]));
    }
    assert!(passed > 20, "{passed} chunks passed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Generated streams of every kind of event, with a byte-order mark or not, cut into
    /// chunks of whole events or anywhere.
    #[test]
    fn passing_whole_data_events_agrees_with_framing(
        events in proptest::collection::vec(0..EVENTS.len(), 1..24),
        bom in any::<bool>(),
        per_chunk in proptest::collection::vec(1usize..4, 1..24),
        points in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = Vec::new();
        if bom {
            stream.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let mut bounds = Vec::new();
        for (i, &e) in events.iter().enumerate() {
            stream.extend_from_slice(EVENTS[e].as_bytes());
            if i + 1 >= per_chunk.iter().take(bounds.len() + 1).sum::<usize>() {
                bounds.push(stream.len());
            }
        }
        let stream = Bytes::from(stream);
        let mut chunks = Vec::new();
        let mut start = 0;
        for end in bounds.into_iter().chain([stream.len()]) {
            if end > start {
                chunks.push(stream.slice(start..end));
                start = end;
            }
        }
        passing_whole_chunks_agrees(&chunks);
        passing_whole_chunks_agrees(&split_at(&stream, &points));
    }
}
