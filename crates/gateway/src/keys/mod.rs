//! Virtual keys: LiteLLM's `LiteLLM_VerificationToken` table, its stores and an in-memory cache.
//!
//! A virtual key is a random `sk-...` string handed to a client once, by `POST /key/generate`.
//! The gateway keeps only its SHA-256 hash (hex, LiteLLM's `hash_token`) in the `token`
//! column, beside what the key allows: `models` (empty: every model), `expires`, `blocked`,
//! `max_parallel_requests` (counted per gateway, [`ResolvedKey::start`]), and `metadata`
//! (free-form JSON, whose `guardrails` list is merged into every request made with the key, like
//! a model's guardrails). `key_alias`, `user_id`, `team_id` and `organization_id`
//! name who it belongs to; they are recorded with every request.
//!
//! Keys live in the spend log's database: [`SqliteKeyStore`] (the default, one file) or
//! [`PostgresKeyStore`] (several replicas share one table). The table has LiteLLM's name and
//! the columns this gateway uses, with LiteLLM's names and types, so an existing LiteLLM
//! database can be pointed at. [`KeyCache`] keeps lookups in memory for a short time: a key
//! deleted on one replica stops working on the others within that time.

mod cache;
mod postgres;
pub mod routes;
mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use cache::{KeyCache, ResolvedKey, Running};
pub use postgres::PostgresKeyStore;
pub use sqlite::SqliteKeyStore;

/// The table, as LiteLLM names it.
pub const TABLE: &str = "LiteLLM_VerificationToken";

/// A boxed future of a [`KeyStore`] operation.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyStoreError>> + Send + 'a>>;

/// SHA-256 of a key, as bytes.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of a key, as lowercase hex: LiteLLM's `hash_token`, the `token` column.
pub fn hash_key(key: &str) -> String {
    hex(&key_digest(key))
}

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The digest a 64-character hex string spells, if it is one.
pub(crate) fn parse_hex(token: &str) -> Option<[u8; 32]> {
    let bytes = token.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The `token` a client names a key by in `/key/*` requests: the key itself (`sk-...`, hashed
/// here) or its hash (as `/key/list` returns it). As LiteLLM's `_hash_token_if_needed`.
pub fn token_of(key_or_hash: &str) -> String {
    if key_or_hash.starts_with("sk-") {
        hash_key(key_or_hash)
    } else {
        key_or_hash.to_owned()
    }
}

/// A new key: `sk-` and 32 characters of base64url over 24 bytes (192 bits) from the operating
/// system's CSPRNG.
pub fn generate_key() -> Result<String, KeyStoreError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| {
        KeyStoreError::new(
            KeyStoreErrorKind::Other,
            format!("the system random number generator failed: {e}"),
        )
    })?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// LiteLLM's `key_name`: `sk-...` and the last four characters of the key.
pub fn abbreviate(key: &str) -> String {
    let tail: String = {
        let chars: Vec<char> = key.chars().collect();
        chars[chars.len().saturating_sub(4)..].iter().collect()
    };
    format!("sk-...{tail}")
}

/// One row of `LiteLLM_VerificationToken` (the columns this gateway uses).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VirtualKey {
    /// SHA-256 (hex) of the key: the primary key.
    pub token: String,
    /// `sk-...` and the key's last four characters.
    pub key_name: Option<String>,
    /// A unique, human-readable name.
    pub key_alias: Option<String>,
    /// LiteLLM's spend counter (not updated by this gateway: spend is per request in the spend
    /// log).
    pub spend: f64,
    /// When the key stops working; `None`: never.
    pub expires: Option<SystemTime>,
    /// The models the key may call, as clients name them; empty: every model.
    pub models: Vec<String>,
    /// Free-form metadata; `metadata.guardrails` are the key's guardrails.
    pub metadata: Map<String, Value>,
    /// The user the key belongs to.
    pub user_id: Option<String>,
    /// The team the key belongs to.
    pub team_id: Option<String>,
    /// The organization the key belongs to.
    pub organization_id: Option<String>,
    /// A blocked key is refused.
    pub blocked: Option<bool>,
    /// The most requests made with the key that may run at once on this gateway; more are
    /// refused with a 429 until one ends. `None`: no limit.
    pub max_parallel_requests: Option<u32>,
    /// When the key was created.
    pub created_at: Option<SystemTime>,
    /// Who created it.
    pub created_by: Option<String>,
    /// When it was last changed.
    pub updated_at: Option<SystemTime>,
    /// Who last changed it.
    pub updated_by: Option<String>,
}

impl VirtualKey {
    /// An empty row for `token`.
    pub fn new(token: impl Into<String>) -> Self {
        VirtualKey {
            token: token.into(),
            key_name: None,
            key_alias: None,
            spend: 0.0,
            expires: None,
            models: Vec::new(),
            metadata: Map::new(),
            user_id: None,
            team_id: None,
            organization_id: None,
            blocked: None,
            max_parallel_requests: None,
            created_at: None,
            created_by: None,
            updated_at: None,
            updated_by: None,
        }
    }

    /// The key's guardrails (`metadata.guardrails`), as LiteLLM stores them.
    pub fn guardrails(&self) -> Vec<String> {
        match self.metadata.get("guardrails") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(name)) => vec![name.clone()],
            _ => Vec::new(),
        }
    }

    /// Whether the key allows `model`: its list is empty, or names it, or holds LiteLLM's
    /// `*` or `all-proxy-models`.
    pub fn allows_model(&self, model: &str) -> bool {
        models_allow(&self.models, model)
    }

    /// The row as JSON, with LiteLLM's field names; `token` is left out when `with_token` is
    /// false (as `/key/info` does).
    pub fn to_json(&self, with_token: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if with_token {
            out.insert("token".into(), Value::from(self.token.clone()));
        }
        let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::from);
        let time = |t: &Option<SystemTime>| t.map_or(Value::Null, |t| Value::from(timestamp(t)));
        out.insert("key_name".into(), opt(&self.key_name));
        out.insert("key_alias".into(), opt(&self.key_alias));
        out.insert("spend".into(), Value::from(self.spend));
        out.insert("expires".into(), time(&self.expires));
        out.insert("models".into(), Value::from(self.models.clone()));
        out.insert("metadata".into(), Value::Object(self.metadata.clone()));
        out.insert("guardrails".into(), Value::from(self.guardrails()));
        out.insert("user_id".into(), opt(&self.user_id));
        out.insert("team_id".into(), opt(&self.team_id));
        out.insert("organization_id".into(), opt(&self.organization_id));
        out.insert(
            "blocked".into(),
            self.blocked.map_or(Value::Null, Value::from),
        );
        out.insert(
            "max_parallel_requests".into(),
            self.max_parallel_requests.map_or(Value::Null, Value::from),
        );
        out.insert("created_at".into(), time(&self.created_at));
        out.insert("created_by".into(), opt(&self.created_by));
        out.insert("updated_at".into(), time(&self.updated_at));
        out.insert("updated_by".into(), opt(&self.updated_by));
        out
    }
}

/// Whether a key's `models` list allows `model`.
pub(crate) fn models_allow(models: &[impl AsRef<str>], model: &str) -> bool {
    models.is_empty()
        || models
            .iter()
            .any(|m| matches!(m.as_ref(), "*" | "all-proxy-models") || m.as_ref() == model)
}

/// A timestamp as JSON shows it: RFC 3339, UTC, milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A timestamp as Python prints a UTC `datetime` (`2026-10-04 03:47:58.096000+00:00`), for
/// LiteLLM's expired-key message.
pub(crate) fn python_timestamp(t: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_micros(t).to_string();
    let rfc = rfc.trim_end_matches('Z');
    let (date_time, micros) = rfc.split_once('.').unwrap_or((rfc, "000000"));
    let date_time = date_time.replacen('T', " ", 1);
    if micros.bytes().all(|b| b == b'0') {
        format!("{date_time}+00:00")
    } else {
        format!("{date_time}.{micros}+00:00")
    }
}

/// Parses LiteLLM's `duration`: `30s`, `30m`, `30h`, `30d`, `2w`, or `1mo` (calendar months,
/// the day clamped to the target month's length). Returns when a key made `now` expires.
pub fn expiry_after(duration: &str, now: SystemTime) -> Result<SystemTime, String> {
    let d = duration.trim();
    let digits = d.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = d.split_at(digits);
    let bad = || {
        format!(
            "invalid duration '{duration}': expected a number and a unit: s, m, h, d, w or mo (e.g. 30d)"
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        "w" => n.checked_mul(604_800).ok_or_else(bad)?,
        "mo" => return add_months(now, n).ok_or_else(bad),
        _ => return Err(bad()),
    };
    // Beyond ~year 10000 humantime cannot print it; no key needs that.
    if seconds > 100 * 365 * 86_400 {
        return Err(format!(
            "invalid duration '{duration}': longer than 100 years"
        ));
    }
    now.checked_add(Duration::from_secs(seconds))
        .ok_or_else(bad)
}

/// `t` plus `months` calendar months (UTC), the day clamped to the month's length.
fn add_months(t: SystemTime, months: u64) -> Option<SystemTime> {
    if months > 1200 {
        return None;
    }
    let text = humantime::format_rfc3339_micros(t).to_string(); // YYYY-MM-DDTHH:MM:SS.ffffffZ
    let year: i64 = text.get(0..4)?.parse().ok()?;
    let month: i64 = text.get(5..7)?.parse().ok()?;
    let day: u32 = text.get(8..10)?.parse().ok()?;
    let total = year * 12 + (month - 1) + i64::try_from(months).ok()?;
    let (year, month) = (total / 12, total % 12 + 1);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = day.min(days_in_month);
    let rebuilt = format!("{year:04}-{month:02}-{day:02}{}", text.get(10..)?);
    humantime::parse_rfc3339(&rebuilt).ok()
}

/// What went wrong in a [`KeyStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyStoreErrorKind {
    /// The database cannot be reached now (connection refused or lost, timeout, busy).
    Unavailable,
    /// Another key already has this alias.
    AliasTaken(String),
    /// A key with this token already exists.
    Exists,
    /// Anything else (a bad row, a failed statement).
    Other,
}

/// An error of a [`KeyStore`]. Its message names no URL, host or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStoreError {
    kind: KeyStoreErrorKind,
    message: String,
}

impl KeyStoreError {
    /// An error of this kind.
    pub fn new(kind: KeyStoreErrorKind, message: impl Into<String>) -> Self {
        KeyStoreError {
            kind,
            message: message.into(),
        }
    }

    /// What kind of error.
    pub fn kind(&self) -> &KeyStoreErrorKind {
        &self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KeyStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyStoreError {}

/// Which keys to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// By token (SHA-256 hex).
    Tokens(Vec<String>),
    /// By alias.
    Aliases(Vec<String>),
}

/// What a delete did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// The tokens deleted.
    pub deleted: Vec<String>,
    /// The tokens or aliases that match no key. When any is missing, nothing is deleted.
    pub missing: Vec<String>,
}

/// A `/key/list` query.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyQuery {
    /// 1-based page.
    pub page: u64,
    /// Keys per page.
    pub size: u64,
    /// Only this user's keys.
    pub user_id: Option<String>,
    /// Only this team's keys.
    pub team_id: Option<String>,
    /// Only this organization's keys.
    pub organization_id: Option<String>,
    /// Only the key with this alias.
    pub key_alias: Option<String>,
    /// Only the key with this token.
    pub token: Option<String>,
    /// The column to sort by (one of [`KeyQuery::SORTABLE`]); default `created_at`.
    pub sort_by: Option<String>,
    /// Ascending instead of descending.
    pub ascending: bool,
}

impl KeyQuery {
    /// The columns `/key/list` sorts by.
    pub const SORTABLE: &'static [&'static str] = &[
        "created_at",
        "updated_at",
        "expires",
        "key_alias",
        "user_id",
        "team_id",
        "spend",
    ];

    /// Page 1 of 10 keys, newest first.
    pub fn new() -> Self {
        KeyQuery {
            page: 1,
            size: 10,
            user_id: None,
            team_id: None,
            organization_id: None,
            key_alias: None,
            token: None,
            sort_by: None,
            ascending: false,
        }
    }

    /// The ORDER BY clause (the column is checked against [`KeyQuery::SORTABLE`]).
    pub(crate) fn order_by(&self) -> String {
        let column = self
            .sort_by
            .as_deref()
            .filter(|c| Self::SORTABLE.contains(c))
            .unwrap_or("created_at");
        let dir = if self.ascending { "ASC" } else { "DESC" };
        format!("{column} {dir} NULLS LAST, token {dir}")
    }
}

impl Default for KeyQuery {
    fn default() -> Self {
        KeyQuery::new()
    }
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    /// The keys on this page.
    pub keys: Vec<VirtualKey>,
    /// How many keys match in all.
    pub total: u64,
}

/// Where virtual keys are kept.
pub trait KeyStore: Send + Sync + fmt::Debug + 'static {
    /// The key with this token (SHA-256 hex).
    fn get<'a>(&'a self, token: &'a str) -> KeyFuture<'a, Option<VirtualKey>>;

    /// Stores a new key; [`KeyStoreErrorKind::AliasTaken`] if another key has its alias,
    /// [`KeyStoreErrorKind::Exists`] if its token is taken.
    fn insert<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, ()>;

    /// Replaces the key with the same token; `false` if there is none.
    /// [`KeyStoreErrorKind::AliasTaken`] if another key has its alias.
    fn update<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, bool>;

    /// Deletes keys, all or none.
    fn delete<'a>(&'a self, which: &'a KeySelector) -> KeyFuture<'a, DeleteOutcome>;

    /// A page of keys.
    fn list<'a>(&'a self, query: &'a KeyQuery) -> KeyFuture<'a, KeyPage>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_litellm_hash_token() {
        // hashlib.sha256(b"sk-1234").hexdigest()
        assert_eq!(
            hash_key("sk-1234"),
            "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
        );
        assert_eq!(parse_hex(&hash_key("sk-1234")), Some(key_digest("sk-1234")));
        assert_eq!(parse_hex("not hex"), None);
        assert_eq!(token_of("sk-1234"), hash_key("sk-1234"));
        assert_eq!(token_of("abc"), "abc");
    }

    #[test]
    fn generated_keys_are_random_and_sk_prefixed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 35, "{a}");
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(abbreviate(&a), format!("sk-...{}", &a[31..]));
    }

    #[test]
    fn durations() {
        let now = humantime::parse_rfc3339("2026-01-31T10:00:00Z").unwrap();
        let at = |d: &str| timestamp(expiry_after(d, now).unwrap());
        assert_eq!(at("30s"), "2026-01-31T10:00:30.000Z");
        assert_eq!(at("2m"), "2026-01-31T10:02:00.000Z");
        assert_eq!(at("1h"), "2026-01-31T11:00:00.000Z");
        assert_eq!(at("1d"), "2026-02-01T10:00:00.000Z");
        assert_eq!(at("1w"), "2026-02-07T10:00:00.000Z");
        // Calendar months, the day clamped: January 31 + 1 month is February 28.
        assert_eq!(at("1mo"), "2026-02-28T10:00:00.000Z");
        assert_eq!(at("13mo"), "2027-02-28T10:00:00.000Z");
        assert_eq!(at("25mo"), "2028-02-29T10:00:00.000Z");
        for bad in [
            "",
            "d",
            "10",
            "10x",
            "-1d",
            "1.5h",
            "999999999999999999999d",
        ] {
            assert!(expiry_after(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn python_timestamps() {
        let t = humantime::parse_rfc3339("2026-10-04T03:47:58Z").unwrap();
        assert_eq!(python_timestamp(t), "2026-10-04 03:47:58+00:00");
        let t = humantime::parse_rfc3339("2026-10-04T03:47:58.096Z").unwrap();
        assert_eq!(python_timestamp(t), "2026-10-04 03:47:58.096000+00:00");
    }

    #[test]
    fn model_lists() {
        let mut key = VirtualKey::new("t");
        assert!(key.allows_model("anything"));
        key.models = vec!["a".into(), "b".into()];
        assert!(key.allows_model("a") && !key.allows_model("c") && !key.allows_model("A"));
        key.models.push("*".into());
        assert!(key.allows_model("c"));
    }
}
