//! Shared fixtures.

use std::time::{Duration, SystemTime};

use guardrail_tower_spend_log::{SpendLogHandle, SpendMetadata, SpendRecord, SpendStatus, rfc3339};
use serde_json::json;

/// A time from RFC 3339 text.
pub(crate) fn t(s: &str) -> SystemTime {
    rfc3339::parse(s).unwrap()
}

/// Metadata as the spend-log layer writes it: two guardrail entries (one block), an error,
/// the HTTP status and the stream flag.
pub(crate) fn realistic_metadata() -> SpendMetadata {
    serde_json::from_value(json!({
        "guardrail_information": [
            {
                "guardrail_name": "pii-mask",
                "guardrail_provider": "presidio",
                "guardrail_mode": "pre_call",
                "guardrail_status": "guardrail_intervened",
                "guardrail_action": "mask",
                "guardrail_response": {"masked": "my email is <EMAIL_ADDRESS>"},
                "start_time": 1_795_780_800.125,
                "end_time": 1_795_780_800.25,
                "duration": 0.125,
                "masked_entity_count": {"EMAIL_ADDRESS": 1}
            },
            {
                "guardrail_name": "content-filter",
                "guardrail_provider": "litellm_content_filter",
                "guardrail_mode": "post_call",
                "guardrail_status": "guardrail_intervened",
                "guardrail_action": "block",
                "guardrail_response": {"reason": "violence", "score": 0.97},
                "start_time": 1_795_780_801.5,
                "end_time": 1_795_780_801.75,
                "duration": 0.25
            }
        ],
        "error_information": {
            "error_class": "GuardrailBlocked",
            "error_message": "Violated guardrail policy: content-filter",
            "error_code": "content_policy_violation",
            "error_type": "invalid_request_error"
        },
        "http_status": 400,
        "stream": true
    }))
    .unwrap()
}

/// A record with every field set (times with millisecond precision, which every sink keeps).
pub(crate) fn full_record(id: &str) -> SpendRecord {
    SpendRecord {
        request_id: id.to_owned(),
        client_request_id: Some(format!("client-{id}")),
        call_type: "acompletion".to_owned(),
        status: SpendStatus::Failure,
        model: "gpt-4o-mini".to_owned(),
        api_base: Some("https://api.openai.com/v1".to_owned()),
        user: Some("user-42".to_owned()),
        api_key: Some(
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        ),
        spend: 0.001_234_5,
        prompt_tokens: 1234,
        completion_tokens: 56,
        total_tokens: 1290,
        start_time: t("2026-11-21T12:00:00.125Z"),
        end_time: t("2026-11-21T12:00:02.250Z"),
        completion_start_time: Some(t("2026-11-21T12:00:00.875Z")),
        metadata: realistic_metadata(),
    }
}

/// A small record starting at `start`.
pub(crate) fn record(id: &str, start: &str, status: SpendStatus) -> SpendRecord {
    let start = t(start);
    SpendRecord {
        request_id: id.to_owned(),
        client_request_id: None,
        call_type: "acompletion".to_owned(),
        status,
        model: "gpt-4o".to_owned(),
        api_base: None,
        user: None,
        api_key: None,
        spend: 0.0,
        prompt_tokens: 1,
        completion_tokens: 2,
        total_tokens: 3,
        start_time: start,
        end_time: start + Duration::from_millis(500),
        completion_start_time: None,
        metadata: SpendMetadata {
            http_status: 200,
            ..SpendMetadata::default()
        },
    }
}

/// A record whose guardrail log holds one entry per `(name, action)`.
pub(crate) fn guarded(id: &str, start: &str, entries: &[(&str, &str)]) -> SpendRecord {
    let mut r = record(id, start, SpendStatus::Failure);
    r.metadata = serde_json::from_value(json!({
        "guardrail_information": entries
            .iter()
            .map(|(name, action)| json!({
                "guardrail_name": name,
                "guardrail_provider": "test",
                "guardrail_mode": "pre_call",
                "guardrail_status": if *action == "block" { "guardrail_intervened" } else { "success" },
                "guardrail_action": action,
                "guardrail_response": null,
                "start_time": 0.0,
                "end_time": 0.0,
                "duration": 0.0
            }))
            .collect::<Vec<_>>(),
        "http_status": 400,
        "stream": false,
    }))
    .unwrap();
    r
}

/// A fresh, empty directory for one test.
pub(crate) fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("guardrail-spend-{name}-"))
        .tempdir()
        .unwrap()
}

/// Waits (up to 10 s) until `cond` holds.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the writer has written `n` records.
pub(crate) async fn written(handle: &SpendLogHandle, n: u64) {
    eventually(&format!("{n} records written"), || {
        handle.stats().written >= n
    })
    .await;
}
