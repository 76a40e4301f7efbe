//! SSE decoder throughput on recorded-shape streams.
//!
//! Each corpus stream is repeated to about 1 MiB and fed in two ways: one chunk per event (how
//! an upstream usually delivers a token stream) and 16 KiB chunks split at arbitrary bytes (a
//! fast upstream, or a proxy that coalesces).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_sse::SseDecoder;

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

fn repeated(stream: &str) -> Vec<u8> {
    let copies = (1 << 20) / stream.len() + 1;
    stream.repeat(copies).into_bytes()
}

fn per_event_chunks(stream: &[u8]) -> Vec<Bytes> {
    let text = std::str::from_utf8(stream).unwrap();
    text.split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect()
}

fn fixed_chunks(stream: &[u8], size: usize) -> Vec<Bytes> {
    stream.chunks(size).map(Bytes::copy_from_slice).collect()
}

fn decode_all(chunks: &[Bytes]) -> usize {
    let mut decoder = SseDecoder::new();
    let mut n = 0;
    for chunk in chunks {
        decoder.push(chunk.clone());
        while let Some(event) = decoder.next_event().unwrap() {
            n += event.data().map_or(0, <[u8]>::len);
        }
    }
    while let Some(event) = decoder.finish().unwrap() {
        n += event.data().map_or(0, <[u8]>::len);
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_decoder");
    for (name, stream) in CORPUS {
        let bytes = repeated(stream);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let per_event = per_event_chunks(&bytes);
        group.bench_function(format!("{name}/per_event_chunks"), |b| {
            b.iter(|| decode_all(black_box(&per_event)))
        });
        let fixed = fixed_chunks(&bytes, 16 * 1024);
        group.bench_function(format!("{name}/16KiB_chunks"), |b| {
            b.iter(|| decode_all(black_box(&fixed)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
