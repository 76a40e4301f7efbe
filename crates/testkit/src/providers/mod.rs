//! Contract mocks of the guardrail services the gateway talks to, each on a loopback socket,
//! answering in the service's own shapes, recording every request it receives (method, path,
//! query, headers, body), and scriptable per test.
//!
//! - [`presidio`], [`lakera`], [`azure`]: Microsoft Presidio (analyzer and anonymizer), Lakera
//!   Guard v2 and Azure AI Content Safety, answering by fixed, documented rules, on
//!   [`service::ServiceMock`]: a fixed answer (a block, a 5xx, a malformed body), a dropped
//!   connection, a slow or a missing answer.
//! - [`bedrock::BedrockMock`]: Amazon Bedrock Guardrails' `ApplyGuardrail`, verifying the SigV4
//!   signature of every request with its own implementation of the algorithm.
//! - [`aim::AimMock`]: Aim Security's `/fw/v1/analyze`.
//!
//! The Bedrock and Aim mocks answer from a small policy ("block when a text contains this word", "anonymize this
//! literal") the way the real service would ([`Reply::Evaluate`], the default), or with a
//! scripted [`Reply`]: a status and body (5xx, 4xx), a malformed 200, no answer at all (for
//! timeouts), or a delayed answer. Replies pushed with `push_reply` are used once each, in order,
//! before the default; `set_reply` changes the default.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use guardrail_tower_testkit::providers::Reply;
//! use guardrail_tower_testkit::providers::aim::AimMock;
//!
//! let aim = AimMock::start().await;
//! aim.block_word("jailbreak", "Jailbreak detected");
//! aim.push_reply(Reply::Status(503, "busy".into())); // the first request gets a 503
//! assert!(aim.api_base().starts_with("http://127.0.0.1:"));
//! assert!(aim.requests().is_empty());
//! # }
//! ```

pub mod aim;
pub mod azure;
pub mod bedrock;
pub mod lakera;
pub mod presidio;
pub mod service;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;

use crate::{TestServer, serve};

/// One request a provider mock received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Received {
    /// The method.
    pub method: Method,
    /// The path as sent (percent-encoding kept), without the query.
    pub path: String,
    /// The query, without the `?`.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Received {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a provider mock does with one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Reply {
    /// Answer as the real service would, from the mock's policy (after checking the request).
    Evaluate,
    /// This status, with this body as `application/json`.
    Status(u16, String),
    /// HTTP 200 with this body as is: a malformed answer.
    Raw(String),
    /// HTTP 200 with this JSON.
    Json(Value),
    /// Never answer: the request is recorded and the connection held open.
    Hang,
    /// Wait this long, then do the inner reply.
    Delay(Duration, Box<Reply>),
}

/// The part every provider mock shares: the recorded requests and the script.
#[derive(Debug)]
pub(crate) struct Core {
    requests: Mutex<Vec<Received>>,
    queue: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    fn new() -> Arc<Core> {
        Arc::new(Core {
            requests: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::Evaluate),
        })
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        lock(&self.requests).clone()
    }

    pub(crate) fn push_reply(&self, reply: Reply) {
        lock(&self.queue).push_back(reply);
    }

    pub(crate) fn set_reply(&self, reply: Reply) {
        *lock(&self.default) = reply;
    }

    fn next_reply(&self) -> Reply {
        lock(&self.queue)
            .pop_front()
            .unwrap_or_else(|| lock(&self.default).clone())
    }
}

/// A JSON response.
pub(crate) fn json_response(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

/// Serves a provider mock: records each request, then answers with the next reply; `evaluate`
/// answers [`Reply::Evaluate`].
pub(crate) async fn start<F>(core: Arc<Core>, evaluate: F) -> TestServer
where
    F: Fn(&Received) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let evaluate = Arc::new(evaluate);
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let core = core.clone();
        let evaluate = evaluate.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let received = Received {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers,
                body,
            };
            lock(&core.requests).push(received.clone());
            let mut reply = core.next_reply();
            loop {
                match reply {
                    Reply::Delay(by, inner) => {
                        tokio::time::sleep(by).await;
                        reply = *inner;
                    }
                    Reply::Hang => std::future::pending::<()>().await,
                    Reply::Evaluate => return Ok::<_, Infallible>(evaluate(&received)),
                    Reply::Status(status, body) => return Ok(json_response(status, body)),
                    Reply::Raw(body) => return Ok(json_response(200, body)),
                    Reply::Json(value) => return Ok(json_response(200, value.to_string())),
                }
            }
        }
    });
    serve(svc).await
}
