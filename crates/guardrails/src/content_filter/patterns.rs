//! Regex patterns: the prebuilt ones, custom ones, and what the matcher needs to know about
//! each (its longest match, the characters a match can contain, an extra check).

use std::ops::Range;

use regex::{Regex, RegexBuilder};
use regex_syntax::hir::{Class, Hir, HirKind};

use super::config::FilterAction;
use super::error::ContentFilterError;
use super::needs::{ByteSet, needed_sets};

/// The compiled-size limit of one regex (program and lazy DFA cache), in bytes.
pub(super) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A check run on a regex candidate: `Some(end)` accepts `text[range.start..end]` (`end` may
/// shorten the candidate), `None` rejects it.
type Validator = fn(text: &str, range: Range<usize>) -> Option<usize>;

/// A prebuilt pattern.
pub(super) struct Prebuilt {
    pub(super) name: &'static str,
    pub(super) regex: &'static str,
    validator: Option<Validator>,
}

/// ASCII word boundary: prebuilt patterns only contain ASCII, and the ASCII boundary keeps the
/// lazy DFA usable on non-ASCII text.
macro_rules! b {
    () => {
        r"(?-u:\b)"
    };
}

/// The prebuilt patterns, in LiteLLM's names. Every one has a bounded longest match.
pub(super) const PREBUILT: &[Prebuilt] = &[
    Prebuilt {
        name: "email",
        regex: concat!(
            b!(),
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,228}\.[A-Za-z]{2,24}",
            b!()
        ),
        validator: None,
    },
    Prebuilt {
        name: "us_ssn",
        regex: concat!(b!(), r"[0-9]{3}-[0-9]{2}-[0-9]{4}", b!()),
        validator: Some(valid_ssn),
    },
    Prebuilt {
        name: "us_ssn_no_dash",
        regex: concat!(b!(), r"[0-9]{9}", b!()),
        validator: Some(valid_ssn),
    },
    Prebuilt {
        name: "us_phone",
        regex: concat!(
            r"(?:\+?1[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}",
            b!()
        ),
        validator: Some(left_boundary),
    },
    Prebuilt {
        name: "credit_card",
        regex: concat!(b!(), r"[0-9](?:[ -]?[0-9]){12,18}", b!()),
        validator: Some(luhn_longest),
    },
    Prebuilt {
        name: "visa",
        regex: concat!(
            b!(),
            r"4[0-9]{3}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}",
            b!()
        ),
        validator: Some(luhn_exact),
    },
    Prebuilt {
        name: "mastercard",
        regex: concat!(
            b!(),
            r"5[1-5][0-9]{2}[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}",
            b!()
        ),
        validator: Some(luhn_exact),
    },
    Prebuilt {
        name: "amex",
        regex: concat!(b!(), r"3[47][0-9]{2}[ -]?[0-9]{6}[ -]?[0-9]{5}", b!()),
        validator: Some(luhn_exact),
    },
    Prebuilt {
        name: "discover",
        regex: concat!(
            b!(),
            r"6(?:011|5[0-9]{2})[ -]?[0-9]{4}[ -]?[0-9]{4}[ -]?[0-9]{4}",
            b!()
        ),
        validator: Some(luhn_exact),
    },
    Prebuilt {
        name: "ipv4",
        regex: concat!(
            b!(),
            r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
            b!()
        ),
        validator: None,
    },
    Prebuilt {
        name: "aws_access_key",
        regex: concat!(b!(), r"(?:AKIA|ASIA)[0-9A-Z]{16}", b!()),
        validator: None,
    },
    Prebuilt {
        name: "github_token",
        regex: concat!(
            b!(),
            r"(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})",
            b!()
        ),
        validator: None,
    },
    Prebuilt {
        name: "slack_token",
        regex: concat!(
            b!(),
            r"xox[pboa]-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,32}",
            b!()
        ),
        validator: None,
    },
    Prebuilt {
        name: "generic_api_key",
        regex: concat!(
            b!(),
            r"(?:sk-[A-Za-z0-9_-]{20,256}",
            r#"|(?:[A-Za-z0-9]{1,32}_)?[Aa][Pp][Ii][-_]?[Kk][Ee][Yy][ \t]{0,8}[:=][ \t]{0,8}['"]?[A-Za-z0-9_-]{20,256})"#,
            b!()
        ),
        validator: None,
    },
];

/// Looks up a prebuilt pattern.
pub(super) fn prebuilt(name: &str) -> Option<&'static Prebuilt> {
    PREBUILT.iter().find(|p| p.name == name)
}

/// A compiled pattern rule.
#[derive(Debug)]
pub(super) struct PatternRule {
    /// The configured name (`email`, or the custom regex's `name`).
    pub(super) name: String,
    pub(super) regex: Regex,
    pub(super) action: FilterAction,
    /// The redaction tag for [`FilterAction::Mask`].
    pub(super) replacement: String,
    /// The block message for [`FilterAction::Block`].
    pub(super) message: String,
    /// The most characters a match spans.
    pub(super) max_chars: usize,
    /// Sorted, disjoint, inclusive ranges of the characters a match can contain.
    alphabet: Vec<(char, char)>,
    /// Byte sets every match has a byte of (see [`needed_sets`]).
    pub(super) needs: Vec<ByteSet>,
    validator: Option<Validator>,
}

impl PatternRule {
    /// Compiles a pattern rule.
    pub(super) fn new(
        index: usize,
        name: String,
        pattern: &str,
        case_insensitive: bool,
        action: FilterAction,
        redaction_format: &str,
        max_unbounded_match_chars: usize,
    ) -> Result<PatternRule, ContentFilterError> {
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => ContentFilterError::RegexTooLarge {
                    index,
                    name: name.clone(),
                    limit,
                },
                other => ContentFilterError::InvalidRegex {
                    index,
                    name: name.clone(),
                    reason: other.to_string(),
                },
            })?;
        let hir = regex_syntax::ParserBuilder::new()
            .case_insensitive(case_insensitive)
            .build()
            .parse(pattern)
            .map_err(|e| ContentFilterError::InvalidRegex {
                index,
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let props = hir.properties();
        if props.minimum_len() == Some(0) {
            return Err(ContentFilterError::EmptyMatchRegex { index, name });
        }
        // `maximum_len` counts UTF-8 bytes; every char is at least one byte, so it bounds chars.
        let max_chars = props.maximum_len().unwrap_or(max_unbounded_match_chars);
        let mut alphabet = Vec::new();
        collect_alphabet(&hir, &mut alphabet);
        let alphabet = normalize_ranges(alphabet);
        let needs = needed_sets(&hir);
        let upper = name.to_uppercase();
        Ok(PatternRule {
            replacement: redaction_format.replace("{pattern_name}", &upper),
            message: format!("Content blocked: {name} pattern detected"),
            name,
            regex,
            action,
            max_chars,
            alphabet,
            needs,
            validator: None,
        })
    }

    /// Compiles a prebuilt pattern.
    pub(super) fn prebuilt(
        index: usize,
        prebuilt: &Prebuilt,
        action: FilterAction,
        redaction_format: &str,
    ) -> Result<PatternRule, ContentFilterError> {
        let mut rule = PatternRule::new(
            index,
            prebuilt.name.to_owned(),
            prebuilt.regex,
            false,
            action,
            redaction_format,
            usize::MAX,
        )?;
        rule.validator = prebuilt.validator;
        Ok(rule)
    }

    /// Calls `f(start, end)` for each match in `text`, in order and not overlapping.
    pub(super) fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        let Some(validator) = self.validator else {
            for m in self.regex.find_iter(text) {
                f(m.start(), m.end());
            }
            return;
        };
        let mut at = 0;
        while at <= text.len() {
            let Some(m) = self.regex.find_at(text, at) else {
                break;
            };
            match validator(text, m.range()) {
                Some(end) if end > m.start() => {
                    f(m.start(), end);
                    at = end;
                }
                _ => {
                    // A valid match may start inside a rejected candidate.
                    let step = text[m.start()..].chars().next().map_or(1, char::len_utf8);
                    at = m.start() + step;
                }
            }
        }
    }

    /// Where matches that more text could still change may start: a match in a longer text
    /// that differs from the ones found in `text` must cover all of `text` from its start, so
    /// it starts within the last `max_chars` characters, in the trailing run of characters a
    /// match can contain.
    pub(super) fn unsettled_from(&self, text: &str) -> usize {
        let mut from = text.len();
        for (n, (i, c)) in text.char_indices().rev().enumerate() {
            if n >= self.max_chars || !self.in_alphabet(c) {
                break;
            }
            from = i;
        }
        from
    }

    fn in_alphabet(&self, c: char) -> bool {
        self.alphabet
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

/// Collects the characters any match of `hir` can contain.
fn collect_alphabet(hir: &Hir, out: &mut Vec<(char, char)>) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
            Ok(s) => out.extend(s.chars().map(|c| (c, c))),
            Err(_) => out.push(('\0', char::MAX)),
        },
        HirKind::Class(Class::Unicode(class)) => {
            out.extend(class.iter().map(|r| (r.start(), r.end())));
        }
        HirKind::Class(Class::Bytes(class)) => {
            for r in class.iter() {
                if r.end() < 0x80 {
                    out.push((char::from(r.start()), char::from(r.end())));
                } else {
                    // Non-ASCII bytes: any character may be involved.
                    out.push(('\0', char::MAX));
                }
            }
        }
        HirKind::Repetition(rep) => collect_alphabet(&rep.sub, out),
        HirKind::Capture(cap) => collect_alphabet(&cap.sub, out),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            for sub in subs {
                collect_alphabet(sub, out);
            }
        }
    }
}

fn normalize_ranges(mut ranges: Vec<(char, char)>) -> Vec<(char, char)> {
    ranges.sort_unstable();
    let mut out: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1).saturating_add(1) => {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `us_ssn`, `us_ssn_no_dash`: area not 000, 666 or 900-999; group not 00; serial not 0000.
fn valid_ssn(text: &str, range: Range<usize>) -> Option<usize> {
    let digits: Vec<u8> = text[range.clone()]
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let [a, b, c, d, e, f, g, h, i] = digits[..] else {
        return None;
    };
    let area = (a, b, c);
    let ok = area != (0, 0, 0)
        && area != (6, 6, 6)
        && a != 9
        && (d, e) != (0, 0)
        && (f, g, h, i) != (0, 0, 0, 0);
    ok.then_some(range.end)
}

/// `us_phone`: the character before the match is not a letter, digit or `_` (the pattern may
/// start with `+` or `(`, where `\b` does not apply).
fn left_boundary(text: &str, range: Range<usize>) -> Option<usize> {
    let before = text[..range.start].chars().next_back();
    match before {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => None,
        _ => Some(range.end),
    }
}

/// Whether the digits pass the Luhn check.
fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().enumerate() {
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 { x - 9 } else { x }
        } else {
            d
        };
    }
    sum % 10 == 0
}

fn digits_of(s: &str) -> impl DoubleEndedIterator<Item = u8> + '_ {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0')
}

/// The brand card patterns: the whole candidate passes Luhn.
fn luhn_exact(text: &str, range: Range<usize>) -> Option<usize> {
    luhn(digits_of(&text[range.clone()])).then_some(range.end)
}

/// `credit_card`: the longest prefix of the candidate that ends at a digit followed by a
/// separator (or is the whole candidate), has at least 13 digits and passes Luhn.
fn luhn_longest(text: &str, range: Range<usize>) -> Option<usize> {
    let candidate = &text[range.clone()];
    let bytes = candidate.as_bytes();
    let total = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let mut digits = total;
    let mut end = bytes.len();
    loop {
        if digits < 13 {
            return None;
        }
        if luhn(digits_of(&candidate[..end])) {
            return Some(range.start + end);
        }
        // The next shorter cut: the end of the previous digit group.
        let mut cut = end;
        // Step over the last group of digits.
        while cut > 0 && bytes[cut - 1].is_ascii_digit() {
            cut -= 1;
            digits -= 1;
        }
        // Step over the separator.
        if cut == 0 {
            return None;
        }
        cut -= 1;
        if cut == 0 || !bytes[cut - 1].is_ascii_digit() {
            return None;
        }
        end = cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prebuilt_compiles_and_is_bounded() {
        for (i, p) in PREBUILT.iter().enumerate() {
            let rule = PatternRule::prebuilt(i, p, FilterAction::Mask, "[{pattern_name}]")
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let hir = regex_syntax::parse(p.regex).unwrap();
            assert!(
                hir.properties().maximum_len().is_some(),
                "{} is unbounded",
                p.name
            );
            assert!(rule.max_chars <= 400, "{}: {}", p.name, rule.max_chars);
            assert!(
                p.regex.is_ascii(),
                "{} must be ASCII so bytes are chars",
                p.name
            );
        }
    }

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn(digits_of("4111111111111111")));
        assert!(luhn(digits_of("378282246310005")));
        assert!(!luhn(digits_of("4111111111111112")));
    }

    #[test]
    fn credit_card_shortens_to_a_valid_group_end() {
        let text = "4111 1111 1111 1111 2024";
        assert_eq!(luhn_longest(text, 0..text.len()), Some(19));
        let text = "4111-1111-1111-1112";
        assert_eq!(luhn_longest(text, 0..text.len()), None);
    }

    #[test]
    fn alphabet_suffix() {
        let rule = PatternRule::new(
            0,
            "x".into(),
            r"ab[0-9]{1,3}",
            false,
            FilterAction::Mask,
            "",
            256,
        )
        .unwrap();
        assert_eq!(rule.max_chars, 5);
        assert_eq!(rule.unsettled_from("zz ab1"), 3);
        assert_eq!(rule.unsettled_from("zz ab1 "), 7);
        assert_eq!(rule.unsettled_from("aaaaaaaaa"), 4);
    }
}
