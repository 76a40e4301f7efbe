//! `SpendLogLayer`: one spend-log record per request, for every endpoint and every outcome.
//!
//! The outermost layer. At `call` it creates the request's record and the request's
//! [`GuardrailLog`](guardrail_tower_core::GuardrailLog) and
//! [`ResponseReport`](guardrail_tower_core::ResponseReport) (kept with the request, see their
//! `get_or_insert`), so inner layers write into the same record:
//!
//! - `request_id`, the key: a UUID v7 the gateway generates for every request
//!   ([`RequestId`](guardrail_tower_core::RequestId)), returned as `x-litellm-call-id`. Never
//!   the client's: a client's `x-request-id` is kept as `client_request_id` and echoed in the
//!   `x-request-id` response header (the gateway's id when the client sent none), so reusing
//!   or forging one never merges, replaces or hides a record.
//! - who called: with an authenticated [`Caller`](guardrail_tower_core::Caller) in the
//!   request's extensions (an authentication layer outside this one) or the response's (one
//!   inside, as in the gateway), its key hash (`api_key`) and LiteLLM's `user_api_key_alias`,
//!   `user_api_key_user_id`, `user_api_key_team_id`, `user_api_key_org_id` in the metadata;
//!   without one, the SHA-256 of the bearer key (never the key).
//! - start time, call type; model, user and stream flag from the body.
//!
//! Where it sits: outermost, so that it sees what the client got, whichever layer answered.
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │ ◀━━ this crate
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ...
//! ```
//!
//! It completes the record exactly once, from every exit: the inner service fails; the response
//! has no body; the body ends (`None`, trailers, or a frame after which it reports its end); the
//! body fails; the body or the future is dropped before the end (the client went away: status
//! `failure`, error `client_disconnected`). The same code path writes every endpoint's record,
//! so a guardrail block on `/v1/responses` is recorded exactly like one on
//! `/v1/chat/completions`. The body is read as it passes, never copied or delayed; usage comes
//! from the JSON body (a scanner that keeps only its top-level `usage`, whatever the body's
//! size; a body that arrives in one frame has its members walked back from the end, where
//! providers write `usage`) or the streamed usage events. A stream is framed for the log once, by the innermost
//! layer that frames it anyway: the streaming guardrail layer (with a post-call guardrail), else
//! the error layer (which releases whole events), else this layer; each reads the same usage
//! and upstream error events ([`StreamWatch`](guardrail_tower_core::StreamWatch)) into the
//! request's [`ResponseReport`](guardrail_tower_core::ResponseReport). A stream that ends early (blocked after the 200, failed, abandoned)
//! before the upstream's usage event records an estimate from the text delivered, marked
//! `usage_estimated` (see [`SpendMetadata`]).
//!
//! Records go through a [`SpendLogWriter`]: a bounded queue drained in batches by a background
//! task (one transaction per batch), retried with capped backoff while the database is down; a
//! row the database rejects is sanitized or dead-lettered, never a jam; flushed at shutdown.
//! [`SpendLogStore`] queries what the sinks wrote.
//!
//! # Features
//!
//! No sink that needs a database or a file is built by default:
//!
//! | feature | sink |
//! |---|---|
//! | (always) | [`ChannelSink`] (records to an in-process channel), and any [`SpendLogSink`] of your own |
//! | `sqlite` | `SqliteSink`: an embedded SQLite file (compiles a bundled SQLite) |
//! | `postgres` | `PostgresSink`: PostgreSQL, for production and several replicas |
//! | `jsonl` | `JsonlSink`: one JSON object per line, appended to a file |
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_spend_log::{ChannelSink, SpendLogLayer, SpendLogWriter, SpendStatus};
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (sink, mut records) = ChannelSink::new();
//! let writer = SpendLogWriter::new().spawn(sink);
//!
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap(),
//!     )
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(SpendLogLayer::new(writer.clone()))
//!     .service(upstream);
//!
//! let req = Request::post("/v1/chat/completions")
//!     .header("x-request-id", "req-1")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#)))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.headers()["x-request-id"], "req-1");
//! let call_id = resp.headers()["x-litellm-call-id"].to_str().unwrap().to_owned();
//! resp.into_body().collect().await.unwrap();
//!
//! writer.shutdown().await.unwrap(); // flushes
//! let record = records.recv().await.unwrap();
//! assert_eq!(record.request_id, call_id); // the gateway's id
//! assert_eq!(record.client_request_id.as_deref(), Some("req-1"));
//! assert_eq!(record.status, SpendStatus::Success);
//! assert_eq!((record.model.as_str(), record.total_tokens), ("gpt-4o", 8));
//! # }
//! ```

mod body;
mod future;
mod layer;
mod record;
mod recorder;
mod service;
pub mod sink;

pub use body::SpendLogBody;
pub use future::ResponseFuture;
pub use layer::{DEFAULT_MONITOR_GRACE, SpendLogLayer};
pub use recorder::{ApiBase, ModelPrice, PriceTable, SpendLogObserver};
pub use service::SpendLog;

pub use record::{ErrorInformation, SpendMetadata, SpendRecord, SpendStatus, rfc3339};
#[cfg(feature = "jsonl")]
pub use sink::JsonlSink;
pub use sink::{
    BlockSummaryRow, ChannelSink, DEFAULT_QUERY_LIMIT, DeadLetterEntry, Deferred, FilterError,
    MAX_QUERY_LIMIT, QueueFullPolicy, ShutdownError, SinkError, SinkErrorKind, SinkFuture,
    SpendLogFilter, SpendLogHandle, SpendLogQuery, SpendLogSink, SpendLogStats, SpendLogStore,
    SpendLogWriter,
};
#[cfg(feature = "postgres")]
pub use sink::{PostgresSink, PostgresSinkBuilder};
#[cfg(feature = "sqlite")]
pub use sink::{SqliteSink, SqliteSinkBuilder};
