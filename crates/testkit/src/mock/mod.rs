//! A mock OpenAI- and Anthropic-compatible upstream, for the demo, end-to-end tests, load
//! benchmarks and fault injection.
//!
//! [`MockUpstream::start`] binds `127.0.0.1:0` and serves HTTP/1.1 (keep-alive, one task per
//! connection) until the [`MockUpstream`] is dropped. It answers like the real APIs, byte for
//! byte in shape, with a reply that is a pure function of the prompt, so tests can predict
//! every delta. It logs nothing and sleeps only when asked, so it can serve as the baseline
//! of a load benchmark.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use guardrail_tower_testkit::mock::MockUpstream;
//!
//! let mock = MockUpstream::start().await?;
//! let base_url = mock.base_url(); // "http://127.0.0.1:PORT/v1": an OpenAI `api_base`
//! assert!(base_url.ends_with("/v1"));
//! assert_eq!(mock.request_count(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Routes
//!
//! | Route | Answer |
//! |---|---|
//! | `POST /v1/chat/completions` | a `chat.completion`, or `chat.completion.chunk` events then `data: [DONE]` |
//! | `POST /v1/responses` | a Responses API `response` object, or its `response.*` events |
//! | `POST /v1/messages` | an Anthropic `message`, or its `message_start` … `message_stop` events |
//! | `POST /v1/embeddings` | a `list` of `embedding`s (one per input, a small fixed vector) |
//! | `GET /health` | `{"status": "ok"}` |
//!
//! The API routes are also served without the `/v1` prefix (`/chat/completions`, …). Anything
//! else is a 404 (405 for a known path with the wrong method) with an OpenAI-style JSON error
//! (Anthropic-style under `/v1/messages`); so is a body that is not a JSON object (400).
//! `"stream": true` in the body selects `text/event-stream`; each event is sent as its own
//! body frame. A chat stream ends with a usage chunk (`"choices": []`) when
//! `stream_options.include_usage` is true, as OpenAI's does.
//!
//! # The reply
//!
//! The prompt is the text of the last user message: chat `messages[]` with role `user` (a
//! string, or its `text` parts joined by spaces), Responses `input` (a string, or the last
//! input item with role `user`), Anthropic `messages[]` with role `user` (a string, or its
//! `text` blocks). The reply is `"You said: {prompt}."`, then
//! [`" The secret project is codenamed BLUEBIRD and ships in May."`](SECRET_SENTENCE) if the
//! prompt contains `project`, then [`" You can reach the team at team@example.com."`](EMAIL_SENTENCE)
//! if it contains `email` (both case-insensitive). The request's `model` is echoed back. Token
//! counts are whitespace-separated words: the prompt's for the input, the reply's for the
//! output. A stream sends the reply one word per content delta, each word with its leading
//! space, so the deltas concatenate to the reply exactly.
//!
//! # Control headers
//!
//! | Header | Effect |
//! |---|---|
//! | `x-mock-events: N` ([`EVENTS_HEADER`]) | pad the reply with filler words (or cut it) to exactly `N` words: `N` content deltas in a stream, `N` words of text in JSON |
//! | `x-mock-delay-ms: D` ([`DELAY_HEADER`]) | wait `D` ms before each stream event (the head is sent at once), or before a whole response |
//! | `x-mock-events-per-second: R` ([`PACE_HEADER`]) | send a stream's events on a fixed schedule, `R` a second (1 to 1,000,000): event `i` (from 0) at `i / R` seconds after the head, however late the reader polls, so a stream of `N` events lasts `(N - 1) / R` seconds; a model's pace for slow-stream benchmarks. Not with `x-mock-delay-ms`; no effect on a non-streaming response |
//! | `x-mock-fault: F` ([`FAULT_HEADER`]) | inject the fault `F`, one of the [`Fault`]s below |
//!
//! An unparsable control header is a 400 from the mock, so a typo in a test is loud.
//!
//! | Fault | What the client sees |
//! |---|---|
//! | `html-500` | status 500, `content-type: text/html`, an nginx-style HTML error page |
//! | `status-503` | status 503, `content-type: text/plain`, a proxy-style plain-text body |
//! | `drop-mid-stream` | a 200 stream with the first half of its events, then the connection is aborted (an incomplete chunked body: a body error) |
//! | `half-event` | a 200 stream with a few events and the first half of the next event's bytes, then the connection is aborted |
//! | `half-json` | a 200 JSON response whose `content-length` is the full body's, with only the first half of the body sent, then the connection is aborted |
//! | `hang` | nothing: the request is read and recorded, the connection is held open and never answered |
//! | `never-end` | a 200 stream that sends a content delta every 50 ms (or every `x-mock-delay-ms`) forever, until the client goes away |
//!
//! On a non-streaming request `drop-mid-stream` and `half-event` act as `half-json`, and
//! `never-end` acts as `hang`; on a streaming request `half-json` acts as `half-event`. Faults
//! apply to every route listed above (`GET /health` included), not to unknown routes.
//!
//! # Scripted replies
//!
//! For shapes the computed reply never has (tool calls, a compressed or mislabelled body, an
//! exact event sequence), a test queues a [`ScriptedReply`] with [`MockUpstream::push_reply`]:
//! the next request to an API route (chat, Responses, messages, embeddings) is recorded as
//! usual and answered with it, byte for byte, instead of the computed reply (control headers
//! are then ignored). Replies are used once each, in the order they were queued.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use guardrail_tower_testkit::mock::{MockUpstream, ScriptedReply};
//! use guardrail_tower_testkit::{post_json, send};
//!
//! let mock = MockUpstream::start().await?;
//! mock.push_reply(
//!     ScriptedReply::new(200)
//!         .header("content-type", "text/plain")
//!         .chunk("not JSON"),
//! );
//! let url = format!("{}/chat/completions", mock.base_url());
//! let resp = send(post_json(&url, r#"{"messages":[]}"#)).await;
//! assert_eq!((resp.headers()["content-type"].to_str().unwrap(), &resp.body()[..]), ("text/plain", &b"not JSON"[..]));
//! // The next one gets the computed reply again.
//! let resp = send(post_json(&url, r#"{"messages":[{"role":"user","content":"hi"}]}"#)).await;
//! assert_eq!(resp.headers()["content-type"], "application/json");
//! # Ok(())
//! # }
//! ```
//!
//! # Recorded requests
//!
//! Every request is recorded in arrival order (method, path, query, headers, body bytes) and
//! returned by [`MockUpstream::requests`]. A long benchmark can turn recording off with
//! [`MockUpstream::set_recording`]; [`MockUpstream::request_count`] keeps counting.
//!
//! # Stopping
//!
//! Dropping the [`MockUpstream`] stops accepting connections at once; open connections get a
//! graceful HTTP/1 shutdown (idle keep-alive connections close, in-flight responses may finish)
//! bounded to one second, and `hang` requests are released immediately (their connection is
//! closed without a response).

mod body;
mod handler;
mod shapes;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The request header that pads (or cuts) the reply to exactly this many words, so a stream
/// has exactly this many content deltas.
pub const EVENTS_HEADER: &str = "x-mock-events";

/// The request header that makes the mock wait this many milliseconds before each stream
/// event, or before a whole non-streaming response.
pub const DELAY_HEADER: &str = "x-mock-delay-ms";

/// The request header that paces a stream: this many events a second, on a fixed schedule (no
/// drift: a late event does not delay the next ones).
pub const PACE_HEADER: &str = "x-mock-events-per-second";

/// The request header that injects a [`Fault`], by its [`Fault::as_str`] name.
pub const FAULT_HEADER: &str = "x-mock-fault";

/// Appended to the reply when the prompt contains `project` (case-insensitive).
pub const SECRET_SENTENCE: &str = " The secret project is codenamed BLUEBIRD and ships in May.";

/// Appended to the reply when the prompt contains `email` (case-insensitive).
pub const EMAIL_SENTENCE: &str = " You can reach the team at team@example.com.";

/// How long open connections get to finish after the mock is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A fault the mock injects when a request carries [`FAULT_HEADER`].
///
/// See the [module docs](self) for what a client sees for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// `html-500`: status 500 with an HTML page.
    Html500,
    /// `status-503`: status 503 with a plain-text body.
    Status503,
    /// `drop-mid-stream`: half of the stream's events, then the connection is aborted.
    DropMidStream,
    /// `half-event`: a few events and half of the next one, then the connection is aborted.
    HalfEvent,
    /// `half-json`: the full `content-length`, half of the JSON body, then an abort.
    HalfJson,
    /// `hang`: the request is never answered; the connection is held.
    Hang,
    /// `never-end`: a stream that sends a content delta every 50 ms until the client leaves.
    NeverEnd,
}

impl Fault {
    /// Every fault, in documentation order.
    pub const ALL: [Fault; 7] = [
        Fault::Html500,
        Fault::Status503,
        Fault::DropMidStream,
        Fault::HalfEvent,
        Fault::HalfJson,
        Fault::Hang,
        Fault::NeverEnd,
    ];

    /// The header value that selects this fault, e.g. `"drop-mid-stream"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Html500 => "html-500",
            Fault::Status503 => "status-503",
            Fault::DropMidStream => "drop-mid-stream",
            Fault::HalfEvent => "half-event",
            Fault::HalfJson => "half-json",
            Fault::Hang => "hang",
            Fault::NeverEnd => "never-end",
        }
    }

    /// The fault a header value names, if any (surrounding whitespace and case are ignored).
    pub fn from_name(name: &str) -> Option<Fault> {
        let name = name.trim();
        Fault::ALL
            .into_iter()
            .find(|fault| fault.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canned answer for the next API request: a status, headers and body chunks, each sent as
/// its own frame. See [Scripted replies](self#scripted-replies).
#[derive(Debug, Clone)]
pub struct ScriptedReply {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) chunks: Vec<Bytes>,
}

impl ScriptedReply {
    /// A reply with this status, no headers and an empty body.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status code.
    pub fn new(status: u16) -> ScriptedReply {
        ScriptedReply {
            status: http::StatusCode::from_u16(status).expect("a valid status code"),
            headers: HeaderMap::new(),
            chunks: Vec::new(),
        }
    }

    /// A 200 `application/json` reply of `value`, with its `content-length`.
    pub fn json(value: &serde_json::Value) -> ScriptedReply {
        let body = value.to_string();
        ScriptedReply::new(200)
            .header("content-type", "application/json")
            .header("content-length", &body.len().to_string())
            .chunk(body)
    }

    /// A 200 `text/event-stream` reply of these events (each a whole event, with its blank
    /// line), one frame each.
    pub fn sse<I, E>(events: I) -> ScriptedReply
    where
        I: IntoIterator<Item = E>,
        E: Into<Bytes>,
    {
        events.into_iter().fold(
            ScriptedReply::new(200).header("content-type", "text/event-stream"),
            ScriptedReply::chunk,
        )
    }

    /// Adds a header.
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value.
    pub fn header(mut self, name: &str, value: &str) -> ScriptedReply {
        self.headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            http::HeaderValue::from_str(value).expect("a valid header value"),
        );
        self
    }

    /// Adds a body chunk, sent as its own frame.
    pub fn chunk(mut self, bytes: impl Into<Bytes>) -> ScriptedReply {
        self.chunks.push(bytes.into());
        self
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request path, without the query.
    pub path: String,
    /// The query string, without the `?`, if there was one.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value as a string, if it is present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// State shared by the accept loop, the connections and the [`MockUpstream`] handle.
struct Shared {
    recording: AtomicBool,
    count: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Replies queued by [`MockUpstream::push_reply`], oldest first.
    scripted: Mutex<std::collections::VecDeque<ScriptedReply>>,
    /// Woken each time a request arrives (after it is counted).
    arrived: Notify,
    /// Changes (is closed) when the [`MockUpstream`] is dropped.
    shutdown: watch::Receiver<()>,
}

impl Shared {
    /// The next scripted reply, if one is queued.
    fn next_scripted(&self) -> Option<ScriptedReply> {
        self.scripted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// Counts (and records, if recording is on) one request; returns its 1-based number.
    fn record(&self, parts: &http::request::Parts, body: &Bytes) -> u64 {
        let number = if self.recording.load(Ordering::Relaxed) {
            let recorded = RecordedRequest {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers.clone(),
                body: body.clone(),
            };
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            requests.push(recorded);
            // Counted under the lock so `request_count` never runs ahead of `requests`.
            self.count.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.count.fetch_add(1, Ordering::Relaxed) + 1
        };
        self.arrived.notify_waiters();
        number
    }
}

/// A running mock upstream. Dropping it stops the server.
///
/// See the [module docs](self) for routes, replies, control headers and faults.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping this closes the channel, which every task watches.
    shutdown: watch::Sender<()>,
    /// The accept loop, which owns the listener.
    accept: JoinHandle<()>,
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("request_count", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        MockUpstream::start_on(listener)
    }

    /// Starts serving on `listener`. Must be called within a Tokio runtime.
    pub fn start_on(listener: TcpListener) -> io::Result<MockUpstream> {
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            recording: AtomicBool::new(true),
            count: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            scripted: Mutex::new(std::collections::VecDeque::new()),
            arrived: Notify::new(),
            shutdown: shutdown_rx,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(MockUpstream {
            addr,
            shared,
            shutdown: shutdown_tx,
            accept,
        })
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the origin, without a path.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL an OpenAI client (or an `api_base`) expects.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far (while recording was on), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests the mock has received (recorded or not), including unanswered ones.
    pub fn request_count(&self) -> usize {
        usize::try_from(self.shared.count.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Waits until the mock has received at least `n` requests (recorded or not, answered or
    /// not: a `hang` request counts as soon as its body is read). Returns at once if it has.
    ///
    /// What a test awaits instead of polling [`request_count`](MockUpstream::request_count),
    /// e.g. to act while a request is in flight upstream.
    pub async fn wait_for_requests(&self, n: usize) {
        loop {
            let arrived = self.shared.arrived.notified();
            let mut arrived = std::pin::pin!(arrived);
            // Registered before the count is read, so an arrival in between is not missed.
            arrived.as_mut().enable();
            if self.request_count() >= n {
                return;
            }
            arrived.await;
        }
    }

    /// Stops the mock as dropping it does, and returns once the listener is closed (a new
    /// connection is refused).
    pub async fn shutdown(self) {
        let MockUpstream {
            shutdown, accept, ..
        } = self;
        drop(shutdown);
        let _ = accept.await;
    }

    /// Queues a reply for the next request to an API route, after those already queued.
    pub fn push_reply(&self, reply: ScriptedReply) {
        self.shared
            .scripted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(reply);
    }

    /// Forgets the recorded requests (the count is kept).
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Turns request recording on (the default) or off, e.g. for a long benchmark.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or a reset before accept: back off briefly.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| handler::handle(Arc::clone(&shared), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}
