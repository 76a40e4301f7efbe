//! The error of building a [`ContentFilter`](super::ContentFilter) from its configuration.

use std::fmt;
use std::path::PathBuf;

/// A content filter configuration that cannot be used. Every variant names the offending key
/// or value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentFilterError {
    /// `patterns[index].pattern_name` is not a prebuilt pattern.
    UnknownPrebuilt {
        /// The position in `patterns`.
        index: usize,
        /// The name that was asked for.
        name: String,
        /// The prebuilt pattern names that exist.
        valid: Vec<&'static str>,
    },
    /// `patterns[index].pattern` does not compile.
    InvalidRegex {
        /// The position in `patterns`.
        index: usize,
        /// The pattern's `name` (or `custom_regex`).
        name: String,
        /// Why it does not compile.
        reason: String,
    },
    /// `patterns[index].pattern` compiles to more than the size limit.
    RegexTooLarge {
        /// The position in `patterns`.
        index: usize,
        /// The pattern's `name` (or `custom_regex`).
        name: String,
        /// The limit, in bytes of compiled program.
        limit: usize,
    },
    /// `patterns[index].pattern` can match the empty string, which would match everywhere.
    EmptyMatchRegex {
        /// The position in `patterns`.
        index: usize,
        /// The pattern's `name` (or `custom_regex`).
        name: String,
    },
    /// A keyword is empty or only whitespace.
    EmptyKeyword {
        /// Where it was: `blocked_words[3]`, or `<file>: blocked_words[3]`.
        location: String,
    },
    /// A keyword has nothing but `*` wildcards (and whitespace): it would match almost
    /// anywhere.
    WildcardOnlyKeyword {
        /// Where it was: `blocked_words[3]`, or `<file>: blocked_words[3]`.
        location: String,
        /// The keyword.
        keyword: String,
    },
    /// `blocked_words_file` cannot be read or is not a valid blocked words file.
    BlockedWordsFile {
        /// The path as configured.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `max_unbounded_match_chars` is zero.
    ZeroMaxUnboundedMatchChars,
}

impl fmt::Display for ContentFilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentFilterError::UnknownPrebuilt { index, name, valid } => write!(
                f,
                "patterns[{index}]: unknown prebuilt pattern_name '{name}' (valid: {})",
                valid.join(", ")
            ),
            ContentFilterError::InvalidRegex {
                index,
                name,
                reason,
            } => write!(
                f,
                "patterns[{index}] ('{name}'): invalid regex pattern: {reason}"
            ),
            ContentFilterError::RegexTooLarge { index, name, limit } => write!(
                f,
                "patterns[{index}] ('{name}'): regex pattern is too large once compiled \
                 (limit {limit} bytes); simplify it or lower its repetition counts"
            ),
            ContentFilterError::EmptyMatchRegex { index, name } => write!(
                f,
                "patterns[{index}] ('{name}'): regex pattern can match the empty string"
            ),
            ContentFilterError::EmptyKeyword { location } => {
                write!(f, "{location}: keyword is empty")
            }
            ContentFilterError::WildcardOnlyKeyword { location, keyword } => write!(
                f,
                "{location}: keyword '{keyword}' has only '*' wildcards; it needs at least one \
                 other character"
            ),
            ContentFilterError::BlockedWordsFile { path, reason } => {
                write!(f, "blocked_words_file '{}': {reason}", path.display())
            }
            ContentFilterError::ZeroMaxUnboundedMatchChars => {
                f.write_str("max_unbounded_match_chars must be at least 1")
            }
        }
    }
}

impl std::error::Error for ContentFilterError {}
