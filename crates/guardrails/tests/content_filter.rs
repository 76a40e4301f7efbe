//! The content filter: prebuilt patterns, keywords, actions, streaming (`partial`) semantics,
//! configuration, errors, and the guardrail through the core runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, ConfiguredGuardrail, Decision, Guardrail, GuardrailAction, GuardrailLog,
    GuardrailMode, GuardrailSelection, GuardrailStatus, Guardrails, Outcome, RequestId,
    RequestMeta, SpanAction, SpanMatcher,
};
use guardrail_tower_guardrails::content_filter::{
    BlockedWord, ContentFilter, ContentFilterConfig, ContentFilterError, FilterAction,
    PatternConfig,
};
use serde_json::json;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/content_filter")
        .join(name)
}

fn prebuilt(name: &str, action: FilterAction) -> ContentFilter {
    ContentFilter::new(ContentFilterConfig {
        patterns: vec![PatternConfig::prebuilt(name, action)],
        ..Default::default()
    })
    .unwrap()
}

fn keywords(words: &[(&str, FilterAction)]) -> ContentFilter {
    ContentFilter::new(ContentFilterConfig {
        blocked_words: words
            .iter()
            .map(|(k, a)| BlockedWord::new(*k, *a))
            .collect(),
        ..Default::default()
    })
    .unwrap()
}

/// The matched substrings.
fn found<'a>(filter: &ContentFilter, text: &'a str) -> Vec<&'a str> {
    filter
        .find(text, false)
        .into_iter()
        .map(|m| &text[m.range])
        .collect()
}

fn masked(filter: &ContentFilter, text: &str) -> String {
    match filter.check_texts(&[text]).decision() {
        Decision::Rewrite { texts } => texts[0].clone(),
        Decision::Allow => text.to_owned(),
        other => panic!("unexpected {other:?}"),
    }
}

fn block_message(filter: &ContentFilter, text: &str) -> String {
    match filter.check_texts(&[text]).decision() {
        Decision::Block { message } => message.clone(),
        other => panic!("expected a block, got {other:?}"),
    }
}

// ---- prebuilt patterns -------------------------------------------------------------------

/// `(pattern, texts that must match exactly the given span, texts that must not match)`.
#[allow(clippy::type_complexity)]
const PREBUILT_CASES: &[(&str, &[(&str, &str)], &[&str])] = &[
    (
        "email",
        &[
            ("mail john@example.com now", "john@example.com"),
            (
                "<first.last+tag@sub.example.co.uk>",
                "first.last+tag@sub.example.co.uk",
            ),
            ("Contact: ISHAAN@BERRI.AI.", "ISHAAN@BERRI.AI"),
        ],
        &[
            "john at example dot com",
            "user@localhost",
            "@example.com",
            "a@b.c",
        ],
    ),
    (
        "us_ssn",
        &[
            ("My SSN is 123-45-6789", "123-45-6789"),
            ("ssn:078-05-1120.", "078-05-1120"),
            ("ID123-45-6789", "123-45-6789"),
        ],
        &[
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1234-45-6789",
            "123-45-67890",
            "123456789",
        ],
    ),
    (
        "us_ssn_no_dash",
        &[("id 123456789 end", "123456789")],
        &["000123456", "1234567890", "12345678", "123-45-6789"],
    ),
    (
        "us_phone",
        &[
            ("call 555-123-4567", "555-123-4567"),
            ("call (555) 123-4567 now", "(555) 123-4567"),
            ("call +1 555.123.4567", "+1 555.123.4567"),
            ("call 5551234567", "5551234567"),
            // A letter glued to it does not hide it; a digit does (another number).
            ("tel555-123-4567", "555-123-4567"),
        ],
        &[
            "0555-123-4567",
            "555-123-45678",
            "55-123-4567",
            "555 1234 567",
        ],
    ),
    (
        "credit_card",
        &[
            ("card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
            ("card 4111-1111-1111-1111", "4111-1111-1111-1111"),
            ("amex 378282246310005.", "378282246310005"),
            ("4111 1111 1111 1111 2025", "4111 1111 1111 1111"),
        ],
        &[
            "4111 1111 1111 1112",
            "1234567890123",
            "4111  1111 1111 1111",
            "41111111111111110000000",
        ],
    ),
    (
        "visa",
        &[("pay with 4111-1111-1111-1111", "4111-1111-1111-1111")],
        &["4111-1111-1111-1112", "5555 5555 5555 4444"],
    ),
    (
        "mastercard",
        &[("pay with 5555 5555 5555 4444", "5555 5555 5555 4444")],
        &["5555 5555 5555 4445", "4111-1111-1111-1111"],
    ),
    (
        "amex",
        &[("amex 3782-822463-10005", "3782-822463-10005")],
        &["3782-822463-10006"],
    ),
    (
        "discover",
        &[("disc 6011 1111 1111 1117", "6011 1111 1111 1117")],
        &["6011 1111 1111 1118"],
    ),
    (
        "ipv4",
        &[
            ("host 192.168.0.1 up", "192.168.0.1"),
            ("255.255.255.255", "255.255.255.255"),
            ("at 10.0.0.254:8080", "10.0.0.254"),
        ],
        &[
            "256.1.1.1",
            "1.2.3",
            "192.168.01.1",
            "999.999.999.999",
            "1.2.3.256",
        ],
    ),
    (
        "aws_access_key",
        &[
            ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
            ("ASIAABCDEFGHIJKLMNOP", "ASIAABCDEFGHIJKLMNOP"),
        ],
        &[
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "akiaiosfodnn7example",
        ],
    ),
    (
        "github_token",
        &[
            (
                "token ghp_16C7e42F292c6912E7710c838347Ae178B4a ok",
                "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            ),
            (
                "gho_16C7e42F292c6912E7710c838347Ae178B4a",
                "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            ),
            (
                "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHI",
                "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHI",
            ),
        ],
        &[
            "ghx_16C7e42F292c6912E7710c838347Ae178B4a",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4",
            "github_pat_short",
        ],
    ),
    (
        "slack_token",
        &[(
            "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        )],
        &["xoxz-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"],
    ),
    (
        "generic_api_key",
        &[
            (
                "use sk-abcdefghijklmnopqrstuvwx1234 please",
                "sk-abcdefghijklmnopqrstuvwx1234",
            ),
            (
                "sk-proj-AbCdEf_GhIjKl-MnOpQr012345",
                "sk-proj-AbCdEf_GhIjKl-MnOpQr012345",
            ),
            (
                "api_key=abcdefghijklmnopqrstuvwxyz",
                "api_key=abcdefghijklmnopqrstuvwxyz",
            ),
            (
                "apikey: \"abcdefghijklmnopqrstuvwxyz\"",
                "apikey: \"abcdefghijklmnopqrstuvwxyz",
            ),
            (
                "export OPENAI_API_KEY=abcdefghijklmnopqrstuvwxyz",
                "OPENAI_API_KEY=abcdefghijklmnopqrstuvwxyz",
            ),
        ],
        &[
            "sk-short",
            "the task-force-assessment-framework-is-ready",
            "api_key=short",
            "what is an api key?",
        ],
    ),
];

#[test]
fn every_prebuilt_pattern_positive_and_negative() {
    let names: Vec<&str> = ContentFilter::prebuilt_pattern_names().collect();
    for (name, positives, negatives) in PREBUILT_CASES {
        assert!(names.contains(name), "{name} is not a prebuilt pattern");
        let filter = prebuilt(name, FilterAction::Mask);
        for (text, expected) in *positives {
            assert_eq!(found(&filter, text), [*expected], "{name} on {text:?}");
        }
        for text in *negatives {
            assert!(
                found(&filter, text).is_empty(),
                "{name} must not match {text:?}, found {:?}",
                found(&filter, text)
            );
        }
    }
    // Every prebuilt pattern is covered.
    for name in names {
        assert!(
            PREBUILT_CASES.iter().any(|(n, _, _)| *n == name),
            "no cases for {name}"
        );
    }
}

#[test]
fn prebuilt_patterns_work_in_non_ascii_text() {
    let filter = prebuilt("email", FilterAction::Mask);
    let text = "écrivez à «jean@exemple.fr» — merci ✓";
    assert_eq!(found(&filter, text), ["jean@exemple.fr"]);
    assert_eq!(
        masked(&filter, text),
        "écrivez à «[EMAIL_REDACTED]» — merci ✓"
    );
}

#[test]
fn a_valid_card_inside_a_rejected_candidate_is_found() {
    let filter = prebuilt("credit_card", FilterAction::Mask);
    // The greedy candidate "1234 4111 1111 1111" fails Luhn; the card starts inside it.
    assert_eq!(
        found(&filter, "1234 4111 1111 1111 1111"),
        ["4111 1111 1111 1111"]
    );
}

// ---- keywords ----------------------------------------------------------------------------

#[test]
fn keywords_are_case_insensitive() {
    let filter = keywords(&[("Secret", FilterAction::Mask)]);
    assert_eq!(
        found(&filter, "secret SECRET Secret sEcReT"),
        ["secret", "SECRET", "Secret", "sEcReT"]
    );
}

#[test]
fn keywords_match_on_word_boundaries_only() {
    let filter = keywords(&[("ass", FilterAction::Block)]);
    for text in ["class", "assess", "bass", "ass_hat", "ass1", "éass", "assé"] {
        assert!(found(&filter, text).is_empty(), "{text:?}");
    }
    for text in ["ass", "an ass.", "(ass)", "ass-hat", "«ass»", "the ASS"] {
        assert_eq!(found(&filter, text).len(), 1, "{text:?}");
    }
}

#[test]
fn overlapping_keywords() {
    let filter = keywords(&[("foo", FilterAction::Mask), ("foo bar", FilterAction::Mask)]);
    // The longer keyword fails its boundary: the shorter one still matches.
    assert_eq!(found(&filter, "foo barx"), ["foo"]);
    // Both valid at one start: the longer wins.
    assert_eq!(found(&filter, "a foo bar."), ["foo bar"]);
    assert_eq!(found(&filter, "foo foo bar foo"), ["foo", "foo bar", "foo"]);
    // A keyword inside a longer one that starts later.
    let filter = keywords(&[
        ("bar", FilterAction::Mask),
        ("foo bar baz", FilterAction::Mask),
    ]);
    assert_eq!(found(&filter, "foo bar baz"), ["foo bar baz"]);
    assert_eq!(found(&filter, "foo bar bazooka"), ["bar"]);
}

#[test]
fn non_ascii_keywords_are_case_insensitive() {
    let filter = keywords(&[
        ("Straße", FilterAction::Mask),
        ("ärger", FilterAction::Mask),
    ]);
    let text = "die STRASSE, die Straße, die STRAẞE, die straße; ÄRGER und Ärger";
    assert_eq!(
        found(&filter, text),
        ["Straße", "STRAẞE", "straße", "ÄRGER", "Ärger"]
    );
    assert_eq!(
        masked(&filter, text),
        "die STRASSE, die [KEYWORD_REDACTED], die [KEYWORD_REDACTED], die [KEYWORD_REDACTED]; \
         [KEYWORD_REDACTED] und [KEYWORD_REDACTED]"
    );
    // Accents fold away, on the keyword as on the text.
    let filter = keywords(&[("ΟΔΟΣ", FilterAction::Mask)]);
    assert_eq!(found(&filter, "η οδος, η Οδός"), ["οδος", "Οδός"]);
    let filter = keywords(&[("Οδός", FilterAction::Mask)]);
    assert_eq!(found(&filter, "η οδος, η ΟΔΟΣ"), ["οδος", "ΟΔΟΣ"]);
}

/// Letters of other scripts and styles that look like Latin ones, accents, and accents typed as
/// marks after a letter do not hide a keyword: the text is read with them folded, the match
/// is masked as written, and the block names the keyword as configured.
#[test]
fn look_alike_letters_and_accents_do_not_hide_a_keyword() {
    let filter = keywords(&[("confidential", FilterAction::Block)]);
    for text in [
        "the c\u{03BF}nfid\u{0435}nti\u{0430}l plan", // Greek omicron, Cyrillic е and а
        "the CОNFIDЕNTIАL plan",                      // Cyrillic О, Е, А
        "the cönfidéntiâl plan",
        "the confidentia\u{0301}l plan",
        "the c\u{0336}o\u{0336}n\u{0336}fidential plan",
        "the 𝐜𝐨𝐧𝐟𝐢𝐝𝐞𝐧𝐭𝐢𝐚𝐥 plan",
        "the 𝓬𝓸𝓷𝓯𝓲𝓭𝓮𝓷𝓽𝓲𝓪𝓵 plan",
        "the ⓒⓞⓝⓕⓘⓓⓔⓝⓣⓘⓐⓛ plan",
        "the ᴄᴏɴꜰɪᴅᴇɴᴛɪᴀʟ plan",
        "the con\u{FB01}dential plan", // the ligature `ﬁ`
    ] {
        assert_eq!(
            block_message(&filter, text),
            "Content blocked: keyword 'confidential' detected",
            "{text}"
        );
    }
    let filter = keywords(&[("confidential", FilterAction::Mask)]);
    assert_eq!(
        masked(&filter, "a cönfide\u{0301}ntiаl b"),
        "a [KEYWORD_REDACTED] b"
    );
    // A keyword written with look-alikes or accents matches the plain word, and the other way.
    let filter = keywords(&[("cаfé", FilterAction::Mask)]);
    assert_eq!(
        found(&filter, "cafe, café, CAFE\u{0301}, cafés"),
        ["cafe", "café", "CAFE\u{0301}"]
    );
    // A ligature is its letters: a match masks it whole, also one that ends inside it, and a
    // keyword written with one matches the letters.
    let filter = keywords(&[
        ("confidential", FilterAction::Mask),
        ("of", FilterAction::Mask),
    ]);
    assert_eq!(
        masked(&filter, "a con\u{FB01}dential o\u{FB00} b"),
        "a [KEYWORD_REDACTED] o\u{FB00} b"
    );
    let filter = prebuilt("email", FilterAction::Mask);
    assert_eq!(
        masked(&filter, "write to o\u{FB03}ce@example.com"),
        "write to [EMAIL_REDACTED]"
    );
    let filter = keywords(&[("\u{FB01}le", FilterAction::Mask)]);
    assert_eq!(
        found(&filter, "a file, a \u{FB01}le, a FILE"),
        ["file", "\u{FB01}le", "FILE"]
    );
    // Letters that only look alike in other scripts' words stay words of those scripts: a
    // Cyrillic word is not an ASCII one unless every letter of it is a look-alike.
    let filter = keywords(&[("cop", FilterAction::Mask)]);
    assert_eq!(found(&filter, "сор, сорт, coр"), ["сор", "coр"]);
}

#[test]
fn ascii_keywords_in_non_ascii_text_keep_offsets() {
    let filter = keywords(&[("secret", FilterAction::Mask)]);
    let text = "ẞẞ «SECRET» — ✓ secret";
    let ranges: Vec<_> = filter
        .find(text, false)
        .into_iter()
        .map(|m| m.range)
        .collect();
    assert_eq!(ranges.len(), 2);
    for r in ranges {
        assert!(text[r].eq_ignore_ascii_case("secret"));
    }
    assert_eq!(
        masked(&filter, text),
        "ẞẞ «[KEYWORD_REDACTED]» — ✓ [KEYWORD_REDACTED]"
    );
}

#[test]
fn duplicate_keywords_keep_the_last_definition() {
    let filter = keywords(&[("Beta", FilterAction::Block), ("beta", FilterAction::Mask)]);
    assert_eq!(masked(&filter, "the BETA"), "the [KEYWORD_REDACTED]");
}

// ---- actions -----------------------------------------------------------------------------

fn mixed() -> ContentFilter {
    ContentFilter::new(ContentFilterConfig {
        blocked_words: vec![
            BlockedWord::new("confidential", FilterAction::Block)
                .with_description("Internal confidential information"),
            BlockedWord::new("proprietary", FilterAction::Mask),
            BlockedWord::new("danger", FilterAction::Block),
        ],
        patterns: vec![
            PatternConfig::prebuilt("us_ssn", FilterAction::Block),
            PatternConfig::prebuilt("email", FilterAction::Mask),
            PatternConfig::prebuilt("ipv4", FilterAction::Mask),
            PatternConfig::regex("employee_id", r"\b[A-Z]{3}-\d{4}\b", FilterAction::Mask),
        ],
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn mask_outputs_exact_text_and_counts() {
    let filter = mixed();
    let verdict = filter.check_texts(&[
        "Email a@b.com and c@d.org from 10.0.0.1, proprietary.",
        "nothing here",
        "Badge abc-1234 (case-insensitive like LiteLLM)",
    ]);
    assert_eq!(
        verdict.decision(),
        &Decision::Rewrite {
            texts: vec![
                "Email [EMAIL_REDACTED] and [EMAIL_REDACTED] from [IPV4_REDACTED], [KEYWORD_REDACTED]."
                    .into(),
                "nothing here".into(),
                "Badge [EMPLOYEE_ID_REDACTED] (case-insensitive like LiteLLM)".into(),
            ]
        }
    );
    let counts = verdict.masked_entity_count().unwrap();
    assert_eq!(
        serde_json::to_value(counts).unwrap(),
        json!({"email": 2, "ipv4": 1, "blocked_word": 1, "employee_id": 1})
    );
    assert_eq!(
        verdict.detail().unwrap(),
        &json!([
            {"type": "pattern", "pattern_name": "email", "action": "MASK", "count": 2},
            {"type": "pattern", "pattern_name": "ipv4", "action": "MASK", "count": 1},
            {"type": "blocked_word", "keyword": "proprietary", "action": "MASK",
             "description": null, "count": 1},
            {"type": "pattern", "pattern_name": "employee_id", "action": "MASK", "count": 1},
        ])
    );
}

#[test]
fn custom_redaction_formats() {
    let filter = ContentFilter::new(ContentFilterConfig {
        pattern_redaction_format: Some("***{pattern_name}***".into()),
        keyword_redaction_tag: Some("***REDACTED***".into()),
        blocked_words: vec![BlockedWord::new("confidential", FilterAction::Mask)],
        patterns: vec![
            PatternConfig::prebuilt("email", FilterAction::Mask),
            PatternConfig::prebuilt("us_ssn", FilterAction::Mask),
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        masked(
            &filter,
            "Email john@example.com, SSN 123-45-6789, confidential data"
        ),
        "Email ***EMAIL***, SSN ***US_SSN***, ***REDACTED*** data"
    );
}

#[test]
fn block_messages_name_the_rule_not_the_text() {
    let filter = mixed();
    assert_eq!(
        block_message(&filter, "My SSN is 123-45-6789"),
        "Content blocked: us_ssn pattern detected"
    );
    assert_eq!(
        block_message(&filter, "This is CONFIDENTIAL."),
        "Content blocked: keyword 'confidential' detected (Internal confidential information)"
    );
    assert_eq!(
        block_message(&filter, "danger zone"),
        "Content blocked: keyword 'danger' detected"
    );
    let verdict = filter.check_texts(&["mail a@b.com", "ssn 123-45-6789"]);
    let detail = verdict.detail().unwrap().to_string();
    assert!(!detail.contains("123-45-6789") && !detail.contains("a@b.com"));
    assert!(detail.contains("us_ssn"));
}

#[test]
fn block_wins_over_mask() {
    let filter = mixed();
    // A MASK before the BLOCK in the same text, and a MASK in another text: still a block.
    let verdict = filter.check_texts(&["a@b.com", "x@y.com then 123-45-6789"]);
    assert!(matches!(verdict.decision(), Decision::Block { .. }));
    assert_eq!(verdict.masked_entity_count(), None);
    // At the same start a BLOCK beats a longer MASK.
    let filter = ContentFilter::new(ContentFilterConfig {
        blocked_words: vec![BlockedWord::new("secret", FilterAction::Block)],
        patterns: vec![PatternConfig::prebuilt("email", FilterAction::Mask)],
        ..Default::default()
    })
    .unwrap();
    let m = filter.find("secret@example.com", false);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].action, SpanAction::Block);
    assert_eq!(m[0].range, 0..6);
    // A MASK that starts first does not hide a BLOCK inside it: the mask ends where the
    // block starts, and the text is blocked.
    let m = filter.find("my.secret@example.com", false);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].range.clone(), m[0].entity.as_str()), (0..3, "email"));
    assert_eq!(m[1].action, SpanAction::Block);
    assert_eq!(m[1].range, 3..9);
    assert!(matches!(
        filter.check_texts(&["my.secret@example.com"]).decision(),
        Decision::Block { .. }
    ));
}

#[test]
fn span_matches_carry_entity_message_and_replacement() {
    let filter = mixed();
    let m = filter.find("a@b.com danger", false);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].range, 0..7);
    assert_eq!(m[0].entity, "email");
    assert_eq!(
        m[0].action,
        SpanAction::Mask {
            replacement: "[EMAIL_REDACTED]".into()
        }
    );
    assert_eq!(m[1].entity, "blocked_word");
    assert_eq!(m[1].action, SpanAction::Block);
    assert_eq!(m[1].message, "Content blocked: keyword 'danger' detected");
}

#[test]
fn nothing_matches_allows() {
    let filter = mixed();
    let verdict = filter.check_texts(&["hello world", "all clear"]);
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert_eq!(verdict.detail(), None);
    assert!(filter.find("hello", false).is_empty());
}

// ---- partial (streaming) -----------------------------------------------------------------

#[test]
fn partial_does_not_report_a_match_at_the_end() {
    let filter = keywords(&[("forbidden", FilterAction::Block)]);
    // "forbid" may become "forbidden"; "forbidden" may become "forbiddenness".
    assert!(filter.find("this is forbid", true).is_empty());
    assert!(filter.find("this is forbidden", true).is_empty());
    assert_eq!(filter.find("this is forbidden", false).len(), 1);
    assert_eq!(filter.find("this is forbidden ", true).len(), 1);
    assert_eq!(filter.find("this is forbidden.", true).len(), 1);
    assert!(filter.find("this is forbiddenx", true).is_empty());
    assert!(filter.find("this is forbiddenx", false).is_empty());
}

#[test]
fn partial_waits_for_a_longer_keyword_that_may_still_complete() {
    let filter = keywords(&[
        ("foo", FilterAction::Mask),
        ("foo bar", FilterAction::Block),
    ]);
    // "foo" is settled on its own, but "foo ba" may still become "foo bar".
    assert!(filter.find("x foo ba", true).is_empty());
    assert_eq!(found(&filter, "x foo ba"), ["foo"]);
    let m = filter.find("x foo bar!", true);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].action, SpanAction::Block);
    // Once "foo bax" rules "foo bar" out, "foo" is reported.
    let m = filter.find("x foo bax", true);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].range, 2..5);
}

#[test]
fn partial_waits_for_patterns_that_may_still_grow() {
    let filter = prebuilt("email", FilterAction::Mask);
    // "john@example.co" may become "john@example.com" or "john@example.co.uk".
    assert!(filter.find("mail john@example.co", true).is_empty());
    assert!(filter.find("mail john@example.com", true).is_empty());
    // Any character a match cannot contain settles it.
    let m = filter.find("mail john@example.com now", true);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].range, 5..21);
    // Earlier matches are reported while a later one is pending.
    let text = "a@b.com, c@d.or";
    let m = filter.find(text, true);
    assert_eq!(m.len(), 1);
    assert_eq!(&text[m[0].range.clone()], "a@b.com");
}

#[test]
fn partial_and_full_agree_once_settled() {
    let filter = mixed();
    let text = "Ping admin@corp.example or 10.1.2.3; danger. And proprietary stuff follows here.";
    let full = filter.find(text, false);
    let streamed = filter.find(&format!("{text}{}", " ".repeat(400)), true);
    assert_eq!(full, streamed);
}

#[test]
fn max_match_chars_covers_keywords_and_patterns() {
    assert_eq!(
        keywords(&[("abc", FilterAction::Mask)]).max_match_chars(),
        3
    );
    assert_eq!(
        keywords(&[("Straße", FilterAction::Mask), ("ab", FilterAction::Mask)]).max_match_chars(),
        6
    );
    assert_eq!(prebuilt("ipv4", FilterAction::Mask).max_match_chars(), 15);
    assert_eq!(
        prebuilt("aws_access_key", FilterAction::Mask).max_match_chars(),
        20
    );
    // Emails: a 256-character local part and the longest domain, whole in a stream.
    assert_eq!(prebuilt("email", FilterAction::Mask).max_match_chars(), 512);
    // Card numbers: runs of digit groups up to 64 characters.
    assert_eq!(
        prebuilt("credit_card", FilterAction::Mask).max_match_chars(),
        64
    );
    // A wildcard reaches one character: "fu*k" is at most 4 long.
    assert_eq!(
        keywords(&[("fu*k", FilterAction::Mask), ("ab", FilterAction::Mask)]).max_match_chars(),
        4
    );
    let unbounded = ContentFilter::new(ContentFilterConfig {
        patterns: vec![PatternConfig::regex("digits", r"\d+", FilterAction::Mask)],
        max_unbounded_match_chars: 42,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(unbounded.max_match_chars(), 42);
    // A bounded custom regex counts its longest match.
    let bounded = ContentFilter::new(ContentFilterConfig {
        patterns: vec![PatternConfig::regex("x", "ab{1,3}", FilterAction::Mask)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(bounded.max_match_chars(), 4);
    assert_eq!(
        ContentFilter::new(ContentFilterConfig::default())
            .unwrap()
            .max_match_chars(),
        1
    );
}

// ---- configuration -----------------------------------------------------------------------

#[test]
fn parses_litellm_config_with_blocked_words_file() {
    let yaml = std::fs::read_to_string(testdata("litellm_config.yaml")).unwrap();
    let config: ContentFilterConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(config.patterns.len(), 4);
    assert_eq!(
        config.patterns[2],
        PatternConfig::regex("employee_id", r"\b[A-Z]{3}-\d{4}\b", FilterAction::Mask)
    );
    assert_eq!(
        config.blocked_words[0],
        BlockedWord::new("confidential", FilterAction::Block)
            .with_description("Internal confidential information")
    );
    // Relative to the working directory, which is the crate root under `cargo test`.
    assert_eq!(
        config.blocked_words_file.as_deref(),
        Some(Path::new("testdata/content_filter/blocked_words.yaml"))
    );
    let filter = ContentFilter::new(config).unwrap();
    assert_eq!(
        block_message(&filter, "see Project_Apollo docs"),
        "Content blocked: keyword 'project_apollo' detected (Confidential project codename)"
    );
    assert_eq!(
        block_message(&filter, "the customer_database"),
        "Content blocked: keyword 'customer_database' detected"
    );
    assert_eq!(
        block_message(&filter, "code PROJECT-123456"),
        "Content blocked: project_code pattern detected"
    );
    assert_eq!(
        masked(
            &filter,
            "call internal_api with EMP-1234, mail x@y.io, proprietary"
        ),
        "call [KEYWORD_REDACTED] with [EMPLOYEE_ID_REDACTED], mail [EMAIL_REDACTED], [KEYWORD_REDACTED]"
    );
}

#[test]
fn config_accepts_nulls_any_action_case_and_defaults() {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(
        r#"
guardrail: litellm_content_filter
mode: [pre_call, post_call]
patterns:
blocked_words:
  - keyword: a
    action: mask
  - keyword: b
    action: Block
pattern_redaction_format: null
"#,
    )
    .unwrap();
    assert!(config.patterns.is_empty());
    assert_eq!(config.blocked_words[0].action, FilterAction::Mask);
    assert_eq!(config.blocked_words[1].action, FilterAction::Block);
    assert_eq!(config.max_unbounded_match_chars, 256);
    assert_eq!(config.pattern_redaction_format, None);

    let err = serde_yaml_ng::from_str::<ContentFilterConfig>(
        "blocked_words:\n  - keyword: a\n    action: REDACT\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown action 'REDACT'"), "{err}");
    let err = serde_yaml_ng::from_str::<ContentFilterConfig>(
        "patterns:\n  - pattern_type: fancy\n    action: MASK\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("fancy"), "{err}");
}

#[test]
fn unnamed_custom_regex_is_custom_regex() {
    let config: ContentFilterConfig = serde_yaml_ng::from_str(
        "patterns:\n  - pattern_type: regex\n    pattern: 'tok-[0-9]{4}'\n    action: MASK\n",
    )
    .unwrap();
    let filter = ContentFilter::new(config).unwrap();
    assert_eq!(masked(&filter, "a TOK-1234"), "a [CUSTOM_REGEX_REDACTED]");
}

// ---- configuration errors ----------------------------------------------------------------

fn error(config: ContentFilterConfig) -> ContentFilterError {
    ContentFilter::new(config).unwrap_err()
}

#[test]
fn unknown_prebuilt_lists_the_valid_names() {
    let err = error(ContentFilterConfig {
        patterns: vec![
            PatternConfig::prebuilt("email", FilterAction::Mask),
            PatternConfig::prebuilt("passport", FilterAction::Mask),
        ],
        ..Default::default()
    });
    assert!(matches!(
        err,
        ContentFilterError::UnknownPrebuilt { index: 1, .. }
    ));
    let msg = err.to_string();
    assert!(
        msg.starts_with("patterns[1]: unknown prebuilt pattern_name 'passport'"),
        "{msg}"
    );
    assert!(
        msg.contains("email, us_ssn,") && msg.contains("generic_api_key"),
        "{msg}"
    );
}

#[test]
fn invalid_regex_names_the_pattern() {
    let err = error(ContentFilterConfig {
        patterns: vec![PatternConfig::regex("broken", "a(b", FilterAction::Block)],
        ..Default::default()
    });
    assert!(matches!(err, ContentFilterError::InvalidRegex { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("patterns[0] ('broken'): invalid regex pattern:"),
        "{msg}"
    );
    assert!(msg.contains("unclosed group"), "{msg}");
}

#[test]
fn pathological_regex_is_an_error_not_a_hang() {
    let start = std::time::Instant::now();
    let err = error(ContentFilterConfig {
        patterns: vec![PatternConfig::regex(
            "huge",
            r"\w{1000}{1000}",
            FilterAction::Block,
        )],
        ..Default::default()
    });
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        matches!(err, ContentFilterError::RegexTooLarge { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("'huge'"), "{err}");
}

#[test]
fn empty_matching_regex_is_an_error() {
    let err = error(ContentFilterConfig {
        patterns: vec![PatternConfig::regex("opt", "x*", FilterAction::Mask)],
        ..Default::default()
    });
    assert_eq!(
        err.to_string(),
        "patterns[0] ('opt'): regex pattern can match the empty string"
    );
}

#[test]
fn empty_keyword_is_an_error() {
    let err = error(ContentFilterConfig {
        blocked_words: vec![
            BlockedWord::new("ok", FilterAction::Mask),
            BlockedWord::new("", FilterAction::Mask),
        ],
        ..Default::default()
    });
    assert_eq!(err.to_string(), "blocked_words[1]: keyword is empty");
    // A keyword of nothing but characters the text is read without (zero-width, accents) would
    // match everywhere: empty too.
    for keyword in ["\u{200B}", "\u{0301}\u{0301}", " \u{FEFF} "] {
        let err = error(ContentFilterConfig {
            blocked_words: vec![BlockedWord::new(keyword, FilterAction::Block)],
            ..Default::default()
        });
        assert_eq!(
            err.to_string(),
            "blocked_words[0]: keyword is empty",
            "{keyword:?}"
        );
    }
    let path = testdata("empty_keyword.yaml");
    let err = error(ContentFilterConfig {
        blocked_words_file: Some(path.clone()),
        ..Default::default()
    });
    assert_eq!(
        err.to_string(),
        format!("{}: blocked_words[1]: keyword is empty", path.display())
    );
}

#[test]
fn blocked_words_file_errors_name_the_path() {
    let missing = testdata("does_not_exist.yaml");
    let err = error(ContentFilterConfig {
        blocked_words_file: Some(missing.clone()),
        ..Default::default()
    });
    assert!(matches!(err, ContentFilterError::BlockedWordsFile { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "blocked_words_file '{}': cannot read it:",
            missing.display()
        )),
        "{msg}"
    );
    for (file, expect) in [
        ("no_list.yaml", "missing the 'blocked_words' list"),
        ("bad_action.yaml", "unknown action 'REDACT'"),
    ] {
        let path = testdata(file);
        let msg = error(ContentFilterConfig {
            blocked_words_file: Some(path.clone()),
            ..Default::default()
        })
        .to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(expect), "{msg}");
    }
}

#[test]
fn zero_max_unbounded_match_chars_is_an_error() {
    let err = error(ContentFilterConfig {
        max_unbounded_match_chars: 0,
        ..Default::default()
    });
    assert_eq!(err, ContentFilterError::ZeroMaxUnboundedMatchChars);
}

// ---- through the core runner -------------------------------------------------------------

fn meta() -> Arc<RequestMeta> {
    Arc::new(RequestMeta::new(
        RequestId::from("req-1"),
        CallType::ChatCompletions,
    ))
}

fn run(guardrails: &Guardrails, texts: &[&str]) -> (Outcome, GuardrailLog) {
    let log = GuardrailLog::new();
    let outcome = block_on(
        guardrails
            .run(
                GuardrailMode::PreCall,
                &GuardrailSelection::new(),
                Side::Request,
                texts.iter().map(|t| t.to_string()).collect(),
                meta(),
                log.clone(),
            )
            .expect("selected"),
    );
    (outcome, log)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn guardrail_blocks_masks_and_allows_through_the_runner() {
    let filter = mixed();
    assert_eq!(filter.provider(), "litellm_content_filter");
    assert!(filter.span_matcher().is_some());
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "content-filter-pre",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        filter,
    )
    .default_on(true)]);
    assert!(
        guardrails
            .get("content-filter-pre")
            .unwrap()
            .span_matcher()
            .is_some()
    );

    // Block.
    let (outcome, log) = run(&guardrails, &["My SSN is 123-45-6789"]);
    let Outcome::Blocked(err) = outcome else {
        panic!("expected a block, got {outcome:?}");
    };
    assert!(
        err.message()
            .contains("Content blocked: us_ssn pattern detected")
    );
    let entries = log.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].guardrail_provider, "litellm_content_filter");
    assert_eq!(
        entries[0].guardrail_status,
        GuardrailStatus::GuardrailIntervened
    );
    assert_eq!(entries[0].guardrail_action, GuardrailAction::Block);
    assert_eq!(
        entries[0].guardrail_response,
        json!([{"type": "pattern", "pattern_name": "us_ssn", "action": "BLOCK", "count": 1}])
    );

    // Mask.
    let (outcome, log) = run(&guardrails, &["Contact me at john@example.com", "hi"]);
    let Outcome::Allowed {
        rewritten,
        masked_entity_count,
    } = outcome
    else {
        panic!("expected a rewrite, got {outcome:?}");
    };
    assert_eq!(
        rewritten,
        Some(vec![
            "Contact me at [EMAIL_REDACTED]".to_owned(),
            "hi".to_owned()
        ])
    );
    assert_eq!(masked_entity_count.get("email"), Some(&1));
    let entries = log.entries();
    assert_eq!(
        entries[0].guardrail_status,
        GuardrailStatus::GuardrailIntervened
    );
    assert_eq!(entries[0].guardrail_action, GuardrailAction::Mask);
    assert_eq!(
        entries[0]
            .masked_entity_count
            .as_ref()
            .and_then(|m| m.get("email")),
        Some(&1)
    );

    // Allow.
    let (outcome, log) = run(&guardrails, &["hello there"]);
    assert!(matches!(
        outcome,
        Outcome::Allowed {
            rewritten: None,
            ..
        }
    ));
    let entries = log.entries();
    assert_eq!(entries[0].guardrail_status, GuardrailStatus::Success);
    assert_eq!(entries[0].guardrail_action, GuardrailAction::Allow);
}

#[test]
fn hold_back_is_only_what_could_still_match() {
    use guardrail_tower_core::SpanMatcher;
    let filter = guardrail_tower_guardrails::ContentFilter::new(
        serde_yaml_ng::from_str(
            "blocked_words: [{keyword: forbidden, action: BLOCK}, {keyword: foo bar, action: BLOCK}]\n\
             patterns: [{pattern_type: prebuilt, pattern_name: email, action: MASK}]",
        )
        .unwrap(),
    )
    .unwrap();
    // Prose ending in a space: nothing can still change.
    assert_eq!(filter.hold_back("The weather is nice today. "), 0);
    // A partial word could still become a keyword or an email.
    assert_eq!(filter.hold_back("It is forbid"), "forbid".len());
    // A keyword with a space inside: "foo " could still become "foo bar".
    assert_eq!(filter.hold_back("say foo "), "foo ".len());
    // An email in progress is held whole, never more than the longest match.
    assert_eq!(
        filter.hold_back("write to jane.doe@exam"),
        "jane.doe@exam".len()
    );
    assert!(filter.hold_back(&"a".repeat(10_000)) <= filter.max_match_chars());
    // Everything before the hold-back point is settled: find(partial) reports what is there.
    let text = "no forbidden words here, write to x@y.co and ";
    let settled = &text[..text.len() - filter.hold_back(text)];
    assert_eq!(filter.find(text, true).len(), 2);
    assert!(settled.ends_with("and "));
}
