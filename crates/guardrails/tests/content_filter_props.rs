//! Properties of the content filter: masking touches only matched spans, keywords on word
//! boundaries are always found, and what `partial` reports is final.

use guardrail_tower_core::{Decision, SpanAction, SpanMatch, SpanMatcher};
use guardrail_tower_guardrails::content_filter::{
    BlockedWord, ContentFilter, ContentFilterConfig, FilterAction, PatternConfig,
};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Pieces that often form matches, and their neighbours.
const TOKENS: &[&str] = &[
    "foo",
    "foo bar",
    "bar",
    "secret",
    "SeCrEt",
    "Straße",
    "STRAẞE",
    "a@b.com",
    "x@y.co",
    "john.doe@example.org",
    "123-45-6789",
    "4111 1111 1111 1111",
    "10.0.0.1",
    "256.1.1.1",
    "AKIAIOSFODNN7EXAMPLE",
    "EMP-1234",
    " ",
    " ",
    ".",
    ",",
    "@",
    "-",
    "_",
    "1",
    "a",
    "é",
    "ß",
    "«",
    "»",
    "—",
    "\n",
    "x",
    // Wildcard keywords, look-alike and invisible characters, long local parts.
    "password",
    "pass word",
    "PASS-WORD",
    "passwrd",
    "c++",
    "ｓｅｃｒｅｔ",
    "１２３-４５-６７８９",
    "٤١١١ ١١١١ ١١١١ ١١١١",
    "\u{200B}",
    "\u{00A0}",
    "\u{2013}",
    "555 123 4567",
    "2024",
    // Ligatures, which read as their letters: `office`, written in many ways.
    "o",
    "of",
    "\u{FB03}",
    "\u{FB00}",
    "\u{FB01}",
    "ce",
    "fice",
    "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij@mail.example",
];

fn token_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|t| t.concat())
}

/// The rich filter, built once per variant (compiling every pattern per case is slow).
fn rich_filter(action: FilterAction, block_keyword: bool) -> ContentFilter {
    static CACHE: OnceLock<[ContentFilter; 2]> = OnceLock::new();
    assert_eq!(action, FilterAction::Mask);
    CACHE.get_or_init(|| {
        [
            build_rich_filter(action, false),
            build_rich_filter(action, true),
        ]
    })[usize::from(block_keyword)]
    .clone()
}

fn build_rich_filter(action: FilterAction, block_keyword: bool) -> ContentFilter {
    let kw_action = if block_keyword {
        FilterAction::Block
    } else {
        action
    };
    ContentFilter::new(ContentFilterConfig {
        blocked_words: vec![
            BlockedWord::new("foo", action),
            BlockedWord::new("foo bar", kw_action),
            BlockedWord::new("secret", action),
            BlockedWord::new("straße", action),
            BlockedWord::new("pass*word", kw_action),
            BlockedWord::new("c++", action),
            BlockedWord::new("office", kw_action),
        ],
        patterns: ContentFilter::prebuilt_pattern_names()
            .map(|n| PatternConfig::prebuilt(n, action))
            .chain([PatternConfig::regex(
                "employee_id",
                r"\b[A-Z]{3}-\d{4}\b",
                action,
            )])
            .collect(),
        ..Default::default()
    })
    .unwrap()
}

fn check_well_formed(text: &str, matches: &[SpanMatch]) {
    let mut last = 0;
    for m in matches {
        assert!(
            m.range.start >= last,
            "sorted and not overlapping: {matches:?}"
        );
        assert!(m.range.start < m.range.end, "not empty");
        assert!(text.is_char_boundary(m.range.start) && text.is_char_boundary(m.range.end));
        last = m.range.end;
    }
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn masking_changes_nothing_outside_matched_spans(text in token_text()) {
        let filter = rich_filter(FilterAction::Mask, false);
        let matches = filter.find(&text, false);
        check_well_formed(&text, &matches);
        let mut expected = String::new();
        let mut last = 0;
        for m in &matches {
            expected.push_str(&text[last..m.range.start]);
            let SpanAction::Mask { replacement } = &m.action else {
                panic!("only masks configured");
            };
            expected.push_str(replacement);
            last = m.range.end;
        }
        expected.push_str(&text[last..]);
        let verdict = filter.check_texts(&[text.as_str()]);
        match verdict.decision() {
            Decision::Allow => prop_assert!(matches.is_empty()),
            Decision::Rewrite { texts } => prop_assert_eq!(&texts[0], &expected),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn partial_reports_only_final_matches(
        text in token_text(),
        cut in any::<prop::sample::Index>(),
        block in any::<bool>(),
    ) {
        let filter = rich_filter(FilterAction::Mask, block);
        let full = filter.find(&text, false);
        check_well_formed(&text, &full);
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let k = bounds[cut.index(bounds.len())];
        let partial = filter.find(&text[..k], true);
        check_well_formed(&text[..k], &partial);
        for m in &partial {
            prop_assert!(m.range.end < k, "a partial match never ends at the end");
            // What is masked or blocked now stays so: a block is final as is; a masked span is
            // inside one of the whole text (which may merge it with a match that was not
            // settled yet).
            let kept = match m.action {
                SpanAction::Block => full.contains(m),
                SpanAction::Mask { .. } => full.iter().any(|f| {
                    matches!(f.action, SpanAction::Mask { .. })
                        && f.range.start <= m.range.start
                        && m.range.end <= f.range.end
                }),
            };
            prop_assert!(kept, "{:?} of {:?} is not final in {:?}", m, &text[..k], text);
        }
        // Everything a stream releases is final: every byte of a match of the whole text
        // that comes before the held-back suffix is in a match already.
        let released = k - filter.hold_back(&text[..k]);
        // A stream's one call gives both answers, the same.
        prop_assert_eq!(
            filter.find_partial(&text[..k]),
            (partial.clone(), k - released),
            "find_partial of {:?}", &text[..k]
        );
        for m in &full {
            let covered = (m.range.start..m.range.end.min(released))
                .all(|b| partial.iter().any(|p| p.range.contains(&b)));
            prop_assert!(covered, "{:?} missing from partial {:?} (released up to {})", m, &text[..k], released);
        }
    }

    #[test]
    fn keyword_on_word_boundaries_is_found(
        words in prop::collection::vec("[a-zäöüß]{1,6}( [a-zé]{1,4})?", 1..6),
        pick in any::<prop::sample::Index>(),
        upper in any::<bool>(),
        prefix in "([a-zé0-9]{0,5}[ .,;!«—\n]){0,3}",
        follow in "[ .,;!»—\n]",
        suffix in "[a-zé ]{0,8}",
    ) {
        let filter = ContentFilter::new(ContentFilterConfig {
            blocked_words: words.iter().map(|w| BlockedWord::new(w.as_str(), FilterAction::Mask)).collect(),
            ..Default::default()
        })
        .unwrap();
        let keyword = &words[pick.index(words.len())];
        // Upper case where it is one character (`ß` stays: its upper case is `SS`).
        let keyword: String = if upper {
            keyword.chars().map(|c| {
                let mut up = c.to_uppercase();
                match (up.next(), up.next()) {
                    (Some(u), None) => u,
                    _ => c,
                }
            }).collect()
        } else {
            keyword.clone()
        };
        prop_assume!(prefix.chars().next_back().is_none_or(|c| !word_char(c)));
        let start = prefix.len();
        let end = start + keyword.len();
        let overlaps = |ms: &[SpanMatch]| ms.iter().any(|m| m.range.start < end && start < m.range.end);

        // At the very end of a finished text.
        let text = format!("{prefix}{keyword}");
        prop_assert!(overlaps(&filter.find(&text, false)), "{:?} in {:?}", keyword, text);
        // Followed by a non-word character, and more.
        let text = format!("{prefix}{keyword}{follow}{suffix}");
        prop_assert!(overlaps(&filter.find(&text, false)), "{:?} in {:?}", keyword, text);
        if words.len() == 1 {
            // Streamed: found once a non-word character follows and nothing after the match
            // can still start the keyword again (`e e` followed by ` ` may be the start of a
            // second, overlapping `e e`; a line break settles it).
            let text = format!("{prefix}{keyword}{follow}\n");
            prop_assert!(overlaps(&filter.find(&text, true)), "{:?} in {:?}", keyword, text);
            // Not while the keyword ends the text.
            let text = format!("{prefix}{keyword}");
            prop_assert!(filter.find(&text, true).iter().all(|m| m.range.end < text.len()));
        }
    }
}
