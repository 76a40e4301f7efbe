//! The query API's inputs and outputs: [`SpendLogFilter`] (and its query-string form
//! [`SpendLogQuery`]) and [`BlockSummaryRow`].

#[cfg(feature = "jsonl")]
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

#[cfg(feature = "jsonl")]
use guardrail_tower_core::GuardrailAction;
use serde::{Deserialize, Serialize};

use crate::record::{SpendRecord, SpendStatus, rfc3339};

const DAY: Duration = Duration::from_secs(86_400);

/// The number of records a `GET /spend/logs` request returns when it gives no `limit`.
pub const DEFAULT_QUERY_LIMIT: u64 = 100;

/// The largest `limit` a `GET /spend/logs` request may ask for; page through more with
/// `offset`.
pub const MAX_QUERY_LIMIT: u64 = 1000;

/// Which spend-log records a [`SpendLogStore::query`](super::SpendLogStore::query) returns.
///
/// Every condition is optional; the empty filter matches every record. Results are ordered
/// newest first (by `startTime`, then by `request_id`, both descending), then `offset` records
/// are skipped and at most `limit` are returned.
///
/// Build one with the chained methods, or parse one from the query parameters of a
/// `GET /spend/logs` request with [`SpendLogFilter::from_query_string`] or through `serde`
/// (it deserializes from a [`SpendLogQuery`], so `axum::extract::Query<SpendLogFilter>` works).
/// A parsed query always has a limit: [`DEFAULT_QUERY_LIMIT`] when it gives none, and a
/// `limit` above [`MAX_QUERY_LIMIT`] is an error.
///
/// ```
/// use guardrail_tower_spend_log::{SpendLogFilter, SpendStatus};
///
/// let filter = SpendLogFilter::from_query_string(
///     "start_date=2026-11-20&end_date=2026-11-21&status=failure&limit=50",
/// )
/// .unwrap();
/// assert_eq!(filter.status, Some(SpendStatus::Failure));
/// assert_eq!(filter.limit, Some(50));
/// assert_eq!(SpendLogFilter::from_query_string("").unwrap().limit, Some(100));
/// // `end_date` as a date includes that whole day: the range ends at the next midnight (UTC).
/// assert_eq!(
///     filter.end,
///     Some(guardrail_tower_spend_log::rfc3339::parse("2026-11-22T00:00:00Z").unwrap())
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SpendLogQuery")]
#[non_exhaustive]
pub struct SpendLogFilter {
    /// Only the record with this `request_id` (the gateway's id, `x-litellm-call-id`).
    pub request_id: Option<String>,
    /// Only records whose client sent this `x-request-id`.
    pub client_request_id: Option<String>,
    /// Only records of this key: the SHA-256 hex of the key, as stored in `api_key`.
    pub api_key: Option<String>,
    /// Only records whose `user` is this.
    pub user_id: Option<String>,
    /// Only records whose `startTime` is at or after this time (inclusive).
    pub start: Option<SystemTime>,
    /// Only records whose `startTime` is before this time (exclusive).
    pub end: Option<SystemTime>,
    /// Only records with this status.
    pub status: Option<SpendStatus>,
    /// At most this many records (`None`: no limit).
    pub limit: Option<u64>,
    /// Skip this many records first (for paging).
    pub offset: u64,
}

impl SpendLogFilter {
    /// The empty filter: every record, newest first.
    pub fn new() -> Self {
        SpendLogFilter::default()
    }

    /// Only the record with this `request_id`.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Only records whose client sent this `x-request-id`.
    pub fn client_request_id(mut self, id: impl Into<String>) -> Self {
        self.client_request_id = Some(id.into());
        self
    }

    /// Only records of this key hash (the SHA-256 hex stored in `api_key`).
    pub fn api_key(mut self, hash: impl Into<String>) -> Self {
        self.api_key = Some(hash.into());
        self
    }

    /// Only records whose `user` is `user_id`.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Only records whose `startTime` is at or after `start`.
    pub fn start(mut self, start: SystemTime) -> Self {
        self.start = Some(start);
        self
    }

    /// Only records whose `startTime` is before `end`.
    pub fn end(mut self, end: SystemTime) -> Self {
        self.end = Some(end);
        self
    }

    /// Only records with this status.
    pub fn status(mut self, status: SpendStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Skip the first `offset` matching records.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Parses the query string of a `GET /spend/logs` request (without the leading `?`):
    /// LiteLLM's `request_id`, `api_key`, `user_id`, `start_date`, `end_date`, and
    /// `client_request_id`, `status`, `limit`, `offset`. Values are percent-decoded (`+` is a
    /// space); unknown parameters (such as LiteLLM's `summarize`) and empty values are ignored.
    /// A parameter given twice, or one that cannot be read, is an error naming it.
    ///
    /// See [`SpendLogQuery`] for the accepted date forms.
    pub fn from_query_string(query: &str) -> Result<Self, FilterError> {
        let mut q = SpendLogQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)
                .ok_or_else(|| FilterError::new("query", "invalid percent-encoding"))?;
            let decoded = || {
                percent_decode(value)
                    .ok_or_else(|| FilterError::new(param_name(&key), "invalid percent-encoding"))
            };
            let slot = match key.as_str() {
                "request_id" => &mut q.request_id,
                "client_request_id" => &mut q.client_request_id,
                "api_key" => &mut q.api_key,
                "user_id" => &mut q.user_id,
                "start_date" => &mut q.start_date,
                "end_date" => &mut q.end_date,
                "status" => &mut q.status,
                "limit" | "offset" => {
                    let value = decoded()?;
                    let param = param_name(&key);
                    let number = parse_number(param, &value)?;
                    let slot = if key == "limit" {
                        &mut q.limit
                    } else {
                        &mut q.offset
                    };
                    if slot.is_some() && number.is_some() {
                        return Err(FilterError::new(param, "given more than once"));
                    }
                    if number.is_some() {
                        *slot = number;
                    }
                    continue;
                }
                _ => continue,
            };
            let value = decoded()?;
            if value.is_empty() {
                continue;
            }
            if slot.is_some() {
                return Err(FilterError::new(param_name(&key), "given more than once"));
            }
            *slot = Some(value);
        }
        SpendLogFilter::try_from(q)
    }

    /// Whether `record` passes the conditions (everything but `limit` and `offset`).
    pub fn matches(&self, record: &SpendRecord) -> bool {
        self.request_id
            .as_ref()
            .is_none_or(|id| *id == record.request_id)
            && self
                .client_request_id
                .as_ref()
                .is_none_or(|id| Some(id) == record.client_request_id.as_ref())
            && self
                .api_key
                .as_ref()
                .is_none_or(|key| Some(key) == record.api_key.as_ref())
            && self
                .user_id
                .as_ref()
                .is_none_or(|user| Some(user) == record.user.as_ref())
            && self.start.is_none_or(|start| record.start_time >= start)
            && self.end.is_none_or(|end| record.start_time < end)
            && self.status.is_none_or(|status| status == record.status)
    }
}

fn param_name(key: &str) -> &'static str {
    match key {
        "request_id" => "request_id",
        "client_request_id" => "client_request_id",
        "api_key" => "api_key",
        "user_id" => "user_id",
        "start_date" => "start_date",
        "end_date" => "end_date",
        "status" => "status",
        "limit" => "limit",
        "offset" => "offset",
        _ => "query",
    }
}

fn parse_number(param: &'static str, value: &str) -> Result<Option<u64>, FilterError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| FilterError::new(param, format!("'{value}' is not a non-negative integer")))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The raw query parameters of a `GET /spend/logs` request, as strings; convert it into a
/// [`SpendLogFilter`] with `TryFrom` (which is what deserializing a `SpendLogFilter` does).
///
/// Dates (`start_date`, `end_date`) are either a UTC day, `YYYY-MM-DD`, or an RFC 3339 time
/// (`2026-11-21T12:00:00Z`, `2026-11-21T12:00:00.250+01:00`; a time without an offset is UTC).
/// A day as `start_date` means that day's midnight; a day as `end_date` means the *next*
/// midnight, so `start_date=2026-11-21&end_date=2026-11-21` is the whole of that day. A time
/// as `end_date` is exclusive. `status` is `success` or `failure`. `api_key` is the SHA-256 hex
/// of a key as stored, or (as in LiteLLM) a raw key starting with `sk-`, which is hashed first.
/// `limit` is 1 to [`MAX_QUERY_LIMIT`] (default [`DEFAULT_QUERY_LIMIT`]). Empty values count as
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SpendLogQuery {
    /// `request_id`.
    pub request_id: Option<String>,
    /// `client_request_id`.
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// `api_key`: a key hash, or a raw `sk-` key.
    #[serde(default)]
    pub api_key: Option<String>,
    /// `user_id`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// `start_date`: `YYYY-MM-DD` or RFC 3339.
    pub start_date: Option<String>,
    /// `end_date`: `YYYY-MM-DD` (inclusive day) or RFC 3339 (exclusive).
    pub end_date: Option<String>,
    /// `status`: `success` or `failure`.
    pub status: Option<String>,
    /// `limit`.
    pub limit: Option<u64>,
    /// `offset`.
    pub offset: Option<u64>,
}

impl TryFrom<SpendLogQuery> for SpendLogFilter {
    type Error = FilterError;

    fn try_from(q: SpendLogQuery) -> Result<Self, FilterError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let start = non_empty(q.start_date)
            .map(|s| {
                parse_date_param(s.trim(), false).map_err(|m| FilterError::new("start_date", m))
            })
            .transpose()?;
        let end = non_empty(q.end_date)
            .map(|s| parse_date_param(s.trim(), true).map_err(|m| FilterError::new("end_date", m)))
            .transpose()?;
        let status = non_empty(q.status)
            .map(|s| {
                s.trim()
                    .parse::<SpendStatus>()
                    .map_err(|m| FilterError::new("status", m))
            })
            .transpose()?;
        let limit = match q.limit {
            None => DEFAULT_QUERY_LIMIT,
            Some(0) => return Err(FilterError::new("limit", "must be at least 1")),
            Some(l) if l > MAX_QUERY_LIMIT => {
                return Err(FilterError::new(
                    "limit",
                    format!("{l} is more than the maximum, {MAX_QUERY_LIMIT} (page with `offset`)"),
                ));
            }
            Some(l) => l,
        };
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                return Err(FilterError::new(
                    "end_date",
                    "the range is empty: end_date is not after start_date",
                ));
            }
        }
        let api_key = non_empty(q.api_key).map(|key| {
            let key = key.trim();
            if key.starts_with("sk-") {
                sha256_hex(key)
            } else {
                key.to_ascii_lowercase()
            }
        });
        Ok(SpendLogFilter {
            request_id: non_empty(q.request_id),
            client_request_id: non_empty(q.client_request_id),
            api_key,
            user_id: non_empty(q.user_id),
            start,
            end,
            status,
            limit: Some(limit),
            offset: q.offset.unwrap_or(0),
        })
    }
}

/// SHA-256 (hex) of a raw key, as the spend log stores it.
fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a `start_date` / `end_date` value. A bare day as an end bound means the next midnight.
fn parse_date_param(s: &str, end: bool) -> Result<SystemTime, String> {
    let invalid = |why: &dyn fmt::Display| {
        format!("'{s}' is not a date (YYYY-MM-DD) or an RFC 3339 time ({why})")
    };
    if s.len() == 10 {
        let midnight = rfc3339::parse(&format!("{s}T00:00:00Z")).map_err(|e| invalid(&e))?;
        return Ok(if end { midnight + DAY } else { midnight });
    }
    // A trailing numeric offset (`+01:00`, `-05:30`); humantime only knows `Z` / no offset.
    let b = s.as_bytes();
    if b.len() > 19 {
        let tail = &b[b.len() - 6..];
        if (tail[0] == b'+' || tail[0] == b'-')
            && tail[3] == b':'
            && [1, 2, 4, 5].iter().all(|&i| tail[i].is_ascii_digit())
        {
            let hours = u64::from(tail[1] - b'0') * 10 + u64::from(tail[2] - b'0');
            let minutes = u64::from(tail[4] - b'0') * 10 + u64::from(tail[5] - b'0');
            if hours > 23 || minutes > 59 {
                return Err(invalid(&"offset out of range"));
            }
            let local = rfc3339::parse(&s[..s.len() - 6]).map_err(|e| invalid(&e))?;
            let offset = Duration::from_secs(hours * 3600 + minutes * 60);
            // local = utc + offset  =>  utc = local - offset
            return if tail[0] == b'+' {
                local
                    .checked_sub(offset)
                    .ok_or_else(|| invalid(&"out of range"))
            } else {
                Ok(local + offset)
            };
        }
    }
    let s_utc = s.strip_suffix('z').map(|t| format!("{t}Z"));
    rfc3339::parse(s_utc.as_deref().unwrap_or(s)).map_err(|e| invalid(&e))
}

/// A query parameter could not be parsed into a [`SpendLogFilter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    param: &'static str,
    message: String,
}

impl FilterError {
    fn new(param: &'static str, message: impl Into<String>) -> Self {
        FilterError {
            param,
            message: message.into(),
        }
    }

    /// The offending parameter (`start_date`, `status`, ...).
    pub fn param(&self) -> &'static str {
        self.param
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.param, self.message)
    }
}

impl std::error::Error for FilterError {}

/// One row of [`SpendLogStore::block_summary`](super::SpendLogStore::block_summary): how many
/// times `guardrail_name` blocked a request on `day`.
///
/// Counts the entries of `metadata.guardrail_information` whose `guardrail_action` is `"block"`
/// (a request blocked by two guardrails counts once for each).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlockSummaryRow {
    /// The UTC day of the request's `startTime`, `YYYY-MM-DD`.
    pub day: String,
    /// The guardrail's `guardrail_name` (empty when the entry had none).
    pub guardrail_name: String,
    /// How many blocks.
    pub blocks: u64,
}

impl BlockSummaryRow {
    /// A row.
    pub fn new(day: impl Into<String>, guardrail_name: impl Into<String>, blocks: u64) -> Self {
        BlockSummaryRow {
            day: day.into(),
            guardrail_name: guardrail_name.into(),
            blocks,
        }
    }
}

/// Applies `filter` (conditions, order, offset, limit) to records in memory, keeping the first
/// record seen for each `request_id` (what the SQL sinks' primary key does).
#[cfg(feature = "jsonl")]
pub(crate) fn filter_in_memory(
    records: impl IntoIterator<Item = SpendRecord>,
    filter: &SpendLogFilter,
) -> Vec<SpendRecord> {
    let mut seen = HashSet::new();
    let mut out: Vec<SpendRecord> = records
        .into_iter()
        .filter(|r| seen.insert(r.request_id.clone()))
        .filter(|r| filter.matches(r))
        .collect();
    out.sort_by(|a, b| {
        b.start_time
            .cmp(&a.start_time)
            .then_with(|| b.request_id.cmp(&a.request_id))
    });
    let offset = usize::try_from(filter.offset).unwrap_or(usize::MAX);
    let limit = filter
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    out.into_iter().skip(offset).take(limit).collect()
}

/// The block summary of records in memory (first record per `request_id`, `start <= startTime <
/// end`), ordered by day then guardrail name.
#[cfg(feature = "jsonl")]
pub(crate) fn block_summary_in_memory(
    records: impl IntoIterator<Item = SpendRecord>,
    start: Option<SystemTime>,
    end: Option<SystemTime>,
) -> Vec<BlockSummaryRow> {
    let filter = SpendLogFilter {
        start,
        end,
        ..SpendLogFilter::default()
    };
    let mut seen = HashSet::new();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for record in records {
        if !seen.insert(record.request_id.clone()) || !filter.matches(&record) {
            continue;
        }
        let day = utc_day(record.start_time);
        for entry in &record.metadata.guardrail_information {
            if entry.guardrail_action == GuardrailAction::Block {
                let name = entry.guardrail_name.clone();
                *counts.entry((day.clone(), name)).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|((day, guardrail_name), blocks)| BlockSummaryRow {
            day,
            guardrail_name,
            blocks,
        })
        .collect()
}

/// `YYYY-MM-DD` of `t` in UTC.
#[cfg(any(feature = "jsonl", test))]
pub(crate) fn utc_day(t: SystemTime) -> String {
    let mut s = rfc3339::format(t);
    s.truncate(10);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SystemTime {
        rfc3339::parse(s).unwrap()
    }

    #[test]
    fn parses_days_and_times() {
        let f = SpendLogFilter::from_query_string(
            "request_id=abc%2D1&start_date=2026-11-20&end_date=2026-11-21T12%3A00%3A00%2B01%3A00&status=success&offset=5&utm=x",
        )
        .unwrap();
        assert_eq!(f.request_id.as_deref(), Some("abc-1"));
        assert_eq!(f.start, Some(t("2026-11-20T00:00:00Z")));
        assert_eq!(f.end, Some(t("2026-11-21T11:00:00Z")));
        assert_eq!(f.status, Some(SpendStatus::Success));
        assert_eq!(f.offset, 5);
        assert_eq!(f.limit, Some(DEFAULT_QUERY_LIMIT));

        let f = SpendLogFilter::from_query_string(
            "start_date=2026-11-21T12:00:00.250Z&end_date=2026-11-21",
        )
        .unwrap();
        assert_eq!(f.start, Some(t("2026-11-21T12:00:00.250Z")));
        assert_eq!(f.end, Some(t("2026-11-22T00:00:00Z")));

        let f = SpendLogFilter::from_query_string("end_date=2026-11-21T12:00:00-05:30&status=")
            .unwrap();
        assert_eq!(f.end, Some(t("2026-11-21T17:30:00Z")));
        assert_eq!(f.status, None);
    }

    #[test]
    fn rejects_bad_values() {
        let e = SpendLogFilter::from_query_string("start_date=yesterday").unwrap_err();
        assert_eq!(e.param(), "start_date");
        let e = SpendLogFilter::from_query_string("status=ok").unwrap_err();
        assert_eq!(e.param(), "status");
        assert!(e.to_string().contains("unknown status"), "{e}");
        let e = SpendLogFilter::from_query_string("limit=-1").unwrap_err();
        assert_eq!(e.param(), "limit");
        let e = SpendLogFilter::from_query_string("end_date=2026-13-01").unwrap_err();
        assert_eq!(e.param(), "end_date");
        let e = SpendLogFilter::from_query_string("limit=1001").unwrap_err();
        assert_eq!(e.param(), "limit");
        assert!(e.to_string().contains("maximum, 1000"), "{e}");
        let e = SpendLogFilter::from_query_string("limit=0").unwrap_err();
        assert_eq!(e.param(), "limit");
        let e = SpendLogFilter::from_query_string("offset=x").unwrap_err();
        assert_eq!(e.param(), "offset");
        let e = SpendLogFilter::from_query_string("user_id=a&user_id=b").unwrap_err();
        assert_eq!(e.param(), "user_id");
        let e = SpendLogFilter::from_query_string("limit=1&limit=2").unwrap_err();
        assert_eq!(e.param(), "limit");
        let e = SpendLogFilter::from_query_string("api_key=%ZZ").unwrap_err();
        assert_eq!(e.param(), "api_key");
        let e = SpendLogFilter::from_query_string("start_date=2026-11-21&end_date=2026-11-20")
            .unwrap_err();
        assert_eq!(e.param(), "end_date");
    }

    #[test]
    fn litellm_filters() {
        let f = SpendLogFilter::from_query_string(
            "api_key=sk-test-123&user_id=u%401&client_request_id=mine&summarize=false&limit=1000",
        )
        .unwrap();
        assert_eq!(
            f.api_key.as_deref(),
            Some(sha256_hex("sk-test-123").as_str())
        );
        assert_eq!(f.api_key.as_ref().unwrap().len(), 64);
        assert_eq!(f.user_id.as_deref(), Some("u@1"));
        assert_eq!(f.client_request_id.as_deref(), Some("mine"));
        assert_eq!(f.limit, Some(1000));
        // A hash is taken as it is.
        let hash = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let f = SpendLogFilter::from_query_string(&format!("api_key={hash}")).unwrap();
        assert_eq!(f.api_key, Some(hash.to_ascii_lowercase()));
    }

    #[test]
    fn deserializes_through_serde() {
        let f: SpendLogFilter = serde_json::from_value(serde_json::json!({
            "start_date": "2026-11-20", "status": "failure", "limit": 10
        }))
        .unwrap();
        assert_eq!(
            f,
            SpendLogFilter::new()
                .start(t("2026-11-20T00:00:00Z"))
                .status(SpendStatus::Failure)
                .limit(10)
        );
        let f: SpendLogFilter = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(f.limit, Some(DEFAULT_QUERY_LIMIT));
        let err = serde_json::from_value::<SpendLogFilter>(serde_json::json!({"end_date": "nope"}))
            .unwrap_err();
        assert!(err.to_string().contains("end_date"), "{err}");
    }
}
