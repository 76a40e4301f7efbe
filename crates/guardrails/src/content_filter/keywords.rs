//! Keyword matching: every keyword in one Aho-Corasick pass, case-insensitive (Unicode simple
//! lowercase), on word boundaries, with byte offsets into the original text.
//!
//! A keyword with `*` is matched as LiteLLM matches it: each `*` stands for zero or one
//! character other than a line break. Its longest run of literal characters (its anchor) goes
//! into the automaton with the plain keywords; each anchor occurrence is then checked against
//! the whole keyword around it.

use std::cell::RefCell;

use aho_corasick::automaton::Automaton;
use aho_corasick::{Anchored, Input, MatchKind, StartKind, dfa, nfa, packed};

use super::config::FilterAction;

/// Up to this many automaton patterns use a DFA (fastest); beyond it a contiguous NFA
/// (smaller), as `AhoCorasick` chooses by default.
const DFA_MAX_KEYWORDS: usize = 100;

/// ASCII texts up to this long are searched by walking the DFA byte by byte, without the
/// prefilter: a stream's exact mode searches a few words at each event, where the prefilter's
/// lower-case copy and set-up cost more than the walk (about six instructions a byte).
const SHORT_TEXT: usize = 64;

/// The wildcard of a keyword: zero or one character, not a line break.
pub(super) const WILDCARD: char = '*';

/// One keyword after deduplication.
#[derive(Debug)]
pub(super) struct Keyword {
    /// The keyword in lower case, as LiteLLM names it in messages.
    pub(super) display: String,
    pub(super) action: FilterAction,
    /// The block message.
    pub(super) message: String,
    pub(super) description: Option<String>,
    /// The longest match in chars: the keyword's length, each `*` counting one (folding keeps
    /// the char count).
    chars: usize,
}

/// One element of a wildcard keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    /// This (folded) character.
    Lit(char),
    /// Zero or one character other than `\n`.
    Any,
}

/// A keyword with `*`.
#[derive(Debug)]
struct Wild {
    /// Index into [`Keywords::list`].
    keyword: usize,
    elems: Vec<Elem>,
    /// The elements of the anchor (the first longest run of literals).
    anchor: std::ops::Range<usize>,
}

/// What an automaton pattern stands for.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The keyword at this index of [`Keywords::list`], matched as is.
    Literal(usize),
    /// The anchor of the wildcard keyword at this index of [`Keywords::wild`].
    Anchor(usize),
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
    /// A SIMD multi-substring searcher (Teddy) over the folded patterns, for the common case of
    /// ASCII text that contains no keyword at all: searching the lower-cased text with it is an
    /// order of magnitude cheaper than the overlapping automaton, which then runs only when a
    /// keyword occurs somewhere. `None` where no packed searcher can be built (too many
    /// keywords, or a CPU without the vector instructions).
    prefilter: Option<packed::Searcher>,
    pub(super) list: Vec<Keyword>,
    /// Per automaton pattern, what it stands for; with its length in chars.
    targets: Vec<(Target, usize)>,
    wild: Vec<Wild>,
    /// The longest keyword, in chars.
    pub(super) max_chars: usize,
    /// The ASCII characters (folded) a keyword of the automaton can begin with, one bit each:
    /// where the text may still begin a keyword is asked at every event of a stream, from each
    /// of its last characters, and most of them begin none.
    ascii_starts: u128,
    /// With the DFA: where an ASCII tail begins a keyword, from the state it leaves the
    /// unanchored automaton in (see [`Depths`]).
    depths: Option<Depths>,
}

/// How long a keyword beginning each state of the unanchored DFA stands for. With standard
/// match semantics, the state a text leaves that automaton in is the longest end of the text
/// that begins a keyword (the Aho-Corasick property), and its length is the state's distance
/// from the start (a byte deepens a state by one at most, and the keyword's own path takes one
/// per byte). So where more text may still complete a keyword is one step per byte of the
/// tail and a lookup, where walking each position of the tail anchored took a walk each.
#[derive(Debug)]
struct Depths {
    start: aho_corasick::automaton::StateID,
    /// State identifiers are multiples of the DFA's stride (a power of two): shifted by this,
    /// they index [`depth`](Self::depth).
    shift: u32,
    depth: Vec<u16>,
}

impl Depths {
    /// A breadth-first walk of the unanchored DFA from its start: each state's distance. `None`
    /// where the automaton is not what that needs (a dead state reachable, a stride that is not
    /// a power of two, keywords longer than `u16` bytes).
    fn new(a: &dfa::DFA) -> Option<Depths> {
        const UNSEEN: u16 = u16::MAX;
        let start = a.start_state(Anchored::No).ok()?;
        // By state identifier while walking (identifiers index the DFA's transition table, so
        // this is at most half its size, and only while the filter is built).
        let mut by_id = vec![UNSEEN; start.as_usize() + 1];
        by_id[start.as_usize()] = 0;
        let mut queue = std::collections::VecDeque::from([start]);
        let mut ids = vec![start.as_usize()];
        while let Some(sid) = queue.pop_front() {
            let next_depth = by_id[sid.as_usize()].checked_add(1)?;
            if next_depth == UNSEEN {
                return None;
            }
            for byte in 0..=u8::MAX {
                let next = a.next_state(Anchored::No, sid, byte);
                if a.is_dead(next) {
                    return None;
                }
                let id = next.as_usize();
                if id >= by_id.len() {
                    by_id.resize(id + 1, UNSEEN);
                }
                if by_id[id] == UNSEEN {
                    by_id[id] = next_depth;
                    ids.push(id);
                    queue.push_back(next);
                }
            }
        }
        let stride = ids.iter().fold(0, |a, &b| gcd(a, b));
        let shift = match stride {
            0 => 0,
            s if s.is_power_of_two() => s.trailing_zeros(),
            _ => return None,
        };
        let len = ids.iter().map(|id| id >> shift).max()? + 1;
        let mut depth = vec![0; len];
        for id in ids {
            depth[id >> shift] = by_id[id];
        }
        Some(Depths {
            start,
            shift,
            depth,
        })
    }

    /// Walks all of the ASCII `text` through the unanchored DFA: calls `found(pattern, start,
    /// end)` for each occurrence, as the overlapping search reports them (by end, then in the
    /// automaton's order), and returns [`pending_from`] of the text, from the state it ends in
    /// (the longest end of the text that begins a keyword is no longer than a keyword, so it
    /// is the same as for the last `max_chars` bytes alone).
    fn walk(&self, a: &dfa::DFA, text: &[u8], found: &mut dyn FnMut(usize, usize, usize)) -> usize {
        let mut sid = self.start;
        for (i, &b) in text.iter().enumerate() {
            sid = a.next_state(Anchored::No, sid, b);
            if a.is_match(sid) {
                for k in 0..a.match_len(sid) {
                    let pid = a.match_pattern(sid, k);
                    found(pid.as_usize(), i + 1 - a.pattern_len(pid), i + 1);
                }
            }
        }
        text.len() - usize::from(self.depth[sid.as_usize() >> self.shift])
    }

    /// [`pending_from`] for a text whose last `max_chars` bytes are ASCII; `None` otherwise.
    fn pending_from(&self, a: &dfa::DFA, max_chars: usize, text: &str) -> Option<usize> {
        let bytes = text.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(max_chars)..];
        if !tail.is_ascii() {
            return None;
        }
        // The walk's answer is an offset into the tail.
        Some(bytes.len() - tail.len() + self.walk(a, tail, &mut |_, _, _| {}))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
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

/// A keyword as the text it matches is read: each character folded as the text's are (look-alike
/// letters and digits as ASCII, ligatures as their letters, invisible characters and
/// diacritical marks dropped; see `normalize`), then case-folded ([`fold`]). `*` stays a
/// wildcard.
pub(super) fn fold_keyword(keyword: &str) -> String {
    keyword
        .chars()
        .flat_map(super::normalize::folds)
        .map(fold)
        .collect()
}

/// A letter, digit or `_` (Unicode): a keyword edge that is one must not touch one.
pub(super) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether a keyword has something to match besides wildcards and spaces.
pub(super) fn has_literal(keyword: &str) -> bool {
    keyword.chars().any(|c| c != WILDCARD && !c.is_whitespace())
}

/// Whether `text[start..end]` stands on word boundaries: an edge of the match that is a word
/// character must not touch another one. With `partial`, the end of `text` is not a boundary.
fn on_boundaries(text: &str, start: usize, end: usize, partial: bool) -> bool {
    let first = text[start..].chars().next();
    if first.is_some_and(is_word_char)
        && text[..start].chars().next_back().is_some_and(is_word_char)
    {
        return false;
    }
    let last = text[..end].chars().next_back();
    if last.is_some_and(is_word_char) {
        match text[end..].chars().next() {
            Some(c) => !is_word_char(c),
            None => !partial,
        }
    } else {
        true
    }
}

impl Keywords {
    /// Compiles the keywords: `(keyword, its fold_keyword, action, description)`, already
    /// deduplicated by the fold, each with a character other than `*` and whitespace.
    pub(super) fn new(
        entries: Vec<(String, String, FilterAction, Option<String>)>,
    ) -> Option<Keywords> {
        if entries.is_empty() {
            return None;
        }
        let mut patterns: Vec<String> = Vec::with_capacity(entries.len());
        let mut targets = Vec::with_capacity(entries.len());
        let mut wild = Vec::new();
        let mut list = Vec::with_capacity(entries.len());
        for (k, (keyword, folded, action, description)) in entries.into_iter().enumerate() {
            let folded: Vec<char> = folded.chars().collect();
            if folded.contains(&WILDCARD) {
                let elems: Vec<Elem> = folded
                    .iter()
                    .map(|&c| {
                        if c == WILDCARD {
                            Elem::Any
                        } else {
                            Elem::Lit(c)
                        }
                    })
                    .collect();
                let anchor = longest_literal_run(&elems);
                let text: String = elems[anchor.clone()]
                    .iter()
                    .map(|e| match e {
                        Elem::Lit(c) => *c,
                        Elem::Any => WILDCARD,
                    })
                    .collect();
                targets.push((Target::Anchor(wild.len()), anchor.len()));
                patterns.push(text);
                wild.push(Wild {
                    keyword: k,
                    elems,
                    anchor,
                });
            } else {
                targets.push((Target::Literal(k), folded.len()));
                patterns.push(folded.iter().collect());
            }
            let display = keyword.to_lowercase();
            let mut message = format!("Content blocked: keyword '{display}' detected");
            if let Some(d) = description.as_deref().filter(|d| !d.is_empty()) {
                message.push_str(&format!(" ({d})"));
            }
            list.push(Keyword {
                chars: folded.len(),
                display,
                action,
                message,
                description,
            });
        }
        let max_chars = list.iter().map(|k| k.chars).max().unwrap_or(0);
        let engine = if patterns.len() <= DFA_MAX_KEYWORDS {
            let built = dfa::Builder::new()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(true)
                .start_kind(StartKind::Both)
                .build(&patterns);
            match built {
                Ok(dfa) => Engine::Dfa(dfa),
                Err(_) => Engine::Nfa(build_nfa(&patterns)),
            }
        } else {
            Engine::Nfa(build_nfa(&patterns))
        };
        let ascii_starts = match &engine {
            Engine::Dfa(a) => ascii_starts(a),
            Engine::Nfa(a) => ascii_starts(a),
        };
        let depths = match &engine {
            Engine::Dfa(a) => Depths::new(a),
            Engine::Nfa(_) => None,
        };
        let prefilter = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&patterns)
            .build();
        Some(Keywords {
            engine,
            prefilter,
            list,
            targets,
            wild,
            max_chars,
            ascii_starts,
            depths,
        })
    }

    /// Calls `f(keyword index, start, end)` for every occurrence of every keyword on word
    /// boundaries, overlapping ones included (a wildcard keyword may report several matches
    /// at one start). With `partial`, the end of `text` is not a boundary, and a wildcard
    /// keyword is reported only where the text already holds all of it.
    ///
    /// Returns [`pending_from`](Keywords::pending_from) of `text` when the search found it on
    /// the way: a short ASCII text is walked through the DFA byte by byte, with no prefilter,
    /// and the state it ends in tells where a keyword may still begin (see [`Depths`]).
    pub(super) fn for_each_match(
        &self,
        text: &str,
        ascii: bool,
        partial: bool,
        f: &mut dyn FnMut(usize, usize, usize),
    ) -> Option<usize> {
        let mut found = |pid: usize, start: usize, end: usize| match self.targets[pid].0 {
            Target::Literal(k) => {
                if on_boundaries(text, start, end, partial) {
                    f(k, start, end);
                }
            }
            Target::Anchor(w) => self.wild[w].around(text, start, end, partial, f),
        };
        if ascii && text.len() <= SHORT_TEXT {
            if let (Engine::Dfa(a), Some(depths)) = (&self.engine, &self.depths) {
                let mut from = depths.walk(a, text.as_bytes(), &mut found);
                for w in &self.wild {
                    from = from.min(w.pending_from(text));
                }
                return Some(from);
            }
        }
        if !self.may_occur(text, ascii) {
            return None;
        }
        match &self.engine {
            Engine::Dfa(a) => scan(a, &self.targets, text, ascii, &mut found),
            Engine::Nfa(a) => scan(a, &self.targets, text, ascii, &mut found),
        }
        None
    }

    /// False only when no keyword occurs anywhere in `text`, in any case, word boundaries
    /// aside: then there is nothing to scan for. Any occurrence the automaton can find in ASCII
    /// text is its folded pattern in the text's ASCII lower case, which the prefilter finds
    /// (a wildcard keyword's match always holds its anchor).
    fn may_occur(&self, text: &str, ascii: bool) -> bool {
        let Some(prefilter) = self.prefilter.as_ref().filter(|_| ascii) else {
            return true;
        };
        LOWER.with_borrow_mut(|lower| {
            lower.clear();
            lower.extend_from_slice(text.as_bytes());
            lower.make_ascii_lowercase();
            let found = prefilter.find(&lower[..]).is_some();
            if lower.capacity() > KEEP_LOWER {
                *lower = Vec::new();
            }
            found
        })
    }

    /// The earliest position from which the end of `text` is the beginning of some keyword
    /// (so a keyword occurrence starting there may still appear, or grow, with more text);
    /// `text.len()` when there is none.
    pub(super) fn pending_from(&self, text: &str) -> usize {
        let mut from = match &self.engine {
            Engine::Dfa(a) => self
                .depths
                .as_ref()
                .and_then(|d| d.pending_from(a, self.max_chars, text))
                .unwrap_or_else(|| pending_from(a, self.max_chars, self.ascii_starts, text)),
            Engine::Nfa(a) => pending_from(a, self.max_chars, self.ascii_starts, text),
        };
        for w in &self.wild {
            from = from.min(w.pending_from(text));
        }
        from
    }
}

thread_local! {
    /// The prefilter's lower-case copy of a text, one buffer per thread, reused: a stream asks
    /// once per event.
    static LOWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A [`LOWER`] buffer grown past this by a long text is dropped, not kept for the thread's life.
const KEEP_LOWER: usize = 64 * 1024;

/// The first longest run of literal elements.
fn longest_literal_run(elems: &[Elem]) -> std::ops::Range<usize> {
    let mut best = 0..0;
    let mut start = 0;
    for (i, e) in elems.iter().chain(std::iter::once(&Elem::Any)).enumerate() {
        if *e == Elem::Any {
            if i - start > best.len() {
                best = start..i;
            }
            start = i + 1;
        }
    }
    best
}

/// Whether `elem` takes `c`.
fn takes(elem: Elem, c: char) -> bool {
    match elem {
        Elem::Lit(l) => fold(c) == l,
        Elem::Any => c != '\n',
    }
}

impl Wild {
    /// Reports the matches of this keyword whose anchor lies at `text[start..end]`.
    fn around(
        &self,
        text: &str,
        start: usize,
        end: usize,
        partial: bool,
        f: &mut dyn FnMut(usize, usize, usize),
    ) {
        let starts = walk(text, start, &self.elems[..self.anchor.start], true);
        if starts.is_empty() {
            return;
        }
        let ends = walk(text, end, &self.elems[self.anchor.end..], false);
        for &s in &starts {
            for &e in &ends {
                if on_boundaries(text, s, e, partial) {
                    f(self.keyword, s, e);
                }
            }
        }
    }

    /// Where a match of this keyword may still begin given more text: the earliest position
    /// among the last [`Self::elems`] characters from which the rest of `text` is the
    /// beginning of a match (or a whole one).
    fn pending_from(&self, text: &str) -> usize {
        let first = text
            .char_indices()
            .rev()
            .nth(self.elems.len().saturating_sub(1))
            .map_or(0, |(i, _)| i);
        for (offset, _) in text[first..].char_indices() {
            let p = first + offset;
            if self.alive_after(&text[p..]) {
                return p;
            }
        }
        text.len()
    }

    /// Whether all of `s` can be read as the beginning of this keyword.
    fn alive_after(&self, s: &str) -> bool {
        let n = self.elems.len();
        let mut states = vec![false; n + 1];
        states[0] = true;
        self.close(&mut states);
        let mut next = vec![false; n + 1];
        for c in s.chars() {
            next.iter_mut().for_each(|x| *x = false);
            let mut any = false;
            for i in 0..n {
                if states[i] && takes(self.elems[i], c) {
                    next[i + 1] = true;
                    any = true;
                }
            }
            if !any {
                return false;
            }
            std::mem::swap(&mut states, &mut next);
            self.close(&mut states);
        }
        true
    }

    /// Adds the states a wildcard can reach by taking nothing.
    fn close(&self, states: &mut [bool]) {
        for i in 0..self.elems.len() {
            if states[i] && self.elems[i] == Elem::Any {
                states[i + 1] = true;
            }
        }
    }
}

/// The positions reachable from `from` by matching `elems` backwards (`back`) or forwards.
fn walk(text: &str, from: usize, elems: &[Elem], back: bool) -> Vec<usize> {
    let mut cur = vec![from];
    let mut next = Vec::new();
    let step = |elem: Elem, p: usize, next: &mut Vec<usize>| {
        let c = if back {
            text[..p].chars().next_back()
        } else {
            text[p..].chars().next()
        };
        if elem == Elem::Any {
            next.push(p);
        }
        if let Some(c) = c.filter(|&c| takes(elem, c)) {
            next.push(if back {
                p - c.len_utf8()
            } else {
                p + c.len_utf8()
            });
        }
    };
    let order: Box<dyn Iterator<Item = &Elem>> = if back {
        Box::new(elems.iter().rev())
    } else {
        Box::new(elems.iter())
    };
    for &elem in order {
        next.clear();
        for &p in &cur {
            step(elem, p, &mut next);
        }
        next.sort_unstable();
        next.dedup();
        std::mem::swap(&mut cur, &mut next);
        if cur.is_empty() {
            break;
        }
    }
    cur
}

fn build_nfa(patterns: &[String]) -> nfa::contiguous::NFA {
    nfa::contiguous::Builder::new()
        .match_kind(MatchKind::Standard)
        .ascii_case_insensitive(true)
        .build(patterns)
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

/// Calls `found(pattern, start, end)` for every occurrence of every automaton pattern,
/// overlapping ones included.
fn scan<A: Automaton>(
    a: &A,
    targets: &[(Target, usize)],
    text: &str,
    ascii: bool,
    found: &mut dyn FnMut(usize, usize, usize),
) {
    if ascii {
        // Folding is the automaton's own ASCII case-insensitivity: search the text as is,
        // with aho-corasick's prefilters.
        let iter = a
            .try_find_overlapping_iter(Input::new(text))
            .expect("standard-semantics automaton supports overlapping search");
        for m in iter {
            found(m.pattern().as_usize(), m.start(), m.end());
        }
        return;
    }
    // Non-ASCII text: feed the folded characters by hand. Folding maps each char to one char,
    // so a pattern of n chars ending at a char ends here and starts n chars back.
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
                    let n = targets[pid].1;
                    let start = text[..end]
                        .char_indices()
                        .rev()
                        .nth(n - 1)
                        .map_or(0, |(s, _)| s);
                    found(pid, start, end);
                }
            }
        }
    }
}

/// The ASCII characters, folded, whose step from the anchored start state does not lead to the
/// dead state (every character when there is no anchored start).
fn ascii_starts<A: Automaton>(a: &A) -> u128 {
    let Ok(start) = a.start_state(Anchored::Yes) else {
        return u128::MAX;
    };
    (0..128u8)
        .filter(|&b| !a.is_dead(step(a, Anchored::Yes, start, char::from(b))))
        .fold(0, |bits, b| bits | 1 << b)
}

/// Where the end of `text` may still begin a keyword of `a` (see [`Keywords::pending_from`]);
/// `ascii_starts` is [`ascii_starts`] of `a`.
fn pending_from<A: Automaton>(a: &A, max_chars: usize, ascii_starts: u128, text: &str) -> usize {
    let Ok(start_sid) = a.start_state(Anchored::Yes) else {
        return 0;
    };
    // Only the last `max_chars` characters can begin an unfinished keyword. When they are
    // ASCII (most text), they are the last `max_chars` bytes: stepped byte by byte, with no
    // character decoding (the automaton folds ASCII case itself, and `ascii_starts` holds
    // both cases).
    let bytes = text.as_bytes();
    let tail = bytes.len().saturating_sub(max_chars);
    if bytes[tail..].is_ascii() {
        for p in tail..bytes.len() {
            if ascii_starts >> bytes[p] & 1 == 0 {
                // No keyword begins with it.
                continue;
            }
            let mut sid = start_sid;
            let alive = bytes[p..].iter().all(|b| {
                sid = a.next_state(Anchored::Yes, sid, *b);
                !a.is_dead(sid)
            });
            if alive {
                return p;
            }
        }
        return text.len();
    }
    pending_from_chars(a, start_sid, max_chars, ascii_starts, text)
}

/// [`pending_from`] character by character (a tail with non-ASCII characters).
fn pending_from_chars<A: Automaton>(
    a: &A,
    start_sid: aho_corasick::automaton::StateID,
    max_chars: usize,
    ascii_starts: u128,
    text: &str,
) -> usize {
    let first = text
        .char_indices()
        .rev()
        .nth(max_chars.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    for (offset, c) in text[first..].char_indices() {
        if c.is_ascii() && ascii_starts >> u32::from(fold(c)) & 1 == 0 {
            // No keyword begins with it.
            continue;
        }
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
                .map(|w| (w.to_string(), fold_keyword(w), FilterAction::Block, None))
                .collect(),
        )
        .unwrap()
    }

    /// The byte-by-byte path for ASCII tails gives the character-by-character path's answer
    /// at every cut of texts with keyword beginnings, case changes, words that end within the
    /// tail and non-ASCII before the tail.
    #[test]
    fn the_ascii_tail_path_agrees_with_the_character_path() {
        let kw = keywords(&["confidential", "Bluebird", "straße", "a.b", "x", "wire tap"]);
        let by_chars = |text: &str| match &kw.engine {
            Engine::Dfa(a) => pending_from_chars(
                a,
                a.start_state(Anchored::Yes).unwrap(),
                kw.max_chars,
                kw.ascii_starts,
                text,
            ),
            Engine::Nfa(a) => pending_from_chars(
                a,
                a.start_state(Anchored::Yes).unwrap(),
                kw.max_chars,
                kw.ascii_starts,
                text,
            ),
        };
        let mut checked = 0;
        for text in [
            "the CONFIDENTIAL report of the blueBI",
            "no keyword here at all, none",
            "ends with conf",
            "ends with a.",
            "über die Straße, the wire t",
            "Grüße: the Confidentia",
            "xxxxxxxxxxxxxxxxx",
            "a",
            "",
        ] {
            for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                let text = &text[..cut];
                assert_eq!(kw.pending_from(text), by_chars(text), "{text:?}");
                checked += usize::from(text.len() >= kw.max_chars);
            }
        }
        assert!(checked > 50);
    }

    /// The state depths give the anchored walk's answer at every cut of texts made of keyword
    /// beginnings, overlapping keywords (one's end the next one's beginning), case changes and
    /// plain words, for keyword sets with prefixes of each other, and do not answer for a
    /// non-ASCII tail.
    #[test]
    fn the_state_depths_agree_with_the_anchored_walk() {
        let sets: [&[&str]; 4] = [
            &["confidential", "Bluebird", "a.b", "x", "wire tap"],
            &["abcab", "bca", "cab", "b", "abcabcabd"],
            &["pass", "password", "assword", "sword", "words"],
            &["aaaa", "aab", "ab"],
        ];
        let mut checked = 0;
        for words in sets {
            let kw = keywords(words);
            let Engine::Dfa(a) = &kw.engine else {
                panic!("a small set gets the DFA");
            };
            let depths = kw.depths.as_ref().expect("a DFA has depths");
            for text in [
                "the CONFIDENTIAL report of the blueBI",
                "abcabcabcabdabcabcab cab ca",
                "my PassWords and swordfish passwor",
                "aaaaaaab aaaaaaa baaa",
                "ends with conf, the wire t",
            ] {
                for cut in 0..=text.len() {
                    let text = &text[..cut];
                    assert_eq!(
                        depths.pending_from(a, kw.max_chars, text),
                        Some(pending_from(a, kw.max_chars, kw.ascii_starts, text)),
                        "{text:?} with {words:?}"
                    );
                    checked += 1;
                }
            }
            assert_eq!(depths.pending_from(a, kw.max_chars, "the blueß"), None);
        }
        assert!(checked > 400);
    }

    /// The byte walk of short texts reports the overlapping search's matches, in its order,
    /// and where a keyword may still begin, for keyword sets with prefixes of each other and
    /// wildcards, at every cut of ASCII texts, partial or not.
    #[test]
    fn the_short_text_walk_agrees_with_the_search() {
        let sets: [&[&str]; 4] = [
            &["confidential", "Bluebird", "a.b", "x", "wire tap"],
            &["abcab", "bca", "cab", "b", "abcabcabd"],
            &["pass", "password", "assword", "sword", "words"],
            &["wire*tap", "c*t", "aab", "ab"],
        ];
        let mut walked = 0;
        for words in sets {
            let kw = keywords(words);
            assert!(matches!(kw.engine, Engine::Dfa(_)) && kw.depths.is_some());
            for text in [
                "the CONFIDENTIAL report of the blueBI x a.b wire tap",
                "abcabcabcabdabcabcab cab ca b bca",
                "my PassWords and swordfish passwor",
                "aab ab wire-tap, wiretap cat cut c t aaab",
                "ends with conf, the wire t",
            ] {
                for cut in 0..=text.len() {
                    let text = &text[..cut];
                    for partial in [false, true] {
                        let mut searched = Vec::new();
                        let mut f = |k, s, e| searched.push((k, s, e));
                        let mut found =
                            |pid: usize, start: usize, end: usize| match kw.targets[pid].0 {
                                Target::Literal(k) => {
                                    if on_boundaries(text, start, end, partial) {
                                        f(k, start, end);
                                    }
                                }
                                Target::Anchor(w) => {
                                    kw.wild[w].around(text, start, end, partial, &mut f)
                                }
                            };
                        let Engine::Dfa(a) = &kw.engine else {
                            unreachable!()
                        };
                        scan(a, &kw.targets, text, true, &mut found);
                        let mut got = Vec::new();
                        let pending = kw.for_each_match(text, true, partial, &mut |k, s, e| {
                            got.push((k, s, e))
                        });
                        assert_eq!(got, searched, "{text:?} with {words:?}");
                        let mut want = pending_from(a, kw.max_chars, kw.ascii_starts, text);
                        for w in &kw.wild {
                            want = want.min(w.pending_from(text));
                        }
                        assert_eq!(pending, Some(want), "{text:?} with {words:?}");
                        walked += 1;
                    }
                }
            }
            // Past the short length, the prefiltered search, and no pending point.
            let long = "a".repeat(SHORT_TEXT + 1);
            assert_eq!(
                kw.for_each_match(&long, true, true, &mut |_, _, _| {}),
                None
            );
        }
        assert!(walked > 1000);
    }

    /// Skipping the characters no keyword begins with changes no answer: where the text may
    /// still begin a keyword is the same with the start bits as with every bit set, at every
    /// cut of texts with keyword beginnings, case changes, non-ASCII and none at all.
    #[test]
    fn the_start_bits_change_no_pending_point() {
        let kw = keywords(&["confidential", "Bluebird", "straße", "a.b", "x"]);
        let bits: Vec<char> = (0..128u8)
            .map(char::from)
            .filter(|&c| kw.ascii_starts >> u32::from(c) & 1 == 1)
            .collect();
        assert_eq!(bits, ['A', 'B', 'C', 'S', 'X', 'a', 'b', 'c', 's', 'x']);
        let pending = |text: &str, starts: u128| match &kw.engine {
            Engine::Dfa(a) => pending_from(a, kw.max_chars, starts, text),
            Engine::Nfa(a) => pending_from(a, kw.max_chars, starts, text),
        };
        for text in [
            "this is CONFIDENT",
            "a blue",
            "über die Stra",
            "xx a.",
            "nothing here to see",
            "",
        ] {
            for (cut, _) in text.char_indices().chain([(text.len(), ' ')]) {
                let text = &text[..cut];
                assert_eq!(
                    pending(text, kw.ascii_starts),
                    pending(text, u128::MAX),
                    "{text:?}"
                );
            }
        }
        assert_eq!(pending("this is CONFIDENT", kw.ascii_starts), 8);
        assert_eq!(pending("nothing here to see", kw.ascii_starts), 19);
    }

    fn matches(kw: &Keywords, text: &str) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        kw.for_each_match(text, text.is_ascii(), false, &mut |k, s, e| {
            out.push((k, s, e))
        });
        out
    }

    #[test]
    fn the_prefilter_buffer_is_reused_and_not_kept_large() {
        let kw = keywords(&["secret"]);
        assert!(kw.prefilter.is_some());
        assert!(kw.may_occur("a SECRET here", true));
        assert!(!kw.may_occur("nothing here", true));
        assert!(LOWER.with_borrow(|lower| lower.capacity()) > 0);
        let long = format!("{} Secret", "x".repeat(200 * 1024));
        assert!(kw.may_occur(&long, true));
        assert_eq!(LOWER.with_borrow(|lower| lower.capacity()), 0);
        assert!(!kw.may_occur(&long.replace("Secret", "public"), true));
    }

    #[test]
    fn the_prefilter_skips_clean_text_and_misses_no_match() {
        let kw = keywords(&["confidential", "Bluebird", "wire tap", "qz"]);
        assert!(
            kw.prefilter.is_some(),
            "a short list gets a packed searcher"
        );
        assert!(!kw.may_occur(
            "Nothing to see in this long, clean sentence about trains.",
            true
        ));
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
        assert!(kw.may_occur("Bluebirds", true));
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
