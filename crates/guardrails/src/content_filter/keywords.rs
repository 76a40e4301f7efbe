//! Keyword matching: every keyword in one Aho-Corasick pass, case-insensitive (Unicode simple
//! lowercase), on word boundaries, with byte offsets into the original text.

use aho_corasick::automaton::Automaton;
use aho_corasick::{Anchored, Input, MatchKind, StartKind, dfa, nfa, packed};

use super::config::FilterAction;

/// Up to this many keywords use a DFA (fastest); beyond it a contiguous NFA (smaller), as
/// `AhoCorasick` chooses by default.
const DFA_MAX_KEYWORDS: usize = 100;

/// One keyword after deduplication.
#[derive(Debug)]
pub(super) struct Keyword {
    /// The keyword in lower case, as LiteLLM names it in messages.
    pub(super) display: String,
    pub(super) action: FilterAction,
    /// The block message.
    pub(super) message: String,
    pub(super) description: Option<String>,
    /// Its length in chars (folding keeps the char count).
    chars: usize,
}

#[derive(Debug)]
enum Engine {
    Dfa(dfa::DFA),
    Nfa(nfa::contiguous::NFA),
}

/// All keywords, compiled.
#[derive(Debug)]
pub(super) struct Keywords {
    engine: Engine,
    /// A SIMD multi-substring searcher (Teddy) over the folded keywords, for the common case of
    /// ASCII text that contains no keyword at all: searching the lower-cased text with it is an
    /// order of magnitude cheaper than the overlapping automaton, which then runs only when a
    /// keyword occurs somewhere. `None` where no packed searcher can be built (too many
    /// keywords, or a CPU without the vector instructions).
    prefilter: Option<packed::Searcher>,
    pub(super) list: Vec<Keyword>,
    /// The longest keyword, in chars.
    pub(super) max_chars: usize,
}

/// The case folding applied to keywords and text: ASCII lower case, and for other characters
/// their lower case when it is a single character (so `ẞ` and `ß` meet, `Ä` and `ä`), with
/// final sigma and long s folded to `σ` and `s`. Each char folds to exactly one char.
pub(super) fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    match c {
        'ς' => 'σ',
        'ſ' => 's',
        _ => {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        }
    }
}

/// A letter, digit or `_` (Unicode): a keyword must not touch one on either side.
pub(super) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Keywords {
    /// Compiles the keywords: `(keyword, action, description)`, already deduplicated and
    /// non-empty.
    pub(super) fn new(entries: Vec<(String, FilterAction, Option<String>)>) -> Option<Keywords> {
        if entries.is_empty() {
            return None;
        }
        let folded: Vec<String> = entries
            .iter()
            .map(|(k, _, _)| k.chars().map(fold).collect())
            .collect();
        let list: Vec<Keyword> = entries
            .into_iter()
            .map(|(keyword, action, description)| {
                let display = keyword.to_lowercase();
                let mut message = format!("Content blocked: keyword '{display}' detected");
                if let Some(d) = description.as_deref().filter(|d| !d.is_empty()) {
                    message.push_str(&format!(" ({d})"));
                }
                Keyword {
                    chars: keyword.chars().count(),
                    display,
                    action,
                    message,
                    description,
                }
            })
            .collect();
        let max_chars = list.iter().map(|k| k.chars).max().unwrap_or(0);
        let engine = if folded.len() <= DFA_MAX_KEYWORDS {
            let built = dfa::Builder::new()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(true)
                .start_kind(StartKind::Both)
                .build(&folded);
            match built {
                Ok(dfa) => Engine::Dfa(dfa),
                Err(_) => Engine::Nfa(build_nfa(&folded)),
            }
        } else {
            Engine::Nfa(build_nfa(&folded))
        };
        let prefilter = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&folded)
            .build();
        Some(Keywords {
            engine,
            prefilter,
            list,
            max_chars,
        })
    }

    /// Calls `f(keyword index, start, end)` for every occurrence of every keyword on word
    /// boundaries, overlapping ones included. With `partial`, the end of `text` is not a
    /// boundary.
    pub(super) fn for_each_match(
        &self,
        text: &str,
        partial: bool,
        f: &mut dyn FnMut(usize, usize, usize),
    ) {
        if !self.may_occur(text) {
            return;
        }
        match &self.engine {
            Engine::Dfa(a) => scan(a, &self.list, text, partial, f),
            Engine::Nfa(a) => scan(a, &self.list, text, partial, f),
        }
    }

    /// False only when no keyword occurs anywhere in `text`, in any case, word boundaries
    /// aside: then there is nothing to scan for. Any occurrence the automaton can find in ASCII
    /// text is its folded keyword in the text's ASCII lower case, which the prefilter finds.
    fn may_occur(&self, text: &str) -> bool {
        match &self.prefilter {
            Some(prefilter) if text.is_ascii() => {
                prefilter.find(text.to_ascii_lowercase()).is_some()
            }
            _ => true,
        }
    }

    /// The earliest position from which the end of `text` is the beginning of some keyword
    /// (so a keyword occurrence starting there may still appear, or grow, with more text);
    /// `text.len()` when there is none.
    pub(super) fn pending_from(&self, text: &str) -> usize {
        match &self.engine {
            Engine::Dfa(a) => pending_from(a, self.max_chars, text),
            Engine::Nfa(a) => pending_from(a, self.max_chars, text),
        }
    }
}

fn build_nfa(folded: &[String]) -> nfa::contiguous::NFA {
    nfa::contiguous::Builder::new()
        .match_kind(MatchKind::Standard)
        .ascii_case_insensitive(true)
        .build(folded)
        // Building only fails beyond aho-corasick's state-id space (billions of states),
        // which keyword lists never reach.
        .expect("keyword automaton too large")
}

/// Feeds the folded form of `c` to the automaton.
#[inline]
fn step<A: Automaton>(
    a: &A,
    anchored: Anchored,
    mut sid: aho_corasick::automaton::StateID,
    c: char,
) -> aho_corasick::automaton::StateID {
    let mut buf = [0u8; 4];
    for &b in fold(c).encode_utf8(&mut buf).as_bytes() {
        sid = a.next_state(anchored, sid, b);
    }
    sid
}

fn scan<A: Automaton>(
    a: &A,
    list: &[Keyword],
    text: &str,
    partial: bool,
    f: &mut dyn FnMut(usize, usize, usize),
) {
    let mut consider = |pid: usize, start: usize, end: usize| {
        let left_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word_char(c));
        let right_ok = match text[end..].chars().next() {
            Some(c) => !is_word_char(c),
            None => !partial,
        };
        if left_ok && right_ok {
            f(pid, start, end);
        }
    };
    if text.is_ascii() {
        // Folding is the automaton's own ASCII case-insensitivity: search the text as is,
        // with aho-corasick's prefilters.
        let iter = a
            .try_find_overlapping_iter(Input::new(text))
            .expect("standard-semantics automaton supports overlapping search");
        for m in iter {
            consider(m.pattern().as_usize(), m.start(), m.end());
        }
        return;
    }
    // Non-ASCII text: feed the folded characters by hand. Folding maps each char to one char,
    // so a keyword of n chars ending at a char ends here and starts n chars back.
    let Ok(mut sid) = a.start_state(Anchored::No) else {
        return;
    };
    for (i, c) in text.char_indices() {
        sid = step(a, Anchored::No, sid, c);
        if a.is_special(sid) {
            if a.is_dead(sid) {
                return;
            }
            if a.is_match(sid) {
                let end = i + c.len_utf8();
                for k in 0..a.match_len(sid) {
                    let pid = a.match_pattern(sid, k).as_usize();
                    let n = list[pid].chars;
                    let start = text[..end]
                        .char_indices()
                        .rev()
                        .nth(n - 1)
                        .map_or(0, |(s, _)| s);
                    consider(pid, start, end);
                }
            }
        }
    }
}

fn pending_from<A: Automaton>(a: &A, max_chars: usize, text: &str) -> usize {
    let Ok(start_sid) = a.start_state(Anchored::Yes) else {
        return 0;
    };
    // Only the last `max_chars` characters can begin an unfinished keyword.
    let first = text
        .char_indices()
        .rev()
        .nth(max_chars.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    for (offset, _) in text[first..].char_indices() {
        let p = first + offset;
        let mut sid = start_sid;
        let mut alive = true;
        for c in text[p..].chars() {
            sid = step(a, Anchored::Yes, sid, c);
            if a.is_dead(sid) {
                alive = false;
                break;
            }
        }
        if alive {
            return p;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keywords(words: &[&str]) -> Keywords {
        Keywords::new(
            words
                .iter()
                .map(|w| (w.to_string(), FilterAction::Block, None))
                .collect(),
        )
        .unwrap()
    }

    fn matches(kw: &Keywords, text: &str) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        kw.for_each_match(text, false, &mut |k, s, e| out.push((k, s, e)));
        out
    }

    #[test]
    fn the_prefilter_skips_clean_text_and_misses_no_match() {
        let kw = keywords(&["confidential", "Bluebird", "wire tap", "qz"]);
        assert!(
            kw.prefilter.is_some(),
            "a short list gets a packed searcher"
        );
        assert!(!kw.may_occur("Nothing to see in this long, clean sentence about trains."));
        assert_eq!(
            matches(&kw, "Nothing to see in this long, clean sentence."),
            []
        );
        // Every case, at the edges and in the middle of a long text.
        let long = format!(
            "{} CONFIDENTIAL {} BlueBIRD",
            "x ".repeat(100),
            "y ".repeat(100)
        );
        assert_eq!(
            matches(&kw, &long),
            [(0, 201, 213), (1, 415, 423)],
            "{long}"
        );
        assert_eq!(matches(&kw, "QZ"), [(3, 0, 2)]);
        assert_eq!(matches(&kw, "a WIRE TAP."), [(2, 2, 10)]);
        // An occurrence inside a word is found by the prefilter, then dropped on boundaries.
        assert!(kw.may_occur("Bluebirds"));
        assert_eq!(matches(&kw, "Bluebirds"), []);
        // Non-ASCII text takes the folding path, with or without a prefilter.
        assert_eq!(matches(&kw, "ÄÖ confidential"), [(0, 5, 17)]);
    }

    #[test]
    fn many_keywords_still_match() {
        let words: Vec<String> = (0..500).map(|i| format!("kw{i}x")).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let kw = keywords(&refs);
        assert_eq!(
            matches(&kw, "then KW499X and kw7x."),
            [(499, 5, 11), (7, 16, 20)]
        );
        assert_eq!(matches(&kw, "none here"), []);
    }
}
