//! Turning service errors and foreign upstream error bodies into [`Error`]s.

use std::error::Error as StdError;
use std::io;

use guardrail_tower_core::{CallType, Error, ErrorClass, ErrorShape};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde_json::Value;

/// The longest upstream text kept as an error message.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Classifies a service error by walking its source chain for a type it knows:
///
/// | found in the chain | status |
/// |---|---|
/// | [`guardrail_tower_core::Error`] | kept exactly |
/// | a tower or tokio timeout, an IO timeout, a hyper timeout | 504 |
/// | a request body limit error | 413 |
/// | a `serde_json` error | 400 |
/// | a hyper error, an IO connection error, any IO error under another error (a client's connect error over a DNS failure) | 502 |
/// | anything else | 500 `internal_server_error`, with the chain's messages |
pub fn classify_error(err: &(dyn StdError + 'static)) -> Error {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        if let Some(e) = e.downcast_ref::<Error>() {
            return e.clone();
        }
        if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            return Error::upstream_timeout(chain(err));
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return Error::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
                .with_code("request_too_large");
        }
        if e.is::<serde_json::Error>() {
            return Error::invalid_json(e);
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return if h.is_timeout() {
                Error::upstream_timeout(chain(err))
            } else {
                Error::upstream_unavailable(chain(err))
            };
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::TimedOut => return Error::upstream_timeout(chain(err)),
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::NotConnected
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable => {
                    return Error::upstream_unavailable(chain(err));
                }
                // Under a client's own error, an IO error of any kind is a transport failure:
                // hyper-util and reqwest put the resolver's error under their connect error, and
                // a DNS failure has no kind of its own.
                _ if depth > 0 => return Error::upstream_unavailable(chain(err)),
                _ => {}
            }
        }
        current = e.source();
        depth += 1;
    }
    Error::internal(chain(err))
}

/// Every message in the chain, joined with `: `, skipping messages the previous one already
/// contains.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let msg = e.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        current = e.source();
    }
    out
}

/// Whether an error body already has the endpoint's error shape.
pub(crate) fn has_endpoint_shape(call_type: CallType, body: &Value) -> bool {
    match call_type.error_shape() {
        ErrorShape::OpenAi => body
            .get("error")
            .is_some_and(|e| e.get("message").is_some_and(Value::is_string)),
        ErrorShape::Anthropic => {
            body.get("type").and_then(Value::as_str) == Some("error")
                && body.get("error").is_some_and(|e| {
                    e.get("type").is_some_and(Value::is_string)
                        && e.get("message").is_some_and(Value::is_string)
                })
        }
    }
}

/// The [`Error`] an upstream error response stands for: `Ok` when its body already has the
/// endpoint's shape (pass it through untouched), `Err` when it must be rewritten.
///
/// The status is always the upstream's. Messages come from any JSON error shape we know
/// (OpenAI, Anthropic, `{"detail"}`, `{"message"}`, `{"error": "..."}`), else from plain text;
/// HTML is never echoed. The account ids a message names are masked ([`mask_account_ids`]):
/// such a body is rewritten even when it has the endpoint's shape.
pub(crate) fn upstream_error(
    call_type: CallType,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    truncated: bool,
) -> Result<Error, Error> {
    let json = if truncated {
        None
    } else {
        serde_json::from_slice::<Value>(body).ok()
    };
    let reason = status.canonical_reason().unwrap_or("error");
    let mut err = Error::new(
        status,
        format!("upstream returned {} {reason}", status.as_u16()),
    );
    let mut masked = false;
    let mut mask = |message: String| match mask_account_ids(&message) {
        Some(clean) => {
            masked = true;
            clean
        }
        None => message,
    };
    if let Some(json) = &json {
        let (message, kind, code, param) = json_error_fields(json);
        if let Some(message) = message {
            err = Error::new(status, mask(message));
        }
        if let Some(kind) = kind {
            err = err.with_type(kind);
        }
        if let Some(code) = code {
            err = err.with_code(code);
        }
        if let Some(param) = param {
            err = err.with_param(param);
        }
    } else if !looks_like_html(headers, body) {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if !text.is_empty() {
            let mut message: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
            if truncated || message.len() < text.len() {
                message.push_str(" [truncated]");
            }
            err = Error::new(status, mask(message));
        }
    } else {
        err = Error::new(
            status,
            format!(
                "upstream returned {} {reason} (HTML body omitted)",
                status.as_u16()
            ),
        );
    }
    let class = if err.code() == Some(guardrail_tower_core::CONTENT_POLICY_VIOLATION) {
        ErrorClass::PolicyBlock
    } else if status.is_client_error() {
        ErrorClass::ClientError
    } else {
        ErrorClass::UpstreamFailure
    };
    let err = err.with_class(class);
    match json {
        Some(json) if !masked && has_endpoint_shape(call_type, &json) => Ok(err),
        _ => Err(err),
    }
}

/// `message` with the upstream account ids it names masked, or `None` when it names none:
/// OpenAI's organization and project ids (`org-` and `proj_` followed by at least 16 letters
/// and digits: "Rate limit reached for gpt-4o in organization org-… on tokens per min") and
/// the id Anthropic gives in parentheses after "organization" ("the rate limit for your
/// organization (…) of 50,000 input tokens per minute"). They name the account the gateway's
/// key belongs to, which is the operator's, not the client's; the upstream's headers that
/// carry them are not forwarded either. Each becomes `***` after its prefix.
pub(crate) fn mask_account_ids(message: &str) -> Option<String> {
    const MASK: &str = "***";
    let bytes = message.as_bytes();
    let mut out = String::new();
    // Where the text not yet copied to `out` starts.
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let boundary = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let id = |from: usize, min: usize, allowed: fn(u8) -> bool| {
            let len = bytes[from..].iter().take_while(|b| allowed(**b)).count();
            (len >= min).then_some(from + len)
        };
        let found = if !boundary {
            None
        } else if bytes[at..].starts_with(b"org-") {
            id(at + 4, 16, |b| b.is_ascii_alphanumeric()).map(|end| (at + 4, end))
        } else if bytes[at..].starts_with(b"proj_") {
            id(at + 5, 16, |b| b.is_ascii_alphanumeric()).map(|end| (at + 5, end))
        } else if bytes[at..].starts_with(b"organization (") {
            let from = at + "organization (".len();
            id(from, 32, |b| b.is_ascii_hexdigit() || b == b'-')
                .filter(|&end| bytes.get(end) == Some(&b')'))
                .map(|end| (from, end))
        } else {
            None
        };
        match found {
            // Ids are ASCII, and so are their prefixes: the cuts are character boundaries.
            Some((from, end)) => {
                out.push_str(&message[copied..from]);
                out.push_str(MASK);
                copied = end;
                at = end;
            }
            None => at += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&message[copied..]);
    Some(out)
}

/// `(message, type, code, param)` from any error JSON shape we know.
fn json_error_fields(
    json: &Value,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    let string = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    // `code` may be a number in some servers' OpenAI-like bodies.
    let code = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match json.get("error") {
        Some(e @ Value::Object(_)) => (
            string(e.get("message")),
            string(e.get("type")).filter(|t| t != "None"),
            code(e.get("code")).filter(|c| c != "None"),
            string(e.get("param")).filter(|p| p != "None"),
        ),
        Some(Value::String(message)) => (Some(message.clone()), None, None, None),
        _ => {
            let message = string(json.get("message"))
                .or_else(|| string(json.get("detail")))
                .or_else(|| {
                    json.get("detail")
                        .filter(|d| !d.is_null())
                        .map(Value::to_string)
                });
            (message, None, code(json.get("code")), None)
        }
    }
}

fn looks_like_html(headers: &http::HeaderMap, body: &[u8]) -> bool {
    let html_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("html"));
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    html_type || first == Some(&b'<')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(Box<dyn StdError + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn walks_the_chain() {
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let err = classify_error(&Wrapped(Box::new(io)));
        assert_eq!(err.status(), 502);
        assert_eq!(err.message(), "upstream request failed: wrapped: refused");

        let inner = Error::guardrail_blocked("g", "blocked");
        let err = classify_error(&Wrapped(Box::new(inner)));
        assert_eq!(err.status(), 400);
        assert!(err.is_policy_block());

        let err = classify_error(&Wrapped(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "slow",
        ))));
        assert_eq!(err.status(), 504);

        // Any IO error under a client's error is a transport failure (a DNS failure's kind is
        // not one of the connection kinds).
        let err = classify_error(&Wrapped(Box::new(io::Error::other(
            "failed to lookup address information",
        ))));
        assert_eq!(err.status(), 502);
        assert_eq!(
            err.message(),
            "upstream request failed: wrapped: failed to lookup address information"
        );

        // An error the chain does not explain is internal.
        let err = classify_error(&Wrapped("odd".into()));
        assert_eq!(err.status(), 500);
        assert_eq!(err.kind(), "internal_server_error");
        assert_eq!(err.message(), "wrapped: odd");
    }

    /// The operator's account ids in an upstream's message never reach the client: OpenAI's
    /// 429 body, which has the endpoint's shape and would pass as it came, is rewritten with
    /// the id masked and everything else kept.
    #[test]
    fn account_ids_in_upstream_messages_are_masked() {
        let h = http::HeaderMap::new();
        let status = StatusCode::TOO_MANY_REQUESTS;
        let openai = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-AbCdEf1234567890GhIjKl12 on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        let e = upstream_error(CallType::ChatCompletions, status, &h, openai, false).unwrap_err();
        assert_eq!(
            e.message(),
            "Rate limit reached for gpt-4o in organization org-*** on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s."
        );
        assert_eq!(
            (e.kind(), e.code()),
            ("tokens", Some("rate_limit_exceeded"))
        );
        let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization (0a1b2c3d-4e5f-6789-abcd-ef0123456789) of 50,000 input tokens per minute."}}"#;
        let e =
            upstream_error(CallType::AnthropicMessages, status, &h, anthropic, false).unwrap_err();
        assert_eq!(
            e.message(),
            "This request would exceed the rate limit for your organization (***) of 50,000 input tokens per minute."
        );
        let text =
            b"quota exceeded for project proj_0123456789abcdefABCDEF (org-0123456789abcdefABCD)";
        let e = upstream_error(CallType::Responses, status, &h, text, false).unwrap_err();
        assert_eq!(e.message(), "quota exceeded for project proj_*** (org-***)");
        // What only looks like one is kept: too short, inside a word, no closing parenthesis.
        for kept in [
            "org-short",
            "borg-0123456789abcdefABCD",
            "your organization (0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            "the org-level limit",
        ] {
            assert_eq!(mask_account_ids(kept), None, "{kept}");
        }
        // A message with none passes as it came.
        let plain = br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(upstream_error(CallType::ChatCompletions, status, &h, plain, false).is_ok());
    }

    #[test]
    fn upstream_shapes() {
        let h = http::HeaderMap::new();
        let status = StatusCode::TOO_MANY_REQUESTS;
        let openai = br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let ok = upstream_error(CallType::ChatCompletions, status, &h, openai, false).unwrap();
        assert_eq!(ok.message(), "slow down");
        assert_eq!(ok.code(), Some("rate_limit_exceeded"));
        // The same body on an Anthropic endpoint must be rewritten.
        let rewrite =
            upstream_error(CallType::AnthropicMessages, status, &h, openai, false).unwrap_err();
        assert_eq!(rewrite.message(), "slow down");

        let fastapi = br#"{"detail":"Not authenticated"}"#;
        let e = upstream_error(
            CallType::Responses,
            StatusCode::UNAUTHORIZED,
            &h,
            fastapi,
            false,
        )
        .unwrap_err();
        assert_eq!(e.message(), "Not authenticated");
        assert_eq!(e.kind(), "authentication_error");

        let e = upstream_error(
            CallType::ChatCompletions,
            StatusCode::BAD_GATEWAY,
            &h,
            b"<html><body>502</body></html>",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.message(),
            "upstream returned 502 Bad Gateway (HTML body omitted)"
        );
        assert_eq!(e.class(), ErrorClass::UpstreamFailure);

        let e = upstream_error(
            CallType::ChatCompletions,
            StatusCode::SERVICE_UNAVAILABLE,
            &h,
            b"  no healthy upstream\n",
            false,
        )
        .unwrap_err();
        assert_eq!(e.message(), "no healthy upstream");

        let e = upstream_error(
            CallType::ChatCompletions,
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            b"",
            false,
        )
        .unwrap_err();
        assert_eq!(e.message(), "upstream returned 500 Internal Server Error");

        let none = br#"{"error":{"message":"m","type":"None","param":"None","code":"None"}}"#;
        let e = upstream_error(
            CallType::AnthropicMessages,
            StatusCode::BAD_REQUEST,
            &h,
            none,
            false,
        )
        .unwrap_err();
        assert_eq!(
            (e.kind(), e.param(), e.code()),
            ("invalid_request_error", None, None)
        );

        let azure = br#"{"error":{"message":"filtered","type":null,"param":"prompt","code":"content_policy_violation"}}"#;
        let e = upstream_error(
            CallType::ChatCompletions,
            StatusCode::BAD_REQUEST,
            &h,
            azure,
            false,
        )
        .unwrap();
        assert_eq!(e.class(), ErrorClass::PolicyBlock);
    }
}
