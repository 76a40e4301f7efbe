//! A contract mock of Aim Security's `POST /fw/v1/analyze`.
//!
//! A request must carry `Authorization: Bearer {api key}` (else `401`), go to `/fw/v1/analyze`
//! with `POST` (else `404`), and have the body `{"messages": [{"role": string, "content":
//! string}, ...]}` (else `422`, as Aim's FastAPI validation answers).
//!
//! [`Reply::Evaluate`] answers like Aim from the policy, looking at every
//! message's content:
//!
//! - a blocked word (ASCII case-insensitive): `required_action.action_type: block_action` with
//!   the word's detection message;
//! - else an anonymized literal: `anonymize_action`, `redacted_chat.all_redacted_messages` (every
//!   message with each literal replaced by `[{TYPE}_{n}]`, numbered per type in order of first
//!   appearance) and `analysis_result.session_entities` (`{type, content, name}` per literal
//!   found);
//! - else a monitored word: `monitor_action`;
//! - else `required_action: null`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use guardrail_tower_testkit::providers::aim::{AimMock, API_KEY};
//!
//! let aim = AimMock::start().await;
//! aim.anonymize("Brian", "NAME"); // "Brian" becomes "[NAME_1]"
//! assert_eq!(API_KEY, "aim-mock-key-0001");
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{Value, json};

use super::{Core, Received, Reply, json_response, start};
use crate::TestServer;

/// The API key the mock expects by default.
pub const API_KEY: &str = "aim-mock-key-0001";

/// The analyze path.
pub const ANALYZE_PATH: &str = "/fw/v1/analyze";

#[derive(Debug, Default)]
struct Policy {
    blocked: Vec<(String, String)>,
    monitored: Vec<String>,
    anonymize: Vec<(String, String)>,
}

/// A running Aim mock. Stops when dropped. See the [module docs](self).
#[derive(Debug)]
pub struct AimMock {
    server: TestServer,
    core: Arc<Core>,
    policy: Arc<Mutex<Policy>>,
}

impl AimMock {
    /// Starts a mock expecting [`API_KEY`].
    pub async fn start() -> AimMock {
        AimMock::with_api_key(API_KEY).await
    }

    /// Starts a mock expecting `api_key`.
    pub async fn with_api_key(api_key: &str) -> AimMock {
        let core = Core::new();
        let policy: Arc<Mutex<Policy>> = Arc::default();
        let p = policy.clone();
        let expected = format!("Bearer {api_key}");
        let server = start(core.clone(), move |received| {
            answer(
                received,
                &expected,
                &p.lock().unwrap_or_else(PoisonError::into_inner),
            )
        })
        .await;
        AimMock {
            server,
            core,
            policy,
        }
    }

    /// `http://127.0.0.1:PORT`: the guardrail's `api_base`.
    pub fn api_base(&self) -> String {
        self.server.url("")
    }

    /// Blocks messages containing `word`, with `detection_message`.
    pub fn block_word(&self, word: &str, detection_message: &str) {
        self.policy()
            .blocked
            .push((word.to_owned(), detection_message.to_owned()));
    }

    /// Answers `monitor_action` for messages containing `word`.
    pub fn monitor_word(&self, word: &str) {
        self.policy().monitored.push(word.to_owned());
    }

    /// Anonymizes `literal` as an entity of `entity_type` (`NAME`, `EMAIL`, ...).
    pub fn anonymize(&self, literal: &str, entity_type: &str) {
        self.policy()
            .anonymize
            .push((literal.to_owned(), entity_type.to_owned()));
    }

    /// Uses `reply` once, before the default (in the order pushed).
    pub fn push_reply(&self, reply: Reply) {
        self.core.push_reply(reply);
    }

    /// Sets the default reply ([`Reply::Evaluate`] until changed).
    pub fn set_reply(&self, reply: Reply) {
        self.core.set_reply(reply);
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.core.requests()
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn detail(status: u16, detail: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "detail": detail }).to_string())
}

fn answer(received: &Received, expected_auth: &str, policy: &Policy) -> Response<Full<Bytes>> {
    if received.header("authorization") != Some(expected_auth) {
        return detail(401, "Invalid API key");
    }
    if received.method != http::Method::POST || received.path != ANALYZE_PATH {
        return detail(404, "Not Found");
    }
    let Some(body) = received.json() else {
        return detail(422, "the body is not JSON");
    };
    let Some(messages) = body["messages"].as_array() else {
        return detail(422, "field required: messages");
    };
    let mut parsed = Vec::new();
    for m in messages {
        match (m["role"].as_str(), m["content"].as_str()) {
            (Some(role), Some(content)) => parsed.push((role.to_owned(), content.to_owned())),
            _ => return detail(422, "each message needs a string role and content"),
        }
    }
    let analysis = |entities: Value| json!({"analysis_time_ms": 3, "policy_drill_down": {}, "last_message_entities": [], "session_entities": entities});
    let lower: Vec<String> = parsed.iter().map(|(_, c)| c.to_ascii_lowercase()).collect();
    let has = |word: &str| lower.iter().any(|c| c.contains(&word.to_ascii_lowercase()));
    if let Some((_, message)) = policy.blocked.iter().find(|(w, _)| has(w)) {
        return json_response(
            200,
            json!({
                "analysis_result": analysis(json!([])),
                "required_action": {"action_type": "block_action", "detection_message": message, "policy_name": "blocking policy"}
            })
            .to_string(),
        );
    }
    let mut entities: Vec<Value> = Vec::new();
    let mut per_type: Vec<(String, usize)> = Vec::new();
    for (literal, kind) in &policy.anonymize {
        if parsed.iter().any(|(_, c)| c.contains(literal.as_str())) {
            let n = match per_type.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    per_type.push((kind.clone(), 1));
                    1
                }
            };
            entities.push(json!({"type": kind, "content": literal, "name": format!("{kind}_{n}")}));
        }
    }
    if !entities.is_empty() {
        let redacted: Vec<Value> = parsed
            .iter()
            .enumerate()
            .map(|(i, (role, content))| {
                let mut content = content.clone();
                for e in &entities {
                    let literal = e["content"].as_str().unwrap_or_default();
                    let name = e["name"].as_str().unwrap_or_default();
                    content = content.replace(literal, &format!("[{name}]"));
                }
                json!({"role": role, "content": content, "additional_contents": [], "received_message_id": i.to_string(), "extra_fields": {}})
            })
            .collect();
        return json_response(
            200,
            json!({
                "analysis_result": analysis(Value::Array(entities)),
                "required_action": {"action_type": "anonymize_action", "policy_name": "PII"},
                "redacted_chat": {
                    "all_redacted_messages": redacted,
                    "redacted_new_message": redacted.last().cloned().unwrap_or(Value::Null)
                }
            })
            .to_string(),
        );
    }
    if policy.monitored.iter().any(|w| has(w)) {
        return json_response(
            200,
            json!({
                "analysis_result": analysis(json!([])),
                "required_action": {"action_type": "monitor_action", "policy_name": "monitoring policy"}
            })
            .to_string(),
        );
    }
    json_response(
        200,
        json!({"analysis_result": analysis(json!([])), "required_action": null}).to_string(),
    )
}
