//! The text the keywords and prebuilt patterns read: the input with look-alike and invisible
//! characters folded, so that `１２３-４５-６７８９` is an SSN and `con\u{200B}fidential` and
//! `cοnfidential` (a Greek omicron) are the keyword `confidential`. Matches found in the folded
//! text are mapped back to byte offsets of the original, which is what gets masked.
//!
//! Folded, one character to at most one character, but for the ligatures below:
//!
//! - decimal digits of every script (Unicode `Nd`: Arabic-Indic, Devanagari, fullwidth,
//!   mathematical, ...) become the ASCII digit of the same value;
//! - fullwidth ASCII forms (`U+FF01..=U+FF5E`: `＠`, `Ａ`, `－`) become ASCII;
//! - letters that look like a Latin letter, and letters with accents, become that ASCII letter
//!   in lower case (`а`, `ο`, `𝐜`, `ⓒ`, `ᴄ`, `é`; see `look_alikes`);
//! - space separators (no-break, en/em/thin/narrow spaces, ideographic space) become `' '`;
//! - hyphens and number dashes (`U+2010..=U+2013`, minus sign, small hyphen-minus) become `'-'`;
//! - invisible characters are dropped: Unicode's default-ignorable code points (zero-width
//!   space and joiners, soft hyphen, word joiner, bidi controls, variation selectors, tag
//!   characters, byte order mark, Hangul fillers, ...) and the control characters but the
//!   whitespace ones (`U+0000..=U+0008`, `U+000E..=U+001F`, `U+007F..=U+009F` but `U+0085`);
//!   and so are combining diacritical marks;
//! - a letter that is several letters in one (a ligature, `ﬁ`, `ﬃ`, `ﬆ`; a digraph, `ĳ`,
//!   `ǅ`, `ǉ`) becomes those letters (`fi`, `ffi`, `st`, `ij`, `dz`, `lj`: Unicode's
//!   compatibility decomposition, see [`expansion`]), so `conﬁdential` is `confidential`.
//!
//! ASCII text with no control character (tab, line feeds and carriage returns aside) is never
//! copied: it is its own folded form.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

use super::look_alikes;

/// A text as the matchers read it.
#[derive(Debug)]
pub(super) enum Folded<'a> {
    /// Nothing to fold: the text itself, and whether it is ASCII.
    Same { text: &'a str, ascii: bool },
    /// The folded copy, whether it is ASCII, and for each of its byte offsets (and its
    /// length) the offset in the original of the character it came from.
    Changed {
        text: String,
        ascii: bool,
        origin: Vec<u32>,
    },
}

impl Folded<'_> {
    /// The folded text.
    pub(super) fn text(&self) -> &str {
        match self {
            Folded::Same { text, .. } => text,
            Folded::Changed { text, .. } => text,
        }
    }

    /// Whether the folded text is ASCII.
    pub(super) fn is_ascii(&self) -> bool {
        match self {
            Folded::Same { ascii, .. } | Folded::Changed { ascii, .. } => *ascii,
        }
    }

    /// The original byte offset of a folded one (on a character boundary of the folded text).
    /// An end offset maps to the start of the next character kept, so a dropped invisible
    /// character right after a match is inside the mapped match. An offset inside the letters
    /// of one ligature (between the `f` and the `i` of `ﬁ`) maps to the ligature's start: use
    /// [`Folded::original_end`] for where a match ends.
    pub(super) fn original(&self, at: usize) -> usize {
        match self {
            Folded::Same { .. } => at,
            Folded::Changed { origin, .. } => origin[at] as usize,
        }
    }

    /// [`Folded::original`] for where a match ends: an end inside the letters of one
    /// ligature maps past the whole ligature, so a match that takes part of one covers it in
    /// the original (masking `conf` in `conﬁdential` masks the `ﬁ`).
    pub(super) fn original_end(&self, at: usize) -> usize {
        match self {
            Folded::Same { .. } => at,
            Folded::Changed { origin, .. } => {
                let here = origin[at];
                // Two folded characters come from one original only inside a ligature.
                if at > 0 && origin[at - 1] == here {
                    origin[at..]
                        .iter()
                        .find(|&&next| next != here)
                        .map_or(here, |&next| next) as usize
                } else {
                    here as usize
                }
            }
        }
    }

    /// Whether the folded text differs from the original.
    pub(super) fn changed(&self) -> bool {
        matches!(self, Folded::Changed { .. })
    }
}

/// Folds `text`; allocates only when a character changes.
pub(super) fn fold_text(text: &str) -> Folded<'_> {
    if is_plain_ascii(text) {
        return Folded::Same { text, ascii: true };
    }
    let same = Folded::Same { text, ascii: false };
    // The first character that does not read as itself.
    let Some(first) = text.char_indices().find(|&(_, c)| !folds(c).eq([c])) else {
        return same;
    };
    // Offsets are kept as u32; a text that large is not folded (bodies are far smaller).
    if u32::try_from(text.len()).is_err() {
        return same;
    }
    let mut out = String::with_capacity(text.len());
    let mut origin: Vec<u32> = Vec::with_capacity(text.len() + 1);
    out.push_str(&text[..first.0]);
    origin.extend(0..first.0 as u32);
    for (i, c) in text[first.0..].char_indices() {
        let at = (first.0 + i) as u32;
        for f in folds(c) {
            out.push(f);
            origin.extend(std::iter::repeat_n(at, f.len_utf8()));
        }
    }
    origin.push(text.len() as u32);
    Folded::Changed {
        ascii: out.is_ascii(),
        text: out,
        origin,
    }
}

/// Whether `text` is ASCII with no control character but whitespace (`\t`, `\n`, `\x0b`,
/// `\x0c`, `\r`): nothing in it folds. One pass with no early exit, which the compiler
/// vectorizes: about one instruction a byte, where `str::is_ascii` takes a quarter.
fn is_plain_ascii(text: &str) -> bool {
    // Non-ASCII or delete, below tab, or from shift out to unit separator: three comparisons
    // a byte and no branch (a sixth fewer instructions than the same test written with `||`).
    let found = text.bytes().fold(0u8, |any, b| {
        any | u8::from(b >= 0x7f) | u8::from(b < 0x09) | u8::from(b.wrapping_sub(0x0e) < 0x12)
    });
    found == 0
}

/// The letters a letter that is several in one reads as (lower case ASCII): the Latin
/// ligatures and digraphs whose compatibility decomposition (Unicode's NFKD, marks dropped) is
/// letters, `ﬁ` as `fi`, `ǅ` as `dz`. Fonts draw most of them as the letters they stand for,
/// and models read them so; a test holds this list to Unicode's.
pub(super) fn expansion(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{0132}' | '\u{0133}' => "ij",
        '\u{01C4}'..='\u{01C6}' | '\u{01F1}'..='\u{01F3}' => "dz",
        '\u{01C7}'..='\u{01C9}' => "lj",
        '\u{01CA}'..='\u{01CC}' => "nj",
        '\u{FB00}' => "ff",
        '\u{FB01}' => "fi",
        '\u{FB02}' => "fl",
        '\u{FB03}' => "ffi",
        '\u{FB04}' => "ffl",
        '\u{FB05}' | '\u{FB06}' => "st",
        _ => return None,
    })
}

/// What `c` reads as, each character of it: a ligature's letters ([`expansion`]), else what it
/// folds to ([`fold_char`]; nothing when that drops it).
pub(super) fn folds(c: char) -> impl Iterator<Item = char> {
    let letters = expansion(c);
    let one = if letters.is_none() {
        fold_char(c)
    } else {
        None
    };
    letters.unwrap_or_default().chars().chain(one)
}

/// What `c` folds to; `None` drops it. (A ligature's several letters: [`expansion`].)
pub(super) fn fold_char(c: char) -> Option<char> {
    let f = fold_non_letter(c)?;
    if f != c || c.is_ascii() {
        return Some(f);
    }
    Some(look_alikes::latin_letter(c).unwrap_or(c))
}

/// [`fold_char`] but for the letters that look like a Latin one: invisible characters and
/// diacritical marks dropped, spaces, hyphens, fullwidth forms and digits folded.
pub(super) fn fold_non_letter(c: char) -> Option<char> {
    let cp = u32::from(c);
    if cp < 0x80 {
        // Control characters but whitespace, and delete: nothing a reader sees.
        return (!matches!(cp, 0x00..=0x08 | 0x0E..=0x1F | 0x7F)).then_some(c);
    }
    match cp {
        // Unicode's default-ignorable code points (`Default_Ignorable_Code_Point`: zero-width
        // characters, joiners, bidi controls, fillers, variation selectors, tags), which
        // render as nothing and split words; a test holds this list to Unicode's.
        0x00AD
        | 0x034F
        | 0x061C
        | 0x115F
        | 0x1160
        | 0x17B4
        | 0x17B5
        | 0x180B..=0x180F
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x206F
        | 0x3164
        | 0xFE00..=0xFE0F
        | 0xFEFF
        | 0xFFA0
        | 0xFFF0..=0xFFF8
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF => None,
        // C1 control characters but next line (`U+0085`, whitespace).
        0x80..=0x84 | 0x86..=0x9F => None,
        // Combining diacritical marks (the blocks of the marks that go on Latin, Greek and
        // Cyrillic letters, and on symbols): an accent typed after a letter, or a stack of
        // them, splits no word. The marks of other scripts' own blocks (Devanagari's vowel
        // signs, Arabic's harakat, Hebrew's points) are part of their words and stay.
        0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F => {
            None
        }
        // Space separators.
        0x00A0 | 0x1680 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 => Some(' '),
        // Hyphens and dashes used between digit groups (not the em dash of prose).
        0x2010..=0x2013 | 0x2212 | 0xFE63 => Some('-'),
        // Fullwidth ASCII.
        0xFF01..=0xFF5E => char::from_u32(cp - 0xFEE0),
        _ if c.is_numeric() => Some(decimal_value(c).map_or(c, |d| char::from(b'0' + d))),
        _ => Some(c),
    }
}

/// The value of a Unicode decimal digit (`Nd`), `None` for other characters.
pub(super) fn decimal_value(c: char) -> Option<u8> {
    let ranges = decimal_ranges();
    let cp = u32::from(c);
    let i = ranges.partition_point(|&(_, end)| end < cp);
    let &(start, end) = ranges.get(i)?;
    // Unicode encodes each script's digits 0 to 9 as one contiguous run, so a range of `Nd`
    // is whole runs of ten starting at a zero.
    (start <= cp && cp <= end).then(|| ((cp - start) % 10) as u8)
}

/// The ranges of Unicode `Nd`, from the regex engine's own Unicode tables.
fn decimal_ranges() -> &'static [(u32, u32)] {
    static RANGES: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    RANGES.get_or_init(|| {
        let hir = regex_syntax::parse(r"\p{Nd}").expect("\\p{Nd} is a valid class");
        match hir.kind() {
            HirKind::Class(Class::Unicode(class)) => class
                .iter()
                .map(|r| (u32::from(r.start()), u32::from(r.end())))
                .collect(),
            _ => Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decimal_range_is_whole_runs_of_ten() {
        let ranges = decimal_ranges();
        assert!(ranges.len() > 50, "{}", ranges.len());
        for &(start, end) in ranges {
            assert_eq!((end - start + 1) % 10, 0, "{start:X}..={end:X}");
            assert!(char::from_u32(start).unwrap().is_numeric());
        }
    }

    #[test]
    fn digits_of_every_script_have_their_value() {
        for (c, v) in [
            ('٣', 3),
            ('۷', 7),
            ('५', 5),
            ('９', 9),
            ('０', 0),
            ('𝟘', 0),
            ('𝟡', 9),
            ('߂', 2),
        ] {
            assert_eq!(decimal_value(c), Some(v), "{c}");
            assert_eq!(fold_char(c), Some(char::from(b'0' + v)), "{c}");
        }
        // Numerals that are not decimal digits stay as they are.
        for c in ['½', '²', 'Ⅻ', '一'] {
            assert_eq!(decimal_value(c), None, "{c}");
            assert_eq!(fold_char(c), Some(c), "{c}");
        }
    }

    #[test]
    fn folding_maps_offsets_back() {
        let text = "é １２\u{200B}３ a\u{00A0}b";
        let folded = fold_text(text);
        assert!(folded.changed());
        assert_eq!(folded.text(), "e 123 a b");
        // "123" in the folded text is "１２\u{200B}３" in the original.
        let start = folded.text().find("123").unwrap();
        let (s, e) = (folded.original(start), folded.original(start + 3));
        assert_eq!(&text[s..e], "１２\u{200B}３");
        assert_eq!(folded.original(folded.text().len()), text.len());
    }

    /// Ligatures and digraphs read as their letters; a match maps back to the ligature whole,
    /// also when it ends inside one.
    #[test]
    fn ligatures_fold_to_their_letters() {
        let text = "a con\u{FB01}dential o\u{FB03}ce \u{01C5}ak \u{0133}s";
        let folded = fold_text(text);
        assert_eq!(folded.text(), "a confidential office dzak ijs");
        let start = folded.text().find("confidential").unwrap();
        let (s, e) = (folded.original(start), folded.original_end(start + 12));
        assert_eq!(&text[s..e], "con\u{FB01}dential");
        // `conf` ends between the `f` and the `i` of `ﬁ`: the whole ligature is in it.
        assert_eq!(&text[s..folded.original_end(start + 4)], "con\u{FB01}");
        // `ffi` and each part of it.
        let at = folded.text().find("ffi").unwrap();
        for (from, to, written) in [(0, 3, "\u{FB03}"), (0, 1, "\u{FB03}"), (1, 2, "\u{FB03}")] {
            let (s, e) = (folded.original(at + from), folded.original_end(at + to));
            assert_eq!(&text[s..e], written, "{from}..{to}");
        }
        assert_eq!(folded.original_end(folded.text().len()), text.len());
        // Every one of them, in a keyword too.
        assert_eq!(
            fold_text("\u{FB00}\u{FB02}\u{FB04}\u{FB05}\u{FB06}\u{01C9}\u{01CC}\u{01F1}").text(),
            "ffflfflststljnjdz"
        );
    }

    /// [`expansion`] is every letter (not a numeral) with no canonical decomposition whose
    /// compatibility decomposition (marks dropped) is two or more ASCII letters, and nothing
    /// else.
    #[test]
    fn the_ligatures_are_unicode_s() {
        use unicode_normalization::UnicodeNormalization;
        for cp in 0x80..=0x10_FFFF {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let canonical: String = c.nfd().collect();
            let letters: String = c
                .nfkd()
                .filter(|&m| fold_non_letter(m).is_some())
                .collect::<String>()
                .to_ascii_lowercase();
            // Letters: Roman numerals (`Ⅻ`) are numbers, and stay as they are.
            let several = c.is_alphabetic()
                && !c.is_numeric()
                && canonical == c.to_string()
                && letters.len() >= 2
                && letters.bytes().all(|b| b.is_ascii_lowercase());
            assert_eq!(
                expansion(c),
                several.then_some(letters.as_str()),
                "{c:?} (U+{cp:04X})"
            );
        }
    }

    #[test]
    fn nothing_to_fold_borrows() {
        for text in ["plain ascii", "— ✓ € ½", "日本語のテキスト", "नमस्ते दुनिया"]
        {
            assert!(!fold_text(text).changed(), "{text}");
        }
        assert_eq!(fold_text("ｃｏｎｆｉｄｅｎｔｉａｌ").text(), "confidential");
        assert_eq!(fold_text("a\u{2013}b\u{2014}c").text(), "a-b\u{2014}c");
    }

    /// Letters that look like Latin ones read as those, whatever their script, style or
    /// accents; accents typed as marks after a letter are dropped.
    #[test]
    fn look_alike_letters_and_accents_fold_to_ascii() {
        for (text, folded) in [
            // Greek omicron, Cyrillic е and а.
            ("c\u{03BF}nfid\u{0435}nti\u{0430}l", "confidential"),
            // Cyrillic capitals; a Greek capital iota as `I`.
            ("\u{0421}\u{041E}\u{0420}\u{0415}", "cope"),
            ("\u{0399}NVOICE", "iNVOICE"),
            ("cönfidéntiâl", "confidential"),
            ("confidentia\u{0301}l", "confidential"),
            ("c\u{0336}o\u{0336}n\u{0336}", "con"),
            ("𝐜𝐨𝐧𝐟𝐢𝐝𝐞𝐧𝐭𝐢𝐚𝐥", "confidential"),
            ("ⓒⓞⓝⓕⓘⓓⓔⓝⓣⓘⓐⓛ", "confidential"),
            ("ᴄᴏɴꜰɪᴅᴇɴᴛɪᴀʟ", "confidential"),
            ("łódź", "lodz"),
            // The Kelvin sign and the long s read as their lower case.
            ("\u{212A}ey \u{017F}ecret", "key secret"),
        ] {
            assert_eq!(fold_text(text).text(), folded, "{text}");
        }
        // Offsets map back to the letters and marks as written.
        let text = "a confide\u{0301}ntial b";
        let folded = fold_text(text);
        let start = folded.text().find("confidential").unwrap();
        let (s, e) = (folded.original(start), folded.original(start + 12));
        assert_eq!(&text[s..e], "confide\u{0301}ntial");
    }

    /// A code point of a Unicode property, as the regex engine's own tables have it.
    fn has_property(property: &str) -> impl Fn(char) -> bool {
        let hir = regex_syntax::parse(&format!(r"\p{{{property}}}")).unwrap();
        let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
            panic!("\\p{{{property}}} is not a class");
        };
        let ranges: Vec<(char, char)> = class.iter().map(|r| (r.start(), r.end())).collect();
        move |c| ranges.iter().any(|&(start, end)| start <= c && c <= end)
    }

    /// What is dropped is exactly what a reader does not see: Unicode's default-ignorable code
    /// points, the control characters but whitespace, and the combining diacritical marks of
    /// the blocks of marks that go on Latin, Greek and Cyrillic letters and on symbols.
    #[test]
    fn the_characters_dropped_are_unicode_s_invisible_ones() {
        let ignorable = has_property("Default_Ignorable_Code_Point");
        let control = has_property("Cc");
        let marks = [
            0x0300..=0x036F,
            0x1AB0..=0x1AFF,
            0x1DC0..=0x1DFF,
            0x20D0..=0x20FF,
            0xFE20..=0xFE2F,
        ];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let invisible = ignorable(c)
                || control(c) && !c.is_whitespace()
                || marks.iter().any(|m| m.contains(&u32::from(c)));
            assert_eq!(
                fold_non_letter(c).is_none(),
                invisible,
                "U+{:04X}: dropped {}, invisible {invisible}",
                u32::from(c),
                fold_non_letter(c).is_none()
            );
        }
        // A control character or an invisible one inside a word, or around it.
        for text in [
            "confid\u{1}ential",
            "confid\u{7f}ential",
            "confid\u{9f}ential",
            "confid\u{1D173}ential",
            "confid\u{FFF0}ential",
            "confid\u{2065}ential",
            "\u{1BCA0}confidential\u{1b}",
        ] {
            let folded = fold_text(text);
            assert_eq!(folded.text(), "confidential", "{text:?}");
            assert!(folded.is_ascii());
        }
        // Whitespace controls stay, and ASCII text with them borrows.
        for text in ["a\tb\nc\rd\u{b}e\u{c}f", "plain"] {
            assert!(!fold_text(text).changed(), "{text:?}");
        }
        assert_eq!(fold_text("a\u{85}b").text(), "a\u{85}b");
    }
}
