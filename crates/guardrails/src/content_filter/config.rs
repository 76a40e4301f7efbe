//! The configuration, in LiteLLM's `litellm_params` shape.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::error::ContentFilterError;

/// The default `pattern_redaction_format`, LiteLLM's: `{pattern_name}` is replaced by the
/// pattern's name in upper case (`[EMAIL_REDACTED]`).
pub const DEFAULT_PATTERN_REDACTION_FORMAT: &str = "[{pattern_name}_REDACTED]";

/// The default `keyword_redaction_tag`, LiteLLM's.
pub const DEFAULT_KEYWORD_REDACTION_TAG: &str = "[KEYWORD_REDACTED]";

/// The default `max_unbounded_match_chars`.
pub const DEFAULT_MAX_UNBOUNDED_MATCH_CHARS: usize = 256;

/// What to do with a match.
///
/// Deserialized from `BLOCK` or `MASK` in any letter case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterAction {
    /// Refuse the whole text.
    Block,
    /// Replace the match with a redaction tag.
    Mask,
}

impl FilterAction {
    /// `BLOCK` or `MASK`, as LiteLLM writes them.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Block => "BLOCK",
            FilterAction::Mask => "MASK",
        }
    }
}

impl fmt::Display for FilterAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FilterAction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.eq_ignore_ascii_case("block") {
            Ok(FilterAction::Block)
        } else if s.eq_ignore_ascii_case("mask") {
            Ok(FilterAction::Mask)
        } else {
            Err(serde::de::Error::custom(format!(
                "unknown action '{s}' (expected BLOCK or MASK)"
            )))
        }
    }
}

/// One entry of `blocked_words` (or of a `blocked_words_file`).
///
/// ```yaml
/// - keyword: "confidential"
///   action: "BLOCK"
///   description: "Internal confidential information"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockedWord {
    /// The word or phrase, matched case-insensitively on word boundaries; each `*` stands for
    /// zero or one character other than a line break.
    pub keyword: String,
    /// What to do when it is found.
    pub action: FilterAction,
    /// Why it is sensitive; appended to the block message.
    #[serde(default)]
    pub description: Option<String>,
}

impl BlockedWord {
    /// A keyword with an action and no description.
    pub fn new(keyword: impl Into<String>, action: FilterAction) -> Self {
        BlockedWord {
            keyword: keyword.into(),
            action,
            description: None,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

/// One entry of `patterns`, tagged by `pattern_type`.
///
/// ```yaml
/// - pattern_type: "prebuilt"
///   pattern_name: "us_ssn"
///   action: "BLOCK"
/// - pattern_type: "regex"
///   pattern: '\b[A-Z]{3}-\d{4}\b'
///   name: "employee_id"
///   action: "MASK"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "pattern_type", rename_all = "lowercase")]
pub enum PatternConfig {
    /// A pattern shipped with the filter; see
    /// [`ContentFilter::prebuilt_pattern_names`](super::ContentFilter::prebuilt_pattern_names).
    Prebuilt {
        /// The prebuilt pattern's name, e.g. `email`.
        pattern_name: String,
        /// What to do when it matches.
        action: FilterAction,
    },
    /// A custom regular expression (Rust `regex` syntax), matched case-insensitively as
    /// LiteLLM does (`(?-i)` turns that off).
    Regex {
        /// The regular expression.
        pattern: String,
        /// The name used in redaction tags, messages and entity counts; `custom_regex` when
        /// absent, as in LiteLLM.
        #[serde(default)]
        name: Option<String>,
        /// What to do when it matches.
        action: FilterAction,
    },
}

impl PatternConfig {
    /// A prebuilt pattern.
    pub fn prebuilt(pattern_name: impl Into<String>, action: FilterAction) -> Self {
        PatternConfig::Prebuilt {
            pattern_name: pattern_name.into(),
            action,
        }
    }

    /// A named custom regex.
    pub fn regex(
        name: impl Into<String>,
        pattern: impl Into<String>,
        action: FilterAction,
    ) -> Self {
        PatternConfig::Regex {
            pattern: pattern.into(),
            name: Some(name.into()),
            action,
        }
    }
}

/// The content filter's configuration: the `litellm_params` of a `litellm_content_filter`
/// guardrail.
///
/// Unknown keys (`guardrail`, `mode`, `default_on`, `categories`, ...) are ignored, so the
/// whole `litellm_params` map can be deserialized as is. Keys given as `null` take their
/// defaults.
///
/// ```
/// use guardrail_tower_guardrails::content_filter::ContentFilterConfig;
///
/// let config: ContentFilterConfig = serde_yaml_ng::from_str(r#"
/// guardrail: litellm_content_filter
/// mode: pre_call
/// patterns:
///   - pattern_type: prebuilt
///     pattern_name: email
///     action: MASK
/// blocked_words:
///   - keyword: confidential
///     action: BLOCK
/// "#).unwrap();
/// assert_eq!(config.patterns.len(), 1);
/// assert_eq!(config.blocked_words[0].keyword, "confidential");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ContentFilterConfig {
    /// Keywords to block or mask.
    #[serde(deserialize_with = "null_as_default")]
    pub blocked_words: Vec<BlockedWord>,
    /// A YAML file with more keywords, in LiteLLM's format: a map with a `blocked_words` list
    /// of the same entries. A relative path is relative to the working directory. Its
    /// entries come after `blocked_words`; a keyword given twice (in any letter case) keeps
    /// its last definition, as in LiteLLM.
    pub blocked_words_file: Option<PathBuf>,
    /// Prebuilt and custom regex patterns.
    #[serde(deserialize_with = "null_as_default")]
    pub patterns: Vec<PatternConfig>,
    /// The redaction tag of a masked pattern match; `{pattern_name}` is replaced by the
    /// pattern's name in upper case. Default: [`DEFAULT_PATTERN_REDACTION_FORMAT`].
    pub pattern_redaction_format: Option<String>,
    /// The redaction tag of a masked keyword. Default: [`DEFAULT_KEYWORD_REDACTION_TAG`].
    pub keyword_redaction_tag: Option<String>,
    /// The longest match, in characters, assumed for a custom regex whose matches have no
    /// upper bound (`\d+`, `.*`). In a streamed response the filter holds back this many
    /// characters for such a pattern; a longer match may be split across what was already
    /// sent and be masked or blocked only in part. Not a LiteLLM key. Default:
    /// [`DEFAULT_MAX_UNBOUNDED_MATCH_CHARS`].
    pub max_unbounded_match_chars: usize,
}

impl Default for ContentFilterConfig {
    fn default() -> Self {
        ContentFilterConfig {
            blocked_words: Vec::new(),
            blocked_words_file: None,
            patterns: Vec::new(),
            pattern_redaction_format: None,
            keyword_redaction_tag: None,
            max_unbounded_match_chars: DEFAULT_MAX_UNBOUNDED_MATCH_CHARS,
        }
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The shape of a `blocked_words_file`.
#[derive(Deserialize)]
struct BlockedWordsFile {
    blocked_words: Option<Vec<BlockedWord>>,
}

/// Reads a `blocked_words_file`.
pub(super) fn read_blocked_words_file(path: &Path) -> Result<Vec<BlockedWord>, ContentFilterError> {
    let err = |reason: String| ContentFilterError::BlockedWordsFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let file: BlockedWordsFile = serde_yaml_ng::from_str(&text)
        .map_err(|e| err(format!("invalid blocked words file: {e}")))?;
    file.blocked_words
        .ok_or_else(|| err("invalid blocked words file: missing the 'blocked_words' list".into()))
}
