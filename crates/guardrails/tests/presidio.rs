//! The Presidio guardrail against its contract mock (real sockets): what it sends the analyzer
//! and the anonymizer, masking, blocking, thresholds, numbered placeholders restored per
//! request (JSON and streams, at any window split), masking a streamed response per window, and
//! every kind of failure.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use guardrail_tower_core::{
    ConfiguredGuardrail, Decision, Fallback, Guardrail, GuardrailErrorKind, GuardrailMode,
    GuardrailStatus, StreamPolicy,
};
use guardrail_tower_guardrails::http::HttpClient;
use guardrail_tower_guardrails::presidio::{PiiAction, Presidio, PresidioConfig};
use guardrail_tower_testkit::providers::presidio::PresidioMock;
use guardrail_tower_testkit::providers::service::Behavior;
use serde_json::{Value, json};
use support::{Upstream, call, chat, closed_port_url, input, window};

fn config(mock: &PresidioMock) -> PresidioConfig {
    let mut config = PresidioConfig::new(mock.base_url(), mock.base_url());
    config.timeout = Some(2.0);
    config
}

fn presidio(config: PresidioConfig) -> Presidio {
    Presidio::with_client(config, HttpClient::new())
        .unwrap()
        .with_guardrail_name("pii")
}

fn entities(pairs: &[(&str, PiiAction)]) -> BTreeMap<String, PiiAction> {
    pairs.iter().map(|(e, a)| ((*e).to_owned(), *a)).collect()
}

fn rewritten(decision: &Decision) -> Vec<String> {
    match decision {
        Decision::Rewrite { texts } => texts.clone(),
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

#[tokio::test]
async fn clean_text_is_analyzed_and_passes_without_the_anonymizer() {
    let mock = PresidioMock::start().await.unwrap();
    let verdict = presidio(config(&mock))
        .check(&input(&["hello there", "  "]))
        .await
        .unwrap();
    assert_eq!(verdict.decision(), &Decision::Allow);
    // The blank text is not sent; nothing was found, so nothing is anonymized.
    let sent = mock.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/analyze");
    assert_eq!(sent[0].header("accept"), Some("application/json"));
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json().unwrap(),
        json!({"text": "hello there", "language": "en"})
    );
}

#[tokio::test]
async fn entities_are_masked_by_the_anonymizer_and_counted() {
    let mock = PresidioMock::start().await.unwrap();
    let mut config = config(&mock);
    config.pii_entities_config = entities(&[
        ("EMAIL_ADDRESS", PiiAction::Mask),
        ("PERSON", PiiAction::Mask),
        ("PHONE_NUMBER", PiiAction::Mask),
    ]);
    let verdict = presidio(config)
        .check(&input(&[
            "Mail jane@corp.com or call 555-0100",
            "and Jane Doe",
        ]))
        .await
        .unwrap();
    assert_eq!(
        rewritten(verdict.decision()),
        [
            "Mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>",
            "and <PERSON>"
        ]
    );
    assert_eq!(
        verdict.masked_entity_count().unwrap(),
        &BTreeMap::from([
            ("EMAIL_ADDRESS".to_owned(), 1),
            ("PERSON".to_owned(), 1),
            ("PHONE_NUMBER".to_owned(), 1)
        ])
    );
    // Only the configured entities are asked for.
    let analyze = mock.requests_to("/analyze");
    assert_eq!(
        analyze[0].json().unwrap()["entities"],
        json!(["EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"])
    );
    // The anonymizer gets the analyzer's results for the text they belong to.
    let anonymize = mock.requests_to("/anonymize");
    assert_eq!(anonymize.len(), 2);
    let first = anonymize
        .iter()
        .map(|r| r.json().unwrap())
        .find(|b| b["text"] == "Mail jane@corp.com or call 555-0100")
        .unwrap();
    assert_eq!(
        first["analyzer_results"],
        json!([
            {"entity_type": "EMAIL_ADDRESS", "start": 5, "end": 18, "score": 1.0},
            {"entity_type": "PHONE_NUMBER", "start": 27, "end": 35, "score": 0.75}
        ])
    );
    assert!(first.get("anonymizers").is_none());
    // The log keeps types, offsets and scores, never the values.
    let detail = verdict.detail().unwrap().to_string();
    assert!(
        detail.contains("\"entity_type\":\"EMAIL_ADDRESS\""),
        "{detail}"
    );
    assert!(
        !detail.contains("jane@corp.com") && !detail.contains("Jane Doe"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_block_entity_blocks_without_calling_the_anonymizer() {
    let mock = PresidioMock::start().await.unwrap();
    let mut config = config(&mock);
    config.pii_entities_config = entities(&[
        ("EMAIL_ADDRESS", PiiAction::Mask),
        ("US_SSN", PiiAction::Block),
    ]);
    let verdict = presidio(config)
        .check(&input(&["mail a@b.co", "my SSN is 123-45-6789"]))
        .await
        .unwrap();
    assert_eq!(
        verdict.decision(),
        &Decision::Block {
            message: "Blocked entity detected: US_SSN by Guardrail: pii. This entity is not allowed to be used in this request.".into()
        }
    );
    assert_eq!(mock.requests_to("/analyze").len(), 2);
    assert!(mock.requests_to("/anonymize").is_empty());
    assert!(
        verdict
            .detail()
            .unwrap()
            .to_string()
            .contains("\"action\":\"BLOCK\"")
    );
}

#[tokio::test]
async fn score_thresholds_and_the_deny_list_drop_findings() {
    let mock = PresidioMock::start().await.unwrap();
    let text = "Jordan and Alice: a@b.co, 555-0100";
    let mut config = config(&mock);
    // PERSON needs 0.5 (Jordan scores 0.4); everything else needs 0.9 (the phone scores 0.75).
    config.presidio_score_thresholds =
        BTreeMap::from([("PERSON".to_owned(), 0.5), ("ALL".to_owned(), 0.9)]);
    let verdict = presidio(config.clone())
        .check(&input(&[text]))
        .await
        .unwrap();
    assert_eq!(
        rewritten(verdict.decision()),
        ["Jordan and <PERSON>: <EMAIL_ADDRESS>, 555-0100"]
    );
    config.presidio_entities_deny_list = vec!["EMAIL_ADDRESS".into()];
    let verdict = presidio(config).check(&input(&[text])).await.unwrap();
    assert_eq!(
        rewritten(verdict.decision()),
        ["Jordan and <PERSON>: a@b.co, 555-0100"]
    );
}

#[tokio::test]
async fn offsets_are_characters_not_bytes() {
    let mock = PresidioMock::start().await.unwrap();
    let verdict = presidio(config(&mock))
        .check(&input(&["Zoë Martin écrit à zoë@exemple.fr — merci"]))
        .await
        .unwrap();
    assert_eq!(
        rewritten(verdict.decision()),
        ["<PERSON> écrit à <EMAIL_ADDRESS> — merci"]
    );
}

#[tokio::test]
async fn the_language_is_sent_and_one_the_analyzer_lacks_fails() {
    let mock = PresidioMock::start().await.unwrap();
    let mut config = config(&mock);
    config.presidio_language = Some("de".into());
    presidio(config.clone())
        .check(&input(&["Hallo"]))
        .await
        .unwrap();
    assert_eq!(mock.requests()[0].json().unwrap()["language"], "de");
    config.presidio_language = Some("xx".into());
    let err = presidio(config)
        .check(&input(&["Hallo"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Failed);
    assert!(err.message().contains("500"), "{err}");
    assert!(err.message().contains("No matching recognizers"), "{err}");
}

/// A Presidio guardrail with `output_parse_pii`, on the request and the response.
fn restoring(mock: &PresidioMock) -> ConfiguredGuardrail {
    let mut config = config(mock);
    config.output_parse_pii = true;
    ConfiguredGuardrail::new(
        "pii",
        [GuardrailMode::PreCall, GuardrailMode::PostCall],
        presidio(config),
    )
}

#[tokio::test]
async fn output_parse_pii_masks_with_numbered_placeholders_and_restores_the_response() {
    let mock = PresidioMock::start().await.unwrap();
    let request = json!({"model": "m", "messages": [
        {"role": "system", "content": "Help Jane Doe."},
        {"role": "user", "content": "I am Jane Doe, mail jane@corp.com or john@x.io; jane@corp.com is best."}
    ]});
    let seen = call(
        vec![restoring(&mock)],
        StreamPolicy::DEFAULT_WINDOW,
        Upstream::Json(
            "Sure <PERSON_1>: I wrote to <EMAIL_ADDRESS_1>, not <EMAIL_ADDRESS_2>. <PERSON_2> is unknown."
                .into(),
        ),
        request,
    )
    .await;
    assert_eq!(seen.status, 200, "{}", seen.body);
    // One value, one placeholder, in every message of the request.
    let sent = &seen.upstream[0]["messages"];
    assert_eq!(sent[0]["content"], "Help <PERSON_1>.");
    assert_eq!(
        sent[1]["content"],
        "I am <PERSON_1>, mail <EMAIL_ADDRESS_1> or <EMAIL_ADDRESS_2>; <EMAIL_ADDRESS_1> is best."
    );
    // The anonymizer applied the placeholders, each sent as its own replace operator.
    let anonymize = mock.requests_to("/anonymize");
    let body = anonymize
        .iter()
        .map(|r| r.json().unwrap())
        .find(|b| b["text"].as_str().unwrap().starts_with("I am"))
        .unwrap();
    assert_eq!(
        body["anonymizers"]["EMAIL_ADDRESS_2"],
        json!({"type": "replace", "new_value": "<EMAIL_ADDRESS_2>"})
    );
    // The client gets its own values back; a placeholder it never sent stays as it is.
    assert_eq!(
        seen.text(),
        "Sure Jane Doe: I wrote to jane@corp.com, not john@x.io. <PERSON_2> is unknown."
    );
    let pre = seen.entries(GuardrailMode::PreCall);
    assert_eq!(
        pre[0].guardrail_status,
        GuardrailStatus::GuardrailIntervened
    );
    assert_eq!(
        pre[0].masked_entity_count,
        Some(BTreeMap::from([
            ("EMAIL_ADDRESS".to_owned(), 3),
            ("PERSON".to_owned(), 2)
        ]))
    );
    let post = seen.entries(GuardrailMode::PostCall);
    assert_eq!(
        post[0].guardrail_response,
        json!({"restored_placeholders": 3})
    );
    // Restoring needs no service call.
    assert_eq!(mock.requests_to("/analyze").len(), 2);
}

#[tokio::test]
async fn placeholders_cut_across_stream_windows_are_restored_exactly() {
    let mock = PresidioMock::start().await.unwrap();
    let deltas: Vec<String> = [
        "Dear <PER",
        "SON_1>, I wrote to <EMAIL_",
        "ADD",
        "RESS_1> and <b>",
        "cc</b> <PERSON_7> as a < b ",
        "<EMAIL_ADDRESS_1>",
    ]
    .iter()
    .map(|d| (*d).to_owned())
    .collect();
    // One check per delta, each with the earlier text as context.
    let seen = call(
        vec![restoring(&mock)],
        window(1, 60),
        Upstream::Stream(deltas),
        chat("I am Jane Doe, mail jane@corp.com", true),
    )
    .await;
    assert_eq!(seen.status, 200);
    assert_eq!(
        seen.upstream[0]["messages"][0]["content"],
        "I am <PERSON_1>, mail <EMAIL_ADDRESS_1>"
    );
    assert_eq!(
        seen.text(),
        "Dear Jane Doe, I wrote to jane@corp.com and <b>cc</b> <PERSON_7> as a < b jane@corp.com"
    );
    assert!(seen.body.ends_with("data: [DONE]\n\n"));
    // Each delta was a window of its own, then the final check at the end of the stream.
    assert_eq!(seen.entries(GuardrailMode::PostCall).len(), 7);
}

#[tokio::test]
async fn placeholders_are_restored_with_each_requests_own_values() {
    let mock = PresidioMock::start().await.unwrap();
    let guard = restoring(&mock);
    let run = |email: &'static str, stream: bool| {
        let guard = guard.clone();
        async move {
            call(
                vec![guard],
                window(5, 50),
                Upstream::Echo,
                chat(&format!("write to {email}"), stream),
            )
            .await
        }
    };
    // The same guardrail object serves four requests at once; each gets <EMAIL_ADDRESS_1>.
    let (a, b, c, d) = tokio::join!(
        run("ann@a.example", false),
        run("bob@b.example", true),
        run("cid@c.example", true),
        run("dee@d.example", false),
    );
    for (seen, email) in [
        (a, "ann@a.example"),
        (b, "bob@b.example"),
        (c, "cid@c.example"),
        (d, "dee@d.example"),
    ] {
        assert_eq!(
            seen.upstream[0]["messages"][0]["content"],
            "write to <EMAIL_ADDRESS_1>"
        );
        assert_eq!(seen.text(), format!("You said: write to {email}"));
    }
}

/// A Presidio guardrail that masks responses (post_call, no `output_parse_pii`).
fn masking_responses(mock: &PresidioMock, block: &[&str]) -> ConfiguredGuardrail {
    let mut config = config(mock);
    for entity in block {
        config
            .pii_entities_config
            .insert((*entity).to_owned(), PiiAction::Block);
    }
    config
        .pii_entities_config
        .insert("EMAIL_ADDRESS".into(), PiiAction::Mask);
    config.apply_to_output = true;
    ConfiguredGuardrail::new("pii", GuardrailMode::PostCall, presidio(config))
}

#[tokio::test]
async fn a_streamed_response_is_masked_window_by_window() {
    let mock = PresidioMock::start().await.unwrap();
    let deltas: Vec<String> = [
        "Mail jane@corp.com today. ",
        "Or write to bob@ex",
        "ample.org now.",
    ]
    .iter()
    .map(|d| (*d).to_owned())
    .collect();
    let seen = call(
        vec![masking_responses(&mock, &[])],
        window(1, 200),
        Upstream::Stream(deltas),
        chat("hi", true),
    )
    .await;
    // The 200-character overlap holds every window back until the end, so each check sees
    // all the text so far and may mask all of it: `bob@ex` + `ample.org` is found whole,
    // nothing of it was released before.
    assert_eq!(
        seen.text(),
        "Mail <EMAIL_ADDRESS> today. Or write to <EMAIL_ADDRESS> now."
    );
    let analyzed: Vec<String> = mock
        .requests_to("/analyze")
        .iter()
        .map(|r| r.json().unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        analyzed,
        [
            "Mail jane@corp.com today. ",
            "Mail jane@corp.com today. Or write to bob@ex",
            "Mail jane@corp.com today. Or write to bob@example.org now.",
            // The channel's final check, once the stream ended.
            "Mail jane@corp.com today. Or write to bob@example.org now."
        ]
    );
    // No context was sent yet: the anonymizer gets every address of the window.
    let last = mock
        .requests_to("/anonymize")
        .pop()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        last["analyzer_results"],
        json!([
            {"entity_type": "EMAIL_ADDRESS", "start": 5, "end": 18, "score": 1.0},
            {"entity_type": "EMAIL_ADDRESS", "start": 38, "end": 53, "score": 1.0}
        ])
    );
    let post = seen.entries(GuardrailMode::PostCall);
    let statuses: Vec<GuardrailStatus> = post.iter().map(|e| e.guardrail_status).collect();
    assert_eq!(statuses, [GuardrailStatus::GuardrailIntervened; 4]);
}

#[tokio::test]
async fn a_block_entity_in_a_stream_ends_it_with_the_in_band_error() {
    let mock = PresidioMock::start().await.unwrap();
    let deltas: Vec<String> = ["Your number ", "is 123-45-6789", " as asked."]
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    let seen = call(
        vec![masking_responses(&mock, &["US_SSN"])],
        window(1, 50),
        Upstream::Stream(deltas),
        chat("hi", true),
    )
    .await;
    assert_eq!(seen.status, 200);
    // Held back by the 50-character overlap: nothing was released before the block.
    assert_eq!(seen.text(), "");
    assert!(
        seen.body.ends_with(
            "data: {\"error\":{\"message\":\"Blocked entity detected: US_SSN by Guardrail: pii. This entity is not allowed to be used in this request.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"content_policy_violation\"}}\n\ndata: [DONE]\n\n"
        ),
        "{}",
        seen.body
    );
    assert!(!seen.body.contains("6789"));
}

#[tokio::test]
async fn an_analyzer_that_is_down_slow_or_overloaded_is_unreachable() {
    let mock = PresidioMock::start().await.unwrap();
    let guard = presidio(config(&mock));
    mock.once_on("/analyze", Behavior::Down);
    let err = guard.check(&input(&["a@b.co"])).await.unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable, "{err}");
    mock.once_on("/analyze", Behavior::status(503));
    let err = guard.check(&input(&["a@b.co"])).await.unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable, "{err}");
    // The anonymizer too: found entities that cannot be masked are not let through.
    mock.once_on("/anonymize", Behavior::status(504));
    let err = guard.check(&input(&["a@b.co"])).await.unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable, "{err}");
    let mut config = config(&mock);
    config.presidio_analyzer_api_base = Some(closed_port_url().await);
    let err = presidio(config).check(&input(&["x"])).await.unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Unreachable, "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_analyzer_that_does_not_answer_in_time_times_out() {
    let mock = PresidioMock::start().await.unwrap();
    mock.always(Behavior::Slow(Duration::from_secs(60)));
    let err = presidio(config(&mock))
        .check(&input(&["a@b.co"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), GuardrailErrorKind::Timeout);
    assert!(err.is_unreachable());
}

#[tokio::test]
async fn malformed_answers_and_other_errors_fail() {
    let mock = PresidioMock::start().await.unwrap();
    let guard = presidio(config(&mock));
    let failures = [
        ("/analyze", Behavior::malformed(), "not JSON"),
        (
            "/analyze",
            Behavior::json(200, json!({"results": []})),
            "not an array",
        ),
        (
            "/analyze",
            Behavior::json(
                200,
                json!([{"entity_type": "EMAIL_ADDRESS", "start": 0, "end": 99, "score": 1.0}]),
            ),
            "outside the text",
        ),
        (
            "/analyze",
            Behavior::json(500, json!({"error": "boom"})),
            "500",
        ),
        (
            "/anonymize",
            Behavior::json(200, json!({"items": []})),
            "no string `text`",
        ),
        (
            "/anonymize",
            Behavior::json(422, json!({"error": "Invalid input"})),
            "422",
        ),
    ];
    for (path, behavior, expected) in failures {
        mock.once_on(path, behavior);
        let err = guard.check(&input(&["a@b.co"])).await.unwrap_err();
        assert_eq!(err.kind(), GuardrailErrorKind::Failed, "{path}: {err}");
        assert!(err.message().contains(expected), "{path}: {err}");
    }
}

#[tokio::test]
async fn a_presidio_that_is_down_follows_the_fallbacks() {
    let mock = PresidioMock::start().await.unwrap();
    mock.always(Behavior::Down);
    let guard = |fallback| {
        ConfiguredGuardrail::new("pii", GuardrailMode::PreCall, presidio(config(&mock)))
            .unreachable_fallback(fallback)
    };
    let open = call(
        vec![guard(Fallback::FailOpen)],
        StreamPolicy::DEFAULT_WINDOW,
        Upstream::Echo,
        chat("mail a@b.co", false),
    )
    .await;
    assert_eq!(open.status, 200);
    assert_eq!(open.upstream[0]["messages"][0]["content"], "mail a@b.co");
    assert_eq!(
        open.log[0].guardrail_status,
        GuardrailStatus::GuardrailFailedToRespond
    );
    assert_eq!(open.log[0].guardrail_response["fallback"], "fail_open");
    let closed = call(
        vec![guard(Fallback::FailClosed)],
        StreamPolicy::DEFAULT_WINDOW,
        Upstream::Echo,
        chat("mail a@b.co", false),
    )
    .await;
    assert_eq!(closed.status, 503);
    assert!(closed.upstream.is_empty());
    assert_eq!(closed.json()["error"]["code"], "guardrail_unreachable");
    // The service's address is in the log entry, for the operator.
    let logged = closed.log[0].guardrail_response["error"].as_str().unwrap();
    assert!(logged.contains(&mock.base_url()), "{logged}");
    let _: Value = closed.log[0].guardrail_response.clone();
}

/// Presidio reads the texts and the request's state (its placeholders), not the request body
/// or headers: a stream it checks does not keep them (the restore across windows above still
/// works).
#[test]
fn presidio_does_not_read_the_request_body_or_headers() {
    let config = PresidioConfig::new("http://127.0.0.1:9", "http://127.0.0.1:9");
    let presidio = presidio(config);
    assert!(!presidio.reads_request_body() && !presidio.reads_request_headers());
}
