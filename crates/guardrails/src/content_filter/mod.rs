//! A `litellm_content_filter`-compatible guardrail: keywords and regex patterns that block a
//! text or mask what they match, configured with LiteLLM's keys.
//!
//! ```
//! use guardrail_tower_core::{Guardrail, SpanMatcher};
//! use guardrail_tower_guardrails::content_filter::{ContentFilter, ContentFilterConfig};
//!
//! let config: ContentFilterConfig = serde_yaml_ng::from_str(r#"
//! guardrail: litellm_content_filter
//! mode: pre_call
//! patterns:
//!   - pattern_type: prebuilt
//!     pattern_name: us_ssn
//!     action: BLOCK
//!   - pattern_type: prebuilt
//!     pattern_name: email
//!     action: MASK
//! blocked_words:
//!   - keyword: confidential
//!     action: BLOCK
//!     description: Internal confidential information
//! "#)?;
//! let filter = ContentFilter::new(config)?;
//! assert_eq!(filter.provider(), "litellm_content_filter");
//!
//! let verdict = filter.check_texts(&["Contact me at john@example.com"]);
//! assert_eq!(
//!     verdict.decision(),
//!     &guardrail_tower_core::Decision::Rewrite {
//!         texts: vec!["Contact me at [EMAIL_REDACTED]".into()]
//!     }
//! );
//! assert_eq!(verdict.masked_entity_count().unwrap()["email"], 1);
//!
//! let verdict = filter.check_texts(&["My SSN is 123-45-6789"]);
//! assert_eq!(
//!     verdict.decision(),
//!     &guardrail_tower_core::Decision::Block {
//!         message: "Content blocked: us_ssn pattern detected".into()
//!     }
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Configuration
//!
//! [`ContentFilterConfig`] reads the `litellm_params` of a LiteLLM guardrail entry:
//! `blocked_words`, `blocked_words_file`, `patterns`, `pattern_redaction_format`,
//! `keyword_redaction_tag`, and `max_unbounded_match_chars` (ours). Other keys are ignored;
//! LiteLLM's `categories` are not supported. Where LiteLLM logs and skips a bad entry of a
//! `blocked_words_file`, this refuses the configuration with an error naming the file.
//!
//! # Matching
//!
//! Keywords and prebuilt patterns read the text with look-alike and invisible characters
//! folded: decimal digits of every script (`１２３`, `١٢٣`, `१२३`) as ASCII digits, fullwidth
//! forms (`＠`, `ｓｅｃｒｅｔ`) as ASCII, letters that look like a Latin letter as that letter
//! (Cyrillic `а`, Greek `ο`, mathematical `𝐜`, circled `ⓒ`, small capital `ᴄ`: Unicode's
//! confusables and compatibility forms), letters with accents as the letter without (`é`, `ö`,
//! `ł`), ligatures and digraphs as their letters (`ﬁ` as `fi`, `ǅ` as `dz`), no-break and other
//! Unicode spaces as a space, Unicode hyphens, en dashes and the minus
//! sign as `-`; zero-width spaces and joiners, the soft hyphen, the word joiner, bidi controls,
//! variation selectors, tag characters, the byte order mark and combining diacritical marks
//! (an accent typed after a letter, or a stack of them) are skipped. Keywords are read the same
//! way, so `café` matches `cafe` and `CAFÉ`. A match is masked in the text as written (invisible
//! characters and marks inside it included). Custom regexes read the text as written.
//!
//! - **Keywords** match case-insensitively (ASCII case, and the single-character Unicode
//!   lower case of other letters, so `Straße` matches `STRAẞE`) and on word boundaries: where
//!   a match begins or ends with a letter, digit or `_` (Unicode), the character beyond it must
//!   not be one. `ass` does not match in `class`; `c++` matches in `c++11`, `=` anywhere.
//!   A `*` in a keyword stands for zero or one character other than a line break, as in
//!   LiteLLM (`fu*k` matches `fuck`, `fuk`, `fu-k`, `fu k`; not `fuuuck`, not `fu\nk`); it
//!   cannot be escaped, and a keyword of nothing but `*` is a configuration error. All
//!   keywords are found in one Aho-Corasick pass (a wildcard keyword by its longest literal
//!   run, then checked whole around it). LiteLLM matches keywords as substrings of the lower-
//!   cased text in most versions (newer ones add `\b` around keywords made of word
//!   characters): `passwords` is blocked by `pass*word` there, not here.
//! - **Prebuilt patterns** (ASCII over the folded text; `\b` below is an ASCII word boundary):
//!
//!   | name | matches |
//!   |------|---------|
//!   | `email` | `local@domain.tld`: a local part of any length, a domain of up to 253 characters |
//!   | `us_ssn` | `123-45-6789`; area not 000, 666 or 9xx, group not 00, serial not 0000; no digit right before or after |
//!   | `us_ssn_no_dash` | `123456789`, same rules, on `\b` |
//!   | `us_phone` | `555-123-4567`, `(555) 123-4567`, `+1 555.123.4567`, `5551234567`; no digit right before or after |
//!   | `credit_card` | a card number (below), Luhn-checked |
//!   | `visa`, `mastercard`, `amex`, `discover` | a card number of the brand's prefixes and lengths (Visa 4, 13/16/19 digits; Mastercard 51-55 and 2221-2720, 16; Amex 34/37, 15; Discover 6011, 644-649, 65, 16/19), Luhn-checked |
//!   | `ipv4` | dotted quads with octets 0 to 255, no leading zeros, on `\b` |
//!   | `aws_access_key` | `AKIA` or `ASIA` and 16 upper-case letters or digits |
//!   | `github_token` | `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and 36 letters or digits; `github_pat_` and 82 |
//!   | `slack_token` | `xoxp-`, `xoxb-`, `xoxo-`, `xoxa-` tokens |
//!   | `generic_api_key` | `sk-` keys (`sk-proj-...`, `sk-ant-...`) with 20 to 256 more `[A-Za-z0-9_-]`; assignments `api_key=...`, `apikey: ...`, `OPENAI_API_KEY="..."` with a 20 to 256 character value (the assignment is matched) |
//!
//!   Numbers match on token boundaries, so adjacent numbers never merge. A card number is read
//!   from a run of digit groups joined by single spaces or dashes, as whole groups laid out as
//!   cards are printed (13 to 19 digits in one group; 4-4-4 and 1 to 4 more; 4-4-4-4 and 1 to 3
//!   more; 4-6 and 4 or 5 more), never starting on a group that a dash joins to the number
//!   before it (`123-45-6789 4111 ...`) and never taking a group that `.`, `,`, `/` or `:`
//!   joins to more digits (`... 1111 10.0.0.1`). Where two candidates overlap (a card after a
//!   4-digit year whose shifted window passes Luhn too), both are masked as one span. A letter
//!   glued to an SSN, phone or card number (`ID123-45-6789`) does not hide it (LiteLLM's `\b`
//!   does). They match exactly as written (LiteLLM compiles its prebuilt patterns
//!   case-insensitively; these spell out the letter cases they accept). Patterns with a check
//!   (SSN rules, boundaries) look for another candidate inside a rejected one.
//!
//!   Where LiteLLM's own patterns let a value through, these do not: its `us_phone`, `ipv4`
//!   and `email` use `[0-9]`/`[A-Za-z]` classes, so fullwidth or other-script digits and
//!   fullwidth letters pass; its patterns read the text as written, so a zero-width space or
//!   a Unicode hyphen inside a number or keyword hides it.
//! - **Custom regexes** use Rust [`regex`](https://docs.rs/regex) syntax and, as in LiteLLM,
//!   match case-insensitively (`(?-i)` turns it off). A regex that can match the empty string,
//!   or that compiles to more than 1 MiB, is a configuration error.
//!
//! Overlapping matches are resolved the same way everywhere: a `BLOCK` match is never hidden
//! by a `MASK` one (a masked span that runs into it ends where it starts); `MASK` matches that
//! overlap are masked as one span, tagged by the match that starts first (at one start the
//! longer, then the rule configured first: keywords, then `patterns` in order); of `BLOCK`
//! matches that overlap, the first counts.
//!
//! # Actions
//!
//! Any `BLOCK` match blocks the whole input. The message names the rule, never the matched
//! text, in LiteLLM's words: `Content blocked: us_ssn pattern detected`,
//! `Content blocked: keyword 'confidential' detected (Internal confidential information)`.
//! Otherwise every masked span is replaced: by `pattern_redaction_format` with
//! `{pattern_name}` replaced by the pattern's name in upper case (`[EMAIL_REDACTED]`), or by
//! `keyword_redaction_tag` (`[KEYWORD_REDACTED]`). `masked_entity_count` counts masked spans
//! under LiteLLM's keys: the pattern's name (`email`, `us_ssn`, a custom regex's `name`) and
//! `blocked_word` for keywords. (LiteLLM counts one per rule and text; this counts every
//! span.) The log detail lists, per rule, its type, name, action and match count, never the
//! matched text.
//!
//! # Streaming
//!
//! [`ContentFilter`] is a [`SpanMatcher`]: a streamed response is checked exactly. It holds
//! back only what could still become part of a match (a trailing partial keyword, a trailing
//! run of characters a pattern could still match), and a match that reaches into that part
//! waits with it, so what is released is final. The longest match a stream handles whole,
//! [`SpanMatcher::max_match_chars`], is bounded for every rule:
//!
//! - a keyword: its length, each `*` counting one (a wildcard reaches one character);
//! - `email`: 512 characters (a local part of 256 and the longest domain); a longer local part
//!   may have its beginning released before the `@` arrives;
//! - the card patterns: runs of digit groups up to 64 characters (a card and the numbers
//!   around it); overlapping candidates chained beyond that may be masked in pieces;
//! - a custom regex without an upper bound on its match length (`\d+`): `max_unbounded_match_chars`
//!   (default 256); a longer match of it may be split in a stream.

mod config;
mod error;
mod keywords;
mod look_alikes;
mod needs;
mod normalize;
mod patterns;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use guardrail_tower_core::{
    Guardrail, GuardrailError, GuardrailInput, SpanAction, SpanMatch, SpanMatcher, Verdict,
};
use regex::{RegexSet, RegexSetBuilder};
use serde_json::{Value, json};

pub use config::{
    BlockedWord, ContentFilterConfig, DEFAULT_KEYWORD_REDACTION_TAG,
    DEFAULT_MAX_UNBOUNDED_MATCH_CHARS, DEFAULT_PATTERN_REDACTION_FORMAT, FilterAction,
    PatternConfig,
};
pub use error::ContentFilterError;

use keywords::Keywords;
use needs::Search;
use normalize::{Folded, fold_text};
use patterns::{PREBUILT, PatternRule, REGEX_SIZE_LIMIT, Scratch, Tails};

/// The `guardrail_provider` of this guardrail, as LiteLLM names it.
pub const PROVIDER: &str = "litellm_content_filter";

/// The entity name of masked keywords in `masked_entity_count`, as LiteLLM names it.
pub const KEYWORD_ENTITY: &str = "blocked_word";

/// A `litellm_content_filter`-compatible keyword and pattern filter. Cheap to clone.
///
/// See the [module documentation](self) for what it matches and how.
#[derive(Debug, Clone)]
pub struct ContentFilter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keywords: Option<Keywords>,
    keyword_replacement: String,
    patterns: Vec<PatternRule>,
    /// All patterns at once, to skip the ones that cannot match. `None` when there are fewer
    /// than two patterns, or the set would be too large.
    set: Option<RegexSet>,
    /// The byte sets the patterns need, to skip the patterns a text cannot match before any
    /// regex runs. `None` with more than [`SET_STACK`] patterns.
    needs: Option<PatternNeeds>,
    /// Every pattern's trailing run in one walk. `None` without patterns or with more than 64.
    tails: Option<Tails>,
    max_match_chars: usize,
}

/// The distinct byte sets of all patterns' [`PatternRule::needs`], each looked for at most once
/// per text.
#[derive(Debug)]
struct PatternNeeds {
    sets: Vec<Search>,
    /// Per pattern, indices into `sets`.
    of_pattern: Vec<Vec<u8>>,
}

impl PatternNeeds {
    fn new(patterns: &[PatternRule]) -> Option<PatternNeeds> {
        if patterns.len() > SET_STACK {
            return None;
        }
        let mut sets: Vec<Search> = Vec::new();
        let mut of_pattern = Vec::with_capacity(patterns.len());
        for p in patterns {
            let mut indices = Vec::with_capacity(p.needs.len());
            for set in &p.needs {
                let search = set.search();
                let i = match sets.iter().position(|s| *s == search) {
                    Some(i) => i,
                    None => {
                        sets.push(search);
                        sets.len() - 1
                    }
                };
                indices.push(u8::try_from(i).ok()?);
            }
            of_pattern.push(indices);
        }
        // `candidates` keeps one bit per distinct set: up to 64 patterns with up to two sets
        // each may have more.
        (sets.len() <= 64).then_some(PatternNeeds { sets, of_pattern })
    }

    /// Bit `i` set: pattern `i` may match `text` (it contains a byte of each of its sets).
    fn candidates(&self, text: &[u8]) -> u64 {
        let (mut known, mut present, mut out) = (0u64, 0u64, 0u64);
        'patterns: for (i, needs) in self.of_pattern.iter().enumerate() {
            for &s in needs {
                let bit = 1u64 << s;
                if known & bit == 0 {
                    known |= bit;
                    if self.sets[usize::from(s)].occurs_in(text) {
                        present |= bit;
                    }
                }
                if present & bit == 0 {
                    continue 'patterns;
                }
            }
            out |= 1 << i;
        }
        out
    }
}

/// Which rule a match comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Rule {
    Keyword(usize),
    Pattern(usize),
}

/// Up to this many patterns, the prefilter's per-pattern flags live on the stack.
const SET_STACK: usize = 64;

/// A match before it becomes a [`SpanMatch`].
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    rule: Rule,
    action: FilterAction,
}

impl ContentFilter {
    /// Builds the filter, reading `blocked_words_file` and compiling every keyword and
    /// pattern. Errors name the offending key and value.
    pub fn new(config: ContentFilterConfig) -> Result<ContentFilter, ContentFilterError> {
        if config.max_unbounded_match_chars == 0 {
            return Err(ContentFilterError::ZeroMaxUnboundedMatchChars);
        }
        let pattern_format = config
            .pattern_redaction_format
            .as_deref()
            .unwrap_or(DEFAULT_PATTERN_REDACTION_FORMAT);
        let keyword_replacement = config
            .keyword_redaction_tag
            .clone()
            .unwrap_or_else(|| DEFAULT_KEYWORD_REDACTION_TAG.to_owned());

        // Keywords: configured ones, then the file's; the last definition of a keyword wins.
        let mut words: Vec<(String, BlockedWord)> = Vec::new();
        let mut add = |word: BlockedWord, location: String| -> Result<(), ContentFilterError> {
            // Compared, and checked for something to match, as the text is read: folded.
            let key = keywords::fold_keyword(&word.keyword);
            if key.trim().is_empty() {
                return Err(ContentFilterError::EmptyKeyword { location });
            }
            if !keywords::has_literal(&key) {
                return Err(ContentFilterError::WildcardOnlyKeyword {
                    location,
                    keyword: word.keyword,
                });
            }
            match words.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = word,
                None => words.push((key, word)),
            }
            Ok(())
        };
        for (i, word) in config.blocked_words.into_iter().enumerate() {
            add(word, format!("blocked_words[{i}]"))?;
        }
        if let Some(path) = &config.blocked_words_file {
            for (i, word) in config::read_blocked_words_file(path)?
                .into_iter()
                .enumerate()
            {
                add(word, format!("{}: blocked_words[{i}]", path.display()))?;
            }
        }
        let keywords = Keywords::new(
            words
                .into_iter()
                .map(|(key, w)| (w.keyword, key, w.action, w.description))
                .collect(),
        );

        let mut patterns = Vec::with_capacity(config.patterns.len());
        let mut set_sources = Vec::with_capacity(config.patterns.len());
        for (index, pattern) in config.patterns.iter().enumerate() {
            match pattern {
                PatternConfig::Prebuilt {
                    pattern_name,
                    action,
                } => {
                    let prebuilt = patterns::prebuilt(pattern_name).ok_or_else(|| {
                        ContentFilterError::UnknownPrebuilt {
                            index,
                            name: pattern_name.clone(),
                            valid: ContentFilter::prebuilt_pattern_names().collect(),
                        }
                    })?;
                    patterns.push(PatternRule::prebuilt(
                        index,
                        prebuilt,
                        *action,
                        pattern_format,
                    )?);
                    set_sources.push(prebuilt.set_source().to_owned());
                }
                PatternConfig::Regex {
                    pattern,
                    name,
                    action,
                } => {
                    let name = name.clone().unwrap_or_else(|| "custom_regex".to_owned());
                    patterns.push(PatternRule::new(
                        index,
                        name,
                        pattern,
                        true,
                        *action,
                        pattern_format,
                        config.max_unbounded_match_chars,
                    )?);
                    set_sources.push(format!("(?i){pattern}"));
                }
            }
        }
        let set = if patterns.len() >= 2 {
            RegexSetBuilder::new(&set_sources)
                .size_limit(REGEX_SIZE_LIMIT.saturating_mul(patterns.len()))
                .dfa_size_limit(REGEX_SIZE_LIMIT.saturating_mul(2))
                .build()
                .ok()
        } else {
            None
        };
        let needs = PatternNeeds::new(&patterns);
        let tails = Tails::new(&patterns);
        let max_match_chars = patterns
            .iter()
            .map(|p| p.max_chars)
            .chain(keywords.as_ref().map(|k| k.max_chars))
            .max()
            .unwrap_or(0)
            .max(1);
        Ok(ContentFilter {
            inner: Arc::new(Inner {
                keywords,
                keyword_replacement,
                patterns,
                set,
                needs,
                tails,
                max_match_chars,
            }),
        })
    }

    /// The names of the prebuilt patterns.
    pub fn prebuilt_pattern_names() -> impl Iterator<Item = &'static str> {
        PREBUILT.iter().map(|p| p.name)
    }

    /// Checks texts as [`Guardrail::check`] does, synchronously: block if any text has a
    /// `BLOCK` match, else rewrite the texts if any has a `MASK` match, else allow.
    ///
    /// Allocates nothing when nothing matches in texts with nothing to fold (ASCII, or without
    /// look-alike or invisible characters).
    pub fn check_texts<S: AsRef<str>>(&self, texts: &[S]) -> Verdict {
        let mut found: Vec<(usize, Vec<Hit>)> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let hits = self.hits(text.as_ref(), false);
            if !hits.is_empty() {
                found.push((i, hits));
            }
        }
        if found.is_empty() {
            return Verdict::allow();
        }
        let detail = self.detail(found.iter().flat_map(|(_, hits)| hits.iter()));
        let first_block = found
            .iter()
            .flat_map(|(_, hits)| hits.iter())
            .find(|h| h.action == FilterAction::Block);
        if let Some(hit) = first_block {
            return Verdict::block(self.message(hit.rule)).with_detail(detail);
        }
        let mut counts = BTreeMap::new();
        let mut out: Vec<String> = Vec::with_capacity(texts.len());
        let mut found = found.into_iter().peekable();
        for (i, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            match found.next_if(|(j, _)| *j == i) {
                Some((_, hits)) => {
                    let mut masked = String::with_capacity(text.len());
                    let mut last = 0;
                    for hit in &hits {
                        masked.push_str(&text[last..hit.start]);
                        masked.push_str(self.replacement(hit.rule));
                        last = hit.end;
                        *counts.entry(self.entity(hit.rule).to_owned()).or_insert(0) += 1;
                    }
                    masked.push_str(&text[last..]);
                    out.push(masked);
                }
                None => out.push(text.to_owned()),
            }
        }
        Verdict::rewrite(out)
            .with_masked_entity_count(counts)
            .with_detail(detail)
    }

    /// The matches in `text`: sorted, not overlapping, resolved as documented; with `partial`,
    /// only those that no further text can change.
    fn hits(&self, text: &str, partial: bool) -> Vec<Hit> {
        self.hits_and_settled(text, partial, false).0
    }

    /// [`Self::hits`], and with `partial` where the text stops being final
    /// ([`Self::settled_point`]; `text.len()` without `partial`). The point is found only when
    /// some hit needs it, unless `always_settle` asks for it (a stream's hold-back).
    fn hits_and_settled(
        &self,
        text: &str,
        partial: bool,
        always_settle: bool,
    ) -> (Vec<Hit>, usize) {
        let folded = fold_text(text);
        let mut hits = Vec::new();
        let pending = self.raw_hits(text, &folded, partial, &mut hits);
        let mut settled = text.len();
        if partial && (always_settle || !hits.is_empty()) {
            // Only matches that no further text can change take part, and they end before
            // anything that may still change starts (see `settled_point`).
            settled = self.settled_point(text, &folded, &hits, pending);
            hits.retain(|h| h.start < settled);
        }
        if !hits.is_empty() {
            hits = resolve(hits);
        }
        (hits, settled)
    }

    /// With more text to come: where the text stops being final. Matches that start at
    /// [`Self::settled_before`] or later may still change; a match that starts before it but
    /// reaches into that part must wait too (it may merge with, or hide a `BLOCK` in, what is
    /// still coming), and so on for matches that reach into it. Every match that starts before
    /// the point returned ends before it.
    fn settled_point(
        &self,
        text: &str,
        folded: &Folded<'_>,
        hits: &[Hit],
        pending: Option<usize>,
    ) -> usize {
        let mut settled = self.settled_before(text, folded, pending);
        while let Some(start) = hits
            .iter()
            .filter(|h| h.start < settled && h.end > settled)
            .map(|h| h.start)
            .min()
        {
            settled = start;
        }
        settled
    }

    /// Every match of every rule, in offsets of `text`, unresolved (they may overlap). Returns
    /// where the folded text may still begin a keyword when the keyword search found it on
    /// the way (see [`Keywords::for_each_match`]), for [`Self::settled_before`].
    fn raw_hits(
        &self,
        text: &str,
        folded: &Folded<'_>,
        partial: bool,
        hits: &mut Vec<Hit>,
    ) -> Option<usize> {
        let inner = &*self.inner;
        let ftext = folded.text();
        let mut pending = None;
        if let Some(kw) = &inner.keywords {
            pending = kw.for_each_match(ftext, folded.is_ascii(), partial, &mut |k, start, end| {
                hits.push(Hit {
                    start: folded.original(start),
                    end: folded.original_end(end),
                    rule: Rule::Keyword(k),
                    action: kw.list[k].action,
                });
            });
        }
        if inner.patterns.is_empty() {
            return pending;
        }
        let mut scratch = Scratch::default();
        if folded.changed() {
            // Prebuilt patterns read the folded text, custom regexes the text as written (a
            // custom regex may look for the very characters folding changes); one by one.
            for (i, p) in inner.patterns.iter().enumerate() {
                let (on, map) = if p.prebuilt {
                    (ftext, true)
                } else {
                    (text, false)
                };
                p.for_each_match(on, &mut scratch, |start, end| {
                    let (start, end) = if map {
                        (folded.original(start), folded.original_end(end))
                    } else {
                        (start, end)
                    };
                    hits.push(Hit {
                        start,
                        end,
                        rule: Rule::Pattern(i),
                        action: p.action,
                    });
                });
            }
            return pending;
        }
        let mut scan = |i: usize| {
            let p = &inner.patterns[i];
            p.for_each_match(text, &mut scratch, |start, end| {
                hits.push(Hit {
                    start,
                    end,
                    rule: Rule::Pattern(i),
                    action: p.action,
                });
            });
        };
        // Bit `i`: pattern `i` may match. All of them without the byte prefilter.
        let candidates = match &inner.needs {
            Some(needs) => needs.candidates(text.as_bytes()),
            None => u64::MAX,
        };
        let may_match = |i: usize| i >= 64 || candidates >> i & 1 == 1;
        match &inner.set {
            _ if candidates == 0 => {}
            // One candidate (never without the prefilter: then all are): its own regex,
            // not the set.
            _ if candidates.is_power_of_two() => {
                scan(candidates.trailing_zeros() as usize);
            }
            // `is_match` is the fast path for the common no-match case.
            Some(set) if !set.is_match(text) => {}
            Some(set) if set.len() <= SET_STACK => {
                let mut matched = [false; SET_STACK];
                set.matches_read_at(&mut matched[..set.len()], text, 0);
                for (i, _) in matched
                    .iter()
                    .enumerate()
                    .filter(|(i, m)| **m && may_match(*i))
                {
                    scan(i);
                }
            }
            Some(set) => {
                for i in set.matches(text).iter() {
                    scan(i);
                }
            }
            None => (0..inner.patterns.len())
                .filter(|&i| may_match(i))
                .for_each(scan),
        }
        pending
    }

    /// With more text to come: matches that start here or later may still change.
    /// `pending`: where the folded text may still begin a keyword, when already known.
    fn settled_before(&self, text: &str, folded: &Folded<'_>, pending: Option<usize>) -> usize {
        let inner = &*self.inner;
        let ftext = folded.text();
        let mut from = text.len();
        if let Some(kw) = &inner.keywords {
            let pending = pending.unwrap_or_else(|| kw.pending_from(ftext));
            from = from.min(folded.original(pending));
        }
        // Text with nothing folded is what every pattern reads: one walk for all of them.
        if let Some(tails) = inner.tails.as_ref().filter(|_| !folded.changed()) {
            if let Some(unsettled) = tails.unsettled_from(text) {
                return from.min(unsettled);
            }
        }
        for p in &inner.patterns {
            let unsettled = if p.prebuilt {
                folded.original(p.unsettled_from(ftext))
            } else {
                p.unsettled_from(text)
            };
            from = from.min(unsettled);
        }
        from
    }

    fn message(&self, rule: Rule) -> &str {
        match rule {
            Rule::Keyword(k) => &self.keywords().list[k].message,
            Rule::Pattern(p) => &self.inner.patterns[p].message,
        }
    }

    fn replacement(&self, rule: Rule) -> &str {
        match rule {
            Rule::Keyword(_) => &self.inner.keyword_replacement,
            Rule::Pattern(p) => &self.inner.patterns[p].replacement,
        }
    }

    fn entity(&self, rule: Rule) -> &str {
        match rule {
            Rule::Keyword(_) => KEYWORD_ENTITY,
            Rule::Pattern(p) => &self.inner.patterns[p].name,
        }
    }

    fn keywords(&self) -> &Keywords {
        self.inner
            .keywords
            .as_ref()
            .expect("a keyword hit implies keywords")
    }

    /// The log detail: per rule, in order of first match, what it is and how often it
    /// matched; never the matched text.
    fn detail<'a>(&self, hits: impl Iterator<Item = &'a Hit>) -> Value {
        let mut rules: Vec<(Rule, FilterAction, u64)> = Vec::new();
        for hit in hits {
            match rules.iter_mut().find(|(r, _, _)| *r == hit.rule) {
                Some(entry) => entry.2 += 1,
                None => rules.push((hit.rule, hit.action, 1)),
            }
        }
        Value::Array(
            rules
                .into_iter()
                .map(|(rule, action, count)| match rule {
                    Rule::Keyword(k) => {
                        let kw = &self.keywords().list[k];
                        json!({
                            "type": "blocked_word",
                            "keyword": kw.display,
                            "action": action.as_str(),
                            "description": kw.description,
                            "count": count,
                        })
                    }
                    Rule::Pattern(p) => json!({
                        "type": "pattern",
                        "pattern_name": self.inner.patterns[p].name,
                        "action": action.as_str(),
                        "count": count,
                    }),
                })
                .collect(),
        )
    }
}

fn action_rank(action: FilterAction) -> u8 {
    match action {
        FilterAction::Block => 0,
        FilterAction::Mask => 1,
    }
}

/// Resolves overlapping matches: a `BLOCK` match is never hidden by a `MASK` one; `BLOCK`
/// matches that overlap keep the one that starts first; `MASK` matches that overlap are merged
/// into one masked span, tagged by the one that starts first (at one start the longer, then
/// the rule configured first), and a masked span that runs into a `BLOCK` match ends where it
/// starts. Sorted, not overlapping.
fn resolve(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then_with(|| action_rank(a.action).cmp(&action_rank(b.action)))
            .then_with(|| b.end.cmp(&a.end))
            .then_with(|| a.rule.cmp(&b.rule))
    });
    let mut blocks: Vec<Hit> = Vec::new();
    let mut masks: Vec<Hit> = Vec::new();
    for hit in hits {
        match hit.action {
            FilterAction::Block => {
                if blocks.last().is_none_or(|b| hit.start >= b.end) {
                    blocks.push(hit);
                }
            }
            FilterAction::Mask => match masks.last_mut() {
                Some(span) if hit.start < span.end => span.end = span.end.max(hit.end),
                _ => masks.push(hit),
            },
        }
    }
    if blocks.is_empty() {
        return masks;
    }
    let mut out = Vec::with_capacity(blocks.len() + masks.len());
    let mut next_block = blocks.iter().peekable();
    for mut span in masks {
        while let Some(block) = next_block.next_if(|b| b.end <= span.start) {
            out.push(*block);
        }
        // The first block that ends after the span starts: does the span reach it?
        if let Some(block) = next_block.peek() {
            if block.start < span.end {
                if block.start <= span.start {
                    continue;
                }
                span.end = block.start;
            }
        }
        out.push(span);
    }
    out.extend(next_block.copied());
    out
}

impl SpanMatcher for ContentFilter {
    /// The longest keyword or pattern match a stream handles whole, in characters: a keyword's
    /// length (each `*` counting one), a bounded regex's longest match, 512 for `email`, 64 for
    /// the card patterns, `max_unbounded_match_chars` for a custom regex without a bound.
    fn max_match_chars(&self) -> usize {
        self.inner.max_match_chars
    }

    /// Only what could still become part of a match: the trailing part of a keyword the text
    /// could still complete, the trailing run of characters a pattern could still match (its
    /// alphabet, up to its longest match), and any match that reaches into them. In running
    /// prose that is usually the last partial word, so a guarded stream adds almost no delay.
    fn hold_back(&self, text: &str) -> usize {
        let folded = fold_text(text);
        if self.settled_before(text, &folded, None) == text.len() {
            return 0;
        }
        let mut hits = Vec::new();
        let pending = self.raw_hits(text, &folded, true, &mut hits);
        text.len() - self.settled_point(text, &folded, &hits, pending)
    }

    /// The matches in `text`, resolved as the [module documentation](self) describes.
    ///
    /// With `partial`, the end of `text` is not a word boundary, and a match is reported only
    /// once no further text can change it: no keyword that could still be completed, and no
    /// pattern match that could still grow or appear, starts at or before its end. A match
    /// that ends at the very end of `text` is therefore never reported, and everything before
    /// `text.len() - hold_back(text)` is final. `SpanMatch::message` is empty for masks.
    fn find(&self, text: &str, partial: bool) -> Vec<SpanMatch> {
        self.span_matches(self.hits(text, partial))
    }

    /// `find(text, true)` and `hold_back(text)` from one fold and one scan of `text`.
    fn find_partial(&self, text: &str) -> (Vec<SpanMatch>, usize) {
        let (hits, settled) = self.hits_and_settled(text, true, true);
        (self.span_matches(hits), text.len() - settled)
    }
}

impl ContentFilter {
    /// Resolved hits as the matches [`SpanMatcher::find`] reports.
    fn span_matches(&self, hits: Vec<Hit>) -> Vec<SpanMatch> {
        if hits.is_empty() {
            return Vec::new();
        }
        hits.into_iter()
            .map(|hit| SpanMatch {
                range: hit.start..hit.end,
                action: match hit.action {
                    FilterAction::Block => SpanAction::Block,
                    FilterAction::Mask => SpanAction::Mask {
                        replacement: self.replacement(hit.rule).to_owned(),
                    },
                },
                entity: self.entity(hit.rule).to_owned(),
                message: match hit.action {
                    FilterAction::Block => self.message(hit.rule).to_owned(),
                    FilterAction::Mask => String::new(),
                },
            })
            .collect()
    }
}

impl Guardrail for ContentFilter {
    /// Runs [`ContentFilter::check_texts`] on the input; never fails, never waits.
    fn check(
        &self,
        input: &GuardrailInput,
    ) -> impl Future<Output = Result<Verdict, GuardrailError>> + Send {
        std::future::ready(Ok(self.check_texts(input.texts())))
    }

    /// The same answer, at once.
    fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
        Some(Ok(self.check_texts(input.texts())))
    }

    fn provider(&self) -> &str {
        PROVIDER
    }

    fn span_matcher(&self) -> Option<&dyn SpanMatcher> {
        Some(self)
    }

    /// Only the texts it is given.
    fn reads_request_body(&self) -> bool {
        false
    }

    /// Nor the request's headers.
    fn reads_request_headers(&self) -> bool {
        false
    }
}
