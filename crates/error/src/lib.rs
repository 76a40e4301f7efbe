//! `ErrorNormalizeLayer`: every error becomes a well-formed response in the shape of the
//! request's endpoint, with the right status.
//!
//! Where it sits: near the outside of the stack, so that everything inside it (the guardrail
//! layers, a timeout, the upstream client) fails in a shape the client's SDK parses; only the
//! spend-log layer sits outside it, to record the response the client got.
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │ ◀━━ this crate
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! Put it in front of any service whose error converts into a `BoxError`. Its own error type is
//! [`Infallible`](std::convert::Infallible), so it drops straight into axum or hyper. It answers:
//!
//! - an [`Error`] from core (a guardrail block, a body too large, ...): its status, `type`,
//!   `param` and `code` kept exactly. A 400 stays a 400; an absent `param` is `null`, never
//!   `"None"`;
//! - tower and tokio timeouts: 504; upstream connect and IO errors: 502; a body over the limit:
//!   413; malformed JSON: 400; anything else: 500 `internal_server_error` with the messages of
//!   the error chain;
//! - an upstream error response (4xx/5xx) whose body is not the endpoint's error shape (HTML from
//!   a load balancer, plain text, empty, another API's JSON): rewritten into the right shape with
//!   the upstream status and headers kept. A body that already has the right shape passes
//!   through byte for byte; so does an error response an inner layer already built.
//!
//! The shape follows the path: OpenAI `{"error": {"message", "type", "param", "code"}}` for
//! chat completions, Responses, completions and embeddings; Anthropic
//! `{"type": "error", "error": {"type", "message"}}` for `/v1/messages`.
//!
//! A successful event stream passes through one whole event at a time: if the upstream cuts it
//! after the head was sent, the client gets the endpoint's in-band error event and terminator,
//! never half an event. Behind a spend-log layer, the events it frames are also read for the log
//! (usage, the upstream's own error events), unless a layer inside already reads them, so the
//! spend-log layer frames nothing itself.
//!
//! Each failure is reported to an [`OnFailure`] hook with its [`ErrorClass`]: a policy block is
//! reported as a policy block, never as an upstream or internal failure.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use guardrail_tower_error::ErrorNormalizeLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream that fails with a plain error.
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Err::<Response<Full<Bytes>>, BoxError>("connection pool exhausted".into())
//! });
//!
//! let service = ServiceBuilder::new()
//!     .layer(ErrorNormalizeLayer::new())
//!     .timeout(Duration::from_secs(30))
//!     .service(upstream);
//!
//! let request = Request::post("/v1/chat/completions").body(Full::default()).unwrap();
//! let response = service.oneshot(request).await.unwrap(); // never an Err
//! assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"error":{"message":"connection pool exhausted","type":"internal_server_error","param":null,"code":null}}"#
//! );
//! # }
//! ```
//!
//! # Reporting failures
//!
//! ```
//! use guardrail_tower_core::{CallType, Error, ErrorClass};
//! use guardrail_tower_error::ErrorNormalizeLayer;
//!
//! let layer = ErrorNormalizeLayer::new().on_failure(|class: ErrorClass, err: &Error, _: CallType| {
//!     match class {
//!         ErrorClass::PolicyBlock => { /* count blocks per guardrail: err.guardrail() */ }
//!         ErrorClass::UpstreamFailure | ErrorClass::Internal => { /* page someone */ }
//!         _ => {}
//!     }
//! });
//! # let _ = layer;
//! ```

mod classify;
mod future;
mod layer;
mod on_failure;
mod service;

pub use classify::classify_error;
pub use future::ResponseFuture;
pub use guardrail_tower_core::body::ResponseBody;
pub use guardrail_tower_core::{Error, ErrorClass};
pub use layer::{DEFAULT_MAX_ERROR_BODY, ErrorNormalizeLayer};
pub use on_failure::{DefaultOnFailure, OnFailure};
pub use service::ErrorNormalize;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use guardrail_tower_core::CallType;
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    type Seen = Arc<Mutex<Vec<(ErrorClass, u16)>>>;

    fn recorder() -> (Seen, impl FnMut(ErrorClass, &Error, CallType) + Clone) {
        let seen: Seen = Arc::default();
        let hook = {
            let seen = seen.clone();
            move |class, err: &Error, _| seen.lock().unwrap().push((class, err.status().as_u16()))
        };
        (seen, hook)
    }

    async fn run_err(path: &str, err: BoxError) -> (StatusCode, String, Vec<(ErrorClass, u16)>) {
        let (seen, hook) = recorder();
        let err = Mutex::new(Some(err));
        let svc = ServiceBuilder::new()
            .layer(ErrorNormalizeLayer::new().on_failure(hook))
            .service(service_fn(move |_: Request<Full<Bytes>>| {
                let err = err.lock().unwrap().take().unwrap();
                async move { Err::<Response<Full<Bytes>>, BoxError>(err) }
            }));
        let resp = svc
            .oneshot(Request::post(path).body(Full::default()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen = seen.lock().unwrap().clone();
        (status, String::from_utf8(body.to_vec()).unwrap(), seen)
    }

    async fn run_upstream(
        path: &str,
        response: Response<Full<Bytes>>,
    ) -> (Response<Bytes>, Vec<(ErrorClass, u16)>) {
        let (seen, hook) = recorder();
        let response = Mutex::new(Some(response));
        let svc = ServiceBuilder::new()
            .layer(ErrorNormalizeLayer::new().on_failure(hook))
            .service(service_fn(move |_: Request<Full<Bytes>>| {
                let response = response.lock().unwrap().take().unwrap();
                async move { Ok::<_, BoxError>(response) }
            }));
        let resp = svc
            .oneshot(Request::post(path).body(Full::default()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let seen = seen.lock().unwrap().clone();
        (Response::from_parts(parts, body), seen)
    }

    #[tokio::test]
    async fn a_normalized_400_stays_400() {
        // Regression: a shared error funnel re-derived the status of a normalized 400 as 500
        // and wrote "None" for absent fields.
        let err = Error::guardrail_blocked("block-words", "Blocked: 'forbidden'");
        let (status, body, seen) = run_err("/v1/chat/completions", err.into()).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"error":{"message":"Blocked: 'forbidden'","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
        );
        assert_eq!(seen, [(ErrorClass::PolicyBlock, 400)]);
    }

    #[tokio::test]
    async fn core_error_fields_are_kept_exactly() {
        let err = Error::new(StatusCode::UNPROCESSABLE_ENTITY, "bad tools")
            .with_type("custom_type")
            .with_param("tools")
            .with_code("bad_tools");
        let (status, body, seen) = run_err("/v1/responses", err.into()).await;
        assert_eq!(status, 422);
        assert_eq!(
            body,
            r#"{"error":{"message":"bad tools","type":"custom_type","param":"tools","code":"bad_tools"}}"#
        );
        assert_eq!(seen, [(ErrorClass::ClientError, 422)]);
    }

    #[tokio::test]
    async fn guardrail_block_in_anthropic_shape() {
        let (status, body, _) =
            run_err("/v1/messages", Error::guardrail_blocked("g", "no").into()).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"no"}}"#
        );
    }

    // The clock is paused: the timeout fires as soon as nothing else can run.
    #[tokio::test(start_paused = true)]
    async fn tower_timeout_is_504() {
        let (seen, hook) = recorder();
        let svc = ServiceBuilder::new()
            .layer(ErrorNormalizeLayer::new().on_failure(hook))
            .timeout(Duration::from_secs(30))
            .service(service_fn(|_: Request<Full<Bytes>>| async {
                // An upstream that never answers.
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
            }));
        let resp = svc
            .oneshot(
                Request::post("/v1/chat/completions")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            r#"{"error":{"message":"upstream timed out: request timed out","type":"timeout_error","param":null,"code":"upstream_timeout"}}"#
        );
        assert_eq!(*seen.lock().unwrap(), [(ErrorClass::UpstreamFailure, 504)]);
    }

    #[tokio::test]
    async fn upstream_connect_error_is_502() {
        // A real hyper-util client against a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let upstream = service_fn(move |mut req: Request<Full<Bytes>>| {
            let client = client.clone();
            *req.uri_mut() = format!("http://127.0.0.1:{port}/v1/chat/completions")
                .parse()
                .unwrap();
            async move { client.request(req).await }
        });
        let (seen, hook) = recorder();
        let svc = ServiceBuilder::new()
            .layer(ErrorNormalizeLayer::new().on_failure(hook))
            .service(upstream);
        let resp = svc
            .oneshot(
                Request::post("/v1/chat/completions")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "bad_gateway_error");
        assert_eq!(v["error"]["code"], "upstream_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("upstream request failed: client error (Connect)"),
            "{message}"
        );
        assert_eq!(*seen.lock().unwrap(), [(ErrorClass::UpstreamFailure, 502)]);
    }

    #[tokio::test]
    async fn body_limit_and_json_errors() {
        let limit_err =
            http_body_util::Limited::new(Full::new(Bytes::from_static(b"0123456789")), 4)
                .collect()
                .await
                .unwrap_err();
        let (status, body, _) = run_err("/v1/embeddings", limit_err).await;
        assert_eq!(status, 413);
        assert_eq!(
            body,
            r#"{"error":{"message":"request body is too large","type":"invalid_request_error","param":null,"code":"request_too_large"}}"#
        );
        let json_err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let (status, body, seen) = run_err("/v1/chat/completions", json_err.into()).await;
        assert_eq!(status, 400);
        assert!(body.contains(r#""code":"invalid_json""#), "{body}");
        assert_eq!(seen, [(ErrorClass::ClientError, 400)]);
    }

    #[tokio::test]
    async fn anything_else_is_500_with_the_chain() {
        let io = std::io::Error::other("disk on fire");
        let (status, body, seen) = run_err("/v1/messages", io.into()).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            r#"{"type":"error","error":{"type":"api_error","message":"disk on fire"}}"#
        );
        assert_eq!(seen, [(ErrorClass::Internal, 500)]);
    }

    #[tokio::test]
    async fn upstream_html_is_rewritten_status_and_headers_kept() {
        let upstream = Response::builder()
            .status(502)
            .header(CONTENT_TYPE, "text/html")
            .header(RETRY_AFTER, "5")
            .body(Full::new(Bytes::from_static(
                b"<html><h1>502 Bad Gateway</h1></html>",
            )))
            .unwrap();
        let (resp, seen) = run_upstream("/v1/chat/completions", upstream).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[RETRY_AFTER], "5");
        assert_eq!(
            resp.headers()[CONTENT_LENGTH],
            resp.body().len().to_string()
        );
        assert_eq!(
            resp.body(),
            r#"{"error":{"message":"upstream returned 502 Bad Gateway (HTML body omitted)","type":"bad_gateway_error","param":null,"code":null}}"#
        );
        assert_eq!(seen, [(ErrorClass::UpstreamFailure, 502)]);
    }

    #[tokio::test]
    async fn upstream_plain_text_and_empty_bodies() {
        let upstream = Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(
                b"upstream connect error or disconnect/reset before headers",
            )))
            .unwrap();
        let (resp, _) = run_upstream("/v1/messages", upstream).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.body(),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"upstream connect error or disconnect/reset before headers"}}"#
        );

        let upstream = Response::builder()
            .status(404)
            .body(Full::default())
            .unwrap();
        let (resp, seen) = run_upstream("/v1/responses", upstream).await;
        assert_eq!(resp.status(), 404);
        assert_eq!(
            resp.body(),
            r#"{"error":{"message":"upstream returned 404 Not Found","type":"not_found_error","param":null,"code":null}}"#
        );
        assert_eq!(seen, [(ErrorClass::ClientError, 404)]);
    }

    #[tokio::test]
    async fn right_shaped_bodies_pass_byte_for_byte() {
        let openai = Bytes::from_static(
            b"{ \"error\": { \"message\": \"Rate limit\", \"type\": \"requests\", \"param\": null, \"code\": \"rate_limit_exceeded\" } }\n",
        );
        let upstream = Response::builder()
            .status(429)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .header("x-ratelimit-remaining-requests", "0")
            .body(Full::new(openai.clone()))
            .unwrap();
        let (resp, seen) = run_upstream("/v1/chat/completions", upstream).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.body(), &openai);
        assert_eq!(
            resp.headers()[CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(seen, [(ErrorClass::ClientError, 429)]);
        assert_eq!(
            resp.extensions().get::<Error>().unwrap().message(),
            "Rate limit"
        );

        let anthropic = Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        let upstream = Response::builder()
            .status(529)
            .body(Full::new(anthropic.clone()))
            .unwrap();
        let (resp, _) = run_upstream("/v1/messages", upstream).await;
        assert_eq!(resp.status(), 529);
        assert_eq!(resp.body(), &anthropic);
    }

    #[tokio::test]
    async fn oversized_error_body_is_rewritten_generically() {
        let big = Bytes::from(vec![b'x'; 200_000]);
        let upstream = Response::builder()
            .status(500)
            .body(Full::new(big))
            .unwrap();
        let (resp, _) = run_upstream("/v1/chat/completions", upstream).await;
        assert_eq!(resp.status(), 500);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with(" [truncated]"),
            "{}",
            &message[message.len() - 30..]
        );
        assert!(resp.body().len() < 2_000);
    }

    #[tokio::test]
    async fn success_and_inner_error_responses_pass_untouched() {
        let ok = Response::builder()
            .status(200)
            .header(CONTENT_TYPE, "text/event-stream")
            .body(Full::new(Bytes::from_static(b"data: hi\n\n")))
            .unwrap();
        let (resp, seen) = run_upstream("/v1/chat/completions", ok).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), "data: hi\n\n");
        assert!(seen.is_empty());

        // An error response an inner layer built: passed through, reported once, not re-read.
        let blocked = Error::guardrail_blocked("pii", "no PII").to_response(CallType::Responses);
        let blocked = blocked.map(Full::new);
        let (resp, seen) = run_upstream("/v1/responses", blocked).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.body(),
            r#"{"error":{"message":"no PII","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
        );
        assert_eq!(seen, [(ErrorClass::PolicyBlock, 400)]);
    }

    #[tokio::test]
    async fn poll_ready_error_answers_the_next_call() {
        #[derive(Clone)]
        struct NeverReady;
        impl Service<Request<Full<Bytes>>> for NeverReady {
            type Response = Response<Full<Bytes>>;
            type Error = BoxError;
            type Future = std::future::Ready<Result<Self::Response, BoxError>>;
            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), BoxError>> {
                std::task::Poll::Ready(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "pool closed",
                ))))
            }
            fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
                unreachable!("never called when not ready")
            }
        }
        let svc = ServiceBuilder::new()
            .layer(ErrorNormalizeLayer::new().on_failure(()))
            .service(NeverReady);
        let resp = svc
            .oneshot(
                Request::post("/v1/chat/completions")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
    }
}
