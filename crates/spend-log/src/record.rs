//! The spend-log record: one per request, with LiteLLM_SpendLogs column names.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use guardrail_tower_core::GuardrailLogEntry;
use serde::{Deserialize, Serialize};

/// `success` or `failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendStatus {
    /// The request completed and the client got the whole response.
    Success,
    /// Anything else: an error response, a guardrail block (also one in-band, after a 200), an
    /// upstream that failed mid-stream, a client that disconnected.
    Failure,
}

impl SpendStatus {
    /// `success` or `failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendStatus::Success => "success",
            SpendStatus::Failure => "failure",
        }
    }
}

impl fmt::Display for SpendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpendStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(SpendStatus::Success),
            "failure" => Ok(SpendStatus::Failure),
            other => Err(format!(
                "unknown status '{other}' (expected success or failure)"
            )),
        }
    }
}

/// One request's spend-log record. Field names (and serialized names) follow
/// `LiteLLM_SpendLogs`, so existing dashboards and queries carry over.
///
/// `metadata` holds `guardrail_information` (the guardrail log entries), `error_information`
/// (`error_class`, `error_message`, `error_code`, `error_type`) for failures, `http_status` and
/// `stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// The request id (`x-request-id`, or a UUID v7). Primary key.
    pub request_id: String,
    /// LiteLLM's call type name (`acompletion`, `aresponses`, `anthropic_messages`, ...).
    pub call_type: String,
    /// Success or failure.
    pub status: SpendStatus,
    /// The model the client asked for (empty when unknown).
    pub model: String,
    /// The upstream base URL, when known.
    pub api_base: Option<String>,
    /// The end user (`user` in the request body).
    pub user: Option<String>,
    /// SHA-256 (hex) of the client's API key; never the key itself.
    pub api_key: Option<String>,
    /// Cost in USD.
    pub spend: f64,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input plus output tokens.
    pub total_tokens: u64,
    /// When the request arrived.
    #[serde(rename = "startTime", with = "rfc3339")]
    pub start_time: SystemTime,
    /// When the response ended (or failed, or was abandoned).
    #[serde(rename = "endTime", with = "rfc3339")]
    pub end_time: SystemTime,
    /// When the first response body byte was sent.
    #[serde(rename = "completionStartTime", with = "rfc3339_opt")]
    pub completion_start_time: Option<SystemTime>,
    /// `guardrail_information`, `error_information`, `http_status`, `stream`.
    pub metadata: SpendMetadata,
}

/// The `metadata` column of a spend-log record (a JSON object), typed: it is serialized
/// straight from the guardrail log, with no intermediate JSON value per request.
///
/// Stored as `{"guardrail_information": [...], "error_information": {...} | null,
/// "http_status": 200, "stream": false}`; unknown keys in stored metadata are ignored when a
/// record is read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpendMetadata {
    /// Every guardrail run of the request, in order, with LiteLLM's field names.
    #[serde(default)]
    pub guardrail_information: Vec<GuardrailLogEntry>,
    /// Why the request failed; `None` when it succeeded.
    #[serde(default)]
    pub error_information: Option<ErrorInformation>,
    /// The HTTP status the client got (0 when the request ended before one was sent).
    #[serde(default)]
    pub http_status: u16,
    /// Whether the client asked for a stream.
    #[serde(default)]
    pub stream: bool,
}

/// Why a request failed: `metadata.error_information` of a spend-log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInformation {
    /// The error class (`policy_block`, `upstream_failure`, `client_error`, ...).
    pub error_class: String,
    /// The error's `type` (`invalid_request_error`, `upstream_stream_error`, ...).
    pub error_type: String,
    /// The error's `code`, or the HTTP status as text when it has none.
    pub error_code: String,
    /// The error message.
    pub error_message: String,
    /// The guardrail that caused the error, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<String>,
}

/// RFC 3339 timestamps with millisecond precision, in UTC (`2026-11-21T12:00:00.123Z`).
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a time.
    pub fn format(t: SystemTime) -> String {
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Parses a time.
    pub fn parse(s: &str) -> Result<SystemTime, humantime::TimestampError> {
        humantime::parse_rfc3339_weak(s)
    }

    /// Serializes.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    /// Deserializes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::rfc3339::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
