//! The official `openai` and `anthropic` Python SDKs against a running gateway: blocked streams
//! must surface as the SDKs' own errors and events (`tests/sdk/check_sdks.py`).
//!
//! The SDKs are pinned in `tests/sdk/requirements.txt`, which `.ci/run` installs. Without them
//! (or without `python3`) the test is skipped, saying so, on a developer's machine; under CI
//! (`CI` set) it fails instead, so that CI can never pass without having run it.

use std::process::Command;
use std::time::Duration;

use guardrail_gateway::app::Gateway;
use guardrail_tower_testkit::mock::MockUpstream;
use serde_json::Value;

/// Whether this run is CI's (`CI` set, as CI services and `.ci/run` set it).
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `Ok` with the SDK versions when `python3` imports both SDKs, else why not.
fn sdks() -> Result<String, String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import openai, anthropic; print(f'openai {openai.__version__}, anthropic {anthropic.__version__}')",
        ])
        .output()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn official_sdks_read_blocks_as_errors() {
    match sdks() {
        Ok(versions) => eprintln!("SDKs: {versions}"),
        Err(why) if ci() => panic!(
            "the Python SDKs are missing, and under CI this test must run \
             (python3 -m pip install -r tests/sdk/requirements.txt): {why}"
        ),
        Err(why) => {
            eprintln!(
                "skipped: python3 with the openai and anthropic packages is not available \
                 (python3 -m pip install -r tests/sdk/requirements.txt): {why}"
            );
            return;
        }
    }
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: gpt-guarded
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-up, guardrails: [no-codenames]}}
  - model_name: claude-guarded
    litellm_params: {{model: anthropic/claude-sonnet-4, api_base: "{origin}", api_key: sk-ant, guardrails: [no-codenames]}}
guardrails:
  - guardrail_name: block-words
    litellm_params: {{guardrail: litellm_content_filter, mode: pre_call, default_on: true, blocked_words: [{{keyword: forbidden, action: BLOCK}}]}}
  - guardrail_name: no-codenames
    litellm_params: {{guardrail: litellm_content_filter, mode: post_call, blocked_words: [{{keyword: BLUEBIRD, action: BLOCK}}]}}
general_settings:
  spend_logs: "sqlite://{db}"
"#,
        base = upstream.base_url(),
        origin = upstream.origin(),
        db = dir.path().join("spend.db").display(),
    );
    let gateway = Gateway::from_config_str(&config).await.unwrap();
    let running = gateway
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let url = running.url("");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/check_sdks.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args([
                script,
                &url,
                "gpt-guarded",
                "claude-guarded",
                "tell me about the project",
            ])
            .output(),
    )
    .await
    .expect("the SDK script finished in time")
    .unwrap();
    running.stop().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = "Content blocked: keyword 'bluebird' detected";

    // Chat: the SDK raises its APIError with our message, after the text before the block.
    let chat = &out["chat_stream"];
    assert_eq!(chat["raised"], "APIError", "{out}");
    assert_eq!(chat["message"], message);
    assert_eq!(chat["code"], "content_policy_violation");
    assert!(
        chat["text_before_error"]
            .as_str()
            .unwrap()
            .starts_with("You said: tell me about the project.")
    );

    // Responses: an `error` event with our code and message, then `response.failed`.
    let events = out["responses_stream"]["events"].as_array().unwrap();
    assert_eq!(out["responses_stream"]["raised"], Value::Null, "{out}");
    let n = events.len();
    assert_eq!(events[n - 2]["type"], "error");
    assert_eq!(events[n - 2]["code"], "content_policy_violation");
    assert_eq!(events[n - 2]["message"], message);
    assert_eq!(events[n - 2]["param"], Value::Null);
    assert_eq!(events[n - 1]["type"], "response.failed");
    assert_eq!(events[n - 1]["status"], "failed");
    assert_eq!(events[n - 1]["error_code"], "content_policy_violation");
    assert_eq!(events[n - 1]["error_message"], message);

    // A pre_call block: BadRequestError (400), with null param, never "None".
    let blocked = &out["chat_blocked"];
    assert_eq!(blocked["raised"], "BadRequestError", "{out}");
    assert_eq!(blocked["status"], 400);
    assert_eq!(blocked["code"], "content_policy_violation");
    assert_eq!(blocked["type"], "invalid_request_error");
    assert_eq!(blocked["param"], Value::Null);

    // Anthropic: the SDK raises from `event: error`, with our error body.
    let claude = &out["anthropic_stream"];
    assert_eq!(claude["raised"], "APIStatusError", "{out}");
    assert_eq!(claude["body"]["type"], "error");
    assert_eq!(claude["body"]["error"]["type"], "invalid_request_error");
    assert_eq!(claude["body"]["error"]["message"], message);
    assert!(
        claude["text_before_error"]
            .as_str()
            .unwrap()
            .starts_with("You said:")
    );
}
