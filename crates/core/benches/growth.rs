//! Request handling against input size: a chat request with 1,000, 10,000 and 100,000 entries
//! in `guardrails` (as a list, and as an object with repeated keys), and with as many messages,
//! parsed as the layers parse it (`ParsedRequest::parse`: JSON, validation, selection) and
//! its texts read. Criterion's element throughput is entries per second: it stays flat when
//! the work is linear (a quadratic step shows as throughput falling 10x per size step).
//!
//! `cargo bench -p guardrail-tower-core --bench growth`

use std::fmt::Write as _;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_core::{CallType, ParsedRequest};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn guardrails_list(n: usize) -> Bytes {
    let mut body =
        String::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"guardrails":["#);
    for i in 0..n {
        let _ = write!(body, r#"{}"guardrail-{i}""#, if i == 0 { "" } else { "," });
    }
    body.push_str("]}");
    Bytes::from(body)
}

fn guardrails_object(n: usize) -> Bytes {
    // Every name twice: the second time `false` (a repeated key keeps its last value).
    let mut body =
        String::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"guardrails":{"#);
    for i in 0..n {
        let name = i % (n / 2).max(1);
        let _ = write!(
            body,
            r#"{}"guardrail-{name}":{}"#,
            if i == 0 { "" } else { "," },
            i % 3 != 0
        );
    }
    body.push_str("}}");
    Bytes::from(body)
}

fn messages(n: usize) -> Bytes {
    let mut body = String::from(r#"{"model":"m","messages":["#);
    for i in 0..n {
        let _ = write!(
            body,
            r#"{}{{"role":"{}","content":"message number {i} of the conversation"}}"#,
            if i == 0 { "" } else { "," },
            if i % 2 == 0 { "user" } else { "assistant" }
        );
    }
    body.push_str("]}");
    Bytes::from(body)
}

fn growth(c: &mut Criterion) {
    type Shape = (&'static str, fn(usize) -> Bytes);
    let shapes: [Shape; 3] = [
        ("guardrails_list", guardrails_list),
        ("guardrails_object", guardrails_object),
        ("messages", messages),
    ];
    for (name, make) in shapes {
        let mut group = c.benchmark_group(name);
        group.sample_size(10);
        for n in SIZES {
            let body = make(n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
                b.iter(|| {
                    let parsed =
                        ParsedRequest::parse(CallType::ChatCompletions, body.clone(), None)
                            .unwrap();
                    black_box(parsed.selection().names().count());
                    black_box(parsed.texts().len())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, growth);
criterion_main!(benches);
