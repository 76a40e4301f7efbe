//! Bytes a match cannot do without: for a regex, sets of ASCII bytes such that every match
//! contains at least one byte of each set. A text without any byte of one of the sets cannot
//! match, and a byte search (SIMD `memchr` for one to three bytes, a vectorized range test for a
//! range such as `[0-9]`) tells that several times faster than the regex set's lazy DFA, which
//! steps through every byte. Most prompts contain no `@` and no digit, so the PII patterns are
//! usually skipped without running a regex at all.
//!
//! The sets are derived from the pattern's syntax tree, conservatively: only what every match
//! must contain is kept, and a class with any non-ASCII member (`(?i)k` also matches the
//! Kelvin sign) gives no set, so a skipped pattern could never have matched.

use regex_syntax::hir::{Class, Hir, HirKind};

/// At most this many sets are kept per pattern: the smallest ones, which are the rarest in
/// text and the cheapest to look for.
const MAX_PER_PATTERN: usize = 2;

/// A set of ASCII bytes, one bit per byte value below 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ByteSet(u128);

impl ByteSet {
    fn single(b: u8) -> ByteSet {
        debug_assert!(b.is_ascii());
        ByteSet(1u128 << b)
    }

    /// The set of an inclusive range; `None` if it reaches past ASCII.
    fn range(lo: u32, hi: u32) -> Option<ByteSet> {
        if hi >= 0x80 || lo > hi {
            return None;
        }
        let width = hi - lo + 1;
        let ones = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        Some(ByteSet(ones << lo))
    }

    fn union(self, other: ByteSet) -> ByteSet {
        ByteSet(self.0 | other.0)
    }

    fn is_subset_of(self, other: ByteSet) -> bool {
        self.0 & !other.0 == 0
    }

    fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// The members, ascending.
    fn members(self) -> impl Iterator<Item = u8> {
        (0u8..128).filter(move |&b| self.0 >> b & 1 == 1)
    }

    /// Whether the set is one run of consecutive bytes: `Some((lo, hi))`.
    fn as_range(self) -> Option<(u8, u8)> {
        let lo = self.0.trailing_zeros();
        let hi = 127 - self.0.leading_zeros();
        (self.len() == hi - lo + 1).then_some((lo as u8, hi as u8))
    }

    /// How to look for the set's members.
    pub(super) fn search(self) -> Search {
        let mut members = self.members();
        match (self.len(), members.next(), members.next(), members.next()) {
            (1, Some(a), _, _) => Search::One(a),
            (2, Some(a), Some(b), _) => Search::Two(a, b),
            (3, Some(a), Some(b), Some(c)) => Search::Three(a, b, c),
            _ => match self.as_range() {
                Some((lo, hi)) => Search::Range(lo, hi - lo),
                None => Search::Table(self.0),
            },
        }
    }
}

/// A byte search for the members of a [`ByteSet`], chosen once when the filter is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    One(u8),
    Two(u8, u8),
    Three(u8, u8, u8),
    /// The first byte and the width of a run: `lo..=lo + width`.
    Range(u8, u8),
    Table(u128),
}

/// Below this many bytes, a plain loop over the bytes beats `memchr`'s dispatch and set-up (a
/// stream's exact mode asks about a few words at each event).
const SHORT_HAY: usize = 32;

impl Search {
    /// Whether `hay` contains a member. Under [`SHORT_HAY`] bytes, one to three bytes are
    /// looked for with a plain loop; the range and table searches are loops already.
    // `hay.contains(&a)` goes through the standard library's word-at-a-time search: measured,
    // about 140 instructions more per stream event than the plain loop on a few words.
    #[allow(clippy::manual_contains)]
    pub(super) fn occurs_in(self, hay: &[u8]) -> bool {
        let short = hay.len() < SHORT_HAY;
        match self {
            Search::One(a) if short => hay.iter().any(|&b| b == a),
            Search::One(a) => memchr::memchr(a, hay).is_some(),
            Search::Two(a, b) if short => hay.iter().any(|&x| x == a || x == b),
            Search::Two(a, b) => memchr::memchr2(a, b, hay).is_some(),
            Search::Three(a, b, c) if short => hay.iter().any(|&x| x == a || x == b || x == c),
            Search::Three(a, b, c) => memchr::memchr3(a, b, c, hay).is_some(),
            Search::Range(lo, width) => any_in_range(hay, lo, width),
            Search::Table(bits) => hay.iter().any(|&b| b < 0x80 && bits >> b & 1 == 1),
        }
    }
}

/// Whether `hay` has a byte in `lo..=lo + width`, 64 bytes at a time (a loop the compiler
/// vectorizes).
fn any_in_range(hay: &[u8], lo: u8, width: u8) -> bool {
    let mut chunks = hay.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk
            .iter()
            .fold(false, |any, &b| any | (b.wrapping_sub(lo) <= width))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b.wrapping_sub(lo) <= width)
}

/// The sets every match of `hir` needs a byte of: at most [`MAX_PER_PATTERN`], smallest first.
/// Empty when nothing is certain.
pub(super) fn needed_sets(hir: &Hir) -> Vec<ByteSet> {
    let mut sets = Vec::new();
    collect(hir, &mut sets);
    sets.sort_by_key(|s| s.len());
    // A set that holds a smaller one adds nothing: a text with a byte of the smaller set has
    // one of the larger.
    let mut kept: Vec<ByteSet> = Vec::with_capacity(MAX_PER_PATTERN);
    for set in sets {
        if kept.len() < MAX_PER_PATTERN && !kept.iter().any(|k| k.is_subset_of(set)) {
            kept.push(set);
        }
    }
    kept
}

/// Pushes sets that every match of `hir` contains a byte of.
fn collect(hir: &Hir, out: &mut Vec<ByteSet>) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        // Every byte of a literal is in every match; its ASCII bytes are the usable ones.
        HirKind::Literal(lit) => out.extend(
            lit.0
                .iter()
                .filter(|b| b.is_ascii())
                .map(|&b| ByteSet::single(b)),
        ),
        HirKind::Class(class) => out.extend(class_set(class)),
        HirKind::Repetition(rep) if rep.min >= 1 => collect(&rep.sub, out),
        HirKind::Repetition(_) => {}
        HirKind::Capture(cap) => collect(&cap.sub, out),
        HirKind::Concat(subs) => {
            for sub in subs {
                collect(sub, out);
            }
        }
        // A match takes one branch: what every branch needs, united. Each branch contributes
        // its smallest set; a branch that needs nothing certain makes the whole unknown.
        HirKind::Alternation(subs) => {
            let mut united: Option<ByteSet> = None;
            for sub in subs {
                let mut sets = Vec::new();
                collect(sub, &mut sets);
                let Some(best) = sets.into_iter().min_by_key(|s| s.len()) else {
                    return;
                };
                united = Some(united.map_or(best, |u| u.union(best)));
            }
            out.extend(united);
        }
    }
}

/// The class as a set, if all its members are ASCII.
fn class_set(class: &Class) -> Option<ByteSet> {
    let mut set = ByteSet(0);
    match class {
        Class::Unicode(c) => {
            for r in c.iter() {
                set = set.union(ByteSet::range(u32::from(r.start()), u32::from(r.end()))?);
            }
        }
        Class::Bytes(c) => {
            for r in c.iter() {
                set = set.union(ByteSet::range(u32::from(r.start()), u32::from(r.end()))?);
            }
        }
    }
    (set.len() > 0).then_some(set)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::super::{ContentFilter, ContentFilterConfig, FilterAction, PatternConfig};
    use super::*;

    fn sets(pattern: &str, case_insensitive: bool) -> Vec<String> {
        let hir = regex_syntax::ParserBuilder::new()
            .case_insensitive(case_insensitive)
            .build()
            .parse(pattern)
            .unwrap();
        needed_sets(&hir)
            .into_iter()
            .map(|s| s.members().map(char::from).collect())
            .collect()
    }

    #[test]
    fn prebuilt_shapes() {
        let email = r"(?-u:\b)[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,228}\.[A-Za-z]{2,24}(?-u:\b)";
        assert_eq!(sets(email, false), ["@", "."]);
        assert_eq!(
            sets(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", false),
            ["-", "0123456789"]
        );
        // An optional prefix needs nothing; the branches give `(` or a digit, a set that holds
        // the digits every match needs anyway, so it is dropped.
        assert_eq!(
            sets(
                r"(?:\+?1[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}",
                false
            ),
            ["0123456789"]
        );
        assert_eq!(sets(r"[0-9a-f]x?[0-9]", false), ["0123456789"]);
        assert_eq!(sets(r"a[0-9a-f]b", false), ["a", "b"]);
        assert_eq!(
            sets(r"(?:(?:25[0-5]|1[0-9]{2}|[1-9]?[0-9])\.){3}", false),
            [".", "0123456789"]
        );
    }

    #[test]
    fn nothing_certain() {
        assert!(sets(r"a*", false).is_empty());
        assert!(sets(r"x|[^a]", false).is_empty());
        assert!(sets(r"é+", false).is_empty());
        // Case-insensitive `k` and `s` include the Kelvin sign and the long s: no ASCII set.
        assert_eq!(sets(r"ks", true), Vec::<String>::new());
        assert_eq!(sets(r"kx", true), ["Xx"]);
    }

    #[test]
    fn occurs_in_each_search() {
        let hay = b"no digits here, but a dash - and a plus sign + further on";
        for (set, want) in [
            (ByteSet::single(b'@'), false),
            (ByteSet::single(b'-'), true),
            (ByteSet::single(b'@').union(ByteSet::single(b'+')), true),
            (
                ByteSet::single(b'@')
                    .union(ByteSet::single(b'#'))
                    .union(ByteSet::single(b'!')),
                false,
            ),
            (
                ByteSet::range(u32::from(b'0'), u32::from(b'9')).unwrap(),
                false,
            ),
            (
                ByteSet::range(u32::from(b'a'), u32::from(b'z')).unwrap(),
                true,
            ),
            (
                ByteSet::range(u32::from(b'0'), u32::from(b'9'))
                    .unwrap()
                    .union(ByteSet::single(b'@')),
                false,
            ),
            (
                ByteSet::range(u32::from(b'0'), u32::from(b'9'))
                    .unwrap()
                    .union(ByteSet::single(b'+')),
                true,
            ),
        ] {
            assert_eq!(set.search().occurs_in(hay), want, "{set:?}");
        }
        // Each kind of search, short (the plain loop) and long (memchr, the vectorized range
        // test around its 64-byte chunks), with a member at every position and none.
        let digits = ByteSet::range(u32::from(b'0'), u32::from(b'9')).unwrap();
        let three = ByteSet::single(b'@')
            .union(ByteSet::single(b'#'))
            .union(ByteSet::single(b'7'));
        let table = ByteSet::single(b'@').union(digits);
        for set in [
            digits,
            ByteSet::single(b'7'),
            ByteSet::single(b'@').union(ByteSet::single(b'7')),
            three,
            table,
        ] {
            for len in [0, 1, 2, 31, 32, 33, 63, 64, 65, 130] {
                let mut hay = vec![b'x'; len];
                assert!(!set.search().occurs_in(&hay), "{set:?}");
                for at in 0..len {
                    hay[at] = b'7';
                    assert!(set.search().occurs_in(&hay), "{set:?}, len {len}, at {at}");
                    hay[at] = b'x';
                }
            }
        }
        // Non-ASCII bytes are never members.
        assert!(
            !ByteSet::range(0, 127)
                .unwrap()
                .search()
                .occurs_in("é".as_bytes())
        );
        // Four scattered members: the table.
        let table = ByteSet::single(b'@')
            .union(ByteSet::single(b'#'))
            .union(ByteSet::single(b'!'))
            .union(ByteSet::single(b'+'));
        assert!(matches!(table.search(), Search::Table(_)));
        assert!(table.search().occurs_in(b"a+b"));
        assert!(!table.search().occurs_in(b"a-b"));
    }

    /// Every prebuilt pattern and custom ones of each shape, with and without the prefilter.
    fn twin_filters() -> (ContentFilter, ContentFilter) {
        let build = || {
            ContentFilter::new(ContentFilterConfig {
                patterns: ContentFilter::prebuilt_pattern_names()
                    .map(|n| PatternConfig::prebuilt(n, FilterAction::Mask))
                    .chain(
                        [
                            r"\b[A-Z]{3}-\d{4}\b",
                            r"ks[0-9]+",
                            r"x(?:#|!)y",
                            r"(?:ab|é)+z",
                            r"[^a-z]{2}q",
                        ]
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| {
                            PatternConfig::regex(format!("custom{i}"), r, FilterAction::Mask)
                        }),
                    )
                    .collect(),
                ..Default::default()
            })
            .unwrap()
        };
        let with = build();
        let mut without = build();
        Arc::get_mut(&mut without.inner).unwrap().needs = None;
        assert!(with.inner.needs.is_some());
        (with, without)
    }

    const TOKENS: &[&str] = &[
        "a@b.com",
        "x@",
        "123-45-6789",
        "4111 1111 1111 1111",
        "10.0.0.1",
        "(555) 123-4567",
        "+1 555",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_",
        "xoxb-",
        "sk-",
        "api_key=",
        "EMP-1234",
        "KS12",
        "\u{212A}\u{17F}9",
        "x#y",
        "x!y",
        "abz",
        "éz",
        "99q",
        "-",
        ".",
        "@",
        "#",
        "(",
        "7",
        "a",
        "k",
        "s",
        "q",
        "z",
        "é",
        " ",
        "\n",
    ];

    proptest! {
        #[test]
        fn the_prefilter_changes_no_match(
            tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..30),
            partial in any::<bool>(),
        ) {
            static FILTERS: std::sync::OnceLock<(ContentFilter, ContentFilter)> =
                std::sync::OnceLock::new();
            let (with, without) = FILTERS.get_or_init(twin_filters);
            let text = tokens.concat();
            prop_assert_eq!(
                format!("{:?}", with.hits(&text, partial)),
                format!("{:?}", without.hits(&text, partial))
            );
        }
    }
}
