//! A gateway on loopback for the security tests, configured with a default_on and a
//! model-level guardrail.

use guardrail_gateway::app::{Gateway, RunningGateway};
use guardrail_tower_testkit::mock::MockUpstream;

/// The gateway of `config` on `127.0.0.1:0`: its URL, and the handle that stops it (when
/// dropped, too).
pub(crate) async fn start(config: &str) -> (String, RunningGateway) {
    let gateway = Gateway::from_config_str(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = gateway.spawn(listener).unwrap();
    (running.url(""), running)
}

pub(crate) fn config(upstream: &MockUpstream, db: &std::path::Path) -> String {
    format!(
        r#"
model_list:
  - model_name: guarded
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream-SECRET-1234, guardrails: [model-level]}}
guardrails:
  - guardrail_name: always
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, default_on: true, blocked_words: [{{keyword: forbidden, action: BLOCK}}]}}
  - guardrail_name: model-level
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, blocked_words: [{{keyword: restricted, action: BLOCK}}]}}
general_settings:
  spend_logs: "sqlite://{db}"
  max_request_body_bytes: 65536
"#,
        base = upstream.base_url(),
        db = db.display(),
    )
}
