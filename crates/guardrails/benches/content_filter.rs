//! Content filter throughput: 1,000 keywords and every prebuilt pattern on a ~4 KiB prompt, in
//! English and in three other scripts.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrail_tower_core::SpanMatcher;
use guardrail_tower_guardrails::content_filter::{
    BlockedWord, ContentFilter, ContentFilterConfig, FilterAction, PatternConfig,
};

const PARAGRAPH: &str = "Our quarterly planning meeting covered the migration of the billing \
service to the new cluster, the hiring plan for the platform team, and the open questions \
about data retention. Several people asked whether the staging environment could be shared \
between teams, and we agreed to revisit the topic once the load tests are finished. The \
support backlog is shrinking, but response times on weekends are still too long, so we will \
trial a rotating on-call schedule next month. ";

/// Prose in other scripts, for the folding of non-ASCII text: French (accents), Russian
/// (Cyrillic, many letters of which look like Latin ones) and Japanese (nothing to fold).
const FRENCH: &str = "La réunion de planification trimestrielle a porté sur la migration du \
service de facturation vers le nouveau cluster, le plan de recrutement de l'équipe plateforme \
et les questions ouvertes sur la conservation des données. ";
const RUSSIAN: &str = "На квартальном совещании обсудили перенос сервиса биллинга в новый \
кластер, план найма для команды платформы и открытые вопросы о хранении данных. ";
const JAPANESE: &str = "四半期の計画会議では、請求サービスの新しいクラスターへの移行、\
プラットフォームチームの採用計画、データ保持に関する未解決の問題について話し合いました。";

/// `paragraph` repeated to ~4 KiB.
fn repeated(paragraph: &str) -> String {
    let mut text = String::new();
    while text.len() < 4096 {
        text.push_str(paragraph);
    }
    text
}

/// A ~4 KiB prompt; with `pii`, a few PII items spread through it.
fn prompt(pii: bool) -> String {
    let mut text =
        String::from("Please summarize the following notes for the leadership team.\n\n");
    let items = [
        " Reach the organizer at jane.doe@example.com if anything is unclear.",
        " The test card 4111 1111 1111 1111 was used in the demo.",
        " The staging host is 10.20.30.40 and the backup is 10.20.30.41.",
        " Someone pasted the key AKIAIOSFODNN7EXAMPLE into the chat, please rotate it.",
    ];
    let mut i = 0;
    while text.len() < 4096 {
        text.push_str(PARAGRAPH);
        if pii && i < items.len() {
            text.push_str(items[i]);
            i += 1;
        }
    }
    text
}

/// 1,000 distinct made-up keywords that do not occur in the prompt.
fn keywords() -> Vec<BlockedWord> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(1000);
    let mut seen = std::collections::HashSet::new();
    while out.len() < 1000 {
        let len = 5 + (next() % 8) as usize;
        let word: String = (0..len)
            .map(|_| char::from(b'a' + (next() % 26) as u8))
            .collect();
        let word = format!("zq{word}");
        if seen.insert(word.clone()) {
            let action = if out.len() % 2 == 0 {
                FilterAction::Block
            } else {
                FilterAction::Mask
            };
            out.push(BlockedWord::new(word, action));
        }
    }
    out
}

fn filter() -> ContentFilter {
    ContentFilter::new(ContentFilterConfig {
        blocked_words: keywords(),
        patterns: ContentFilter::prebuilt_pattern_names()
            .map(|n| PatternConfig::prebuilt(n, FilterAction::Mask))
            .collect(),
        ..Default::default()
    })
    .expect("valid config")
}

fn bench(c: &mut Criterion) {
    let filter = filter();
    let with_pii = [prompt(true)];
    let clean = [prompt(false)];
    assert!(!filter.find(&with_pii[0], false).is_empty());
    assert!(filter.find(&clean[0], false).is_empty());

    let mut group = c.benchmark_group("content_filter_4k_1000kw_all_prebuilt");
    group.throughput(Throughput::Bytes(with_pii[0].len() as u64));
    group.bench_function("check_pii", |b| {
        b.iter(|| black_box(filter.check_texts(black_box(&with_pii))))
    });
    group.bench_function("find_pii", |b| {
        b.iter(|| black_box(filter.find(black_box(&with_pii[0]), false)))
    });
    group.bench_function("find_pii_partial", |b| {
        b.iter(|| black_box(filter.find(black_box(&with_pii[0]), true)))
    });
    group.bench_function("check_no_match", |b| {
        b.iter(|| black_box(filter.check_texts(black_box(&clean))))
    });
    group.bench_function("find_no_match", |b| {
        b.iter(|| black_box(filter.find(black_box(&clean[0]), false)))
    });
    group.finish();

    let mut group = c.benchmark_group("content_filter_4k_1000kw_all_prebuilt_non_ascii");
    for (name, paragraph) in [
        ("french", FRENCH),
        ("russian", RUSSIAN),
        ("japanese", JAPANESE),
    ] {
        let text = [repeated(paragraph)];
        assert!(filter.find(&text[0], false).is_empty(), "{name}");
        group.throughput(Throughput::Bytes(text[0].len() as u64));
        group.bench_function(format!("check_{name}"), |b| {
            b.iter(|| black_box(filter.check_texts(black_box(&text))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
