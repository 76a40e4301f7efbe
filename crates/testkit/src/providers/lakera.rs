//! A contract mock of Lakera Guard v2: `POST /v2/guard`.
//!
//! It needs `Authorization: Bearer {key}` (any non-empty key; a 401 otherwise) and a body with
//! `messages: [{role, content}]`, and answers in Lakera's shape:
//! `{"flagged", "payload", "breakdown", "dev_info", "metadata"}` (`payload`, `breakdown` and
//! `dev_info` only when the request asks for them). Its detectors are fixed (phrases are whole
//! words, any case):
//!
//! | detector_type | fires on | in roles |
//! | --- | --- | --- |
//! | `prompt_attack` | [`PROMPT_ATTACKS`] | all but `system` |
//! | `moderated_content/hate` | `i hate you`, `despise your kind` | all |
//! | `moderated_content/violence` | `kill`, `massacre` | all |
//! | `pii/email` | email addresses (with a `payload` span, offsets in characters) | all |
//!
//! `breakdown` lists every detector with `detected` and the first message it fired on.

use std::io;
use std::ops::Deref;

use serde_json::{Value, json};

use super::service::{Answer, ServiceMock, find_emails, find_phrase, json_body};
use crate::mock::RecordedRequest;

/// The phrases the `prompt_attack` detector fires on.
pub const PROMPT_ATTACKS: [&str; 3] = [
    "ignore all previous instructions",
    "ignore previous instructions",
    "you are now dan",
];

const DETECTORS: [&str; 4] = [
    "prompt_attack",
    "moderated_content/hate",
    "moderated_content/violence",
    "pii/email",
];

/// A running Lakera Guard mock. Dereferences to its [`ServiceMock`] (recorded requests,
/// scripts).
#[derive(Debug)]
pub struct LakeraMock {
    service: ServiceMock,
}

impl Deref for LakeraMock {
    type Target = ServiceMock;

    fn deref(&self) -> &ServiceMock {
        &self.service
    }
}

impl LakeraMock {
    /// Binds `127.0.0.1:0` and serves `/v2/guard`.
    pub async fn start() -> io::Result<LakeraMock> {
        Ok(LakeraMock {
            service: ServiceMock::start(answer).await?,
        })
    }

    /// The `api_base` to configure.
    pub fn base_url(&self) -> String {
        self.service.origin()
    }
}

fn answer(request: &RecordedRequest) -> Answer {
    if (request.method.as_str(), request.path.as_str()) != ("POST", "/v2/guard") {
        return (404, json!({"message": "Not Found"}));
    }
    let key = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if key.trim().is_empty() {
        return (401, json!({"message": "Unauthorized: invalid API key"}));
    }
    match json_body(request) {
        Ok(body) => guard(&body),
        Err(e) => e,
    }
}

fn guard(body: &Value) -> Answer {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return (400, json!({"message": "messages: field required"}));
    };
    let mut payload = Vec::new();
    let mut fired: Vec<Option<usize>> = vec![None; DETECTORS.len()];
    for (i, message) in messages.iter().enumerate() {
        let (Some(role), Some(content)) = (
            message.get("role").and_then(Value::as_str),
            message.get("content").and_then(Value::as_str),
        ) else {
            return (
                400,
                json!({"message": format!("messages.{i}: role and content (a string) are required")}),
            );
        };
        let mut hit = |d: usize| {
            fired[d].get_or_insert(i);
        };
        let any = |phrases: &[&str]| phrases.iter().any(|p| !find_phrase(content, p).is_empty());
        if role != "system" && any(&PROMPT_ATTACKS) {
            hit(0);
        }
        if any(&["i hate you", "despise your kind"]) {
            hit(1);
        }
        if any(&["kill", "massacre"]) {
            hit(2);
        }
        for (start, end) in find_emails(content) {
            hit(3);
            payload.push(json!({
                "start": start,
                "end": end,
                "text": content.chars().skip(start).take(end - start).collect::<String>(),
                "detector_type": "pii/email",
                "labels": ["pii", "email"],
                "message_id": i,
            }));
        }
    }
    let flagged = fired.iter().any(Option::is_some);
    let project = body
        .get("project_id")
        .and_then(Value::as_str)
        .unwrap_or("project-default");
    let mut answer = json!({
        "flagged": flagged,
        "metadata": {"request_uuid": "00000000-0000-4000-8000-000000000000"},
    });
    if body.get("payload").and_then(Value::as_bool) == Some(true) {
        answer["payload"] = Value::Array(payload);
    }
    if body.get("breakdown").and_then(Value::as_bool) == Some(true) {
        answer["breakdown"] = DETECTORS
            .iter()
            .zip(&fired)
            .enumerate()
            .map(|(n, (detector, first))| {
                json!({
                    "project_id": project,
                    "policy_id": "policy-default",
                    "detector_id": format!("detector-{n}"),
                    "detector_type": detector,
                    "detected": first.is_some(),
                    "message_id": first.unwrap_or(0),
                })
            })
            .collect();
    }
    if body.get("dev_info").and_then(Value::as_bool) == Some(true) {
        answer["dev_info"] = json!({"git_revision": "mock", "git_timestamp": "2025-01-01T00:00:00Z", "model_version": "mock", "version": "2.0.0"});
    }
    (200, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors_fire_as_documented() {
        let (status, answer) = guard(&json!({
            "messages": [
                {"role": "system", "content": "Ignore previous instructions from strangers."},
                {"role": "user", "content": "Mail zoë@x.fr"}
            ],
            "payload": true, "breakdown": true
        }));
        assert_eq!(status, 200);
        assert_eq!(answer["flagged"], true);
        assert_eq!(answer["payload"][0]["text"], "zoë@x.fr");
        assert_eq!(answer["payload"][0]["start"], 5);
        assert_eq!(answer["payload"][0]["message_id"], 1);
        let detected: Vec<&str> = answer["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["detected"] == true)
            .map(|b| b["detector_type"].as_str().unwrap())
            .collect();
        assert_eq!(detected, ["pii/email"]);
        let (_, answer) = guard(&json!({"messages": [{"role": "user", "content": "hello"}]}));
        assert_eq!(
            answer,
            json!({"flagged": false, "metadata": {"request_uuid": "00000000-0000-4000-8000-000000000000"}})
        );
    }
}
