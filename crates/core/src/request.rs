//! The request, buffered with a size limit and parsed as JSON once, shared through the request
//! extensions; and the request id.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body::Body;
use http_body_util::{Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use serde_json::Value;

use crate::guardrail::{BoxError, RequestMeta};
use crate::scope::{Caller, RequestState};
use crate::{CallType, Error, GuardrailSelection};
use guardrail_tower_protocol::BodyType;
use guardrail_tower_protocol::json::JsonView;
use guardrail_tower_protocol::text::{SetTextsError, Side, TextCountMismatch};

/// The default request body limit: 16 MiB (room for a few base64 images).
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The top-level request keys that are for the gateway, not the model: the guardrail selection
/// (`guardrails`) and LiteLLM's `litellm_metadata`. With `metadata.guardrails`, they are what
/// [`ParsedRequest::has_gateway_only_keys`] reports and what a gateway removes before forwarding
/// (an upstream would reject them).
pub const GATEWAY_ONLY_KEYS: &[&str] = &["guardrails", "litellm_metadata"];

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request: from the `x-request-id` header when the client sent a sane one, else
/// a new UUID v7 (time-ordered, so ids generated in a row sort together and a spend-log
/// table keyed by them appends instead of writing all over its index). Stored in the request
/// extensions.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new UUID v7: a millisecond timestamp, then random bits.
    pub fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        RequestId(Arc::from(
            &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf),
        ))
    }

    /// The id in an `x-request-id` header: 1 to 128 visible ASCII characters.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&X_REQUEST_ID)?.to_str().ok()?;
        let valid =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| RequestId(value.into()))
    }

    /// The request's id: the extension if a layer already set one, else the header, else a new
    /// one; stored in the extensions either way.
    pub fn get_or_insert<B>(request: &mut Request<B>) -> RequestId {
        if let Some(id) = request.extensions().get::<RequestId>() {
            return id.clone();
        }
        let id = RequestId::from_headers(request.headers()).unwrap_or_else(RequestId::generate);
        request.extensions_mut().insert(id.clone());
        id
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("request ids are visible ASCII")
    }
}

impl From<&str> for RequestId {
    fn from(id: &str) -> Self {
        RequestId(id.into())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A JSON request body, built into a `serde_json::Value` only when something asks for one (a
/// guardrail that reads the whole body, a rewrite); shared by the parsed request and every
/// [`RequestMeta`] made from it, so it is built at most once.
#[derive(Debug)]
pub(crate) struct JsonBody {
    bytes: Bytes,
    value: OnceLock<Arc<Value>>,
    /// Where the request's guardrail texts lie, found while the body was parsed; `None` for a
    /// body built as a `Value` (its texts are read from the `Value`).
    texts: Option<Vec<TextSpan>>,
}

/// One guardrail text of a parsed body: a range of its bytes, or the text itself when the JSON
/// string had escapes.
#[derive(Debug)]
enum TextSpan {
    Bytes(std::ops::Range<usize>),
    Unescaped(String),
}

impl JsonBody {
    /// A body whose bytes were already checked to be one JSON document, with its texts.
    fn validated(bytes: Bytes, texts: Vec<TextSpan>) -> Self {
        JsonBody {
            bytes,
            value: OnceLock::new(),
            texts: Some(texts),
        }
    }

    /// A body already built.
    pub(crate) fn built(value: Arc<Value>) -> Self {
        JsonBody {
            bytes: Bytes::new(),
            value: OnceLock::from(value),
            texts: None,
        }
    }

    /// The body as a `Value`, built on first use.
    pub(crate) fn value(&self) -> &Arc<Value> {
        self.value.get_or_init(|| {
            // The bytes were parsed by the same serde_json parser when the request was read
            // (`JsonView` accepts exactly what `Value` does), so this cannot fail.
            Arc::new(serde_json::from_slice(&self.bytes).unwrap_or(Value::Null))
        })
    }
}

/// A request body read once and parsed once, shared by every layer through the request
/// extensions.
///
/// Once a layer has buffered the request, this is the source of truth for the body: later
/// layers do not read the body again, and a rewrite (masking) updates both the JSON and the
/// bytes forwarded upstream.
///
/// Parsing validates the whole body and reads `model`, `stream`, `user` and the guardrail
/// selection through a borrowed view, without building a `serde_json::Value`; guardrail texts
/// are read the same way. The `Value` ([`ParsedRequest::json`]) is built only when asked for.
#[derive(Clone, Debug)]
pub struct ParsedRequest {
    call_type: CallType,
    bytes: Bytes,
    json: Option<Arc<JsonBody>>,
    model: Option<String>,
    stream: bool,
    user: Option<String>,
    selection: GuardrailSelection,
    gateway_only_keys: bool,
    /// The facts of [`RequestMeta::shared_from_request`], built once per request.
    shared_meta: OnceLock<Arc<RequestMeta>>,
}

impl ParsedRequest {
    /// Parses a body.
    ///
    /// For an endpoint whose texts the guardrails read (every [`CallType`] but
    /// [`CallType::Other`]) the body must be a JSON object whose text-bearing fields have the
    /// shape the protocol allows: another content type is a 415, an empty body, malformed JSON
    /// or a field of the wrong shape a 400 naming the field (`param`). Nothing a guardrail could
    /// not read goes on.
    ///
    /// For any other route, the body must be JSON when the content type is absent or JSON
    /// (`application/json`, `*+json`); an empty body, or one of another content type, is kept
    /// as bytes with no JSON (and no guardrail text).
    pub fn parse(
        call_type: CallType,
        bytes: Bytes,
        content_type: Option<&HeaderValue>,
    ) -> Result<Self, Error> {
        let body_type = BodyType::of(content_type);
        let empty = bytes.iter().all(u8::is_ascii_whitespace);
        // An endpoint whose texts the guardrails read takes JSON, and only JSON: a body they
        // could not read must not reach the upstream.
        let strict = call_type != CallType::Other;
        if strict && body_type == BodyType::Other {
            return Err(Error::new(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this endpoint takes a JSON body (content-type: application/json)",
            )
            .with_code("unsupported_media_type"));
        }
        if strict && empty {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "the request body is empty; this endpoint takes a JSON object",
            )
            .with_code("invalid_request_shape"));
        }
        let is_json = matches!(body_type, BodyType::Json | BodyType::Unspecified);
        let mut parsed = ParsedRequest {
            call_type,
            bytes: Bytes::new(),
            json: None,
            model: None,
            stream: false,
            user: None,
            selection: GuardrailSelection::new(),
            gateway_only_keys: false,
            shared_meta: OnceLock::new(),
        };
        if is_json && !empty {
            let view = JsonView::parse(&bytes).map_err(Error::invalid_json)?;
            let text = |v: Option<&JsonView<'_>>| v.and_then(JsonView::as_str).map(str::to_owned);
            let metadata = view.get("metadata");
            parsed.model = text(view.get("model"));
            parsed.stream = view.get("stream") == Some(&JsonView::Bool(true));
            parsed.user =
                text(view.get("user")).or_else(|| text(metadata.and_then(|m| m.get("user_id"))));
            parsed.selection = GuardrailSelection::from_view(&view);
            parsed.gateway_only_keys = GATEWAY_ONLY_KEYS.iter().any(|k| view.get(k).is_some())
                || metadata.and_then(|m| m.get("guardrails")).is_some();
            // Note where the texts lie (cheap: no copy), so a guardrail needs no second parse.
            // A text borrowed from the input is a range of it; one that had escapes (so lies
            // in the view, not the input) is kept as it is.
            let base = bytes.as_ptr() as usize;
            let input = base..base + bytes.len();
            let mut texts = Vec::new();
            let read = call_type.read_texts(Side::Request, &view, |_, text| {
                let at = text.as_ptr() as usize;
                texts.push(match text {
                    Cow::Borrowed(s)
                        if input.contains(&at) || (s.is_empty() && at == input.end) =>
                    {
                        let start = at - base;
                        TextSpan::Bytes(start..start + s.len())
                    }
                    text => TextSpan::Unescaped(text.into_owned()),
                });
            });
            if let (true, Err(shape)) = (strict, read) {
                return Err(shape.to_request_error());
            }
            drop(view);
            parsed.json = Some(Arc::new(JsonBody::validated(bytes.clone(), texts)));
        }
        parsed.bytes = bytes;
        Ok(parsed)
    }

    /// The call type.
    pub fn call_type(&self) -> CallType {
        self.call_type
    }

    /// The body as it is forwarded.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Whether the body is JSON.
    pub fn is_json(&self) -> bool {
        self.json.is_some()
    }

    /// The parsed JSON, if the body was JSON: built into a `Value` on the first call (the
    /// layers themselves never need it unless a guardrail rewrites the request).
    pub fn json(&self) -> Option<&Value> {
        self.json_arc().map(|json| &**json)
    }

    /// The parsed JSON, shared.
    pub fn json_arc(&self) -> Option<&Arc<Value>> {
        self.json.as_deref().map(JsonBody::value)
    }

    /// Whether the body carries any of the [`GATEWAY_ONLY_KEYS`] or `metadata.guardrails`: a
    /// gateway removes them before forwarding.
    pub fn has_gateway_only_keys(&self) -> bool {
        self.gateway_only_keys
    }

    /// The `model` the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether the client asked for a stream (`"stream": true`).
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The end user (`user`, or Anthropic's `metadata.user_id`).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The guardrail selection.
    pub fn selection(&self) -> &GuardrailSelection {
        &self.selection
    }

    /// The guardrail selection, to merge into.
    pub fn selection_mut(&mut self) -> &mut GuardrailSelection {
        &mut self.selection
    }

    /// The request's guardrail texts.
    pub fn texts(&self) -> Vec<String> {
        let Some(json) = &self.json else {
            return Vec::new();
        };
        match &json.texts {
            Some(spans) => spans
                .iter()
                .map(|span| match span {
                    // A borrowed JSON string: valid UTF-8, so this copies without replacing
                    // (`from_utf8` checks a word at a time over ASCII; `from_utf8_lossy` byte
                    // by byte).
                    TextSpan::Bytes(range) => {
                        let bytes = &json.bytes[range.clone()];
                        std::str::from_utf8(bytes).map_or_else(
                            |_| String::from_utf8_lossy(bytes).into_owned(),
                            str::to_owned,
                        )
                    }
                    TextSpan::Unescaped(text) => text.clone(),
                })
                .collect(),
            None => self.call_type.texts(Side::Request, json.value()),
        }
    }

    /// Replaces the guardrail texts and re-serializes the body.
    pub fn set_texts(&mut self, texts: &[String]) -> Result<(), SetTextsError> {
        let Some(json) = &self.json else {
            return if texts.is_empty() {
                Ok(())
            } else {
                Err(SetTextsError::Count(TextCountMismatch {
                    expected: 0,
                    got: texts.len(),
                }))
            };
        };
        let mut value = Value::clone(json.value());
        self.call_type.set_texts(Side::Request, &mut value, texts)?;
        self.bytes = serde_json::to_vec(&value)
            .expect("a serde_json::Value always serializes")
            .into();
        self.json = Some(Arc::new(JsonBody {
            bytes: self.bytes.clone(),
            value: OnceLock::from(Arc::new(value)),
            texts: None,
        }));
        // The facts a guardrail sees include the body: the next layer builds them anew.
        self.shared_meta = OnceLock::new();
        Ok(())
    }

    /// The facts a guardrail may see about this request.
    pub fn meta(&self, request_id: RequestId, headers: &HeaderMap) -> RequestMeta {
        RequestMeta::new(request_id, self.call_type)
            .with_model(self.model.clone())
            .with_stream(self.stream)
            .with_json_body(self.json.clone())
            .with_headers(headers)
    }
}

impl RequestMeta {
    /// The facts a guardrail may see about `request`, from the [`ParsedRequest`] and
    /// [`RequestId`] in its extensions; `None` when the request was not parsed.
    pub fn from_request<B>(request: &Request<B>) -> Option<RequestMeta> {
        let parsed = request.extensions().get::<ParsedRequest>()?;
        Some(Self::of_parsed(parsed, request))
    }

    /// [`RequestMeta::from_request`], built once per request and shared: the pre-call and the
    /// post-call layer of one request see the same facts (and the same generated request id, if
    /// the request had none) without copying the headers twice. The facts are those the first
    /// caller saw; rewriting the texts ([`ParsedRequest::set_texts`]) starts over.
    pub fn shared_from_request<B>(request: &Request<B>) -> Option<Arc<RequestMeta>> {
        let parsed = request.extensions().get::<ParsedRequest>()?;
        let meta = parsed
            .shared_meta
            .get_or_init(|| Arc::new(Self::of_parsed(parsed, request)));
        Some(Arc::clone(meta))
    }

    /// The facts of `request`, whose extensions hold `parsed`.
    fn of_parsed<B>(parsed: &ParsedRequest, request: &Request<B>) -> RequestMeta {
        let extensions = request.extensions();
        let request_id = extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let mut meta = parsed
            .meta(request_id, request.headers())
            .with_caller(extensions.get::<Arc<Caller>>().cloned());
        if let Some(state) = extensions.get::<RequestState>() {
            meta = meta.with_state(state.clone());
        }
        meta
    }
}

/// The call type of `request`: the one an earlier layer parsed it as, else from its method and
/// path ([`CallType::of`]). Every layer asks this one function, so they all agree.
pub fn call_type_of<B>(request: &Request<B>) -> CallType {
    match request.extensions().get::<ParsedRequest>() {
        Some(parsed) => parsed.call_type,
        None => CallType::of(request.method(), request.uri().path()),
    }
}

/// Replaces a request's body with the parsed request's bytes, and makes `content-length` match.
pub fn set_buffered_body(parts: &mut http::request::Parts, parsed: &ParsedRequest) -> Full<Bytes> {
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(parsed.bytes.len()));
    Full::new(parsed.bytes.clone())
}

pin_project! {
    /// Buffers a request body (with a size limit) and parses it once, unless an earlier layer
    /// already did: then the body is not read again, and the parsed request's bytes are used.
    ///
    /// Resolves to the request with a [`Full`] body and a [`ParsedRequest`] and [`RequestId`] in
    /// its extensions, or to an [`Error`] in the endpoint's shape: 413 when the body is over the
    /// limit (`Content-Length` is checked before anything is read), 400 when it is malformed.
    pub struct BufferRequest<B> {
        #[pin]
        state: BufferState<B>,
    }
}

pin_project! {
    #[project = BufferStateProj]
    enum BufferState<B> {
        Done {
            result: Option<Result<Request<Full<Bytes>>, Error>>,
        },
        Collecting {
            parts: Option<http::request::Parts>,
            call_type: CallType,
            limit: usize,
            #[pin]
            body: Limited<B>,
            collected: Collected,
        },
    }
}

impl<B> BufferRequest<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Starts buffering `request` with a body limit of `limit` bytes.
    pub fn new(mut request: Request<B>, limit: usize) -> Self {
        RequestId::get_or_insert(&mut request);
        request
            .extensions_mut()
            .get_or_insert_default::<RequestState>();
        let call_type = call_type_of(&request);
        let (mut parts, body) = request.into_parts();
        if let Some(parsed) = parts.extensions.get::<ParsedRequest>().cloned() {
            let body = set_buffered_body(&mut parts, &parsed);
            return BufferRequest::done(Ok(Request::from_parts(parts, body)));
        }
        let encoded = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded && call_type.has_text_view() {
            // A compressed body is bytes no guardrail can read; refuse it before reading it.
            return BufferRequest::done(Err(Error::new(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "compressed request bodies (content-encoding) are not accepted on this endpoint",
            )
            .with_code("unsupported_media_type")));
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return BufferRequest::done(Err(Error::payload_too_large(limit)));
        }
        BufferRequest {
            state: BufferState::Collecting {
                parts: Some(parts),
                call_type,
                limit,
                body: Limited::new(body, limit),
                collected: Collected::default(),
            },
        }
    }

    fn done(result: Result<Request<Full<Bytes>>, Error>) -> Self {
        BufferRequest {
            state: BufferState::Done {
                result: Some(result),
            },
        }
    }
}

impl<B> Future for BufferRequest<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Request<Full<Bytes>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            BufferStateProj::Done { result } => Poll::Ready(
                result
                    .take()
                    .expect("BufferRequest polled after completion"),
            ),
            BufferStateProj::Collecting {
                parts,
                call_type,
                limit,
                mut body,
                collected,
            } => {
                loop {
                    match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(mut data) = frame.into_data() {
                                collected.push(data.copy_to_bytes(data.remaining()));
                            }
                        }
                        Some(Err(err)) => {
                            return Poll::Ready(Err(body_error(&*err, *limit)));
                        }
                        None => break,
                    }
                }
                let mut parts = parts.take().expect("BufferRequest polled after completion");
                let bytes = collected.take();
                let parsed = match ParsedRequest::parse(
                    *call_type,
                    bytes,
                    parts.headers.get(CONTENT_TYPE),
                ) {
                    Ok(parsed) => parsed,
                    Err(err) => return Poll::Ready(Err(err)),
                };
                let body = set_buffered_body(&mut parts, &parsed);
                parts.extensions.insert(parsed);
                Poll::Ready(Ok(Request::from_parts(parts, body)))
            }
        }
    }
}

/// The body read so far: the first chunk kept as is (no copy in the common one-chunk case),
/// later ones appended to one buffer.
#[derive(Default)]
struct Collected {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
}

impl Collected {
    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match (&self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(_), Some(rest)) => rest.put_slice(&data),
            (Some(first), None) => {
                let mut rest = BytesMut::with_capacity((first.len() + data.len()) * 2);
                rest.put_slice(first);
                rest.put_slice(&data);
                self.rest = Some(rest);
            }
        }
    }

    fn take(&mut self) -> Bytes {
        match (self.rest.take(), self.first.take()) {
            (Some(rest), _) => rest.freeze(),
            (None, first) => first.unwrap_or_default(),
        }
    }
}

fn body_error(err: &(dyn std::error::Error + Send + Sync + 'static), limit: usize) -> Error {
    if err.downcast_ref::<LengthLimitError>().is_some() {
        Error::payload_too_large(limit)
    } else {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            format!("failed to read the request body: {err}"),
        )
        .with_code("body_read_error")
    }
}

impl<B> fmt::Debug for BufferRequest<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferRequest").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn request(body: &'static str) -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn parses_once_and_fills_extensions() {
        let req = request(
            r#"{"model":"gpt","stream":true,"user":"u1","guardrails":["a"],"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let req = BufferRequest::new(req, 1024).await.unwrap();
        let parsed = req.extensions().get::<ParsedRequest>().unwrap();
        assert_eq!(parsed.call_type(), CallType::ChatCompletions);
        assert_eq!(parsed.model(), Some("gpt"));
        assert!(parsed.stream());
        assert_eq!(parsed.user(), Some("u1"));
        assert!(parsed.selection().contains("a"));
        assert_eq!(parsed.texts(), ["hi"]);
        assert!(req.extensions().get::<RequestId>().is_some());
        assert_eq!(
            req.headers()[CONTENT_LENGTH],
            parsed.bytes().len().to_string()
        );
    }

    #[tokio::test]
    async fn content_length_over_limit_is_413_before_reading() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let body = StreamBody::new(futures_util::stream::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Some(Ok::<_, std::io::Error>(Frame::data(
                Bytes::from_static(b"{}"),
            ))))
        }));
        let req = Request::post("/v1/responses")
            .header(CONTENT_LENGTH, "2048")
            .body(body)
            .unwrap();
        let err = BufferRequest::new(req, 1024).await.unwrap_err();
        assert_eq!(err.status(), 413);
        assert_eq!(reads.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn streamed_body_over_limit_is_413() {
        let body =
            StreamBody::new(futures_util::stream::iter((0..100).map(|_| {
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&[b' '; 64])))
            })));
        let req = Request::post("/v1/messages").body(body).unwrap();
        let err = BufferRequest::new(req, 1024).await.unwrap_err();
        assert_eq!(err.status(), 413);
        assert_eq!(
            err.to_json(CallType::AnthropicMessages),
            r#"{"type":"error","error":{"type":"request_too_large","message":"request body is larger than the limit of 1024 bytes"}}"#
        );
    }

    #[tokio::test]
    async fn malformed_json_is_400() {
        let err = BufferRequest::new(request(r#"{"model": "#), 1024)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(err.code(), Some("invalid_json"));
        assert!(err.message().contains("EOF"), "{}", err.message());
    }

    #[tokio::test]
    async fn body_read_error_is_400() {
        let body = StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"{"))),
            Err(std::io::Error::other("client went away")),
        ]));
        let req = Request::post("/v1/chat/completions").body(body).unwrap();
        let err = BufferRequest::new(req, 1024).await.unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.message().contains("client went away"));
    }

    #[tokio::test]
    async fn bodies_no_guardrail_could_read_are_refused_on_llm_endpoints() {
        // An empty body, another media type, a compressed body: refused before any guardrail.
        let cases = [
            (
                "/v1/embeddings",
                None,
                None,
                "",
                400,
                "invalid_request_shape",
            ),
            (
                "/v1/chat/completions",
                Some("text/plain"),
                None,
                r#"{"messages":[]}"#,
                415,
                "unsupported_media_type",
            ),
            (
                "/v1/messages",
                Some("multipart/form-data; boundary=x"),
                None,
                "--x\r\n",
                415,
                "unsupported_media_type",
            ),
            (
                "/v1/responses",
                None,
                Some("gzip"),
                "\x1f gzip bytes",
                415,
                "unsupported_media_type",
            ),
            (
                "/v1/chat/completions",
                None,
                None,
                r#"{"messages":"forbidden"}"#,
                400,
                "invalid_request_shape",
            ),
        ];
        for (path, content_type, encoding, body, status, code) in cases {
            let mut req = Request::post(path);
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            if let Some(e) = encoding {
                req = req.header(http::header::CONTENT_ENCODING, e);
            }
            let req = req.body(Full::new(Bytes::from(body))).unwrap();
            let err = BufferRequest::new(req, 1024).await.unwrap_err();
            assert_eq!(
                (err.status().as_u16(), err.code()),
                (status, Some(code)),
                "{path} {body}"
            );
        }
        let req = Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(
                br#"{"messages":[{"role":"user","content":7}]}"#,
            )))
            .unwrap();
        let err = BufferRequest::new(req, 1024).await.unwrap_err();
        assert_eq!(err.param(), Some("messages[0].content"));
        // The same bodies on a GET, or a route with no text view, pass as bytes.
        let req = Request::get("/v1/chat/completions")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let req = BufferRequest::new(req, 1024).await.unwrap();
        let parsed = req.extensions().get::<ParsedRequest>().unwrap();
        assert_eq!(parsed.call_type(), CallType::Other);
        assert!(parsed.json().is_none());
    }

    #[tokio::test]
    async fn non_json_bodies_of_other_routes_have_no_json() {
        let req = Request::post("/v1/audio/transcriptions")
            .header(CONTENT_TYPE, "multipart/form-data; boundary=x")
            .body(Full::new(Bytes::from_static(b"--x\r\n")))
            .unwrap();
        let req = BufferRequest::new(req, 1024).await.unwrap();
        let parsed = req.extensions().get::<ParsedRequest>().unwrap();
        assert!(parsed.json().is_none());
        assert_eq!(parsed.bytes(), "--x\r\n");
    }

    #[tokio::test]
    async fn second_buffer_reuses_the_first() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let mut sent = false;
        let body = StreamBody::new(futures_util::stream::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            if sent {
                Poll::Ready(None)
            } else {
                sent = true;
                Poll::Ready(Some(Ok::<_, std::io::Error>(Frame::data(
                    Bytes::from_static(br#"{"model":"m","messages":[]}"#),
                ))))
            }
        }));
        let req = Request::post("/v1/chat/completions").body(body).unwrap();
        let req = BufferRequest::new(req, 1024).await.unwrap();
        let reads_after_first = reads.load(Ordering::SeqCst);
        let req = BufferRequest::new(req, 1024).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), reads_after_first);
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, r#"{"model":"m","messages":[]}"#);
    }

    #[test]
    fn texts_found_while_parsing_are_those_of_the_value() {
        let body = r#"{"model": "m", "messages": [
            {"role": "system", "content": "plain \"quoted\" \u00e9t\u00e9 \ud83d\ude00"},
            {"role": "user", "content": [{"type": "text", "text": "café"}, {"type": "image_url"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"function": {"arguments": "{\"a\":1}"}}]},
            {"role": "user", "content": "first"}, {"role": "user", "content": "second", "content": "last"}
        ]}"#;
        let parsed = ParsedRequest::parse(
            CallType::ChatCompletions,
            Bytes::from_static(body.as_bytes()),
            None,
        )
        .unwrap();
        let value: Value = serde_json::from_str(body).unwrap();
        let want = CallType::ChatCompletions.texts(Side::Request, &value);
        assert_eq!(
            want,
            [
                "plain \"quoted\" \u{e9}t\u{e9} \u{1f600}",
                "caf\u{e9}",
                "{\"a\":1}",
                "first",
                "last"
            ]
        );
        assert_eq!(parsed.texts(), want);
        // The Value, built on demand, is the same document.
        assert_eq!(parsed.json(), Some(&value));
    }

    #[test]
    fn set_texts_reserializes() {
        let mut parsed = ParsedRequest::parse(
            CallType::ChatCompletions,
            Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"my email is a@b.co"}]}"#,
            ),
            None,
        )
        .unwrap();
        parsed.set_texts(&["my email is [EMAIL]".into()]).unwrap();
        assert_eq!(
            parsed.bytes(),
            r#"{"model":"m","messages":[{"role":"user","content":"my email is [EMAIL]"}]}"#
        );
        assert_eq!(parsed.texts(), ["my email is [EMAIL]"]);
    }

    #[test]
    fn shared_meta_is_built_once_and_again_after_a_rewrite() {
        let parsed = ParsedRequest::parse(
            CallType::ChatCompletions,
            Bytes::from_static(
                br#"{"model":"m","messages":[{"role":"user","content":"my email is a@b.co"}]}"#,
            ),
            None,
        )
        .unwrap();
        let mut request = Request::post("/v1/chat/completions")
            .header("authorization", "Bearer sk-secret")
            .header("x-team", "red")
            .body(())
            .unwrap();
        request.extensions_mut().insert(parsed);
        assert!(RequestMeta::from_request(&Request::new(())).is_none());
        assert!(RequestMeta::shared_from_request(&Request::new(())).is_none());

        let first = RequestMeta::shared_from_request(&request).unwrap();
        let again = RequestMeta::shared_from_request(&request).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.headers().get("x-team").unwrap(), "red");
        assert!(first.headers().get("authorization").is_none());
        assert_eq!(
            first.body().unwrap()["messages"][0]["content"],
            "my email is a@b.co"
        );

        let parsed = request.extensions_mut().get_mut::<ParsedRequest>().unwrap();
        parsed.set_texts(&["my email is [EMAIL]".into()]).unwrap();
        let rewritten = RequestMeta::shared_from_request(&request).unwrap();
        assert!(!Arc::ptr_eq(&first, &rewritten));
        assert_eq!(
            rewritten.body().unwrap()["messages"][0]["content"],
            "my email is [EMAIL]"
        );
    }

    #[tokio::test]
    async fn meta_carries_the_caller_and_one_state_across_a_rewrite() {
        let key = crate::StateKey::new();
        let mut req = request(r#"{"model":"m","messages":[{"role":"user","content":"a@b.co"}]}"#);
        req.extensions_mut()
            .insert(Arc::new(Caller::with_key_hash("h1").key_alias("team-a")));
        let mut req = BufferRequest::new(req, 1024).await.unwrap();
        let first = RequestMeta::shared_from_request(&req).unwrap();
        assert_eq!(first.caller().unwrap().key_alias.as_deref(), Some("team-a"));
        first.state().insert(key, String::from("kept"));
        let parsed = req.extensions_mut().get_mut::<ParsedRequest>().unwrap();
        parsed.set_texts(&["[EMAIL]".into()]).unwrap();
        let after = RequestMeta::shared_from_request(&req).unwrap();
        assert!(!Arc::ptr_eq(&first, &after));
        assert_eq!(after.state().get::<String>(key).as_deref(), Some("kept"));
        // Another request has its own state.
        let other = BufferRequest::new(request(r#"{"model":"m","messages":[]}"#), 1024)
            .await
            .unwrap();
        let other = RequestMeta::shared_from_request(&other).unwrap();
        assert_eq!(other.state().get::<String>(key), None);
        assert!(other.caller().is_none());
    }

    #[test]
    fn request_id_header_validation() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(
            RequestId::from_headers(&headers).unwrap().as_str(),
            "abc-123"
        );
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(RequestId::from_headers(&headers).is_none());
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert!(RequestId::from_headers(&headers).is_none());
    }
}
