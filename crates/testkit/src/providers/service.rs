//! A scriptable JSON service on a loopback socket: the frame every provider mock is built on.
//!
//! It records every request (method, path, query, headers, body) and answers it with the
//! provider's own rules ([`Behavior::Normal`]) unless a test scripted something else: a fixed
//! answer (a block, a 5xx, a malformed body), a dead connection, a slow or a missing answer.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::mock::RecordedRequest;

/// The provider's own answer to a request: a status and a JSON body.
pub type Answer = (u16, Value);

/// How the mock answers a request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Behavior {
    /// As the real service would (the provider mock's rules).
    Normal,
    /// This status, content type and body, whatever the request.
    Reply {
        /// The status.
        status: u16,
        /// The `content-type`.
        content_type: &'static str,
        /// The body.
        body: Bytes,
    },
    /// The connection is closed without an answer (a service that died).
    Down,
    /// The normal answer, after this long (on tokio's clock: instant under paused time).
    Slow(Duration),
    /// No answer at all; the connection is held open until the mock is dropped.
    Hang,
}

impl Behavior {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Behavior {
        Behavior::Reply {
            status,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
        }
    }

    /// `status` with a short plain-text body, as a proxy in front of a service sends.
    pub fn status(status: u16) -> Behavior {
        Behavior::Reply {
            status,
            content_type: "text/plain",
            body: Bytes::from(format!("upstream answered {status}")),
        }
    }

    /// A 200 whose body is not JSON at all (an HTML page that says `application/json`).
    pub fn malformed() -> Behavior {
        Behavior::Reply {
            status: 200,
            content_type: "application/json",
            body: Bytes::from_static(b"<html><body>Service Temporarily Unavailable</body></html>"),
        }
    }
}

type Handler = dyn Fn(&RecordedRequest) -> Answer + Send + Sync;

struct Script {
    /// One-shot behaviors, with the path they apply to (`None`: any).
    queue: VecDeque<(Option<String>, Behavior)>,
    /// Behaviors for every request (to a path, or any) without a queued one.
    always: Vec<(Option<String>, Behavior)>,
}

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    script: Mutex<Script>,
    handler: Box<Handler>,
    shutdown: watch::Receiver<()>,
}

impl Shared {
    fn next_behavior(&self, path: &str) -> Behavior {
        let mut script = self.script.lock().unwrap_or_else(PoisonError::into_inner);
        let matches = |p: &Option<String>| p.as_deref().is_none_or(|p| p == path);
        if let Some(i) = script.queue.iter().position(|(p, _)| matches(p)) {
            return script.queue.remove(i).expect("found").1;
        }
        script
            .always
            .iter()
            .rev()
            .find(|(p, _)| matches(p))
            .map_or(Behavior::Normal, |(_, b)| b.clone())
    }
}

/// A running scriptable service. Dropping it stops the server and releases held connections.
pub struct ServiceMock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
}

impl fmt::Debug for ServiceMock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceMock")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ServiceMock {
    /// Binds `127.0.0.1:0` and answers with `handler` unless scripted otherwise. Must be called
    /// within a Tokio runtime.
    pub async fn start(
        handler: impl Fn(&RecordedRequest) -> Answer + Send + Sync + 'static,
    ) -> io::Result<ServiceMock> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(());
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                always: Vec::new(),
            }),
            handler: Box::new(handler),
            shutdown: rx,
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(ServiceMock {
            addr,
            shared,
            _shutdown: tx,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests received on `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The next request (on any path) gets `behavior`; queued behaviors are used in order.
    pub fn once(&self, behavior: Behavior) {
        self.script().queue.push_back((None, behavior));
    }

    /// The next request on `path` gets `behavior`.
    pub fn once_on(&self, path: &str, behavior: Behavior) {
        self.script()
            .queue
            .push_back((Some(path.to_owned()), behavior));
    }

    /// Every request without a queued behavior gets `behavior`, until [`reset`](Self::reset).
    pub fn always(&self, behavior: Behavior) {
        self.script().always.push((None, behavior));
    }

    /// Every request on `path` without a queued behavior gets `behavior`.
    pub fn always_on(&self, path: &str, behavior: Behavior) {
        self.script().always.push((Some(path.to_owned()), behavior));
    }

    /// Back to normal answers (the recorded requests are kept).
    pub fn reset(&self) {
        let mut script = self.script();
        script.queue.clear();
        script.always.clear();
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
                Err(_) => continue,
            },
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// The error a `Down` behavior returns: hyper then closes the connection without answering.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by the mock")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(recorded.clone());
    let normal = |recorded: &RecordedRequest| {
        let (status, value) = (shared.handler)(recorded);
        reply(status, "application/json", Bytes::from(value.to_string()))
    };
    match shared.next_behavior(&recorded.path) {
        Behavior::Normal => Ok(normal(&recorded)),
        Behavior::Reply {
            status,
            content_type,
            body,
        } => Ok(reply(status, content_type, body)),
        Behavior::Down => Err(Dropped),
        Behavior::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Ok(normal(&recorded))
        }
        Behavior::Hang => {
            let mut shutdown = shared.shutdown.clone();
            let _ = shutdown.changed().await;
            Err(Dropped)
        }
    }
}

fn reply(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// The request body as JSON, or a 400 answer in the service's error shape.
pub(crate) fn json_body(request: &RecordedRequest) -> Result<Value, Answer> {
    serde_json::from_slice(&request.body).map_err(|e| {
        (
            400,
            serde_json::json!({"error": format!("invalid JSON body: {e}")}),
        )
    })
}

/// Email addresses in `text`, as character ranges (Python's offsets, as the services answer).
pub(crate) fn find_emails(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let local = |c: char| c.is_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_alphanumeric() || ".-".contains(c);
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > 0 && local(chars[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < chars.len() && domain(chars[end]) {
            end += 1;
        }
        while end > i + 1 && chars[end - 1] == '.' {
            end -= 1;
        }
        let host: String = chars[i + 1..end].iter().collect();
        if start < i && host.contains('.') && !host.starts_with('.') {
            found.push((start, end));
        }
        i = end.max(i + 1);
    }
    found
}

/// The character ranges where `phrase` (lowercase) occurs in `text` as whole words, ignoring
/// case.
pub(crate) fn find_phrase(text: &str, phrase: &str) -> Vec<(usize, usize)> {
    let lower: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let needle: Vec<char> = phrase.chars().collect();
    // Lowercasing can change the length of some characters; only use it when it does not.
    if lower.len() != text.chars().count() || needle.is_empty() {
        return Vec::new();
    }
    let word = |c: &char| c.is_alphanumeric();
    let mut found = Vec::new();
    let mut i = 0;
    while i + needle.len() <= lower.len() {
        let end = i + needle.len();
        let bounded =
            (i == 0 || !word(&lower[i - 1])) && (end == lower.len() || !word(&lower[end]));
        if bounded && lower[i..end] == needle[..] {
            found.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    found
}
