//! `error_normalizer`: an upstream error response with any status from 400 to 599, any content
//! type and any body, through [`ErrorNormalizeLayer`].
//!
//! Input: a path byte (see [`PATHS`](super::request_parsing::PATHS)), a status `u16` (`400 +
//! s % 200`), a content-type byte (absent, a few real ones, or the next `b % 32` bytes), a flag
//! byte (bit 0: `content-encoding: gzip`; bit 1: a 32-byte `max_error_body`; bit 2: a correct
//! `content-length`; bit 3: the body fails after its bytes), split points, then the body.
//!
//! Checks: the layer always answers (never an error, never a hang) with the upstream status;
//! the body is JSON in the endpoint's error shape (OpenAI `{"error":{"message":string,..}}`,
//! Anthropic `{"type":"error","error":{"type":string,"message":string}}`); when the upstream
//! body already had that shape (and was read whole, and not encoded) it passes byte for byte;
//! a rewritten body has `content-type: application/json`, never the string `"None"` as `param`
//! or `code`; a `content-length`, when present, is the body's length.

use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use guardrail_tower_core::{CallType, ErrorShape};
use guardrail_tower_error::ErrorNormalizeLayer;
use guardrail_tower_testkit::body::{TestBody, chunks};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};

use super::common::{Input, drive, show, split};
use super::request_parsing::PATHS;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("text/html; charset=utf-8"),
    Some("text/plain"),
    Some("application/problem+json"),
];

/// The most bytes the small `max_error_body` reads.
const SMALL_MAX: usize = 32;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let path = PATHS[usize::from(input.byte()) % PATHS.len()];
    let call_type = CallType::from_path(path);
    let status = StatusCode::from_u16(400 + input.u16() % 200).expect("400..=599 is a status");
    let ct = usize::from(input.byte());
    let content_type = match CONTENT_TYPES.get(ct % (CONTENT_TYPES.len() + 1)) {
        Some(fixed) => fixed.map(HeaderValue::from_static),
        None => {
            let n = usize::from(input.byte() % 32);
            HeaderValue::from_bytes(input.take(n)).ok()
        }
    };
    let flags = input.byte();
    let encoded = flags & 1 != 0;
    let small = flags & 2 != 0;
    let with_length = flags & 4 != 0;
    let fails = flags & 8 != 0;
    let points = input.points();
    let body = input.rest();

    let mut upstream = Response::new(());
    *upstream.status_mut() = status;
    if let Some(ct) = content_type {
        upstream.headers_mut().insert(CONTENT_TYPE, ct);
    }
    if encoded {
        upstream
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if with_length {
        upstream
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut upstream_body = chunks(split(body, &points));
    if fails {
        upstream_body = upstream_body.then_error("upstream reset");
    }
    let upstream = upstream.map(|()| upstream_body);

    let slot = Mutex::new(Some(upstream));
    let inner = service_fn(move |_req: Request<Full<Bytes>>| {
        let response: Response<TestBody> = slot
            .lock()
            .expect("not poisoned")
            .take()
            .expect("one request");
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut layer = ErrorNormalizeLayer::new().on_failure(());
    if small {
        layer = layer.max_error_body(SMALL_MAX);
    }
    let service = layer.layer(inner);
    let request = Request::post(path)
        .body(Full::new(Bytes::new()))
        .expect("a valid request");

    let response = match drive(service.oneshot(request)) {
        Ok(response) => response,
        Err(never) => match never {},
    };
    assert_eq!(response.status(), status, "the upstream status is kept");
    let (parts, out) = response.into_parts();
    let out = drive(out.collect())
        .unwrap_or_else(|e| panic!("the normalized body fails: {e}"))
        .to_bytes();

    let json: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "{status} {path}: the body {:?} is not JSON ({e}); upstream body {:?}",
            show(&out),
            show(body)
        )
    });
    assert!(
        has_shape(call_type, &json),
        "{status} {path}: {json} is not in the {:?} error shape; upstream body {:?}",
        call_type.error_shape(),
        show(body)
    );
    if let Some(length) = parts.headers.get(CONTENT_LENGTH) {
        assert_eq!(
            length.to_str().ok().and_then(|l| l.parse::<usize>().ok()),
            Some(out.len()),
            "content-length is the body's length"
        );
    }
    let limit = if small {
        SMALL_MAX
    } else {
        guardrail_tower_error::DEFAULT_MAX_ERROR_BODY
    };
    let read_whole = !fails && body.len() <= limit;
    let had_shape = serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| has_shape(call_type, &v));
    if had_shape && read_whole && !encoded {
        assert!(
            out == body,
            "a body in the endpoint's shape passes byte for byte"
        );
        return;
    }
    if out != body {
        assert_eq!(
            parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
            Some(&b"application/json"[..]),
            "a rewritten body is JSON"
        );
        if call_type.error_shape() == ErrorShape::OpenAi {
            for field in ["param", "code"] {
                assert_ne!(json["error"][field], "None", "null is null, never \"None\"");
            }
        }
    }
}

/// Whether a body has the endpoint's error shape.
fn has_shape(call_type: CallType, json: &Value) -> bool {
    let string = |v: &Value, key: &str| v.get(key).is_some_and(Value::is_string);
    match call_type.error_shape() {
        ErrorShape::OpenAi => json
            .get("error")
            .is_some_and(|e| e.is_object() && string(e, "message")),
        ErrorShape::Anthropic => {
            json.get("type").and_then(Value::as_str) == Some("error")
                && json
                    .get("error")
                    .is_some_and(|e| string(e, "type") && string(e, "message"))
        }
    }
}
