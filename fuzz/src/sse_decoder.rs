//! `sse_decoder`: any bytes, split into any chunks, through [`SseDecoder`].
//!
//! Input: a limit byte (`< 128`: the default 1 MiB maximum event size; else `8 * (b - 127)`,
//! 8 to 1024 bytes), split points ([`Input::points`]), then the stream.
//!
//! Checks: no panic; after each chunk is drained the decoder holds at most the maximum event
//! size (plus the one `\n` a `\r\n` split across chunks leaves to the next event); only the
//! final event may be incomplete; without an error the raw bytes of the events are the input
//! exactly; and the split decode equals the whole decode: the same events (by field; field-less
//! events only through their raw bytes), the same raw bytes, the same error (an event over the
//! limit fails wherever the chunks end).

use bytes::Bytes;
use guardrail_tower_sse::{DEFAULT_MAX_EVENT_SIZE, SseDecoder, SseEvent};

use super::common::{Input, show, split};

/// One event's `event`, `data`, `id`, `retry` and completeness.
type Fields = (
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<u64>,
    bool,
);

/// What a decode produced.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    /// The events a client would see.
    fields: Vec<Fields>,
    /// All raw bytes, joined.
    raw: Vec<u8>,
    /// Whether decoding stopped on an error.
    error: bool,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = input.byte();
    let max = if limit < 128 {
        DEFAULT_MAX_EVENT_SIZE
    } else {
        8 * usize::from(limit - 127)
    };
    let points = input.points();
    let stream = input.rest();

    let whole = decode(max, [Bytes::copy_from_slice(stream)]);
    if whole.error {
        assert!(stream.starts_with(&whole.raw), "raw bytes are a prefix");
    } else {
        assert!(whole.raw == stream, "raw bytes pass through");
    }
    let chunks = split(stream, &points);
    let lens: Vec<usize> = chunks.iter().map(Bytes::len).collect();
    let parts = decode(max, chunks);
    assert_eq!(
        parts.error,
        whole.error,
        "split {lens:?} (max {max}) errs differently from the whole stream {:?}",
        show(stream)
    );
    assert_eq!(
        parts.fields,
        whole.fields,
        "split {lens:?} (max {max}) decodes other events than the whole stream {:?}",
        show(stream)
    );
    if !whole.error {
        assert!(parts.raw == whole.raw, "split {lens:?}: raw bytes differ");
    }
}

fn decode(max: usize, chunks: impl IntoIterator<Item = Bytes>) -> Decoded {
    let mut decoder = SseDecoder::with_max_event_size(max);
    let mut events: Vec<SseEvent> = Vec::new();
    let mut error = false;
    'chunks: for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(_) => {
                    error = true;
                    break 'chunks;
                }
            }
        }
        // One more byte at most: the `\n` that ends the previous event's `\r`, when a chunk
        // ended between them, is held with the next event but not counted in its size.
        assert!(
            decoder.buffered_len() <= max + 1,
            "holds {} bytes, over the maximum event size {max}",
            decoder.buffered_len()
        );
    }
    if !error {
        loop {
            match decoder.finish() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(_) => {
                    error = true;
                    break;
                }
            }
        }
    }
    for (i, event) in events.iter().enumerate() {
        assert!(!event.raw().is_empty(), "an event has raw bytes");
        assert!(
            event.is_complete() || i + 1 == events.len(),
            "only the final event may be incomplete"
        );
    }
    let raw = events.iter().flat_map(|e| e.raw().to_vec()).collect();
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
    Decoded { fields, raw, error }
}
