//! `PreCallGuardrailLayer`: run guardrails on the request before (and during) the upstream
//! call.
//!
//! - `pre_call` guardrails the gate selects run in configured order before the inner service is
//!   called; each sees the text as the previous one left it, so masking composes
//!   ([`Guardrails::concurrent`](guardrail_tower_core::Guardrails::concurrent) runs them at once
//!   with the same result). A block answers 400 `content_policy_violation` in the endpoint's
//!   shape and the upstream is never called. A rewrite re-serializes the request body with the
//!   masked texts (and fixes `Content-Length`); an allowed request is forwarded byte for byte.
//! - `during_call` guardrails run concurrently with the upstream call. The upstream response is
//!   held until they pass; on a block it is dropped (body and all) and the block is returned.
//!   They can only allow or block: the request is already on its way, so a rewrite is ignored.
//! - Every run appends its entry to the request's guardrail log, whatever the outcome,
//!   including fail-open passes and failures.
//! - The response carries `x-litellm-applied-guardrails` (the guardrails that ran) and
//!   `x-guardrails-duration-ms` (the time they added).
//!
//! Where it sits: after the model merge (it reads the merged selection), before the streaming
//! layer (which must see the request as the guardrails left it).
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │ ◀━━ this crate
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_core::{guardrail_fn, ConfiguredGuardrail, GuardrailMode, Guardrails, Verdict};
//! use guardrail_tower_pre_call::PreCallGuardrailLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let no_secrets = ConfiguredGuardrail::new(
//!     "no-secrets",
//!     GuardrailMode::PreCall,
//!     guardrail_fn(|input| async move {
//!         if input.texts().iter().any(|t| t.contains("password")) {
//!             Ok(Verdict::block("Do not send passwords"))
//!         } else {
//!             Ok(Verdict::allow())
//!         }
//!     }),
//! )
//! .default_on(true);
//!
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(PreCallGuardrailLayer::new(Guardrails::new([no_secrets])))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from_static(
//!     br#"{"model":"m","messages":[{"role":"user","content":"my password is hunter2"}]}"#,
//! ))).unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 400);
//! assert_eq!(resp.headers()["x-litellm-applied-guardrails"], "no-secrets");
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"error":{"message":"Do not send passwords","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
//! );
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use future::{APPLIED_GUARDRAILS, GUARDRAILS_DURATION_MS, ResponseFuture};
pub use guardrail_tower_core::body::ResponseBody;
pub use layer::PreCallGuardrailLayer;
pub use service::PreCallGuardrail;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use guardrail_tower_core::{
        ConfiguredGuardrail, Fallback, Guardrail, GuardrailAction, GuardrailError, GuardrailInput,
        GuardrailLog, GuardrailMode, GuardrailStatus, Guardrails, Verdict, guardrail_fn,
    };
    use guardrail_tower_testkit::body;
    use http::header::CONTENT_LENGTH;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    /// What the upstream saw: the body it received and its content-length header.
    #[derive(Default, Clone)]
    struct Upstream {
        calls: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<(Bytes, String)>>>,
        response_dropped: Arc<AtomicBool>,
    }

    impl Upstream {
        fn service(
            &self,
        ) -> impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<body::TestBody>,
            Error = std::convert::Infallible,
            Future = impl Send + use<>,
        > + Clone
        + use<> {
            let this = self.clone();
            service_fn(move |req: Request<Full<Bytes>>| {
                let this = this.clone();
                async move {
                    this.calls.fetch_add(1, Ordering::SeqCst);
                    let len = req.headers()[CONTENT_LENGTH].to_str().unwrap().to_owned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    this.bodies.lock().unwrap().push((body, len));
                    let body = body::chunks([r#"{"choices":[]}"#])
                        .flag_drop(this.response_dropped.clone());
                    Ok(Response::new(body))
                }
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn keyword(name: &'static str, mode: GuardrailMode, word: &'static str) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            name,
            mode,
            guardrail_fn(move |input: GuardrailInput| async move {
                Ok(if input.texts().iter().any(|t| t.contains(word)) {
                    Verdict::block(format!("'{word}' is not allowed"))
                } else {
                    Verdict::allow()
                })
            }),
        )
        .default_on(true)
    }

    fn mask(name: &'static str, word: &'static str, tag: &'static str) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            name,
            GuardrailMode::PreCall,
            guardrail_fn(move |input: GuardrailInput| async move {
                Ok(Verdict::rewrite(
                    input.texts().iter().map(|t| t.replace(word, tag)).collect(),
                ))
            }),
        )
        .default_on(true)
    }

    fn chat(content: &str) -> Request<Full<Bytes>> {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]});
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn body_json(resp: Response<ResponseBody<body::TestBody>>) -> serde_json::Value {
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    /// Records whether its checks saw the request's `x-trace` header, and says whether it
    /// reads headers.
    struct SeesHeaders {
        reads: bool,
        saw: Arc<Mutex<Vec<bool>>>,
    }

    impl guardrail_tower_core::Guardrail for SeesHeaders {
        async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
            let seen = input.meta().headers().contains_key("x-trace");
            self.saw.lock().unwrap().push(seen);
            Ok(Verdict::allow())
        }

        fn reads_request_headers(&self) -> bool {
            self.reads
        }
    }

    /// The request's headers reach the checks when one of the guardrails that run reads them,
    /// every check of the request then seeing them; otherwise they are not copied at all.
    #[tokio::test]
    async fn headers_are_copied_only_for_a_guardrail_that_reads_them() {
        // (reads of the first guardrail, of the second if any) and what both checks see.
        let cases = [
            (vec![false], vec![false]),
            (vec![true], vec![true]),
            (vec![false, false], vec![false, false]),
            (vec![false, true], vec![true, true]),
        ];
        for (reads, expected) in cases {
            let saw = Arc::new(Mutex::new(Vec::new()));
            let guardrails = reads.iter().enumerate().map(|(i, &reads)| {
                let name = ["first", "second"][i];
                let check = SeesHeaders {
                    reads,
                    saw: Arc::clone(&saw),
                };
                ConfiguredGuardrail::new(name, GuardrailMode::PreCall, check).default_on(true)
            });
            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new(guardrails)))
                .service(up.service());
            let mut request = chat("hello");
            request
                .headers_mut()
                .insert("x-trace", http::HeaderValue::from_static("t-1"));
            let resp = svc.oneshot(request).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(*saw.lock().unwrap(), expected, "reads {reads:?}");
        }
    }

    /// A guardrail that answers at once, after 5 ms of work.
    struct Slow;

    impl guardrail_tower_core::Guardrail for Slow {
        async fn check(&self, _: &GuardrailInput) -> Result<Verdict, GuardrailError> {
            unreachable!("answered at once")
        }

        fn check_now(&self, _: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            Some(Ok(Verdict::allow()))
        }
    }

    /// The time of checks that answer at once (run before the request goes on, without a
    /// future) is in `x-guardrails-duration-ms`, as an awaited check's is.
    #[tokio::test]
    async fn the_duration_header_counts_checks_that_answer_at_once() {
        let up = Upstream::default();
        let slow = ConfiguredGuardrail::new("slow", GuardrailMode::PreCall, Slow).default_on(true);
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([slow])))
            .service(up.service());
        let resp = svc.oneshot(chat("hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "slow");
        let ms: f64 = resp.headers()[GUARDRAILS_DURATION_MS]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ms >= 5.0, "{ms}");
        assert_eq!(up.calls(), 1);
    }

    #[tokio::test]
    async fn block_answers_400_and_the_upstream_sees_nothing() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "words",
                GuardrailMode::PreCall,
                "forbidden",
            )])))
            .service(up.service());
        let resp = svc.oneshot(chat("this is forbidden")).await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "words");
        assert!(resp.headers().contains_key(GUARDRAILS_DURATION_MS));
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"error": {"message": "'forbidden' is not allowed", "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}})
        );
        assert_eq!(up.calls(), 0);
    }

    /// A text completion's prompt or an embedding's input written as token ids holds text no
    /// guardrail can read: with a guardrail that applies it is a 400 naming the field, and the
    /// upstream sees nothing; the same text as a string is read and blocked; with no guardrail
    /// that applies, token ids pass.
    #[tokio::test]
    async fn token_ids_and_templates_no_guardrail_can_read_are_refused() {
        /// Sends `body` to `path` through a layer whose one guardrail is on by default or not:
        /// the status, the body, and how many requests the upstream saw.
        async fn send(
            default_on: bool,
            path: &str,
            body: serde_json::Value,
        ) -> (u16, serde_json::Value, usize) {
            let guardrail = keyword("words", GuardrailMode::PreCall, "forbidden");
            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new([
                    guardrail.default_on(default_on)
                ])))
                .service(up.service());
            let request = Request::post(path)
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let resp = svc.oneshot(request).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (status, body, up.calls())
        }
        let cases = [
            (
                "/v1/completions",
                "prompt",
                serde_json::json!([35, 24406, 3197]),
            ),
            (
                "/v1/completions",
                "prompt",
                serde_json::json!(["hi", [35, 24406]]),
            ),
            (
                "/v1/embeddings",
                "input",
                serde_json::json!([[35, 24406], [3197]]),
            ),
        ];
        for (path, field, tokens) in cases {
            let tokens = serde_json::json!({"model": "m", field: tokens});
            let (status, body, calls) = send(true, path, tokens.clone()).await;
            assert_eq!((status, calls), (400, 0), "{path} {tokens}: {body}");
            assert_eq!(body["error"]["param"], field, "{body}");
            assert_eq!(body["error"]["code"], "unreadable_content", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("token ids, which no guardrail can read"),
                "{message}"
            );
            // The same field as text is read (and blocked).
            let text = serde_json::json!({"model": "m", field: ["a forbidden plan"]});
            assert_eq!(send(true, path, text).await.0, 400, "{path}: text");
            // No guardrail applies: nothing to refuse.
            let (status, _, calls) = send(false, path, tokens).await;
            assert_eq!((status, calls), (200, 1), "{path}: no guardrail applies");
        }
        // A chat request's own template (vLLM's) can write any text into the prompt.
        let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
        let template = serde_json::json!({"model": "m", "messages": messages,
            "chat_template": "{{ 'a forbidden plan' }}{% for m in messages %}{{ m.content }}{% endfor %}"});
        let (status, body, calls) = send(true, "/v1/chat/completions", template.clone()).await;
        assert_eq!((status, calls), (400, 0), "{body}");
        assert_eq!(body["error"]["param"], "chat_template", "{body}");
        assert_eq!(body["error"]["code"], "unreadable_content", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("can write any text into the prompt"),
            "{message}"
        );
        let (status, _, calls) = send(false, "/v1/chat/completions", template).await;
        assert_eq!((status, calls), (200, 1), "no guardrail applies");
        // The values and documents a template is given are read (and blocked).
        for (field, value) in [
            (
                "chat_template_kwargs",
                serde_json::json!({"enable_thinking": false, "note": "a forbidden plan"}),
            ),
            (
                "documents",
                serde_json::json!([{"title": "t", "text": "a forbidden plan"}]),
            ),
        ] {
            let body = serde_json::json!({"model": "m", "messages": messages, field: value});
            let (status, _, calls) = send(true, "/v1/chat/completions", body).await;
            assert_eq!((status, calls), (400, 0), "{field}");
        }
        let thinking = serde_json::json!({"model": "m", "messages": messages,
            "chat_template_kwargs": {"enable_thinking": false}});
        assert_eq!(send(true, "/v1/chat/completions", thinking).await.0, 200);
    }

    /// An image, audio or a file in a request is what the model reads and a text guardrail does
    /// not: with such a guardrail applying before or beside the call it is a 400 naming the part
    /// and the guardrail, and the upstream sees nothing. It passes when every guardrail that
    /// applies reads media, lets it pass (`media_fallback: fail_open`, which still checks the
    /// texts), or only watches, and when none applies.
    #[tokio::test]
    async fn media_a_guardrail_cannot_read_is_refused_unless_it_lets_media_pass() {
        async fn send(
            guardrail: ConfiguredGuardrail,
            path: &str,
            body: &serde_json::Value,
        ) -> (u16, serde_json::Value, usize) {
            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new([guardrail])))
                .service(up.service());
            let request = Request::post(path)
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let resp = svc.oneshot(request).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (status, body, up.calls())
        }
        /// A guardrail whose service is sent the request's messages, media and all.
        struct SeesMedia;
        impl Guardrail for SeesMedia {
            async fn check(&self, _: &GuardrailInput) -> Result<Verdict, GuardrailError> {
                Ok(Verdict::allow())
            }
            fn reads_media(&self) -> bool {
                true
            }
        }
        let image = serde_json::json!({"url": "data:image/png;base64,iVBORw0KGgo="});
        let png = serde_json::json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="});
        let pdf = serde_json::json!({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="});
        let chat = |part: serde_json::Value| {
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what does it say?"}, part]}]})
        };
        let responses =
            |input: serde_json::Value| serde_json::json!({"model": "m", "input": input});
        let anthropic = |block: serde_json::Value| {
            serde_json::json!({"model": "m", "max_tokens": 10, "messages": [
                {"role": "user", "content": [block, {"type": "text", "text": "what does it say?"}]}]})
        };
        let cases = [
            (
                "/v1/chat/completions",
                chat(serde_json::json!({"type": "image_url", "image_url": image})),
                "messages[0].content[1]",
            ),
            (
                "/v1/chat/completions",
                chat(
                    serde_json::json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
                ),
                "messages[0].content[1]",
            ),
            (
                "/v1/chat/completions",
                chat(
                    serde_json::json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}),
                ),
                "messages[0].content[1]",
            ),
            (
                "/v1/chat/completions",
                chat(serde_json::json!({"type": "file", "file": {"file_id": "file-abc"}})),
                "messages[0].content[1]",
            ),
            (
                "/v1/responses",
                responses(serde_json::json!([{"role": "user", "content": [
                {"type": "input_text", "text": "what does it say?"},
                {"type": "input_image", "image_url": "https://example.com/a.png"}]}])),
                "input[0].content[1]",
            ),
            (
                "/v1/responses",
                responses(serde_json::json!([{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-abc"}]}])),
                "input[0].content[0]",
            ),
            (
                "/v1/responses",
                responses(serde_json::json!([
                {"type": "computer_call", "id": "cc", "call_id": "c", "status": "completed", "action": {"type": "screenshot"}, "pending_safety_checks": []},
                {"type": "computer_call_output", "call_id": "c", "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA=="}}])),
                "input[1]",
            ),
            (
                "/v1/responses",
                responses(
                    serde_json::json!([{"type": "function_call_output", "call_id": "c", "output": [
                {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]),
                ),
                "input[0].output[0]",
            ),
            (
                "/v1/messages",
                anthropic(serde_json::json!({"type": "image", "source": png})),
                "messages[0].content[0]",
            ),
            (
                "/v1/messages",
                anthropic(serde_json::json!({"type": "document", "source": pdf})),
                "messages[0].content[0].source",
            ),
            (
                "/v1/messages",
                anthropic(
                    serde_json::json!({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}),
                ),
                "messages[0].content[0].source",
            ),
            (
                "/v1/messages",
                anthropic(
                    serde_json::json!({"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "image", "source": png}]}),
                ),
                "messages[0].content[0].content[0]",
            ),
            (
                "/v1/messages",
                anthropic(serde_json::json!({"type": "container_upload", "file_id": "file-abc"})),
                "messages[0].content[0]",
            ),
        ];
        // A generated image given back, which a client may write itself.
        let cases = [
            cases.as_slice(),
            &[(
                "/v1/responses",
                responses(serde_json::json!([
                    {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBORw0KGgo="},
                    {"role": "user", "content": "what does it say?"}])),
                "input[0]",
            )],
        ]
        .concat();
        for (path, body, param) in &cases {
            let words = || keyword("words", GuardrailMode::PreCall, "forbidden");
            let (status, error, calls) = send(words(), path, body).await;
            assert_eq!((status, calls), (400, 0), "{path} {body}: {error}");
            let message = error["error"]["message"].as_str().unwrap();
            if *path == "/v1/messages" {
                // Anthropic's error shape has neither `param` nor `code`: the message names it.
                assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
                assert!(message.contains(&format!("its '{param}'")), "{message}");
            } else {
                assert_eq!(error["error"]["param"], *param, "{error}");
                assert_eq!(error["error"]["code"], "unreadable_content", "{error}");
            }
            assert!(
                message
                    .contains("is an image, audio or a file, which guardrail 'words' cannot read")
                    && message.contains("media_fallback: fail_open"),
                "{message}"
            );
            // Beside the call too.
            let during = keyword("words", GuardrailMode::DuringCall, "forbidden");
            assert_eq!(send(during, path, body).await.0, 400, "{path}: during_call");
            // What lets it pass.
            for (why, guardrail) in [
                (
                    "media_fallback: fail_open",
                    words().media_fallback(Fallback::FailOpen),
                ),
                ("monitor", words().monitor(true)),
                (
                    "reads media",
                    ConfiguredGuardrail::new("sees", GuardrailMode::PreCall, SeesMedia)
                        .default_on(true),
                ),
                ("applies to nothing", words().default_on(false)),
                (
                    "post_call only",
                    keyword("words", GuardrailMode::PostCall, "forbidden"),
                ),
            ] {
                let (status, error, calls) = send(guardrail, path, body).await;
                assert_eq!((status, calls), (200, 1), "{path} {body}, {why}: {error}");
            }
        }
        // Letting media pass still checks the texts beside it.
        let body = chat(serde_json::json!({"type": "image_url", "image_url": image}));
        let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            body["messages"][0]["content"][1].clone(), {"type": "text", "text": "a forbidden plan"}]}]});
        let open = keyword("words", GuardrailMode::PreCall, "forbidden")
            .media_fallback(Fallback::FailOpen);
        let (status, error, calls) = send(open, "/v1/chat/completions", &body).await;
        assert_eq!((status, calls), (400, 0), "{error}");
        assert_eq!(
            error["error"]["code"], "content_policy_violation",
            "{error}"
        );
        // A document given as text is text: read, and passed when clean.
        let text = anthropic(
            serde_json::json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a plain note"}}),
        );
        let words = keyword("words", GuardrailMode::PreCall, "forbidden");
        assert_eq!(send(words, "/v1/messages", &text).await.0, 200);
        // The model's own redacted thinking and a Responses item referenced by id are not the
        // client's media.
        let thinking = serde_json::json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "EmwKAhgB"}]},
            {"role": "user", "content": "go on"}]});
        let words = keyword("words", GuardrailMode::PreCall, "forbidden");
        assert_eq!(send(words, "/v1/messages", &thinking).await.0, 200);
        let referenced = responses(
            serde_json::json!([{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "hi"}]),
        );
        let words = keyword("words", GuardrailMode::PreCall, "forbidden");
        assert_eq!(send(words, "/v1/responses", &referenced).await.0, 200);
    }

    #[tokio::test]
    async fn block_shapes_follow_the_endpoint() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "words",
                GuardrailMode::PreCall,
                "forbidden",
            )])))
            .service(up.service());
        let req = Request::post("/v1/messages")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"c","max_tokens":5,"system":"forbidden","messages":[]}"#,
            )))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            body_json(resp).await,
            serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": "'forbidden' is not allowed"}})
        );
        let req = Request::post("/v1/responses")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"m","input":"forbidden"}"#,
            )))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(
            body_json(resp).await["error"]["code"],
            "content_policy_violation"
        );
        assert_eq!(up.calls(), 0);
    }

    #[tokio::test]
    async fn masking_composes_and_fixes_content_length() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([
                mask("emails", "a@b.co", "[EMAIL]"),
                mask("brackets", "[EMAIL]", "<EMAIL>"),
            ])))
            .service(up.service());
        let resp = svc.oneshot(chat("write to a@b.co")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "emails,brackets");
        let (body, len) = up.bodies.lock().unwrap()[0].clone();
        assert_eq!(
            body,
            r#"{"model":"m","messages":[{"role":"user","content":"write to <EMAIL>"}]}"#
        );
        assert_eq!(len, body.len().to_string());
    }

    #[tokio::test]
    async fn allowed_requests_are_forwarded_byte_for_byte() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "words",
                GuardrailMode::PreCall,
                "forbidden",
            )])))
            .service(up.service());
        let raw =
            "{ \"model\" : \"m\",\n \"messages\": [ {\"role\":\"user\",\"content\":\"fine\"} ] }";
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(raw.as_bytes())))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(up.bodies.lock().unwrap()[0].0, raw);
    }

    #[tokio::test]
    async fn the_layer_s_headers_from_the_inner_service_never_reach_the_client() {
        // An upstream that claims guardrails ran: the claim is the layer's to make.
        let spoofing = service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header(APPLIED_GUARDRAILS, "content-filter")
                    .header(GUARDRAILS_DURATION_MS, "1.000")
                    .header("x-kept", "yes")
                    .body(body::chunks(["{}"]))
                    .unwrap(),
            )
        });
        let opt_in = keyword("opt-in", GuardrailMode::PreCall, "x").default_on(false);
        let resp = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([opt_in])))
            .service(spoofing)
            .oneshot(chat("x"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key(APPLIED_GUARDRAILS));
        assert!(!resp.headers().contains_key(GUARDRAILS_DURATION_MS));
        assert_eq!(resp.headers()["x-kept"], "yes");

        // A guardrail that ran: the layer's own values, once each.
        let resp = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "words",
                GuardrailMode::PreCall,
                "forbidden",
            )])))
            .service(spoofing)
            .oneshot(chat("fine"))
            .await
            .unwrap();
        let applied: Vec<_> = resp.headers().get_all(APPLIED_GUARDRAILS).iter().collect();
        assert_eq!(applied, ["words"]);
        assert_eq!(
            resp.headers()
                .get_all(GUARDRAILS_DURATION_MS)
                .iter()
                .count(),
            1
        );

        // With the headers off the layer writes none and leaves the inner service's alone.
        let resp = ServiceBuilder::new()
            .layer(
                PreCallGuardrailLayer::new(Guardrails::new([keyword(
                    "words",
                    GuardrailMode::PreCall,
                    "forbidden",
                )]))
                .response_headers(false),
            )
            .service(spoofing)
            .oneshot(chat("fine"))
            .await
            .unwrap();
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "content-filter");
    }

    #[tokio::test]
    async fn no_selected_guardrail_adds_no_headers() {
        let up = Upstream::default();
        let opt_in = keyword("opt-in", GuardrailMode::PreCall, "x").default_on(false);
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([opt_in])))
            .service(up.service());
        let resp = svc.oneshot(chat("x")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key(APPLIED_GUARDRAILS));
        assert_eq!(up.calls(), 1);
    }

    #[tokio::test]
    async fn during_call_block_discards_the_upstream_response() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "during",
                GuardrailMode::DuringCall,
                "bad",
            )])))
            .service(up.service());
        let resp = svc.oneshot(chat("bad things")).await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(
            body_json(resp).await["error"]["message"],
            "'bad' is not allowed"
        );
        // The upstream was called concurrently, and its response body was dropped unread.
        assert_eq!(up.calls(), 1);
        assert!(up.response_dropped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn during_call_block_does_not_wait_for_a_slow_upstream() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
            struct SetOnDrop(Arc<AtomicBool>);
            impl Drop for SetOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, std::convert::Infallible>(Response::new(body::chunks([""])))
            }
        });
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "during",
                GuardrailMode::DuringCall,
                "bad",
            )])))
            .service(upstream);
        let resp = svc.oneshot(chat("bad things")).await.unwrap();
        assert_eq!(resp.status(), 400);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the in-flight upstream call is dropped"
        );
    }

    #[tokio::test]
    async fn during_call_holds_the_response_until_it_passes() {
        let up = Upstream::default();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let slow = ConfiguredGuardrail::new(
            "slow-during",
            GuardrailMode::DuringCall,
            guardrail_fn(move |_| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok(Verdict::allow())
                }
            }),
        )
        .default_on(true);
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([slow])))
            .service(up.service());
        let call = tokio::spawn(svc.oneshot(chat("hello")));
        while up.calls() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            !call.is_finished(),
            "the response must wait for the during_call guardrail"
        );
        release.notify_one();
        let resp = call.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "slow-during");
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            r#"{"choices":[]}"#
        );
    }

    fn failing(kind: &'static str, fallback: Fallback) -> ConfiguredGuardrail {
        ConfiguredGuardrail::new(
            "remote",
            GuardrailMode::PreCall,
            guardrail_fn(move |_| async move {
                Err(match kind {
                    "refused" => GuardrailError::unreachable("connection refused"),
                    "503" => GuardrailError::unreachable("HTTP 503 from guardrail service"),
                    _ => GuardrailError::failed("invalid JSON"),
                })
            }),
        )
        .default_on(true)
        .unreachable_fallback(fallback)
    }

    #[tokio::test]
    async fn fail_open_passes_through_and_fail_closed_answers_503() {
        for kind in ["refused", "503"] {
            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new([failing(
                    kind,
                    Fallback::FailOpen,
                )])))
                .service(up.service());
            let resp = svc.oneshot(chat("hi")).await.unwrap();
            assert_eq!(resp.status(), 200, "{kind}");
            assert_eq!(up.calls(), 1);

            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new([failing(
                    kind,
                    Fallback::FailClosed,
                )])))
                .service(up.service());
            let resp = svc.oneshot(chat("hi")).await.unwrap();
            assert_eq!(resp.status(), 503, "{kind}");
            let v = body_json(resp).await;
            assert_eq!(v["error"]["code"], "guardrail_unreachable");
            assert!(v["error"]["message"].as_str().unwrap().contains("'remote'"));
            assert_eq!(up.calls(), 0);
        }
    }

    #[tokio::test]
    async fn every_run_is_logged_whatever_the_outcome() {
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([
                failing("refused", Fallback::FailOpen),
                mask("mask", "secret", "[X]"),
                keyword("during", GuardrailMode::DuringCall, "never"),
            ])))
            .service(up.service());
        let mut req = chat("a secret");
        let log = GuardrailLog::get_or_insert(&mut req);
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got: Vec<_> = log
            .entries()
            .into_iter()
            .map(|e| {
                (
                    e.guardrail_name,
                    e.guardrail_mode,
                    e.guardrail_status,
                    e.guardrail_action,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "remote".into(),
                    GuardrailMode::PreCall,
                    GuardrailStatus::GuardrailFailedToRespond,
                    GuardrailAction::Allow
                ),
                (
                    "mask".into(),
                    GuardrailMode::PreCall,
                    GuardrailStatus::GuardrailIntervened,
                    GuardrailAction::Mask
                ),
                (
                    "during".into(),
                    GuardrailMode::DuringCall,
                    GuardrailStatus::Success,
                    GuardrailAction::Allow
                ),
            ]
        );
        assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "remote,mask,during");
    }

    #[tokio::test]
    async fn one_read_of_the_body_across_layers() {
        let polls = Arc::new(AtomicUsize::new(0));
        let up = Upstream::default();
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "a",
                GuardrailMode::PreCall,
                "zzz",
            )])))
            .layer(PreCallGuardrailLayer::new(Guardrails::new([keyword(
                "b",
                GuardrailMode::PreCall,
                "yyy",
            )])))
            .service(up.service());
        let req = Request::post("/v1/chat/completions")
            .body(
                body::chunks([
                    r#"{"model":"m","messages":"#,
                    r#"[{"role":"user","content":"hi"}]}"#,
                ])
                .count_polls(polls.clone()),
            )
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "two chunks and the end, read once"
        );
        assert_eq!(
            up.bodies.lock().unwrap()[0].0,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[tokio::test]
    async fn a_monitor_never_blocks_and_the_call_does_not_wait_for_it() {
        for mode in [GuardrailMode::PreCall, GuardrailMode::DuringCall] {
            let release = Arc::new(tokio::sync::Notify::new());
            let gate = release.clone();
            let monitor = ConfiguredGuardrail::new(
                "trial",
                mode,
                guardrail_fn(move |input: GuardrailInput| {
                    let gate = gate.clone();
                    async move {
                        // Answers only once the response is already out.
                        gate.notified().await;
                        Ok(if input.texts().iter().any(|t| t.contains("forbidden")) {
                            Verdict::block("'forbidden' is not allowed")
                        } else {
                            Verdict::allow()
                        })
                    }
                }),
            )
            .default_on(true)
            .monitor(true);
            let up = Upstream::default();
            let svc = ServiceBuilder::new()
                .layer(PreCallGuardrailLayer::new(Guardrails::new([monitor])))
                .service(up.service());
            let raw = r#"{"model":"m","messages":[{"role":"user","content":"this is forbidden"}]}"#;
            let mut req = Request::post("/v1/chat/completions")
                .body(Full::new(Bytes::from_static(raw.as_bytes())))
                .unwrap();
            let log = GuardrailLog::get_or_insert(&mut req);
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{mode:?}");
            assert_eq!(resp.headers()[APPLIED_GUARDRAILS], "trial");
            assert_eq!(
                resp.into_body().collect().await.unwrap().to_bytes(),
                r#"{"choices":[]}"#
            );
            assert_eq!(
                up.bodies.lock().unwrap()[0].0,
                raw,
                "forwarded byte for byte"
            );
            assert!(log.is_empty(), "the monitor has not answered yet");
            release.notify_one();
            log.settled().await;
            let entries = log.entries();
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].guardrail_mode, mode);
            assert_eq!(
                entries[0].guardrail_status,
                GuardrailStatus::GuardrailIntervened
            );
            assert_eq!(entries[0].guardrail_action, GuardrailAction::Allow);
            assert_eq!(entries[0].guardrail_response, "'forbidden' is not allowed");
        }
    }

    #[tokio::test]
    async fn selection_from_the_body_enables_opt_in_guardrails() {
        let up = Upstream::default();
        let opt_in = keyword("opt-in", GuardrailMode::PreCall, "x").default_on(false);
        let svc = ServiceBuilder::new()
            .layer(PreCallGuardrailLayer::new(Guardrails::new([opt_in])))
            .service(up.service());
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(br#"{"model":"m","guardrails":["opt-in"],"messages":[{"role":"user","content":"x"}]}"#)))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 400);
    }
}
