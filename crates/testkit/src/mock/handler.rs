//! Routing, control headers and faults.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::body::{MockBody, MockError, Pace, Tail};
use super::shapes::{Api, EndlessDeltas, Reply, SseWriter, embeddings_json};
use super::{DELAY_HEADER, EVENTS_HEADER, FAULT_HEADER, Fault, PACE_HEADER, Shared};

/// The cadence of a `never-end` stream without `x-mock-delay-ms`.
const NEVER_END_INTERVAL: Duration = Duration::from_millis(50);

/// How many whole events `half-event` sends before the half one (fewer in a short stream).
const HALF_EVENT_AFTER: usize = 3;

const HTML_500: &str = "<!DOCTYPE html>\n<html>\n<head><title>500 Internal Server Error</title></head>\n\
<body>\n<center><h1>500 Internal Server Error</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n";

const TEXT_503: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Api(Api),
    Embeddings,
    Health,
    WrongMethod,
    NotFound,
}

impl Route {
    fn new(method: &Method, path: &str) -> Route {
        if path == "/health" {
            return if method == Method::GET {
                Route::Health
            } else {
                Route::WrongMethod
            };
        }
        let route = match path.strip_prefix("/v1").unwrap_or(path) {
            "/chat/completions" => Route::Api(Api::Chat),
            "/responses" => Route::Api(Api::Responses),
            "/messages" => Route::Api(Api::Messages),
            "/embeddings" => Route::Embeddings,
            _ => return Route::NotFound,
        };
        if method == Method::POST {
            route
        } else {
            Route::WrongMethod
        }
    }
}

/// The control headers of one request.
#[derive(Debug, Default)]
struct Controls {
    words: Option<usize>,
    delay: Option<Duration>,
    /// Stream events per second, on a fixed schedule.
    pace: Option<u32>,
    fault: Option<Fault>,
}

impl Controls {
    fn parse(headers: &HeaderMap) -> Result<Controls, String> {
        fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, String> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .map(Some)
                    .ok_or_else(|| format!("{name} must be a non-negative integer, got {value:?}")),
            }
        }
        let words =
            number(headers, EVENTS_HEADER)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let delay = number(headers, DELAY_HEADER)?
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        let pace = match number(headers, PACE_HEADER)? {
            None => None,
            Some(n @ 1..=1_000_000) => Some(u32::try_from(n).unwrap_or(1_000_000)),
            Some(n) => return Err(format!("{PACE_HEADER} must be from 1 to 1000000, got {n}")),
        };
        if pace.is_some() && delay.is_some() {
            return Err(format!(
                "{PACE_HEADER} and {DELAY_HEADER} cannot be combined"
            ));
        }
        let fault = match headers.get(FAULT_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().ok().and_then(Fault::from_name).ok_or_else(
                || {
                    let known: Vec<_> = Fault::ALL.iter().map(|f| f.as_str()).collect();
                    format!(
                        "unknown {FAULT_HEADER} {value:?}; expected one of {}",
                        known.join(", ")
                    )
                },
            )?),
        };
        Ok(Controls {
            words,
            delay,
            pace,
            fault,
        })
    }

    async fn wait(&self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Answers one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<MockBody>, MockError> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|_| MockError("the request body could not be read"))?
        .to_bytes();
    let number = shared.record(&parts, &body);

    let route = Route::new(&parts.method, parts.uri.path());
    let path = parts.uri.path();
    let anthropic = path.strip_prefix("/v1").unwrap_or(path) == "/messages";
    match route {
        Route::NotFound => {
            let message = format!("Unknown request URL: {} {}", parts.method, parts.uri.path());
            return Ok(error(
                StatusCode::NOT_FOUND,
                anthropic,
                "unknown_url",
                &message,
            ));
        }
        Route::WrongMethod => {
            let message = format!(
                "Method {} not allowed for {}",
                parts.method,
                parts.uri.path()
            );
            return Ok(error(
                StatusCode::METHOD_NOT_ALLOWED,
                anthropic,
                "method_not_allowed",
                &message,
            ));
        }
        Route::Api(_) | Route::Embeddings => {
            if let Some(reply) = shared.next_scripted() {
                let mut response = Response::new(MockBody::new(reply.chunks, None, Tail::End));
                *response.status_mut() = reply.status;
                *response.headers_mut() = reply.headers;
                return Ok(response);
            }
        }
        Route::Health => {}
    }

    let controls = match Controls::parse(&parts.headers) {
        Ok(controls) => controls,
        Err(message) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                anthropic,
                "invalid_mock_header",
                &message,
            ));
        }
    };
    match controls.fault {
        Some(Fault::Html500) => {
            controls.wait().await;
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/html",
                HTML_500,
            ));
        }
        Some(Fault::Status503) => {
            controls.wait().await;
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                TEXT_503,
            ));
        }
        Some(Fault::Hang) => return hang(&shared).await,
        _ => {}
    }

    if route == Route::Health {
        return Ok(whole_json(Bytes::from_static(br#"{"status":"ok"}"#), &controls).await);
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            let message = "The request body must be a JSON object.";
            return Ok(error(
                StatusCode::BAD_REQUEST,
                anthropic,
                "invalid_json",
                message,
            ));
        }
    };
    let api = match route {
        Route::Api(api) => api,
        _ => return Ok(whole_json(embeddings_json(&request), &controls).await),
    };
    let reply = Reply::new(api, number, &request, controls.words);
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        Ok(stream(reply, &controls))
    } else if controls.fault == Some(Fault::NeverEnd) {
        hang(&shared).await
    } else {
        Ok(whole_json(reply.json(), &controls).await)
    }
}

/// Never answers; when the mock stops, fails so hyper closes the connection.
async fn hang(shared: &Shared) -> Result<Response<MockBody>, MockError> {
    let mut shutdown = shared.shutdown.clone();
    let _ = shutdown.changed().await;
    Err(MockError("the mock upstream stopped"))
}

/// A whole JSON body after the delay, cut in half by the byte-level faults.
async fn whole_json(json: Bytes, controls: &Controls) -> Response<MockBody> {
    controls.wait().await;
    let length = json.len();
    let body = match controls.fault {
        Some(Fault::HalfJson | Fault::DropMidStream | Fault::HalfEvent) => {
            MockBody::new(vec![json.slice(..length / 2)], None, Tail::Abort)
        }
        _ => MockBody::full(json),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// A `text/event-stream` response, shaped by the stream faults.
fn stream(reply: Reply, controls: &Controls) -> Response<MockBody> {
    let body = match controls.fault {
        Some(Fault::NeverEnd) => {
            let (prelude, deltas) = EndlessDeltas::new(reply);
            let delay = controls.delay.unwrap_or(NEVER_END_INTERVAL);
            MockBody::new(prelude, Some(delay), Tail::Endless(Box::new(deltas)))
        }
        Some(Fault::DropMidStream) => {
            let mut events = SseWriter::new(reply).all_events();
            events.truncate(events.len() / 2);
            MockBody::new(events, controls.delay, Tail::Abort)
        }
        Some(Fault::HalfEvent | Fault::HalfJson) => {
            let mut events = SseWriter::new(reply).all_events();
            let whole = HALF_EVENT_AFTER.min(events.len() / 2);
            events.truncate(whole + 1);
            if let Some(last) = events.last_mut() {
                *last = last.slice(..last.len() / 2);
            }
            MockBody::new(events, controls.delay, Tail::Abort)
        }
        _ => MockBody::new(
            SseWriter::new(reply).all_events(),
            controls.delay,
            Tail::End,
        ),
    };
    let mut response = Response::new(body.paced(controls.pace.map(Pace::per_second)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn plain(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// The mock's own error, in OpenAI's shape (Anthropic's under `/v1/messages`).
fn error(status: StatusCode, anthropic: bool, code: &str, message: &str) -> Response<MockBody> {
    let value = if anthropic {
        let kind = if status == StatusCode::NOT_FOUND {
            "not_found_error"
        } else {
            "invalid_request_error"
        };
        json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
    };
    let body = Bytes::from(value.to_string());
    let length = body.len();
    let mut response = Response::new(MockBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}
