//! `GET /guardrails/list` and `POST /guardrails/apply_guardrail` over real sockets: LiteLLM's
//! shapes, every secret masked, the master key required when there is one.

mod support;

use guardrail_gateway::app::Gateway;
use guardrail_gateway::config::GatewayConfig;
use http::Method;
use serde_json::{Value, json};
use support::{call, call_json, serve};

const MASTER: &str = "sk-master-guardrail-routes-0123";

const SECRETS: &[&str] = &[
    "sk-guard-literal-9f8e7d",
    "env-guard-key-5a4b3c",
    "AKIAENVSECRET0000001",
    "env-aws-secret-access-key-zz",
    "env-session-token-yy",
    "hdr-secret-123",
    "pw-in-url",
    MASTER,
];

fn env(name: &str) -> Option<String> {
    match name {
        "GUARD_KEY" => Some("env-guard-key-5a4b3c".into()),
        "GUARD_BASE" => Some("http://127.0.0.1:9/guard".into()),
        "AWS_KEY_ID" => Some("AKIAENVSECRET0000001".into()),
        "AWS_SECRET" => Some("env-aws-secret-access-key-zz".into()),
        "AWS_TOKEN" => Some("env-session-token-yy".into()),
        _ => None,
    }
}

fn config(master: bool) -> String {
    format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:9/v1", api_key: sk-upstream}}
guardrails:
  - guardrail_name: pii-mask
    litellm_params:
      guardrail: litellm_content_filter
      mode: pre_call
      patterns: [{{pattern_type: prebuilt, pattern_name: email, action: MASK}}]
    guardrail_info:
      description: masks e-mail addresses
  - guardrail_name: block-words
    litellm_params:
      guardrail: litellm_content_filter
      mode: [pre_call, post_call]
      default_on: true
      blocked_words: [{{keyword: forbidden, action: BLOCK}}]
  - guardrail_name: remote
    litellm_params:
      guardrail: generic_guardrail_api
      mode: post_call
      api_base: "http://svc:pw-in-url@127.0.0.1:9/check"
      api_key: sk-guard-literal-9f8e7d
      headers: {{X-Tenant-Secret: hdr-secret-123}}
      unreachable_fallback: fail_open
  - guardrail_name: remote-env
    litellm_params:
      guardrail: generic_guardrail_api
      mode: during_call
      api_base: os.environ/GUARD_BASE
      api_key: os.environ/GUARD_KEY
  - guardrail_name: bedrock-guard
    litellm_params:
      guardrail: bedrock
      mode: pre_call
      guardrailIdentifier: gr-1
      guardrailVersion: "1"
      aws_region_name: eu-west-1
      aws_access_key_id: os.environ/AWS_KEY_ID
      aws_secret_access_key: os.environ/AWS_SECRET
      aws_session_token: os.environ/AWS_TOKEN
{settings}
"#,
        settings = if master {
            format!("general_settings:\n  master_key: {MASTER}\n")
        } else {
            String::new()
        }
    )
}

async fn gateway(master: bool) -> Gateway {
    let config = GatewayConfig::from_yaml_with_env(&config(master), &env).unwrap();
    Gateway::from_config(config).await.unwrap()
}

#[tokio::test]
async fn the_list_is_litellms_shape_with_every_secret_masked() {
    let served = serve(gateway(true).await).await;
    let (status, _, body) = call(
        Method::GET,
        &served.url("/guardrails/list"),
        Some(MASTER),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value,
        json!({"guardrails": [
            {
                "guardrail_name": "pii-mask",
                "litellm_params": {
                    "guardrail": "litellm_content_filter",
                    "mode": "pre_call",
                    "patterns": [{"pattern_type": "prebuilt", "pattern_name": "email", "action": "MASK"}],
                },
                "guardrail_info": {"description": "masks e-mail addresses"},
            },
            {
                "guardrail_name": "block-words",
                "litellm_params": {
                    "guardrail": "litellm_content_filter",
                    "mode": ["pre_call", "post_call"],
                    "default_on": true,
                    "blocked_words": [{"keyword": "forbidden", "action": "BLOCK"}],
                },
                "guardrail_info": null,
            },
            {
                "guardrail_name": "remote",
                "litellm_params": {
                    "guardrail": "generic_guardrail_api",
                    "mode": "post_call",
                    "api_base": "http://*****@127.0.0.1:9/check",
                    "api_key": "*****",
                    "headers": {"X-Tenant-Secret": "*****"},
                    "unreachable_fallback": "fail_open",
                },
                "guardrail_info": null,
            },
            {
                "guardrail_name": "remote-env",
                "litellm_params": {
                    "guardrail": "generic_guardrail_api",
                    "mode": "during_call",
                    "api_base": "os.environ/GUARD_BASE",
                    "api_key": "*****",
                },
                "guardrail_info": null,
            },
            {
                "guardrail_name": "bedrock-guard",
                "litellm_params": {
                    "guardrail": "bedrock",
                    "mode": "pre_call",
                    "guardrailIdentifier": "gr-1",
                    "guardrailVersion": "1",
                    "aws_region_name": "eu-west-1",
                    "aws_access_key_id": "*****",
                    "aws_secret_access_key": "*****",
                    "aws_session_token": "*****",
                },
                "guardrail_info": null,
            },
        ]})
    );
}

#[tokio::test]
async fn apply_guardrail_masks_blocks_and_names_what_is_wrong() {
    let served = serve(gateway(true).await).await;
    let url = served.url("/guardrails/apply_guardrail");
    let apply = |body: &'static str| {
        let url = url.clone();
        async move { call_json(Method::POST, &url, Some(MASTER), Some(body)).await }
    };

    // Masked text, with LiteLLM's optional fields accepted.
    assert_eq!(
        apply(r#"{"guardrail_name":"pii-mask","text":"write to ann@example.com today","language":"en","entities":["EMAIL_ADDRESS"]}"#).await,
        (200, json!({"response_text": "write to [EMAIL_REDACTED] today"}))
    );
    // Allowed text comes back unchanged.
    assert_eq!(
        apply(r#"{"guardrail_name":"block-words","text":"a harmless question"}"#).await,
        (200, json!({"response_text": "a harmless question"}))
    );
    // A block is the OpenAI error of a guardrail block.
    let (status, body) =
        apply(r#"{"guardrail_name":"block-words","text":"a forbidden question"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "content_policy_violation");
    assert_eq!(body["error"]["param"], Value::Null);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("forbidden"),
        "{body}"
    );
    // An unknown guardrail is a 404 naming it.
    assert_eq!(
        apply(r#"{"guardrail_name":"nope","text":"x"}"#).await,
        (
            404,
            json!({"error": {
                "message": "Guardrail 'nope' not found. Please ensure the guardrail is configured in your LiteLLM proxy.",
                "type": "not_found_error",
                "param": "guardrail_name",
                "code": "not_found",
            }})
        )
    );
    // Bad bodies are 400s naming what is wrong.
    let (status, body) = apply(r#"{"guardrail_name": "pii-mask", "text": "#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    let (status, body) = apply(r#"{"guardrail_name":"pii-mask"}"#).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("text")),
        "{body}"
    );
    let (status, body) = apply(r#"{"guardrail_name":7,"text":"x"}"#).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("guardrail_name")),
        "{body}"
    );
    let (status, body) = apply(r#"["guardrail_name"]"#).await;
    assert_eq!(status, 400, "{body}");

    // LiteLLM's alias.
    let (status, body) = call_json(
        Method::POST,
        &served.url("/apply_guardrail"),
        Some(MASTER),
        Some(r#"{"guardrail_name":"pii-mask","text":"bob@example.org"}"#),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"response_text": "[EMAIL_REDACTED]"}))
    );
}

#[tokio::test]
async fn a_guardrail_service_that_is_down_fails_as_configured_with_no_detail() {
    let served = serve(gateway(true).await).await;
    let url = served.url("/guardrails/apply_guardrail");
    // fail_open: the text passes.
    let (status, body) = call_json(
        Method::POST,
        &url,
        Some(MASTER),
        Some(r#"{"guardrail_name":"remote","text":"hello"}"#),
    )
    .await;
    assert_eq!((status, body), (200, json!({"response_text": "hello"})));
    // fail_closed (the default): a 503 naming the guardrail and nothing of its service.
    let (status, _, body) = call(
        Method::POST,
        &url,
        Some(MASTER),
        Some(r#"{"guardrail_name":"remote-env","text":"hello"}"#),
    )
    .await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("remote-env"), "{text}");
    assert!(
        !text.contains("127.0.0.1") && !text.contains(":9"),
        "{text}"
    );
}

#[tokio::test]
async fn both_need_the_master_key_when_there_is_one() {
    let served = serve(gateway(true).await).await;
    let apply = r#"{"guardrail_name":"pii-mask","text":"x"}"#;
    for (method, path, body) in [
        (Method::GET, "/guardrails/list", None),
        (Method::POST, "/guardrails/apply_guardrail", Some(apply)),
    ] {
        let (status, value) = call_json(method.clone(), &served.url(path), None, body).await;
        assert_eq!(status, 401, "{path}: {value}");
        assert_eq!(value["error"]["type"], "auth_error", "{path}");
        let (status, _) = call_json(
            method.clone(),
            &served.url(path),
            Some("sk-wrong-key-000000"),
            body,
        )
        .await;
        assert_eq!(status, 401, "{path}");
    }
    // A virtual key is a valid key, but not the master key.
    let (status, made) = call_json(
        Method::POST,
        &served.url("/key/generate"),
        Some(MASTER),
        Some("{}"),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let vkey = made["key"].as_str().unwrap();
    let (status, value) = call_json(
        Method::GET,
        &served.url("/guardrails/list"),
        Some(vkey),
        None,
    )
    .await;
    assert_eq!(status, 403, "{value}");
    let (status, _) = call_json(
        Method::POST,
        &served.url("/guardrails/apply_guardrail"),
        Some(vkey),
        Some(apply),
    )
    .await;
    assert_eq!(status, 403);

    // Without a master key, both answer (the gateway runs open, on loopback).
    let open = serve(gateway(false).await).await;
    let (status, value) = call_json(Method::GET, &open.url("/guardrails/list"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(value["guardrails"].as_array().unwrap().len(), 5);
    let (status, _) = call_json(
        Method::POST,
        &open.url("/guardrails/apply_guardrail"),
        None,
        Some(apply),
    )
    .await;
    assert_eq!(status, 200);
}
