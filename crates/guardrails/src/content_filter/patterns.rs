//! Regex patterns: the prebuilt ones, custom ones, and what the matcher needs to know about
//! each (its longest match, the characters a match can contain, an extra check).

use std::ops::Range;
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};
use regex_syntax::hir::{Class, Hir, HirKind};

use super::config::FilterAction;
use super::error::ContentFilterError;
use super::needs::{ByteSet, needed_sets};

/// The compiled-size limit of one regex (program and lazy DFA cache), in bytes.
pub(super) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a prebuilt pattern does with a regex candidate.
#[derive(Clone, Copy)]
pub(super) enum Validator {
    /// Accepts `text[range.start..end]` for `Some(range)` (the range may move), rejects it
    /// for `None`; a valid match may then start inside the rejected candidate.
    Check(fn(text: &str, range: Range<usize>) -> Option<Range<usize>>),
    /// Pushes the matches inside the candidate (sorted, not overlapping), possibly none; the
    /// whole candidate is consumed either way. For the card patterns: the regex is
    /// [`DIGIT_RUN`], and only runs with 13 digits or more are candidates.
    Within(fn(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>)),
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Validator::Check(_) => "Check",
            Validator::Within(_) => "Within",
        })
    }
}

/// A prebuilt pattern.
pub(super) struct Prebuilt {
    pub(super) name: &'static str,
    pub(super) regex: &'static str,
    /// A cheaper regex that matches wherever [`Self::regex`] can yield a match, for the
    /// all-patterns set; `regex` itself when `None`.
    pub(super) set_regex: Option<&'static str>,
    /// The longest match in a stream, in characters, for patterns whose regex has no bound or
    /// whose matches the validator extends; the regex's own bound when `None`.
    max_chars: Option<usize>,
    validator: Option<Validator>,
}

impl Prebuilt {
    /// The regex of the all-patterns set.
    pub(super) fn set_source(&self) -> &'static str {
        self.set_regex.unwrap_or(self.regex)
    }
}

/// ASCII word boundary: prebuilt patterns only contain ASCII, and the ASCII boundary keeps the
/// lazy DFA usable on non-ASCII text.
macro_rules! b {
    () => {
        r"(?-u:\b)"
    };
}

/// The longest email matched whole in a stream: a 256-character local part, `@`, and the
/// longest domain (253).
pub(super) const EMAIL_STREAM_CHARS: usize = 512;

/// The longest run of digit groups a stream holds back for the card patterns: overlapping
/// card-number candidates (a card next to a 4-digit year or a phone number written with
/// spaces) are masked as one span when they fit in it.
pub(super) const CARD_STREAM_CHARS: usize = 64;

/// Runs of digit groups joined by single spaces or dashes, for the card patterns. Greedy, so
/// a run found is never next to another digit.
const DIGIT_RUN: &str = r"[0-9]+(?:[ -][0-9]+)*";

/// Where a card number can be: 13 digits in a row, single spaces or dashes between them.
const CARD_SET: &str = r"[0-9](?:[ -]?[0-9]){12}";
/// The same, starting with a brand's first digits.
const VISA_SET: &str = r"4(?:[ -]?[0-9]){12}";
const MASTERCARD_SET: &str = r"(?:5[1-5]|2[2-7])(?:[ -]?[0-9]){14}";
const AMEX_SET: &str = r"3[47](?:[ -]?[0-9]){13}";
const DISCOVER_SET: &str = r"6(?:[ -]?[0-9]){15}";

/// The prebuilt patterns, in LiteLLM's names. Every one has a bounded longest match in a
/// stream.
pub(super) const PREBUILT: &[Prebuilt] = &[
    Prebuilt {
        name: "email",
        // No leading boundary: a local part longer than 64 characters still has its last 64
        // matched, and the validator extends the match to the whole local part.
        regex: concat!(
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,228}\.[A-Za-z]{2,24}",
            b!()
        ),
        set_regex: Some(r"[A-Za-z0-9._%+-]@[A-Za-z0-9.-]+\.[A-Za-z]{2}"),
        max_chars: Some(EMAIL_STREAM_CHARS),
        validator: Some(Validator::Check(whole_local_part)),
    },
    Prebuilt {
        name: "us_ssn",
        // Digit boundaries, checked by the validator: a letter glued to it (`ID123-45-6789`)
        // does not hide it.
        regex: r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
        set_regex: None,
        max_chars: None,
        validator: Some(Validator::Check(valid_dashed_ssn)),
    },
    Prebuilt {
        name: "us_ssn_no_dash",
        regex: concat!(b!(), r"[0-9]{9}", b!()),
        set_regex: None,
        max_chars: None,
        validator: Some(Validator::Check(valid_ssn)),
    },
    Prebuilt {
        name: "us_phone",
        regex: r"(?:\+?1[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}",
        set_regex: None,
        max_chars: None,
        validator: Some(Validator::Check(digit_bounded)),
    },
    Prebuilt {
        name: "credit_card",
        regex: DIGIT_RUN,
        set_regex: Some(CARD_SET),
        max_chars: Some(CARD_STREAM_CHARS),
        validator: Some(Validator::Within(any_card)),
    },
    Prebuilt {
        name: "visa",
        regex: DIGIT_RUN,
        set_regex: Some(VISA_SET),
        max_chars: Some(CARD_STREAM_CHARS),
        validator: Some(Validator::Within(visa)),
    },
    Prebuilt {
        name: "mastercard",
        regex: DIGIT_RUN,
        set_regex: Some(MASTERCARD_SET),
        max_chars: Some(CARD_STREAM_CHARS),
        validator: Some(Validator::Within(mastercard)),
    },
    Prebuilt {
        name: "amex",
        regex: DIGIT_RUN,
        set_regex: Some(AMEX_SET),
        max_chars: Some(CARD_STREAM_CHARS),
        validator: Some(Validator::Within(amex)),
    },
    Prebuilt {
        name: "discover",
        regex: DIGIT_RUN,
        set_regex: Some(DISCOVER_SET),
        max_chars: Some(CARD_STREAM_CHARS),
        validator: Some(Validator::Within(discover)),
    },
    Prebuilt {
        name: "ipv4",
        regex: concat!(
            b!(),
            r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
            b!()
        ),
        set_regex: None,
        max_chars: None,
        validator: None,
    },
    Prebuilt {
        name: "aws_access_key",
        regex: concat!(b!(), r"(?:AKIA|ASIA)[0-9A-Z]{16}", b!()),
        set_regex: None,
        max_chars: None,
        validator: None,
    },
    Prebuilt {
        name: "github_token",
        regex: concat!(
            b!(),
            r"(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})",
            b!()
        ),
        set_regex: None,
        max_chars: None,
        validator: None,
    },
    Prebuilt {
        name: "slack_token",
        regex: concat!(
            b!(),
            r"xox[pboa]-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,32}",
            b!()
        ),
        set_regex: None,
        max_chars: None,
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
        set_regex: None,
        max_chars: None,
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
    /// The ASCII characters of [`alphabet`](Self::alphabet), one bit each: most text is ASCII,
    /// and a bit test is cheaper than a search of the ranges (a stream asks for every event).
    ascii_alphabet: u128,
    /// Byte sets every match has a byte of (see [`needed_sets`]).
    pub(super) needs: Vec<ByteSet>,
    validator: Option<Validator>,
    /// A prebuilt pattern (it reads the folded text); else a custom regex.
    pub(super) prebuilt: bool,
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
            ascii_alphabet: ascii_bits(&alphabet),
            alphabet,
            needs,
            validator: None,
            prebuilt: false,
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
        rule.prebuilt = true;
        if let Some(max) = prebuilt.max_chars {
            rule.max_chars = max;
        }
        Ok(rule)
    }

    /// Calls `f(start, end)` for each match in `text`, in order and not overlapping.
    /// `scratch` is shared by the patterns scanning one text (they reuse what another found).
    pub(super) fn for_each_match(
        &self,
        text: &str,
        scratch: &mut Scratch,
        mut f: impl FnMut(usize, usize),
    ) {
        let Some(validator) = self.validator else {
            for m in self.regex.find_iter(text) {
                f(m.start(), m.end());
            }
            return;
        };
        if let Validator::Within(within_fn) = validator {
            // The card patterns share their candidates: the runs of digit groups long enough
            // to hold a card number, found once per text.
            let Scratch { runs, within } = scratch;
            let runs = runs.get_or_insert_with(|| card_runs(text));
            for run in runs.iter() {
                within.clear();
                within_fn(text, run.clone(), within);
                for r in within.iter() {
                    f(r.start, r.end);
                }
            }
            return;
        }
        let mut at = 0;
        while at <= text.len() {
            let Some(m) = self.regex.find_at(text, at) else {
                break;
            };
            let Validator::Check(check) = validator else {
                break;
            };
            match check(text, m.range()) {
                Some(range) if range.end > range.start => {
                    // A match never reaches back into the previous one.
                    f(range.start.max(at), range.end);
                    at = range.end;
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
        // Byte by byte while the bytes are ASCII (then each is a character); from the first
        // non-ASCII byte, character by character.
        let bytes = text.as_bytes();
        let mut from = bytes.len();
        for (n, &b) in bytes.iter().rev().enumerate() {
            if !b.is_ascii() {
                return self.unsettled_from_chars(text);
            }
            if n >= self.max_chars || self.ascii_alphabet >> b & 1 == 0 {
                break;
            }
            from -= 1;
        }
        from
    }

    /// [`unsettled_from`](PatternRule::unsettled_from), character by character.
    fn unsettled_from_chars(&self, text: &str) -> usize {
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
        if c.is_ascii() {
            return self.ascii_alphabet >> u32::from(c) & 1 == 1;
        }
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

/// [`PatternRule::unsettled_from`] of every pattern in one walk back over the text, where
/// each pattern took a walk of its own: a stream asks after every event, and a tail of a few
/// ASCII bytes is then a handful of bit operations instead of one loop per pattern.
#[derive(Debug)]
pub(super) struct Tails {
    /// Per ASCII byte, bit `i` set: pattern `i`'s alphabet holds it.
    takes: [u64; 128],
    /// `(max_chars, patterns)` by ascending `max_chars`: at that many characters back and
    /// beyond, those patterns can no longer begin a match.
    limits: Vec<(usize, u64)>,
    /// A bit for each pattern.
    all: u64,
}

impl Tails {
    /// `None` without patterns or with more than 64 (one bit each).
    pub(super) fn new<'a>(patterns: impl IntoIterator<Item = &'a PatternRule>) -> Option<Tails> {
        let mut takes = [0u64; 128];
        let mut limits: Vec<(usize, u64)> = Vec::new();
        let mut count = 0;
        for (i, p) in patterns.into_iter().enumerate() {
            if i == 64 {
                return None;
            }
            count = i + 1;
            let bit = 1u64 << i;
            for (b, t) in takes.iter_mut().enumerate() {
                if p.ascii_alphabet >> b & 1 == 1 {
                    *t |= bit;
                }
            }
            match limits.iter_mut().find(|(max, _)| *max == p.max_chars) {
                Some((_, bits)) => *bits |= bit,
                None => limits.push((p.max_chars, bit)),
            }
        }
        if count == 0 {
            return None;
        }
        limits.sort_unstable_by_key(|&(max, _)| max);
        Some(Tails {
            takes,
            limits,
            all: u64::MAX >> (64 - count),
        })
    }

    /// The least [`PatternRule::unsettled_from`] of the patterns for `text`, when the walk
    /// back meets only ASCII bytes; `None` when it meets another (then ask each pattern: its
    /// alphabet may hold the character).
    pub(super) fn unsettled_from(&self, text: &str) -> Option<usize> {
        let bytes = text.as_bytes();
        let mut alive = self.all;
        let mut limits = self.limits.iter().peekable();
        let mut from = bytes.len();
        for (n, &b) in bytes.iter().rev().enumerate() {
            if !b.is_ascii() {
                return None;
            }
            while let Some(&&(max, bits)) = limits.peek() {
                if max > n {
                    break;
                }
                alive &= !bits;
                limits.next();
            }
            alive &= self.takes[usize::from(b)];
            if alive == 0 {
                break;
            }
            from -= 1;
        }
        Some(from)
    }
}

/// The ASCII characters of sorted, disjoint, inclusive `ranges`, as bits of a `u128`.
fn ascii_bits(ranges: &[(char, char)]) -> u128 {
    let mut bits = 0u128;
    for &(lo, hi) in ranges {
        for c in u32::from(lo)..=u32::from(hi).min(127) {
            bits |= 1 << c;
        }
    }
    bits
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

/// The runs of digit groups (as [`DIGIT_RUN`] finds them) that hold at least 13 digits: where
/// 13 digits with single separators occur ([`CARD_SET`]), widened to the whole run.
fn card_runs(text: &str) -> Vec<Range<usize>> {
    static CANDIDATE: OnceLock<Regex> = OnceLock::new();
    let candidate = CANDIDATE.get_or_init(|| Regex::new(CARD_SET).expect("a valid regex"));
    let bytes = text.as_bytes();
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let joiner = |i: usize| bytes.get(i).is_some_and(|b| matches!(b, b' ' | b'-'));
    let mut runs = Vec::new();
    let mut at = 0;
    while let Some(m) = candidate.find_at(text, at) {
        let (mut start, mut end) = (m.start(), m.end());
        while start > 0
            && (digit(start - 1) || (joiner(start - 1) && start > 1 && digit(start - 2)))
        {
            start -= 1;
        }
        while digit(end) || (joiner(end) && digit(end + 1)) {
            end += 1;
        }
        runs.push(start..end);
        at = end;
    }
    runs
}

/// What the patterns scanning one text share.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// The runs of digit groups with at least 13 digits (card-number candidates), once found.
    runs: Option<Vec<Range<usize>>>,
    within: Vec<Range<usize>>,
}

/// The characters a local part of an email may hold (the `email` pattern's class).
fn is_local_part(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// `email`: the whole run of local-part characters before the `@`, however long.
fn whole_local_part(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let mut start = range.start;
    while start > 0 && is_local_part(bytes[start - 1]) {
        start -= 1;
    }
    Some(start..range.end)
}

/// `us_ssn`, `us_ssn_no_dash`: area not 000, 666 or 900-999; group not 00; serial not 0000.
fn valid_ssn(text: &str, range: Range<usize>) -> Option<Range<usize>> {
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
    ok.then_some(range)
}

/// `us_ssn`: [`valid_ssn`] and [`digit_bounded`].
fn valid_dashed_ssn(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    digit_bounded(text, range).and_then(|range| valid_ssn(text, range))
}

/// Numbers on token boundaries: no digit right before or after the match, so that a number
/// is never read out of a longer one (letters may touch it).
fn digit_bounded(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let bytes = text.as_bytes();
    let before = range.start.checked_sub(1).map(|i| bytes[i]);
    let after = bytes.get(range.end).copied();
    if before.is_some_and(|b| b.is_ascii_digit()) || after.is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(range)
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

/// Which card numbers a card pattern takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Brand {
    Any,
    Visa,
    Mastercard,
    Amex,
    Discover,
}

impl Brand {
    /// Whether a number of `len` digits starting with `digits` (at least 6 of them) is one
    /// of this brand's.
    fn takes(self, digits: &[u8], len: usize) -> bool {
        let prefix = |n: usize| digits[..n].iter().fold(0u32, |v, &d| v * 10 + u32::from(d));
        match self {
            Brand::Any => true,
            Brand::Visa => digits[0] == 4 && matches!(len, 13 | 16 | 19),
            Brand::Mastercard => {
                len == 16 && (matches!(prefix(2), 51..=55) || matches!(prefix(4), 2221..=2720))
            }
            Brand::Amex => len == 15 && matches!(prefix(2), 34 | 37),
            Brand::Discover => {
                matches!(len, 16 | 19)
                    && (prefix(4) == 6011 || prefix(2) == 65 || matches!(prefix(3), 644..=649))
            }
        }
    }
}

fn any_card(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    cards(text, range, out, Brand::Any);
}

fn visa(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    cards(text, range, out, Brand::Visa);
}

fn mastercard(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    cards(text, range, out, Brand::Mastercard);
}

fn amex(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    cards(text, range, out, Brand::Amex);
}

fn discover(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    cards(text, range, out, Brand::Discover);
}

/// The card numbers in a run of digit groups (`text[range]`, groups of ASCII digits joined by
/// single spaces or dashes), as token-aligned windows:
///
/// - a window is whole groups laid out as cards are printed: 13 to 19 digits in one group;
///   4-4-4 and a group of 1 to 4; 4-4-4-4 and a group of 1 to 3; 4-6 and a group of 4 or 5
///   (Diners, Amex);
/// - it passes the Luhn check and the brand's prefix and length;
/// - it does not start on a group that a dash joins to the group before, unless the window's
///   own first separator is a dash too: that group is the end of another number
///   (`123-45-6789 4111 ...`, `555-123-4567 4111 ...`); nor start or end on a group that a
///   `.`, `,`, `/` or `:` joins to more digits (`... 1111 10.0.0.1`).
///
/// Overlapping windows (a card after a 4-digit year, or after a phone number written with
/// spaces, where one more window may pass Luhn by chance) are pushed as one span, so no digit
/// of any candidate is left out.
fn cards(text: &str, range: Range<usize>, out: &mut Vec<Range<usize>>, brand: Brand) {
    let run = &text.as_bytes()[range.clone()];
    // Groups: (start, end) offsets in `run`, and the separator before each (0 for none).
    let mut groups: Vec<(usize, usize, u8)> = Vec::new();
    let mut i = 0;
    while i < run.len() {
        let sep = if groups.is_empty() { 0 } else { run[i - 1] };
        let start = i;
        while i < run.len() && run[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((start, i, sep));
        i += 1; // the separator
    }
    // A run that a `.`, `,`, `/` or `:` joins to digits before or after it: its first or last
    // group is part of another number (`10.0.0.1`, `1,234`, `12/25`).
    let bytes = text.as_bytes();
    let joins = |at: Option<usize>, digit_at: Option<usize>| {
        at.and_then(|i| bytes.get(i))
            .is_some_and(|b| matches!(b, b'.' | b',' | b'/' | b':'))
            && digit_at
                .and_then(|i| bytes.get(i))
                .is_some_and(u8::is_ascii_digit)
    };
    let glued_before = joins(range.start.checked_sub(1), range.start.checked_sub(2));
    let glued_after = joins(Some(range.end), Some(range.end + 1));
    let mut windows: Vec<(usize, usize)> = Vec::new();
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    for first in 0..groups.len() {
        let len = |g: usize| groups[g].1 - groups[g].0;
        let glued_by_dash = groups[first].2 == b'-';
        let last_group = groups.len() - 1;
        let mut consider = |last: usize, sep: u8| {
            if (glued_by_dash && sep != b'-')
                || (first == 0 && glued_before)
                || (last == last_group && glued_after)
            {
                return;
            }
            digits.clear();
            digits.extend(digits_of(
                std::str::from_utf8(&run[groups[first].0..groups[last].1]).unwrap_or(""),
            ));
            if digits.len() >= 13
                && brand.takes(&digits, digits.len())
                && luhn(digits.iter().copied())
            {
                windows.push((groups[first].0, groups[last].1));
            }
        };
        let n = len(first);
        if (13..=19).contains(&n) {
            consider(first, 0);
        }
        if n != 4 {
            continue;
        }
        // The groups that follow in the run, whatever joins them.
        let Some(&(_, _, sep)) = groups.get(first + 1) else {
            continue;
        };
        let sizes: Vec<usize> = (first..groups.len().min(first + 5)).map(len).collect();
        let layouts: [(&[std::ops::RangeInclusive<usize>], usize); 3] = [
            (&[4..=4, 4..=4, 4..=4, 1..=4], 3),
            (&[4..=4, 4..=4, 4..=4, 4..=4, 1..=3], 4),
            (&[4..=4, 6..=6, 4..=5], 2),
        ];
        for (layout, last) in layouts {
            if sizes.len() > last && layout.iter().zip(&sizes).all(|(r, s)| r.contains(s)) {
                consider(first + last, sep);
            }
        }
    }
    windows.sort_unstable();
    let base = range.start;
    let mut merged: Option<(usize, usize)> = None;
    for (s, e) in windows {
        match &mut merged {
            Some((_, me)) if s < *me => *me = (*me).max(e),
            _ => {
                if let Some((ms, me)) = merged.take() {
                    out.push(base + ms..base + me);
                }
                merged = Some((s, e));
            }
        }
    }
    if let Some((ms, me)) = merged {
        out.push(base + ms..base + me);
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
                hir.properties().maximum_len().is_some() || p.max_chars.is_some(),
                "{} is unbounded",
                p.name
            );
            assert!(rule.max_chars <= 512, "{}: {}", p.name, rule.max_chars);
            assert!(
                p.regex.is_ascii() && p.set_source().is_ascii(),
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

    fn card_spans(text: &str, brand: Brand) -> Vec<&str> {
        let mut out = Vec::new();
        cards(text, 0..text.len(), &mut out, brand);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn card_windows_are_token_aligned() {
        // A trailing group that does not fit the layout is left out...
        assert_eq!(
            card_spans("4111 1111 1111 1111 2025", Brand::Any),
            ["4111 1111 1111 1111"]
        );
        // ...unless a window that takes it passes Luhn too (1111 1111 1111 2024 does): both
        // candidates are masked as one span.
        assert_eq!(
            card_spans("4111 1111 1111 1111 2024", Brand::Any),
            ["4111 1111 1111 1111 2024"]
        );
        // 6789 4111 1111 1111 passes Luhn, but 6789 is the end of the SSN before it.
        // Mixed separators are fine.
        assert_eq!(
            card_spans("4111-1111 1111-1111", Brand::Any),
            ["4111-1111 1111-1111"]
        );
        // A group glued by a dash belongs to the number before it.
        assert_eq!(
            card_spans("123-45-6789 4111 1111 1111 1111", Brand::Any),
            ["4111 1111 1111 1111"]
        );
        // Two cards in one run of groups.
        assert_eq!(
            card_spans("4111 1111 1111 1111 5555 5555 5555 4444", Brand::Mastercard),
            ["5555 5555 5555 4444"]
        );
        assert_eq!(
            card_spans("3782 822463 10005", Brand::Amex),
            ["3782 822463 10005"]
        );
        assert!(card_spans("3782 822463 10005", Brand::Visa).is_empty());
    }

    /// A custom pattern with a short limit (5 characters).
    fn short_rule() -> PatternRule {
        PatternRule::new(
            0,
            "x".into(),
            r"ab[0-9]{1,3}",
            false,
            FilterAction::Mask,
            "",
            256,
        )
        .unwrap()
    }

    #[test]
    fn alphabet_suffix() {
        let rule = short_rule();
        assert_eq!(rule.max_chars, 5);
        assert_eq!(rule.unsettled_from("zz ab1"), 3);
        assert_eq!(rule.unsettled_from("zz ab1 "), 7);
        assert_eq!(rule.unsettled_from("aaaaaaaaa"), 4);
    }

    /// The byte-by-byte walk gives the character walk's answer at every cut of ASCII texts and
    /// of texts with non-ASCII characters in the trailing run, for every prebuilt pattern and
    /// one with a short limit.
    #[test]
    fn the_ascii_walk_agrees_with_the_character_walk() {
        let mut rules = vec![short_rule()];
        for (i, p) in PREBUILT.iter().enumerate() {
            rules.push(PatternRule::prebuilt(i, p, FilterAction::Mask, "").unwrap());
        }
        let texts = [
            "mail jane.doe@example.com or call 555-123-4567 from 10.0.0.1",
            "card 4111 1111 1111 1111, ssn 078-05-1120",
            "ab123ab1 zz ab12345",
            "Grüße an jürgen@exämple.de, 電話 ５５５-１２３４",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ];
        let mut checked = 0;
        for rule in &rules {
            for text in texts {
                for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                    let text = &text[..cut];
                    assert_eq!(
                        rule.unsettled_from(text),
                        rule.unsettled_from_chars(text),
                        "{text:?} for {}",
                        rule.name
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
    }

    /// The one walk for all patterns gives the least of the patterns' own walks at every cut
    /// of texts that end in runs of each pattern's characters (and runs longer than a short
    /// limit), and leaves texts with non-ASCII in the run to the patterns.
    #[test]
    fn one_walk_for_all_patterns_agrees_with_a_walk_each() {
        let mut rules = vec![short_rule()];
        for (i, p) in PREBUILT.iter().enumerate() {
            rules.push(PatternRule::prebuilt(i, p, FilterAction::Mask, "").unwrap());
        }
        let texts = [
            "mail jane.doe@example.com or call 555-123-4567 from 10.0.0.1",
            "card 4111 1111 1111 1111, ssn 078-05-1120 (555) 123-4567",
            "ab123ab1 zz ab12345 +1 555.123.4567",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0",
        ];
        // Every pattern on its own, the short one with each prebuilt, and all together.
        let mut sets: Vec<Vec<&PatternRule>> = rules.iter().map(|r| vec![r]).collect();
        sets.extend(rules[1..].iter().map(|r| vec![&rules[0], r]));
        sets.push(rules.iter().collect());
        let mut checked = 0;
        for set in &sets {
            let tails = Tails::new(set.iter().copied()).unwrap();
            for text in texts {
                for cut in 0..=text.len() {
                    let text = &text[..cut];
                    let each = set.iter().map(|r| r.unsettled_from(text)).min().unwrap();
                    assert_eq!(tails.unsettled_from(text), Some(each), "{text:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 2000);
        let tails = Tails::new(&rules).unwrap();
        assert_eq!(tails.unsettled_from("mail jürgen"), None);
        assert!(Tails::new(std::iter::repeat_n(&rules[0], 65)).is_none());
        assert!(Tails::new(&[]).is_none());
        assert!(Tails::new(std::iter::repeat_n(&rules[0], 64)).is_some());
    }

    /// The bits of the ASCII alphabet say what a search of the ranges says, for every
    /// character up to U+0200, for a custom pattern and every prebuilt one.
    #[test]
    fn the_ascii_alphabet_agrees_with_the_ranges() {
        let custom = PatternRule::new(
            0,
            "x".into(),
            r"[a-f0-9_\-]+@\w",
            false,
            FilterAction::Mask,
            "",
            256,
        )
        .unwrap();
        let mut rules = vec![custom];
        for (i, p) in PREBUILT.iter().enumerate() {
            rules.push(PatternRule::prebuilt(i, p, FilterAction::Mask, "").unwrap());
        }
        for rule in &rules {
            assert_ne!(rule.ascii_alphabet, 0, "{}", rule.name);
            for c in (0..0x200).filter_map(char::from_u32) {
                let in_ranges = rule.alphabet.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                assert_eq!(rule.in_alphabet(c), in_ranges, "{c:?} for {}", rule.name);
            }
        }
    }
}
