//! The one error type, and its wire forms per endpoint.
//!
//! An [`Error`] carries everything a response needs (status, message, `type`, `param`, `code`,
//! headers) plus a [`ErrorClass`] for alerting. Once an error is built, nothing re-derives its
//! status: a 400 stays a 400 all the way out, and an absent `param` or `code` is JSON `null`,
//! never the string `"None"`.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::CallType;
use crate::call_type::ErrorShape;

/// The OpenAI error `code` of a guardrail block.
pub const CONTENT_POLICY_VIOLATION: &str = "content_policy_violation";

/// What kind of failure an error is, for alerting and logging.
///
/// A policy block is a decision, not an outage: it must never be counted as an upstream or
/// internal failure, but it is still reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A guardrail blocked the request or response.
    PolicyBlock,
    /// The client sent something wrong (malformed JSON, too large, bad parameters).
    ClientError,
    /// The upstream LLM service failed or could not be reached.
    UpstreamFailure,
    /// A guardrail service failed or could not be reached, and its fallback is `fail_closed`.
    GuardrailFailure,
    /// A bug or an unexpected condition in the gateway itself.
    Internal,
}

impl ErrorClass {
    /// `policy_block`, `client_error`, `upstream_failure`, `guardrail_failure` or `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::PolicyBlock => "policy_block",
            ErrorClass::ClientError => "client_error",
            ErrorClass::UpstreamFailure => "upstream_failure",
            ErrorClass::GuardrailFailure => "guardrail_failure",
            ErrorClass::Internal => "internal",
        }
    }

    /// The class an error of this status has when nothing more is known.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400..=499 => ErrorClass::ClientError,
            502..=504 => ErrorClass::UpstreamFailure,
            _ => ErrorClass::Internal,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response, in any endpoint's shape.
///
/// ```
/// use guardrail_tower_protocol::{CallType, Error};
///
/// let err = Error::guardrail_blocked("block-words", "Blocked: forbidden word");
/// assert_eq!(err.status(), 400);
/// assert_eq!(
///     err.to_json(CallType::ChatCompletions),
///     r#"{"error":{"message":"Blocked: forbidden word","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#
/// );
/// assert_eq!(
///     err.to_json(CallType::AnthropicMessages),
///     r#"{"type":"error","error":{"type":"invalid_request_error","message":"Blocked: forbidden word"}}"#
/// );
/// ```
#[derive(Clone, Debug)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    status: StatusCode,
    message: Cow<'static, str>,
    kind: Cow<'static, str>,
    param: Option<Cow<'static, str>>,
    code: Option<Cow<'static, str>>,
    headers: HeaderMap,
    class: ErrorClass,
    guardrail: Option<String>,
}

impl Error {
    /// An error with this status and message; `type` and class follow from the status.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                status,
                message: message.into(),
                kind: Cow::Borrowed(openai_type_for_status(status)),
                param: None,
                code: None,
                headers: HeaderMap::new(),
                class: ErrorClass::from_status(status),
                guardrail: None,
            }),
        }
    }

    /// A guardrail block: 400, `invalid_request_error`, code `content_policy_violation`.
    pub fn guardrail_blocked(guardrail: impl Into<String>, message: impl Into<String>) -> Self {
        let mut err = Error::new(StatusCode::BAD_REQUEST, message.into())
            .with_code(CONTENT_POLICY_VIOLATION)
            .with_class(ErrorClass::PolicyBlock);
        err.inner.guardrail = Some(guardrail.into());
        err
    }

    /// A guardrail service that could not be reached (connect error, timeout, 502/503/504) and
    /// fails closed: 503, code `guardrail_unreachable`, naming the guardrail and nothing else:
    /// the service's address and what went wrong belong in the logs, not in the client's error.
    pub fn guardrail_unreachable(guardrail: impl Into<String>) -> Self {
        let guardrail = guardrail.into();
        let mut err = Error::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("guardrail '{guardrail}' could not be reached"),
        )
        .with_code("guardrail_unreachable")
        .with_class(ErrorClass::GuardrailFailure);
        err.inner.guardrail = Some(guardrail);
        err
    }

    /// A guardrail that answered, but not usefully (bad JSON, a 4xx), and fails closed: 500,
    /// code `guardrail_error`, naming the guardrail. `detail` is shown to the client: give one
    /// that holds no address, key or service answer (the runner passes a fixed sentence and
    /// logs the rest).
    pub fn guardrail_failed(guardrail: impl Into<String>, detail: impl fmt::Display) -> Self {
        let guardrail = guardrail.into();
        let mut err = Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("guardrail '{guardrail}' failed: {detail}"),
        )
        .with_code("guardrail_error")
        .with_class(ErrorClass::GuardrailFailure);
        err.inner.guardrail = Some(guardrail);
        err
    }

    /// A request body over the limit: 413.
    pub fn payload_too_large(limit: usize) -> Self {
        Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    /// A request body that is not valid JSON: 400.
    pub fn invalid_json(detail: impl fmt::Display) -> Self {
        Error::new(
            StatusCode::BAD_REQUEST,
            format!("could not parse the JSON body of the request: {detail}"),
        )
        .with_code("invalid_json")
    }

    /// The upstream did not answer in time: 504.
    pub fn upstream_timeout(detail: impl fmt::Display) -> Self {
        Error::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("upstream timed out: {detail}"),
        )
        .with_code("upstream_timeout")
    }

    /// The upstream could not be reached or broke the connection: 502.
    pub fn upstream_unavailable(detail: impl fmt::Display) -> Self {
        Error::new(
            StatusCode::BAD_GATEWAY,
            format!("upstream request failed: {detail}"),
        )
        .with_code("upstream_error")
    }

    /// The upstream stopped sending a stream before its end (a reset, a read timeout) after the
    /// response head was sent: 502, code `upstream_stream_error`. Every layer that sees this
    /// happen ends the stream with this error's in-band events ([`Error::stream_events`]) and
    /// the endpoint's terminator, never with a cut body.
    pub fn stream_interrupted() -> Self {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "the upstream stopped sending the stream before it ended",
        )
        .with_code("upstream_stream_error")
        .with_class(ErrorClass::UpstreamFailure)
    }

    /// Something unexpected: 500 `internal_server_error`.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, detail.to_string())
    }

    /// Sets the OpenAI `type`.
    pub fn with_type(mut self, kind: impl Into<Cow<'static, str>>) -> Self {
        self.inner.kind = kind.into();
        self
    }

    /// Sets `param`.
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.inner.param = Some(param.into());
        self
    }

    /// Sets `code`.
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.inner.code = Some(code.into());
        self
    }

    /// Sets the class.
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.inner.class = class;
        self
    }

    /// Adds a response header (e.g. `retry-after`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.headers.append(name, value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The OpenAI error `type`.
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// The Anthropic error `type`, derived from the status (and `invalid_request_error` for a
    /// policy block).
    pub fn anthropic_kind(&self) -> &'static str {
        anthropic_type_for_status(self.inner.status)
    }

    /// `param`, if any.
    pub fn param(&self) -> Option<&str> {
        self.inner.param.as_deref()
    }

    /// `code`, if any.
    pub fn code(&self) -> Option<&str> {
        self.inner.code.as_deref()
    }

    /// Extra response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The class, for alerting.
    pub fn class(&self) -> ErrorClass {
        self.inner.class
    }

    /// The guardrail that blocked or failed, if this error came from one.
    pub fn guardrail(&self) -> Option<&str> {
        self.inner.guardrail.as_deref()
    }

    /// Whether a guardrail blocked.
    pub fn is_policy_block(&self) -> bool {
        self.inner.class == ErrorClass::PolicyBlock
    }

    /// The error body in the endpoint's shape.
    pub fn to_json(&self, call_type: CallType) -> String {
        let value = match call_type.error_shape() {
            ErrorShape::OpenAi => serde_json::to_string(&OpenAiEnvelope {
                error: self.openai_body(),
            }),
            ErrorShape::Anthropic => serde_json::to_string(&AnthropicEnvelope {
                kind: "error",
                error: AnthropicBody {
                    kind: self.anthropic_kind(),
                    message: &self.inner.message,
                },
            }),
        };
        value.expect("error bodies are plain strings and always serialize")
    }

    /// The OpenAI `error` object as a JSON value.
    pub fn to_openai_value(&self) -> Value {
        serde_json::to_value(self.openai_body()).unwrap_or(Value::Null)
    }

    fn openai_body(&self) -> OpenAiBody<'_> {
        OpenAiBody {
            message: &self.inner.message,
            kind: &self.inner.kind,
            param: self.inner.param.as_deref(),
            code: self.inner.code.as_deref(),
        }
    }

    /// A complete response: status, `content-type: application/json`, `content-length`, the
    /// extra headers, the body in the endpoint's shape, and this error as a response extension
    /// (so outer layers can classify and log it without parsing the body).
    pub fn to_response(&self, call_type: CallType) -> Response<Bytes> {
        let body = Bytes::from(self.to_json(call_type));
        let len = body.len();
        let mut response = Response::new(body);
        *response.status_mut() = self.inner.status;
        let headers = response.headers_mut();
        headers.extend(self.inner.headers.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        response.extensions_mut().insert(self.clone());
        response
    }

    /// The in-band error event for a chat completions or text completions stream whose head
    /// was already sent: `data: {"error": {...}}` then `data: [DONE]`.
    pub fn chat_stream_event(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(160 + self.inner.message.len());
        buf.put_slice(b"data: ");
        serde_json::to_writer(
            (&mut buf).writer(),
            &OpenAiEnvelope {
                error: self.openai_body(),
            },
        )
        .expect("error bodies always serialize");
        buf.put_slice(b"\n\ndata: [DONE]\n\n");
        buf.freeze()
    }

    /// The in-band error events for a Responses API stream: `event: error` with the flat
    /// `{"type": "error", "code", "message", "param", "sequence_number"}`, then the terminal
    /// `event: response.failed` whose response has `status: "failed"` and `error: {code, message}`.
    ///
    /// `response` is the response object the stream announced (`response.created`), if any: the
    /// failed response keeps its id, model and creation time.
    pub fn responses_stream_events(&self, stream: &ResponsesStreamState) -> Bytes {
        let code = self.inner.code.as_deref().unwrap_or(&self.inner.kind);
        let error_event = serde_json::json!({
            "type": "error",
            "code": code,
            "message": &*self.inner.message,
            "param": self.inner.param.as_deref(),
            "sequence_number": stream.next_sequence_number,
        });
        let mut response = match &stream.response {
            Some(Value::Object(obj)) => Value::Object(obj.clone()),
            _ => serde_json::json!({
                "id": stream.fallback_id,
                "object": "response",
                "created_at": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "model": stream.model,
                "output": [],
            }),
        };
        if let Value::Object(obj) = &mut response {
            obj.insert("status".into(), Value::from("failed"));
            obj.insert(
                "error".into(),
                serde_json::json!({"code": code, "message": &*self.inner.message}),
            );
            obj.entry("output")
                .or_insert_with(|| Value::Array(Vec::new()));
        }
        let failed_event = serde_json::json!({
            "type": "response.failed",
            "sequence_number": stream.next_sequence_number + 1,
            "response": response,
        });
        let mut buf = BytesMut::with_capacity(512 + 2 * self.inner.message.len());
        write_event(&mut buf, "error", &error_event);
        write_event(&mut buf, "response.failed", &failed_event);
        buf.freeze()
    }

    /// The in-band error event for an Anthropic messages stream:
    /// `event: error` with `{"type": "error", "error": {"type", "message"}}`.
    pub fn anthropic_stream_event(&self) -> Bytes {
        let body = AnthropicEnvelope {
            kind: "error",
            error: AnthropicBody {
                kind: self.anthropic_kind(),
                message: &self.inner.message,
            },
        };
        let mut buf = BytesMut::with_capacity(96 + self.inner.message.len());
        write_event(&mut buf, "error", &body);
        buf.freeze()
    }

    /// The in-band error event(s) for a stream of this call type.
    pub fn stream_events(&self, call_type: CallType, responses: &ResponsesStreamState) -> Bytes {
        match call_type {
            CallType::Responses => self.responses_stream_events(responses),
            CallType::AnthropicMessages => self.anthropic_stream_event(),
            _ => self.chat_stream_event(),
        }
    }
}

/// What a Responses API stream has announced so far, needed to end it with a well-formed
/// `response.failed`.
#[derive(Debug, Clone, Default)]
pub struct ResponsesStreamState {
    /// The response object from `response.created` / `response.in_progress`, if seen.
    pub response: Option<Value>,
    /// One more than the last `sequence_number` seen.
    pub next_sequence_number: u64,
    /// The id to use when no response object was seen.
    pub fallback_id: String,
    /// The model to name when no response object was seen.
    pub model: Option<String>,
}

impl ResponsesStreamState {
    /// A state for a stream of which nothing was seen yet.
    pub fn new(fallback_id: impl Into<String>, model: Option<String>) -> Self {
        ResponsesStreamState {
            response: None,
            next_sequence_number: 0,
            fallback_id: fallback_id.into(),
            model,
        }
    }

    /// Takes note of one event that went to the client: its `sequence_number`, and the
    /// response object `response.created` / `response.in_progress` announce.
    pub fn observe(&mut self, data: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Seen<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<std::borrow::Cow<'a, str>>,
            #[serde(default)]
            sequence_number: Option<u64>,
            #[serde(borrow, default)]
            response: Option<&'a serde_json::value::RawValue>,
        }
        let Ok(seen) = serde_json::from_slice::<Seen<'_>>(data) else {
            return;
        };
        if let Some(n) = seen.sequence_number {
            self.next_sequence_number = self.next_sequence_number.max(n + 1);
        }
        if matches!(
            seen.kind.as_deref(),
            Some("response.created" | "response.in_progress")
        ) {
            self.response = seen
                .response
                .and_then(|raw| serde_json::from_str(raw.get()).ok());
        }
    }
}

fn write_event(buf: &mut BytesMut, event: &str, data: &impl Serialize) {
    buf.put_slice(b"event: ");
    buf.put_slice(event.as_bytes());
    buf.put_slice(b"\ndata: ");
    serde_json::to_writer(buf.writer(), data).expect("error events always serialize");
    buf.put_slice(b"\n\n");
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.inner.status.as_u16(),
            self.inner.kind,
            self.inner.message
        )
    }
}

impl std::error::Error for Error {}

#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiBody<'a>,
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicBody<'a>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// The OpenAI error `type` for a status.
pub fn openai_type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        502 => "bad_gateway_error",
        503 => "service_unavailable_error",
        504 => "timeout_error",
        _ => "internal_server_error",
    }
}

/// The Anthropic error `type` for a status.
pub fn anthropic_type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_is_null_never_none() {
        let err = Error::new(StatusCode::INTERNAL_SERVER_ERROR, "boom");
        let body = err.to_json(CallType::ChatCompletions);
        assert_eq!(
            body,
            r#"{"error":{"message":"boom","type":"internal_server_error","param":null,"code":null}}"#
        );
        assert!(!body.contains("None"));
    }

    #[test]
    fn block_keeps_400_and_its_fields() {
        let err = Error::guardrail_blocked("g", "no").with_param("messages");
        let resp = err.to_response(CallType::Responses);
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            resp.body(),
            r#"{"error":{"message":"no","type":"invalid_request_error","param":"messages","code":"content_policy_violation"}}"#
        );
        let ext = resp.extensions().get::<Error>().unwrap();
        assert!(ext.is_policy_block());
        assert_eq!(ext.guardrail(), Some("g"));
        assert_eq!(
            resp.headers()[CONTENT_LENGTH],
            resp.body().len().to_string()
        );
    }

    #[test]
    fn anthropic_shapes() {
        let cases = [
            (Error::payload_too_large(10), 413, "request_too_large"),
            (Error::upstream_unavailable("x"), 502, "api_error"),
            (Error::upstream_timeout("x"), 504, "timeout_error"),
            (
                Error::new(StatusCode::TOO_MANY_REQUESTS, "slow"),
                429,
                "rate_limit_error",
            ),
        ];
        for (err, status, kind) in cases {
            assert_eq!(err.status(), status);
            let v: Value = serde_json::from_str(&err.to_json(CallType::AnthropicMessages)).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind);
            assert_eq!(v["error"]["message"], err.message());
        }
    }

    #[test]
    fn chat_stream_event_is_error_then_done() {
        let err = Error::guardrail_blocked("g", "Blocked \"quoted\"\nnewline");
        assert_eq!(
            err.chat_stream_event(),
            "data: {\"error\":{\"message\":\"Blocked \\\"quoted\\\"\\nnewline\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"content_policy_violation\"}}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn anthropic_stream_event() {
        let err = Error::guardrail_blocked("g", "stop");
        assert_eq!(
            err.anthropic_stream_event(),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"stop\"}}\n\n"
        );
    }

    #[test]
    fn responses_stream_events_continue_the_announced_response() {
        let err = Error::guardrail_blocked("g", "stop");
        let state = ResponsesStreamState {
            response: Some(serde_json::json!({
                "id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress",
                "model": "gpt-4o", "output": [], "error": null
            })),
            next_sequence_number: 7,
            fallback_id: "unused".into(),
            model: None,
        };
        let out = err.responses_stream_events(&state);
        let text = std::str::from_utf8(&out).unwrap();
        let mut events = text.split("\n\n").filter(|s| !s.is_empty());
        let first = events.next().unwrap();
        assert_eq!(
            first,
            "event: error\ndata: {\"type\":\"error\",\"code\":\"content_policy_violation\",\"message\":\"stop\",\"param\":null,\"sequence_number\":7}"
        );
        let second = events.next().unwrap();
        let data = second
            .strip_prefix("event: response.failed\ndata: ")
            .unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "response.failed");
        assert_eq!(v["sequence_number"], 8);
        assert_eq!(v["response"]["id"], "resp_1");
        assert_eq!(v["response"]["status"], "failed");
        assert_eq!(
            v["response"]["error"],
            serde_json::json!({"code": "content_policy_violation", "message": "stop"})
        );
        assert!(events.next().is_none());
    }

    #[test]
    fn responses_stream_events_without_announced_response() {
        let err = Error::guardrail_blocked("g", "stop");
        let state = ResponsesStreamState {
            response: None,
            next_sequence_number: 0,
            fallback_id: "resp_abc".into(),
            model: Some("m".into()),
        };
        let out = err.responses_stream_events(&state);
        let text = std::str::from_utf8(&out).unwrap();
        let failed = text.split("\n\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(
            failed
                .strip_prefix("event: response.failed\ndata: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["response"]["id"], "resp_abc");
        assert_eq!(v["response"]["model"], "m");
        assert_eq!(v["response"]["status"], "failed");
        assert_eq!(v["response"]["output"], serde_json::json!([]));
    }

    #[test]
    fn classes() {
        assert_eq!(
            Error::guardrail_blocked("g", "m").class(),
            ErrorClass::PolicyBlock
        );
        assert_eq!(Error::invalid_json("x").class(), ErrorClass::ClientError);
        assert_eq!(
            Error::upstream_timeout("x").class(),
            ErrorClass::UpstreamFailure
        );
        assert_eq!(
            Error::guardrail_unreachable("g").class(),
            ErrorClass::GuardrailFailure
        );
        assert_eq!(Error::internal("x").class(), ErrorClass::Internal);
        assert_eq!(Error::guardrail_unreachable("pii").status(), 503);
        assert!(
            Error::guardrail_unreachable("pii")
                .message()
                .contains("'pii'")
        );
    }
}
