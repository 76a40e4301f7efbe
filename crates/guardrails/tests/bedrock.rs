//! The Bedrock guardrail against the Bedrock contract mock (real sockets): every request signed
//! and verified, pass, block, mask, service down with both fallbacks, malformed answers, 5xx, and
//! through the pre-call and post-call layers.

use std::sync::Arc;

mod support;

use guardrail_tower_core::text::Side;
use guardrail_tower_core::{
    CallType, ConfiguredGuardrail, Decision, Fallback, Guardrail, GuardrailErrorKind,
    GuardrailInput, GuardrailLog, GuardrailMode, GuardrailSelection, GuardrailStatus, Guardrails,
    Outcome, RequestId, RequestMeta,
};
use guardrail_tower_guardrails::bedrock::{BedrockGuardrail, BedrockGuardrailConfig};
use guardrail_tower_guardrails::http::HttpClient;
use guardrail_tower_pre_call::PreCallGuardrailLayer;
use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
use guardrail_tower_testkit::providers::Reply;
use guardrail_tower_testkit::providers::bedrock::{
    ACCESS_KEY_ID, BLOCKED_INPUT_MESSAGE, BLOCKED_OUTPUT_MESSAGE, BedrockMock, MockCredentials,
    REGION, SECRET_ACCESS_KEY,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

fn config(mock: &BedrockMock) -> BedrockGuardrailConfig {
    let mut config = BedrockGuardrailConfig::new("gr-test", "1");
    config.aws_region_name = Some(REGION.into());
    config.aws_access_key_id = Some(ACCESS_KEY_ID.into());
    config.aws_secret_access_key = Some(SECRET_ACCESS_KEY.into());
    config.aws_bedrock_runtime_endpoint = Some(mock.endpoint());
    config.timeout = Some(2.0);
    config
}

fn guard(config: BedrockGuardrailConfig) -> BedrockGuardrail {
    BedrockGuardrail::with_client_and_env(config, HttpClient::new(), &|_| None)
        .expect("valid config")
}

fn input(side: Side, texts: &[&str]) -> GuardrailInput {
    let meta = RequestMeta::new(RequestId::from("req-7"), CallType::ChatCompletions);
    GuardrailInput::new(
        texts.iter().map(|t| t.to_string()).collect(),
        side,
        match side {
            Side::Request => GuardrailMode::PreCall,
            Side::Response => GuardrailMode::PostCall,
        },
        Arc::new(meta),
    )
}

#[tokio::test]
async fn a_clean_text_passes_and_the_request_is_signed() {
    let mock = BedrockMock::start().await;
    let verdict = guard(config(&mock))
        .check(&input(Side::Request, &["hello there", "", "second text"]))
        .await
        .unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert_eq!(verdict.detail().unwrap()["action"], "NONE");

    let calls = mock.requests();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.received.method, "POST");
    assert_eq!(call.received.path, "/guardrail/gr-test/version/1/apply");
    assert_eq!(
        call.signature.as_deref().unwrap(),
        ["content-type", "host", "x-amz-date"],
        "signed: {:?}",
        call.signature
    );
    assert_eq!(
        call.received.header("content-type"),
        Some("application/json")
    );
    assert_eq!(
        call.json(),
        json!({"source": "INPUT", "content": [{"text": {"text": "hello there"}}, {"text": {"text": "second text"}}]})
    );
    let auth = call.received.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"))
            && auth.contains(&format!("/{REGION}/bedrock/aws4_request")),
        "{auth}"
    );
    assert!(!auth.contains(SECRET_ACCESS_KEY));
}

#[tokio::test]
async fn an_arn_identifier_and_temporary_credentials_are_signed_correctly() {
    let mock = BedrockMock::with_credentials(MockCredentials {
        session_token: Some("FwoGZXIvYXdzEXAMPLETOKEN//0000".into()),
        ..MockCredentials::default()
    })
    .await;
    let mut config = config(&mock);
    config.guardrail_identifier =
        Some("arn:aws:bedrock:us-east-1:123456789012:guardrail/gr-abc".into());
    config.guardrail_version = Some("DRAFT".into());
    config.aws_session_token = Some("FwoGZXIvYXdzEXAMPLETOKEN//0000".into());
    let verdict = guard(config)
        .check(&input(Side::Response, &["an answer"]))
        .await
        .unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    let call = &mock.requests()[0];
    assert_eq!(
        call.received.path,
        "/guardrail/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aguardrail%2Fgr-abc/version/DRAFT/apply"
    );
    assert_eq!(
        call.signature.as_deref().unwrap(),
        ["content-type", "host", "x-amz-date", "x-amz-security-token"]
    );
    assert_eq!(call.json()["source"], "OUTPUT");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_contract_and_fails_the_check() {
    let mock = BedrockMock::start().await;
    let mut config = config(&mock);
    config.aws_secret_access_key = Some("not-the-secret".into());
    let err = guard(config)
        .check(&input(Side::Request, &["hello"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("403"), "{err}");
    assert!(err.message().contains("signature"), "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
    let call = &mock.requests()[0];
    assert!(
        call.signature
            .as_ref()
            .unwrap_err()
            .contains("does not match"),
        "{:?}",
        call.signature
    );
}

#[tokio::test]
async fn credentials_quoted_back_by_the_service_are_scrubbed() {
    let mock = BedrockMock::start().await;
    mock.push_reply(Reply::Status(
        403,
        format!(
            r#"{{"message": "The Canonical String for this request should have been 'POST ... x-amz-security-token:TOKEN-42' with {ACCESS_KEY_ID}"}}"#
        ),
    ));
    mock.push_reply(Reply::Status(503, "TOKEN-42 overloaded".into()));
    let mut config = config(&mock);
    config.aws_session_token = Some("TOKEN-42".into());
    let bedrock = guard(config);
    for kind in [GuardrailErrorKind::Failed, GuardrailErrorKind::Unreachable] {
        let err = bedrock
            .check(&input(Side::Request, &["x"]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), kind, "{text}");
        assert!(!text.contains("TOKEN-42"), "{text}");
        assert!(!text.contains(ACCESS_KEY_ID), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
    }
}

#[tokio::test]
async fn a_blocked_word_blocks_with_the_configured_message() {
    let mock = BedrockMock::start().await;
    mock.block_word("BLUEBIRD");
    let bedrock = guard(config(&mock));
    let verdict = bedrock
        .check(&input(Side::Request, &["tell me about bluebird"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Block {
            message: format!("Violated guardrail policy: {BLOCKED_INPUT_MESSAGE}")
        }
    );
    // The match is not kept in the log.
    let detail = verdict.detail().unwrap();
    assert_eq!(
        detail["assessments"][0]["wordPolicy"]["customWords"][0]["match"],
        "[REDACTED]"
    );
    let verdict = bedrock
        .check(&input(Side::Response, &["codename BLUEBIRD"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Block {
            message: format!("Violated guardrail policy: {BLOCKED_OUTPUT_MESSAGE}")
        }
    );
}

#[tokio::test]
async fn anonymized_entities_are_masked_text_by_text() {
    let mock = BedrockMock::start().await;
    mock.anonymize("jane@corp.com", "EMAIL");
    mock.anonymize("555-0100", "PHONE");
    let verdict = guard(config(&mock))
        .check(&input(
            Side::Request,
            &[
                "write to jane@corp.com",
                "",
                "or call 555-0100 or jane@corp.com",
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Rewrite {
            texts: vec![
                "write to {EMAIL}".into(),
                String::new(),
                "or call {PHONE} or {EMAIL}".into()
            ]
        }
    );
    assert_eq!(
        serde_json::to_value(verdict.masked_entity_count().unwrap()).unwrap(),
        json!({"EMAIL": 2, "PHONE": 1})
    );
    assert!(
        !verdict
            .detail()
            .unwrap()
            .to_string()
            .contains("jane@corp.com")
    );
}

#[tokio::test]
async fn a_mask_that_does_not_line_up_fails_instead_of_leaking() {
    let mock = BedrockMock::start().await;
    mock.set_reply(Reply::Json(json!({
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "one {EMAIL}"}],
        "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [{"type": "EMAIL", "match": "a@b.c", "action": "ANONYMIZED"}]}}]
    })));
    let err = guard(config(&mock))
        .check(&input(Side::Request, &["one a@b.c", "two a@b.c"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("1 outputs for 2 texts"), "{err}");
}

#[tokio::test]
async fn down_slow_and_5xx_are_unreachable_others_fail() {
    let mock = BedrockMock::start().await;
    let mut down = config(&mock);
    down.aws_bedrock_runtime_endpoint = Some(support::echo::closed_port_url().await);
    let err = guard(down)
        .check(&input(Side::Request, &["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable, "{err}");

    let mut slow = config(&mock);
    slow.timeout = Some(0.2);
    mock.push_reply(Reply::Hang);
    let err = guard(slow)
        .check(&input(Side::Request, &["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Timeout, "{err}");

    for (status, kind) in [
        (502, GuardrailErrorKind::Unreachable),
        (503, GuardrailErrorKind::Unreachable),
        (504, GuardrailErrorKind::Unreachable),
        (500, GuardrailErrorKind::Failed),
        (429, GuardrailErrorKind::Failed),
        (400, GuardrailErrorKind::Failed),
    ] {
        mock.push_reply(Reply::Status(
            status,
            r#"{"message": "ThrottlingException or worse"}"#.into(),
        ));
        let err = guard(config(&mock))
            .check(&input(Side::Request, &["a"]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{status}: {err}");
        assert!(err.message().contains(&status.to_string()), "{err}");
    }
}

#[tokio::test]
async fn malformed_answers_fail() {
    let mock = BedrockMock::start().await;
    for (reply, says) in [
        (Reply::Raw("<html>gateway</html>".into()), "not JSON"),
        (Reply::Json(json!({"outputs": []})), "no `action`"),
        (
            Reply::Json(json!({"action": "MAYBE"})),
            "unknown action 'MAYBE'",
        ),
        (Reply::Json(json!(["NONE"])), "not a JSON object"),
        (
            Reply::Json(json!({"action": "NONE", "assessments": "none"})),
            "not an array",
        ),
    ] {
        mock.push_reply(reply);
        let err = guard(config(&mock))
            .check(&input(Side::Request, &["a"]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), GuardrailErrorKind::Failed, "{err}");
        assert!(err.message().contains(says), "{says}: {err}");
    }
}

async fn run(configured: ConfiguredGuardrail) -> (Outcome, GuardrailLog) {
    let guardrails = Guardrails::new([configured.default_on(true)]);
    let log = GuardrailLog::new();
    let outcome = guardrails
        .run(
            GuardrailMode::PreCall,
            &GuardrailSelection::new(),
            Side::Request,
            vec!["hello".into()],
            Arc::new(RequestMeta::new(
                RequestId::from("r"),
                CallType::ChatCompletions,
            )),
            log.clone(),
        )
        .expect("selected")
        .await;
    (outcome, log)
}

#[tokio::test]
async fn failures_go_to_the_fallbacks() {
    let mock = BedrockMock::start().await;
    let mut down = config(&mock);
    down.aws_bedrock_runtime_endpoint = Some(support::echo::closed_port_url().await);
    let unreachable = guard(down);
    let malformed = guard(config(&mock));
    mock.set_reply(Reply::Raw("{".into()));

    for (bedrock, is_unreachable) in [(unreachable, true), (malformed, false)] {
        let open = ConfiguredGuardrail::new("bedrock", GuardrailMode::PreCall, bedrock.clone());
        let open = if is_unreachable {
            open.unreachable_fallback(Fallback::FailOpen)
        } else {
            open.error_fallback(Fallback::FailOpen)
        };
        let (outcome, log) = run(open).await;
        assert!(
            matches!(
                outcome,
                Outcome::Allowed {
                    rewritten: None,
                    ..
                }
            ),
            "{outcome:?}"
        );
        let entry = &log.entries()[0];
        assert_eq!(
            entry.guardrail_status,
            GuardrailStatus::GuardrailFailedToRespond
        );
        assert_eq!(entry.guardrail_provider, "bedrock");
        assert_eq!(entry.guardrail_response["fallback"], "fail_open");
        assert_eq!(entry.guardrail_response["unreachable"], is_unreachable);

        let closed = ConfiguredGuardrail::new("bedrock", GuardrailMode::PreCall, bedrock);
        let (outcome, log) = run(closed).await;
        let Outcome::Blocked(err) = outcome else {
            panic!("allowed");
        };
        assert_eq!(err.status(), if is_unreachable { 503 } else { 500 });
        assert_eq!(
            log.entries()[0].guardrail_status,
            GuardrailStatus::GuardrailFailedToRespond
        );
    }
}

#[tokio::test]
async fn through_the_layers_a_block_is_a_400_and_a_mask_reaches_the_upstream_and_the_client() {
    let mock = BedrockMock::start().await;
    mock.block_word("forbidden");
    mock.anonymize("jane@corp.com", "EMAIL");
    let guardrails = Guardrails::new([ConfiguredGuardrail::new(
        "bedrock-guard",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        guard(config(&mock)),
    )
    .default_on(true)]);
    let svc = ServiceBuilder::new()
        .layer(PreCallGuardrailLayer::new(guardrails.clone()))
        .layer(StreamingGuardrailBodyLayer::new(guardrails))
        .service(support::echo::echo_upstream());

    let resp = svc
        .clone()
        .oneshot(support::echo::chat("a forbidden topic"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        format!(
            r#"{{"error":{{"message":"Violated guardrail policy: {BLOCKED_INPUT_MESSAGE}","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}}}"#
        )
    );
    assert_eq!(mock.requests().len(), 1, "the upstream call never happened");

    let resp = svc
        .oneshot(support::echo::chat("mail jane@corp.com"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: mail {EMAIL}"
    );
    let calls = mock.requests();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[1].json()["source"], "INPUT");
    assert_eq!(calls[2].json()["source"], "OUTPUT");
    assert_eq!(calls[2].texts(), ["You said: mail {EMAIL}"]);
    assert!(calls.iter().all(|c| c.signature.is_ok()));
}

#[tokio::test]
async fn a_zero_length_input_makes_no_call() {
    let mock = BedrockMock::start().await;
    let verdict = guard(config(&mock))
        .check(&input(Side::Request, &["", ""]))
        .await
        .unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    assert!(mock.requests().is_empty());
}
