//! Provider credentials never leak: the AWS secret key, session token and access key id of a
//! Bedrock guardrail and the API key of an Aim guardrail appear in no log line (at any level,
//! the signer's own traces included), no spend-log row and no client response, also when the
//! services fail and quote them back.

use guardrail_gateway::app::Gateway;
use guardrail_tower::spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use guardrail_tower_testkit::providers::Reply;
use guardrail_tower_testkit::providers::aim::AimMock;
use guardrail_tower_testkit::providers::bedrock::{BedrockMock, MockCredentials, REGION};
use guardrail_tower_testkit::{post_json, send};
use serde_json::json;

const KEY_ID: &str = "AKIDSECRETTEST000042";
const SECRET: &str = "sEcReT/aws+key/NEVER-LOGGED-0000000000";
const TOKEN: &str = "SessionTokenNEVERLOGGED//0123456789";
const AIM_KEY: &str = "aim-key-NEVER-LOGGED-77";

#[path = "support/logs.rs"]
mod logs;

use logs::Captured;

// The only test in this binary, with the capture as the global subscriber (see
// no_secrets_in_logs.rs for why).
#[tokio::test(flavor = "multi_thread")]
async fn provider_credentials_never_appear_in_logs_rows_or_responses() {
    let captured = Captured::install();

    let upstream = MockUpstream::start().await.unwrap();
    let bedrock = BedrockMock::with_credentials(MockCredentials {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        session_token: Some(TOKEN.into()),
        region: REGION.into(),
    })
    .await;
    bedrock.block_word("forbidden");
    let aim = AimMock::with_api_key(AIM_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{base}", api_key: sk-upstream}}
guardrails:
  - guardrail_name: bedrock-guard
    litellm_params:
      guardrail: bedrock
      mode: [pre_call, post_call]
      default_on: true
      guardrailIdentifier: gr-1
      guardrailVersion: "1"
      aws_region_name: {REGION}
      aws_access_key_id: {KEY_ID}
      aws_secret_access_key: "{SECRET}"
      aws_session_token: "{TOKEN}"
      aws_bedrock_runtime_endpoint: "{bedrock}"
      error_fallback: fail_open
  - guardrail_name: aim-guard
    litellm_params:
      guardrail: aim
      mode: [pre_call, post_call]
      default_on: true
      api_key: {AIM_KEY}
      api_base: "{aim}"
general_settings:
  spend_logs: "sqlite://{db}"
  store_prompts_in_spend_logs: true
"#,
        base = upstream.base_url(),
        bedrock = bedrock.endpoint(),
        aim = aim.api_base(),
        db = dir.path().join("spend.db").display(),
    );
    let gateway = Gateway::from_config_str(&config).await.unwrap();
    let debug = format!("{gateway:?}");
    let running = gateway
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let url = running.url("/v1/chat/completions");

    let chat = |content: &str, stream: bool| {
        json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]})
            .to_string()
    };
    let mut bodies = Vec::new();
    // Clean, streamed, blocked by Bedrock.
    for (content, stream) in [("hello", false), ("hello", true), ("forbidden", false)] {
        bodies.push(send(post_json(&url, &chat(content, stream))).await);
    }
    // The services fail and quote the credentials back: Bedrock fails open, Aim fails closed.
    bedrock.push_reply(Reply::Status(
        403,
        format!(r#"{{"message": "canonical request: x-amz-security-token:{TOKEN} {KEY_ID}"}}"#),
    ));
    aim.push_reply(Reply::Status(
        400,
        format!(r#"{{"detail": "bad key Bearer {AIM_KEY}"}}"#),
    ));
    let failed = send(post_json(&url, &chat("hello again", false))).await;
    assert_eq!(failed.status(), 500, "Aim fails closed");
    bodies.push(failed);

    running.stop().await.unwrap();
    let rows = SqliteSink::open(dir.path().join("spend.db"))
        .await
        .unwrap()
        .query(&SpendLogFilter::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    let rows_text = serde_json::to_string(&rows).unwrap();
    assert!(
        rows_text.contains("[REDACTED]"),
        "the failures were recorded"
    );

    // Every Bedrock call carried the token and verified.
    let calls = bedrock.requests();
    assert!(calls.len() >= 4);
    assert!(calls.iter().all(|c| c.signature.is_ok()));

    let logs = captured.text();
    assert!(
        logs.contains("guardrail failed to respond"),
        "the capture sees the gateway's logs"
    );
    let responses: String = bodies
        .iter()
        .map(|b| String::from_utf8_lossy(b.body()).into_owned())
        .collect();
    for secret in [KEY_ID, SECRET, TOKEN, AIM_KEY] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!rows_text.contains(secret), "{secret} in a spend row");
        assert!(!responses.contains(secret), "{secret} in a response");
        assert!(!debug.contains(secret), "{secret} in Debug");
    }
}
