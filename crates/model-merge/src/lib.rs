//! `ModelGuardrailMergeLayer`: merge a model's configured guardrails into each request's
//! guardrail selection.
//!
//! Guardrails can be attached to a deployment (a model) instead of being asked for by the client.
//! This layer reads `model` from the parsed request (parsing it once if no earlier layer did) and
//! merges that model's guardrail names into the request's one
//! [`GuardrailSelection`](guardrail_tower_core::GuardrailSelection), deduplicated, with the
//! names the body asked for kept first. An unknown model merges nothing.
//!
//! Where it sits: before the guardrail layers, which read the merged selection through the one
//! gate.
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │ ◀━━ this crate
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! It does the same for every call type and for `stream: true` and `stream: false` alike: the
//! selection is the one value every later layer's gate reads, so a model-level guardrail cannot
//! be skipped on one kind of request and applied on another.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_core::ParsedRequest;
//! use guardrail_tower_model_merge::ModelGuardrailMergeLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The upstream (here: a stub) sees the merged selection in the request extensions.
//! let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
//!     let parsed = req.extensions().get::<ParsedRequest>().unwrap();
//!     let names: Vec<&str> = parsed.selection().names().collect();
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(names.join(",")))))
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(ModelGuardrailMergeLayer::new().model("gpt-guarded", ["pii-mask", "toxicity"]))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions").body(Full::new(Bytes::from_static(
//!     br#"{"model":"gpt-guarded","stream":true,"guardrails":["toxicity","audit"],"messages":[]}"#,
//! ))).unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "toxicity,audit,pii-mask");
//! # }
//! ```

mod future;
mod layer;
mod merge;
mod service;

pub use future::ResponseFuture;
pub use guardrail_tower_core::body::ResponseBody;
pub use layer::ModelGuardrailMergeLayer;
pub use merge::Merge;
pub use service::ModelGuardrailMerge;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use guardrail_tower_core::{GuardrailMode, GuardrailSpec, ParsedRequest, should_run};
    use guardrail_tower_testkit::body;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    /// An upstream that answers with the parsed request it saw, as JSON.
    fn echo_selection() -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(|req: Request<Full<Bytes>>| async move {
            let parsed = req.extensions().get::<ParsedRequest>().cloned().unwrap();
            let names: Vec<String> = parsed.selection().names().map(str::to_owned).collect();
            let body = serde_json::json!({"names": names, "stream": parsed.stream()});
            Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
        })
    }

    fn layer() -> ModelGuardrailMergeLayer {
        ModelGuardrailMergeLayer::new()
            .model("gpt-guarded", ["pii-mask", "toxicity"])
            .model("claude-guarded", ["pii-mask"])
    }

    async fn selection(path: &str, body: &str) -> (Vec<String>, serde_json::Value) {
        let svc = ServiceBuilder::new()
            .layer(layer())
            .service(echo_selection());
        let req = Request::post(path)
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let names = v["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        (names, v)
    }

    #[tokio::test]
    async fn merges_for_every_call_type_and_both_stream_modes() {
        let cases = [
            (
                "/v1/chat/completions",
                r#""messages":[{"role":"user","content":"hi"}]"#,
            ),
            ("/chat/completions", r#""messages":[]"#),
            ("/v1/responses", r#""input":"hi""#),
            ("/v1/messages", r#""max_tokens":5,"messages":[]"#),
            ("/v1/completions", r#""prompt":"hi""#),
            ("/v1/embeddings", r#""input":"hi""#),
        ];
        for (path, rest) in cases {
            for stream in [false, true] {
                let body = format!(r#"{{"model":"gpt-guarded","stream":{stream},{rest}}}"#);
                let (names, v) = selection(path, &body).await;
                assert_eq!(names, ["pii-mask", "toxicity"], "{path} stream={stream}");
                assert_eq!(v["stream"], stream);
            }
        }
    }

    #[tokio::test]
    async fn body_entries_are_kept_first_and_deduplicated() {
        let (names, _) = selection(
            "/v1/chat/completions",
            r#"{"model":"gpt-guarded","guardrails":["toxicity","audit"],"metadata":{"guardrails":["audit","extra"]},"messages":[]}"#,
        )
        .await;
        assert_eq!(names, ["toxicity", "audit", "extra", "pii-mask"]);
    }

    #[tokio::test]
    async fn unknown_model_or_no_model_merges_nothing() {
        let (names, _) = selection(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[]}"#,
        )
        .await;
        assert!(names.is_empty());
        let (names, _) = selection(
            "/v1/chat/completions",
            r#"{"guardrails":["a"],"messages":[]}"#,
        )
        .await;
        assert_eq!(names, ["a"]);
        // Model names match exactly.
        let (names, _) = selection(
            "/v1/chat/completions",
            r#"{"model":"GPT-GUARDED","messages":[]}"#,
        )
        .await;
        assert!(names.is_empty());
    }

    /// Regression after the production bug: a model-level post_call guardrail with
    /// `default_on: false` must be selected for a streaming request exactly as for a
    /// non-streaming one, and a guardrail not attached to the model must not be.
    #[tokio::test]
    async fn model_level_post_call_guardrail_is_selected_when_streaming() {
        let attached = GuardrailSpec::new("pii-mask", GuardrailMode::PostCall, false);
        let not_attached = GuardrailSpec::new("other", GuardrailMode::PostCall, false);
        for stream in [true, false] {
            let (attached, not_attached) = (attached.clone(), not_attached.clone());
            let svc = ServiceBuilder::new().layer(layer()).service(service_fn(
                move |req: Request<Full<Bytes>>| {
                    let attached = attached.clone();
                    let not_attached = not_attached.clone();
                    async move {
                        let parsed = req.extensions().get::<ParsedRequest>().unwrap();
                        assert_eq!(parsed.stream(), stream);
                        let sel = parsed.selection();
                        let verdict = (
                            should_run(&attached, GuardrailMode::PostCall, sel),
                            should_run(&not_attached, GuardrailMode::PostCall, sel),
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("{verdict:?}"),
                        ))))
                    }
                },
            ));
            let body = format!(
                r#"{{"model":"claude-guarded","stream":{stream},"max_tokens":9,"messages":[]}}"#
            );
            let req = Request::post("/v1/messages")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = svc.oneshot(req).await.unwrap();
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, "(true, false)", "stream={stream}");
        }
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_in_the_endpoint_shape_without_calling_upstream() {
        let called = Arc::new(AtomicUsize::new(0));
        let counter = called.clone();
        let upstream = service_fn(move |_req: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) }
        });
        let svc = ServiceBuilder::new()
            .layer(layer().body_limit(64))
            .service(upstream);

        let req = Request::post("/v1/messages")
            .body(Full::new(Bytes::from_static(b"{\"model\": ")))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        let big = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(100));
        let req = Request::post("/v1/responses")
            .body(Full::new(Bytes::from(big)))
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 413);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(called.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_second_layer_reuses_the_parsed_request() {
        let polls = Arc::new(AtomicUsize::new(0));
        let body = body::chunks([r#"{"model":"gpt-guarded","#, r#""messages":[]}"#])
            .count_polls(polls.clone());
        let svc = ServiceBuilder::new()
            .layer(layer())
            .layer(ModelGuardrailMergeLayer::new().model("gpt-guarded", ["second"]))
            .service(echo_selection());
        let req = Request::post("/v1/chat/completions").body(body).unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        // Two chunks then the end: three polls, all by the outer layer.
        assert_eq!(polls.load(Ordering::SeqCst), 3);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(
            v["names"],
            serde_json::json!(["pii-mask", "toxicity", "second"])
        );
    }
}
