//! `StreamingGuardrailBodyLayer`: post-call guardrails on whole and streamed responses.
//!
//! The layer runs the `post_call` guardrails the gate selects (the one selection, so a
//! model-level guardrail runs on `stream: true` exactly as on `stream: false`) on what the model
//! says:
//!
//! - **JSON responses** (success statuses): the output text of the call type is checked; a block
//!   replaces the response with the 400 error in the endpoint's shape; a rewrite (masking)
//!   rewrites the JSON and fixes `Content-Length`; an allowed response passes byte for byte.
//! - **SSE responses** (`text/event-stream`): the body is decoded incrementally, each event's text
//!   delta is read per call type (chat `choices[].delta.content`, Responses
//!   `response.output_text.delta`, Anthropic `text_delta`) and accumulated per channel (choice,
//!   output item, content block), and every guardrail checks it under its policy:
//!   - [`StreamPolicy::Exact`] (the default for guardrails with a span matcher, such as the
//!     content filter): each delta is matched at once; only the trailing characters a match
//!     could still need are held back, so blocked text never reaches the client and everything
//!     else flows with no added delay. Masks are applied precisely, even across events.
//!   - [`StreamPolicy::Window`]: events wait until the text they carry was checked; a check runs
//!     each `chars` new characters and at the end, over all the text not yet released. The
//!     last `overlap` characters of a window (never fewer than the longest match of a
//!     deterministic guardrail) are held back and checked again with the next window, so
//!     nothing released can become part of a later match; what is still held when the
//!     upstream ends is checked before it goes.
//!   - [`StreamPolicy::EndOfStream`]: events flow at once; one check of the whole text at the
//!     end, and the final events (finish reason, usage, `[DONE]`, `response.completed`,
//!     `message_stop`) wait until it passes. It can only block: text already sent cannot be
//!     masked.
//!   - [`StreamPolicy::BufferAll`]: the whole stream is held and checked once before the
//!     response head is sent, so a block is a plain **400 JSON error** (the status changes) and a
//!     rewrite re-encodes the stream (each channel's masked text in the first delta that
//!     carried text of it, never in an empty announcement). Past
//!     `max_bytes`, `on_overflow` either fails closed (an error response) or releases the stream
//!     and checks it at the end.
//!
//!   With every other policy the 200 head goes out first, and a block becomes the endpoint's
//!   in-band error: chat `data: {"error": {...}}` then `data: [DONE]`; Responses `event: error`
//!   then `event: response.failed`; Anthropic `event: error`. Then the body ends cleanly and the
//!   upstream body is dropped. The official OpenAI and Anthropic SDKs raise on these events.
//!
//! Non-text events, `[DONE]`, keep-alive comments and usage chunks pass through unchanged, byte
//! for byte; an upstream error event passes through as is; an upstream that dies mid-stream
//! (reset, read timeout, an undecodable event) ends the stream as a block does: what was
//! cleared, then the in-band error (`upstream_stream_error`) and the terminator; text still
//! held unchecked is dropped. A guardrail that is unreachable mid-stream follows its
//! `unreachable_fallback`. Every check appends to the guardrail log (exact-mode matching, which
//! runs on every delta, logs one entry per guardrail per stream).
//!
//! The body never polls the upstream while it has something to send or a check is running.
//! Memory per stream is bounded by the policy: exact holds the trailing characters a match could
//! still need plus the events carrying them; window holds at most `chars + overlap` characters
//! of text and their events; end-of-stream keeps the whole text (it checks it at the end);
//! buffer-all holds at most `max_bytes`; one SSE event is at most
//! [`max_event_size`](StreamingGuardrailBodyLayer::max_event_size).
//!
//! Where it sits: innermost of the guardrail layers, next to the upstream client:
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │ ◀━━ this crate
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
//! use guardrail_tower_streaming::StreamingGuardrailBodyLayer;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let no_spoilers = ConfiguredGuardrail::new(
//!     "no-spoilers",
//!     GuardrailMode::PostCall,
//!     guardrail_fn(|input| async move {
//!         Ok(if input.texts().iter().any(|t| t.contains("Rosebud")) {
//!             Verdict::block("No spoilers")
//!         } else {
//!             Verdict::allow()
//!         })
//!     }),
//! )
//! .default_on(true);
//!
//! // An upstream that streams a chat completion.
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"It was \"}}]}\n\n\
//!                data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Rosebud.\"}}]}\n\n\
//!                data: [DONE]\n\n";
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder()
//!             .header("content-type", "text/event-stream")
//!             .body(Full::new(Bytes::from_static(sse.as_bytes())))
//!             .unwrap(),
//!     )
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(StreamingGuardrailBodyLayer::new(Guardrails::new([no_spoilers])))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#)))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200); // the head was already on its way
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     "data: {\"error\":{\"message\":\"No spoilers\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"content_policy_violation\"}}\n\ndata: [DONE]\n\n"
//! );
//! # }
//! ```

mod body;
mod capture;
mod future;
mod layer;
mod service;
mod state;
#[cfg(test)]
mod tests;

pub use body::GuardedBody;
pub use future::ResponseFuture;
pub use guardrail_tower_core::StreamPolicy;
pub use layer::{DEFAULT_MAX_JSON_BODY, StreamingGuardrailBodyLayer};
pub use service::StreamingGuardrailBody;
