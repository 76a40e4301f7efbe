//! A request parsed into the borrowed JSON view the layers read (`JsonView`), by `serde_json`
//! (what the gateway uses) and by two SIMD JSON parsers driving the same `Deserialize`
//! implementation: `sonic-rs` (parses from the shared bytes) and `simd-json` (parses in place,
//! so each parse first copies the body). A `serde_json::Value` is the reference.
//!
//! Three documents: the load benchmark's request (`bench/chat.json`, 1.2 KiB, four messages),
//! a conversation of 200 short messages (structure-heavy), and one 100 KiB user message
//! (string-heavy). Before timing, each parser's view is checked to equal `serde_json`'s.
//!
//! ```sh
//! cargo bench -p guardrail-tower-bench --features simd-json-parsers --bench json_parsers
//! # the parsers' SIMD paths for this machine's CPU (a binary built so runs only on such CPUs):
//! RUSTFLAGS="-C target-cpu=native" cargo bench -p guardrail-tower-bench \
//!     --features simd-json-parsers --bench json_parsers
//! ```

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_protocol::json::JsonView;

fn chat() -> Vec<u8> {
    include_bytes!("../chat.json").to_vec()
}

fn conversation() -> Vec<u8> {
    let mut body = String::from(r#"{"model":"bench-model","user":"u-1","messages":["#);
    for i in 0..200 {
        let _ = write!(
            body,
            r#"{}{{"role":"{}","content":"message number {i} of the conversation"}}"#,
            if i == 0 { "" } else { "," },
            if i % 2 == 0 { "user" } else { "assistant" }
        );
    }
    body.push_str("]}");
    body.into_bytes()
}

fn long_prompt() -> Vec<u8> {
    let mut text = String::new();
    while text.len() < 100 * 1024 {
        text.push_str("Summarise the following report on rail freight in the Alps, with figures. ");
    }
    format!(
        r#"{{"model":"bench-model","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":"{text}"}}]}}"#
    )
    .into_bytes()
}

fn sonic(bytes: &[u8]) -> JsonView<'_> {
    sonic_rs::from_slice(bytes).expect("sonic-rs parses the document")
}

/// Documents on which JSON parsers are known to disagree. A gateway that checks what its parser
/// read while the upstream reads something else is bypassed, so before any speed, the
/// parsers' verdicts are printed next to `serde_json`'s (what the layers parse with now).
///
/// Arrays nested 100,000 deep are not in the list: `simd-json` overflows the stack on them
/// with this `Deserialize` and the process aborts (`serde_json` and `sonic-rs` reject them).
const EDGE_CASES: [(&str, &[u8]); 10] = [
    ("lone surrogate escape", br#"{"a":"\ud800"}"#),
    ("control character in a string", b"{\"a\":\"x\ty\"}"),
    ("invalid UTF-8 in a string", b"{\"a\":\"\xff\"}"),
    ("trailing comma", br#"{"a":1,}"#),
    ("trailing characters", br#"{"a":1} x"#),
    ("number out of range", br#"{"a":1e400}"#),
    ("leading zero", br#"{"a":01}"#),
    ("nesting 200 deep", NESTED),
    ("byte-order mark", b"\xEF\xBB\xBF{\"a\":1}"),
    ("NUL after the document", b"{\"a\":1}\0"),
];

const NESTED: &[u8] = &{
    let mut doc = [0u8; 400];
    let mut i = 0;
    while i < 200 {
        doc[i] = b'[';
        doc[399 - i] = b']';
        i += 1;
    }
    doc
};

fn verdict<E: std::fmt::Display>(result: Result<JsonView<'_>, E>) -> String {
    match result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("rejected ({e})"),
    }
}

fn print_verdicts() {
    for (name, doc) in EDGE_CASES {
        let serde = verdict(JsonView::parse(doc));
        let sonic = verdict(sonic_rs::from_slice::<JsonView<'_>>(doc));
        let mut copy = doc.to_vec();
        let simd = verdict(simd_json::serde::from_slice::<JsonView<'_>>(&mut copy));
        eprintln!("{name}:\n  serde_json {serde}\n  sonic-rs   {sonic}\n  simd-json  {simd}");
    }
}

fn parsers(c: &mut Criterion) {
    print_verdicts();
    let documents: [(&str, Vec<u8>); 3] = [
        ("chat-1.2KiB", chat()),
        ("200-messages", conversation()),
        ("prompt-100KiB", long_prompt()),
    ];
    let mut group = c.benchmark_group("json_view");
    for (name, doc) in &documents {
        let expected = JsonView::parse(doc).expect("valid document");
        assert_eq!(sonic(doc), expected, "sonic-rs reads {name} differently");
        let mut copy = doc.clone();
        let simd: JsonView<'_> = simd_json::serde::from_slice(&mut copy).expect("simd-json");
        assert_eq!(simd, expected, "simd-json reads {name} differently");

        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_with_input(BenchmarkId::new("serde_json", name), doc, |b, doc| {
            b.iter(|| JsonView::parse(black_box(doc)).map(|v| drop(black_box(v))))
        });
        group.bench_with_input(BenchmarkId::new("sonic-rs", name), doc, |b, doc| {
            b.iter(|| drop(black_box(sonic(black_box(doc)))))
        });
        group.bench_with_input(
            BenchmarkId::new("simd-json (copy + parse)", name),
            doc,
            |b, doc| {
                b.iter(|| {
                    let mut copy = black_box(doc).clone();
                    let view: JsonView<'_> =
                        simd_json::serde::from_slice(&mut copy).expect("simd-json");
                    drop(black_box(view));
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("serde_json Value (reference)", name),
            doc,
            |b, doc| {
                b.iter(|| {
                    serde_json::from_slice::<serde_json::Value>(black_box(doc))
                        .map(|v| drop(black_box(v)))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);
