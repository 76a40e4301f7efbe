//! The guardrail gate: [`should_run`] and [`Guardrails::selected`] on a realistic configuration.
//!
//! Twenty configured guardrails (5 `default_on`, 15 opt-in, mixed modes, names of realistic
//! length with shared prefixes) and three request selections: none, 3 names, and 20 names (the
//! 15 opt-in guardrails plus 5 unknown names, in an order unlike the configuration's).
//!
//! - `should_run/*`: every guardrail x every mode (60 decisions per iteration); criterion's
//!   element throughput is decisions per second.
//! - `selected/*`: the count of guardrails `Guardrails::selected` yields for each mode (60
//!   decisions plus the iterator per iteration), what each layer does per request.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_core::{
    ConfiguredGuardrail, GuardrailMode, GuardrailModes, GuardrailSelection, GuardrailSpec,
    Guardrails, Verdict, guardrail_fn, should_run,
};

/// `(name, modes, default_on)` of the 20 configured guardrails.
fn config() -> Vec<(String, GuardrailModes, bool)> {
    use GuardrailMode::{DuringCall, PostCall, PreCall};
    let kinds: [(&str, GuardrailModes); 10] = [
        ("content-filter-pii", [PreCall, PostCall].into()),
        ("content-filter-secrets", PreCall.into()),
        ("prompt-injection-detector", PreCall.into()),
        ("openai-moderation", DuringCall.into()),
        ("toxicity-classifier", PostCall.into()),
        ("competitor-mentions", PostCall.into()),
        ("jailbreak-heuristics", [PreCall, DuringCall].into()),
        ("generic-api-lakera", PreCall.into()),
        ("generic-api-presidio", [PreCall, PostCall].into()),
        ("hallucination-check", PostCall.into()),
    ];
    (0..20)
        .map(|i| {
            let (kind, modes) = kinds[i % kinds.len()];
            let team = if i < 10 { "global" } else { "team-research" };
            // Guardrails 0, 4, 8, 12 and 16 are default_on.
            (format!("{team}-{kind}"), modes, i % 4 == 0)
        })
        .collect()
}

fn selections(
    config: &[(String, GuardrailModes, bool)],
) -> [(&'static str, GuardrailSelection); 3] {
    let opt_in: Vec<&str> = config
        .iter()
        .filter(|(_, _, on)| !on)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(opt_in.len(), 15);
    let mut three = GuardrailSelection::new();
    three.merge([opt_in[2], opt_in[7], opt_in[13]].map(String::from));
    let mut twenty = GuardrailSelection::new();
    // Reverse configuration order, interleaved with names nobody configured.
    for (i, name) in opt_in.iter().rev().enumerate() {
        twenty.insert(name.to_string());
        if i % 3 == 0 {
            twenty.insert(format!("unconfigured-guardrail-{i}"));
        }
    }
    assert_eq!(twenty.names().count(), 20);
    [
        ("0_names", GuardrailSelection::new()),
        ("3_names", three),
        ("20_names", twenty),
    ]
}

fn bench(c: &mut Criterion) {
    let config = config();
    let specs: Vec<GuardrailSpec> = config
        .iter()
        .map(|(n, m, on)| GuardrailSpec::new(n.as_str(), *m, *on))
        .collect();
    let guardrails = Guardrails::new(config.iter().map(|(n, m, on)| {
        ConfiguredGuardrail::new(
            n.as_str(),
            *m,
            guardrail_fn(|_| async { Ok(Verdict::allow()) }),
        )
        .default_on(*on)
    }));
    let selections = selections(&config);

    let decisions = (specs.len() * GuardrailMode::ALL.len()) as u64;
    let mut group = c.benchmark_group("gate_20_guardrails");
    group.throughput(Throughput::Elements(decisions));
    for (label, selection) in &selections {
        let expected: usize = GuardrailMode::ALL
            .iter()
            .map(|m| specs.iter().filter(|s| s.should_run(*m, selection)).count())
            .sum();
        group.bench_function(format!("should_run/{label}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for mode in GuardrailMode::ALL {
                    for spec in black_box(&specs) {
                        n += usize::from(should_run(spec, black_box(mode), black_box(selection)));
                    }
                }
                assert_eq!(n, expected);
                n
            })
        });
        group.bench_function(format!("selected/{label}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for mode in GuardrailMode::ALL {
                    n += black_box(&guardrails)
                        .selected(black_box(mode), black_box(selection))
                        .count();
                }
                assert_eq!(n, expected);
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
