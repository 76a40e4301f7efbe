use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use guardrail_tower_core::sse::SseDecoder;
use guardrail_tower_core::{CallType, Error, Usage};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde_json::Value;

use crate::recorder::{Ending, Recorder};

/// The most bytes of a JSON response kept (as shared chunks, not copies) to read its usage.
const MAX_JSON_CAPTURE: usize = 4 * 1024 * 1024;

/// Reads usage and errors from a response body as it passes, when no inner layer reports them.
pub(crate) enum Observer {
    /// A JSON body: its chunks are kept (shared, not copied) and parsed at the end.
    Json {
        chunks: Vec<Bytes>,
        len: usize,
        overflow: bool,
    },
    /// An SSE stream: decoded incrementally for usage events and in-band errors.
    Sse { decoder: Box<SseDecoder> },
}

impl Observer {
    pub(crate) fn json() -> Self {
        Observer::Json {
            chunks: Vec::new(),
            len: 0,
            overflow: false,
        }
    }

    pub(crate) fn sse() -> Self {
        Observer::Sse {
            decoder: Box::new(SseDecoder::new()),
        }
    }

    fn observe(&mut self, data: &Bytes, recorder: &mut Recorder, call_type: CallType) {
        match self {
            Observer::Json {
                chunks,
                len,
                overflow,
            } => {
                if *len + data.len() > MAX_JSON_CAPTURE {
                    *overflow = true;
                    chunks.clear();
                } else if !*overflow {
                    *len += data.len();
                    chunks.push(data.clone());
                }
            }
            Observer::Sse { decoder } => {
                decoder.push(data.clone());
                while let Ok(Some(event)) = decoder.next_event() {
                    let Some(bytes) = event.data() else { continue };
                    let kind = event.event_type();
                    let interesting = matches!(
                        kind,
                        Some(
                            "error"
                                | "response.completed"
                                | "response.incomplete"
                                | "response.failed"
                                | "message_start"
                                | "message_delta"
                        )
                    ) || bytes.starts_with(b"{\"error\"")
                        || has_usage(bytes);
                    if !interesting {
                        continue;
                    }
                    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
                        continue;
                    };
                    Usage::update_from_event(&mut recorder.usage, call_type, kind, &value);
                    let is_error = kind == Some("error")
                        || (kind.is_none() && value.get("error").is_some_and(|e| !e.is_null()));
                    if is_error {
                        recorder.report.set_in_band_error(in_band_error(&value));
                    }
                }
            }
        }
    }

    fn finish(&mut self, recorder: &mut Recorder, call_type: CallType) {
        if let Observer::Json {
            chunks,
            overflow: false,
            ..
        } = self
        {
            let mut whole = BytesMut::new();
            let bytes = match chunks.len() {
                1 => chunks[0].clone(),
                _ => {
                    for chunk in chunks.iter() {
                        whole.put_slice(chunk);
                    }
                    whole.freeze()
                }
            };
            let status = recorder.status.unwrap_or(200);
            if status < 400 {
                // Only `usage` is needed: read it through a typed view, not a whole `Value`.
                if let Some(usage) = Usage::from_response_bytes(call_type, &bytes) {
                    recorder.usage = Some(usage);
                }
                return;
            }
            let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
                return;
            };
            if let Some(usage) = Usage::from_response(call_type, &value) {
                recorder.usage = Some(usage);
            }
            if recorder.response_error.is_none() {
                if let Some(message) = value
                    .get("error")
                    .and_then(|e| e.get("message").or(Some(e)))
                    .and_then(Value::as_str)
                {
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    recorder.response_error = Some(Error::new(status, message.to_owned()));
                }
            }
        }
    }
}

/// Whether a chat chunk carries usage: a `"usage"` key whose value is not `null` (OpenAI-style
/// servers send `"usage":null` in every chunk, and parsing each of them fully is wasted work).
fn has_usage(data: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(data, b"\"usage\"") else {
        return false;
    };
    let rest = data[at + b"\"usage\"".len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":").unwrap_or(rest).trim_ascii_start();
    !rest.starts_with(b"null")
}

fn in_band_error(value: &Value) -> Error {
    let error = value.get("error").unwrap_or(value);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("error event in the stream");
    let mut err = Error::new(StatusCode::BAD_GATEWAY, message.to_owned());
    if let Some(code) = error
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| value.get("code").and_then(Value::as_str))
    {
        err = err.with_code(code.to_owned());
        if code == guardrail_tower_core::CONTENT_POLICY_VIOLATION {
            err = err.with_class(guardrail_tower_core::ErrorClass::PolicyBlock);
        }
    }
    err
}

pin_project! {
    /// The response body of [`SpendLog`](crate::SpendLog): the inner body, unchanged and
    /// undelayed, observed as it passes. The request's record is completed exactly once: when
    /// the body ends (`None`, trailers, or a frame after which it reports its end), when it
    /// fails, or when it is dropped before the end (the client went away).
    pub struct SpendLogBody<B> {
        #[pin]
        body: B,
        recorder: Option<Recorder>,
        observer: Option<Observer>,
        call_type: CallType,
    }

    impl<B> PinnedDrop for SpendLogBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(recorder) = this.project().recorder.take() {
                recorder.finish(Ending::Disconnected);
            }
        }
    }
}

impl<B: Body> SpendLogBody<B> {
    pub(crate) fn new(
        body: B,
        recorder: Recorder,
        observer: Option<Observer>,
        call_type: CallType,
    ) -> Self {
        let ended = body.is_end_stream();
        let mut this = SpendLogBody {
            body,
            recorder: Some(recorder),
            observer,
            call_type,
        };
        if ended {
            // No body at all: the request is complete now.
            if let Some(recorder) = this.recorder.take() {
                recorder.finish(Ending::Complete);
            }
        }
        this
    }
}

impl<B> Body for SpendLogBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.body.as_mut().poll_frame(cx));
        let Some(recorder) = this.recorder.as_mut() else {
            return Poll::Ready(polled);
        };
        let ended = match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) => {
                    if !data.is_empty() && recorder.first_byte.is_none() {
                        recorder.first_byte = Some(SystemTime::now());
                    }
                    if let Some(observer) = this.observer.as_mut() {
                        observer.observe(data, recorder, *this.call_type);
                    }
                    this.body.is_end_stream()
                }
                // Trailers come last.
                None => true,
            },
            Some(Err(err)) => {
                let message = err.to_string();
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(Ending::BodyError(message));
                }
                return Poll::Ready(polled);
            }
            None => true,
        };
        if ended {
            if let Some(mut recorder) = this.recorder.take() {
                if let Some(observer) = this.observer.as_mut() {
                    observer.finish(&mut recorder, *this.call_type);
                }
                recorder.finish(Ending::Complete);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for SpendLogBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendLogBody")
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::has_usage;

    #[test]
    fn usage_null_is_not_usage() {
        assert!(!has_usage(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#
        ));
        assert!(!has_usage(br#"{"usage" : null}"#));
        assert!(!has_usage(br#"{"choices":[]}"#));
        assert!(has_usage(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage(br#"{"usage" :{"total_tokens":3}}"#));
    }
}
