//! The guardrail abstraction: what a guardrail sees, what it answers, and how failures are
//! treated.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::json_body::{JsonBody, TextSpan};
use crate::scope::{Caller, RequestState};
use crate::text::Side;
use crate::{CallType, GuardrailMode, RequestId};

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A future boxed for dynamic dispatch.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a guardrail may know about the request it is checking, shared by every check of one
/// request.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    request_id: RequestId,
    call_type: CallType,
    model: Option<String>,
    stream: bool,
    body: Option<Arc<JsonBody>>,
    headers: HeaderMap,
    caller: Option<Arc<Caller>>,
    state: RequestState,
}

impl RequestMeta {
    /// Facts for a request of `call_type` with this id; the rest is empty until set.
    pub fn new(request_id: RequestId, call_type: CallType) -> Self {
        RequestMeta {
            request_id,
            call_type,
            model: None,
            stream: false,
            body: None,
            headers: HeaderMap::new(),
            caller: None,
            state: RequestState::new(),
        }
    }

    /// Sets who is calling (see [`Caller`]).
    pub fn with_caller(mut self, caller: Option<Arc<Caller>>) -> Self {
        self.caller = caller;
        self
    }

    /// Sets the request's guardrail state (see [`RequestState`]); by default a new, empty one.
    pub fn with_state(mut self, state: RequestState) -> Self {
        self.state = state;
        self
    }

    /// Sets the model the client asked for.
    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }

    /// Sets whether the client asked for a stream.
    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the parsed request body.
    pub fn with_body(mut self, body: Option<Arc<Value>>) -> Self {
        self.body = body.map(|value| Arc::new(JsonBody::built(value)));
        self
    }

    /// These facts without the request body, for a holder that outlives the request and whose
    /// guardrails do not read the body ([`Guardrail::reads_request_body`]). The facts are
    /// copied only when they are shared and there is a body to drop.
    pub fn without_body(mut self: Arc<Self>) -> Arc<Self> {
        if self.body.is_some() {
            Arc::make_mut(&mut self).body = None;
        }
        self
    }

    /// These facts without the request headers, for a holder that outlives the request and whose
    /// guardrails do not read them ([`Guardrail::reads_request_headers`]). The facts are copied
    /// only when they are shared and there are headers to drop.
    pub fn without_headers(mut self: Arc<Self>) -> Arc<Self> {
        if self.headers.capacity() > 0 {
            Arc::make_mut(&mut self).headers = HeaderMap::new();
        }
        self
    }

    /// Sets the request body, built into a `Value` only if a guardrail reads it.
    pub(crate) fn with_json_body(mut self, body: Option<Arc<JsonBody>>) -> Self {
        self.body = body;
        self
    }

    /// Sets the request headers a guardrail may see. Credentials (`authorization`,
    /// `x-litellm-api-key`, `x-api-key`, `api-key`, `cookie`, `proxy-authorization`) are removed.
    ///
    /// The values are copied into one buffer of their own: hyper's header values are slices
    /// of the connection's read buffer, and these facts live as long as the response (a
    /// stream's guardrails keep them), which would keep that whole buffer alive.
    pub fn with_headers(mut self, headers: &HeaderMap) -> Self {
        const CREDENTIALS: [&str; 6] = [
            "authorization",
            "proxy-authorization",
            "x-litellm-api-key",
            "x-api-key",
            "api-key",
            "cookie",
        ];
        let kept = || {
            headers
                .iter()
                .filter(|(name, _)| !CREDENTIALS.contains(&name.as_str()))
        };
        let mut bytes = Vec::with_capacity(kept().map(|(_, v)| v.len()).sum());
        for (_, value) in kept() {
            bytes.extend_from_slice(value.as_bytes());
        }
        let bytes = Bytes::from(bytes);
        let mut copy = HeaderMap::with_capacity(headers.len());
        let mut at = 0;
        for (name, value) in kept() {
            // A value built unchecked with bytes a header may not hold is kept as it is.
            let mut owned = HeaderValue::from_maybe_shared(bytes.slice(at..at + value.len()))
                .unwrap_or_else(|_| value.clone());
            owned.set_sensitive(value.is_sensitive());
            at += value.len();
            copy.append(name.clone(), owned);
        }
        self.headers = copy;
        self
    }

    /// The request id.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The call type.
    pub fn call_type(&self) -> CallType {
        self.call_type
    }

    /// The model the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// The parsed request body, if it was JSON.
    pub fn body(&self) -> Option<&Value> {
        self.body.as_deref().map(|body| &**body.value())
    }

    /// The request body's JSON text as the client sent it: `None` for a body a guardrail
    /// rewrote or one built as a `Value`. A guardrail that sends parts of the request on (the
    /// Generic Guardrail API's messages) can copy them from here instead of building and
    /// writing out the parsed body; [`body_has_texts`](Self::body_has_texts) says whether the
    /// texts it checks are still the body's own.
    pub fn body_bytes(&self) -> Option<&[u8]> {
        let body = self.body.as_deref()?;
        (body.texts.is_some() && !body.bytes.is_empty()).then_some(&body.bytes[..])
    }

    /// Whether `texts` are exactly the guardrail texts of [`body_bytes`](Self::body_bytes)
    /// (not, say, texts an earlier guardrail masked); compared in place, nothing copied.
    pub fn body_has_texts(&self, texts: &[String]) -> bool {
        let Some((body, spans)) = self
            .body
            .as_deref()
            .and_then(|body| Some((body, body.texts.as_ref()?)))
        else {
            return false;
        };
        spans.len() == texts.len()
            && spans.iter().zip(texts).all(|(span, text)| match span {
                TextSpan::Bytes(range) => body.bytes.get(range.clone()) == Some(text.as_bytes()),
                TextSpan::Unescaped(own) => own == text,
            })
    }

    /// The request headers, without credentials.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Who is calling, when an authentication layer said so.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_deref()
    }

    /// The state guardrails keep for this request between their checks (the same for the
    /// pre-call and the post-call checks of one request, and for no other request).
    pub fn state(&self) -> &RequestState {
        &self.state
    }
}

/// Where the texts of a check lie when a streamed response is checked window by window
/// ([`StreamPolicy::Window`](crate::StreamPolicy::Window)).
///
/// Each text is one channel's window: its first [`context_len`](StreamWindow::context_len)
/// bytes are context, text an earlier window already checked and the stream already sent (it
/// is there to give the guardrail context); the rest is new. A rewrite must leave the context
/// as it is (it cannot be recalled) and may change only the new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWindow {
    context_lens: Vec<usize>,
    last: bool,
}

impl StreamWindow {
    /// Windows whose texts start with these many bytes of context (one entry per text, each
    /// on a `char` boundary); `last` when no more text will follow in these channels.
    pub fn new(context_lens: Vec<usize>, last: bool) -> Self {
        StreamWindow { context_lens, last }
    }

    /// The context length, in bytes, of text `index` (0 for an index out of range).
    pub fn context_len(&self, index: usize) -> usize {
        self.context_lens.get(index).copied().unwrap_or(0)
    }

    /// Whether these are the channels' last windows: no text will follow them.
    pub fn is_last(&self) -> bool {
        self.last
    }
}

/// What a guardrail is asked to check.
#[derive(Debug, Clone)]
pub struct GuardrailInput {
    texts: Vec<String>,
    side: Side,
    mode: GuardrailMode,
    meta: Arc<RequestMeta>,
    window: Option<StreamWindow>,
}

impl GuardrailInput {
    /// An input of `texts` from `side`, checked in `mode`.
    pub fn new(
        texts: Vec<String>,
        side: Side,
        mode: GuardrailMode,
        meta: Arc<RequestMeta>,
    ) -> Self {
        GuardrailInput {
            texts,
            side,
            mode,
            meta,
            window: None,
        }
    }

    /// Marks the texts as windows of a streamed response (see [`StreamWindow`]).
    pub fn with_stream_window(mut self, window: StreamWindow) -> Self {
        self.window = Some(window);
        self
    }

    /// When the texts are windows of a streamed response: where their context ends. `None`
    /// when each text is whole (a request, a JSON response, a whole buffered stream).
    pub fn stream_window(&self) -> Option<&StreamWindow> {
        self.window.as_ref()
    }

    /// The texts, in document order (for a stream: the text accumulated so far, or the window).
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Takes the texts out.
    pub fn into_texts(self) -> Vec<String> {
        self.texts
    }

    /// Whether the texts come from the request or the response.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The mode this check runs in.
    pub fn mode(&self) -> GuardrailMode {
        self.mode
    }

    /// The request's facts.
    pub fn meta(&self) -> &RequestMeta {
        &self.meta
    }

    pub(crate) fn meta_arc(&self) -> Arc<RequestMeta> {
        self.meta.clone()
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        self.meta.request_id.as_str()
    }

    /// The call type.
    pub fn call_type(&self) -> CallType {
        self.meta.call_type
    }

    /// The model the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.meta.model()
    }

    /// Whether the response is streamed.
    pub fn is_stream(&self) -> bool {
        self.meta.stream
    }
}

/// What a guardrail decided.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Decision {
    /// Let the text through unchanged.
    Allow,
    /// Refuse it, with a message for the client.
    Block {
        /// Shown to the client as the error message.
        message: String,
    },
    /// Replace the texts (one per input text, same order), e.g. to mask entities.
    Rewrite {
        /// The replacement texts.
        texts: Vec<String>,
    },
}

/// A guardrail's answer: a [`Decision`] plus optional detail for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    decision: Decision,
    detail: Option<Value>,
    masked_entity_count: Option<BTreeMap<String, u64>>,
    flagged: bool,
}

impl Verdict {
    /// Allow.
    pub fn allow() -> Self {
        Verdict::from(Decision::Allow)
    }

    /// Block with a message for the client.
    pub fn block(message: impl Into<String>) -> Self {
        Verdict::from(Decision::Block {
            message: message.into(),
        })
    }

    /// Rewrite the texts.
    pub fn rewrite(texts: Vec<String>) -> Self {
        Verdict::from(Decision::Rewrite { texts })
    }

    /// Attaches detail (what the guardrail said), logged as `guardrail_response`.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Marks an allowed text as flagged: the guardrail found a violation but is configured
    /// only to watch (a monitor mode). The text passes unchanged, and the log records the run
    /// as `guardrail_intervened` with action `allow`, so monitored violations are counted
    /// without being blocked. Has no effect on a block or a rewrite.
    ///
    /// ```
    /// use guardrail_tower_core::Verdict;
    ///
    /// let v = Verdict::allow().flagged().with_detail(serde_json::json!({"flagged": true}));
    /// assert!(v.is_flagged());
    /// ```
    pub fn flagged(mut self) -> Self {
        self.flagged = true;
        self
    }

    /// Whether the guardrail flagged the text without acting on it (see [`Verdict::flagged`]).
    pub fn is_flagged(&self) -> bool {
        self.flagged
    }

    /// Attaches counts of masked entities per type, logged as `masked_entity_count`.
    pub fn with_masked_entity_count(mut self, counts: BTreeMap<String, u64>) -> Self {
        self.masked_entity_count = Some(counts);
        self
    }

    /// The decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The detail.
    pub fn detail(&self) -> Option<&Value> {
        self.detail.as_ref()
    }

    /// The masked entity counts.
    pub fn masked_entity_count(&self) -> Option<&BTreeMap<String, u64>> {
        self.masked_entity_count.as_ref()
    }

    /// Splits into parts.
    pub fn into_parts(self) -> (Decision, Option<Value>, Option<BTreeMap<String, u64>>) {
        (self.decision, self.detail, self.masked_entity_count)
    }
}

impl From<Decision> for Verdict {
    fn from(decision: Decision) -> Self {
        Verdict {
            decision,
            detail: None,
            masked_entity_count: None,
            flagged: false,
        }
    }
}

/// How a guardrail failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GuardrailErrorKind {
    /// The service could not be reached: connect, DNS or IO errors, or HTTP 502/503/504.
    Unreachable,
    /// The service did not answer in time (a kind of unreachable).
    Timeout,
    /// The service answered, but not usefully (bad JSON, a 4xx, a bug).
    Failed,
}

/// A guardrail that could not decide.
#[derive(Debug)]
pub struct GuardrailError {
    kind: GuardrailErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl GuardrailError {
    /// The service could not be reached (connect/DNS/IO errors, HTTP 502/503/504).
    pub fn unreachable(message: impl Into<String>) -> Self {
        GuardrailError {
            kind: GuardrailErrorKind::Unreachable,
            message: message.into(),
            source: None,
        }
    }

    /// The service did not answer within `after`.
    pub fn timeout(after: Duration) -> Self {
        GuardrailError {
            kind: GuardrailErrorKind::Timeout,
            message: format!("no answer within {} ms", after.as_millis()),
            source: None,
        }
    }

    /// Any other failure.
    pub fn failed(message: impl Into<String>) -> Self {
        GuardrailError {
            kind: GuardrailErrorKind::Failed,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> GuardrailErrorKind {
        self.kind
    }

    /// Whether this counts as unreachable (for `unreachable_fallback`): connect/IO errors,
    /// timeouts and 502/503/504.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind,
            GuardrailErrorKind::Unreachable | GuardrailErrorKind::Timeout
        )
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for GuardrailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GuardrailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

/// A guardrail: checks texts and answers allow, block or rewrite.
///
/// Implement it with an `async fn`:
///
/// ```
/// use guardrail_tower_core::{Guardrail, GuardrailError, GuardrailInput, Verdict};
///
/// struct NoShouting;
///
/// impl Guardrail for NoShouting {
///     async fn check(&self, input: &GuardrailInput) -> Result<Verdict, GuardrailError> {
///         if input.texts().iter().any(|t| t.len() > 3 && t.chars().all(|c| !c.is_lowercase())) {
///             return Ok(Verdict::block("please do not shout"));
///         }
///         Ok(Verdict::allow())
///     }
/// }
/// ```
///
/// or from a closure with [`guardrail_fn`].
pub trait Guardrail: Send + Sync + 'static {
    /// Checks the input.
    fn check(
        &self,
        input: &GuardrailInput,
    ) -> impl Future<Output = Result<Verdict, GuardrailError>> + Send;

    /// The answer at once, for a guardrail that decides without waiting (local matching):
    /// the runner then makes no future for the check. `None` (the default) sends the check to
    /// [`Guardrail::check`]. An answer here must be the one `check` would give, and must not
    /// block: no timeout applies to it.
    fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
        let _ = input;
        None
    }

    /// The implementation's name, logged as `guardrail_provider`.
    fn provider(&self) -> &str {
        "custom"
    }

    /// For guardrails whose decision is local and deterministic (pattern matching): the
    /// matcher behind it. A streamed response is then checked exactly, holding back only as many
    /// trailing characters as the longest match could still need ([`StreamPolicy::Exact`]).
    /// `None` (the default) for guardrails that need context (classifiers, remote services).
    ///
    /// [`StreamPolicy::Exact`]: crate::StreamPolicy::Exact
    fn span_matcher(&self) -> Option<&dyn SpanMatcher> {
        None
    }

    /// Whether a check reads the request's body ([`RequestMeta::body`],
    /// [`RequestMeta::body_bytes`]) beyond the texts it is given. `true` (the default) unless the
    /// guardrail says otherwise: a stream whose post-call guardrails all answer `false` does not
    /// keep the request body (the prompt, however large) for the whole of the stream.
    fn reads_request_body(&self) -> bool {
        true
    }

    /// Whether a check reads the request's headers ([`RequestMeta::headers`]). `true` (the
    /// default) unless the guardrail says otherwise: a stream whose post-call guardrails all
    /// answer `false` does not keep a copy of the headers for the whole of the stream.
    fn reads_request_headers(&self) -> bool {
        true
    }

    /// Whether a check sees a request's images, audio and files
    /// ([`ParsedRequest::media_field`](crate::ParsedRequest::media_field)): a guardrail that
    /// reads the request's body or sends its messages to a service that reads them. `false`
    /// (the default): a guardrail reads the texts it is given, and a request with media that
    /// such a guardrail applies to is refused unless it lets media pass
    /// ([`ConfiguredGuardrail::media_fallback`](crate::ConfiguredGuardrail::media_fallback)).
    fn reads_media(&self) -> bool {
        false
    }
}

/// What a [`SpanMatcher`] does with a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanAction {
    /// Block the text.
    Block,
    /// Replace the matched span.
    Mask {
        /// The text that replaces the span.
        replacement: String,
    },
}

/// One match of a [`SpanMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanMatch {
    /// Byte offsets of the match in the text (on `char` boundaries).
    pub range: std::ops::Range<usize>,
    /// What to do with it.
    pub action: SpanAction,
    /// The entity type, counted in `masked_entity_count` (e.g. `EMAIL`, `KEYWORD`).
    pub entity: String,
    /// The client-facing message when the action is [`SpanAction::Block`]. It must not repeat
    /// sensitive matched text (say "a US social security number", not the number).
    pub message: String,
}

/// A deterministic, local text matcher (keywords, patterns): a match depends only on the text
/// it spans and at most one character after it.
///
/// Exposed through [`Guardrail::span_matcher`], it lets a streamed response be checked exactly:
/// the stream holds back only the last [`max_match_chars`](SpanMatcher::max_match_chars)
/// characters, and a match is masked precisely even when it spans several events.
pub trait SpanMatcher: Send + Sync {
    /// The most characters a match can span. Text further than this from the end of what has
    /// arrived can no longer become part of a match.
    fn max_match_chars(&self) -> usize;

    /// How many trailing bytes of `text` a stream must still hold back: the shortest suffix
    /// such that no match can start before it and still change with more text. The default is
    /// the last [`max_match_chars`](SpanMatcher::max_match_chars) characters; a matcher that
    /// knows better (a trailing partial word is the only thing a keyword could still need)
    /// returns less, so text flows with less delay. Must be on a `char` boundary.
    fn hold_back(&self, text: &str) -> usize {
        let max = self.max_match_chars();
        text.char_indices()
            .rev()
            .nth(max.saturating_sub(1))
            .map_or(text.len(), |(i, _)| text.len() - i)
    }

    /// The matches in `text`, sorted by start and not overlapping.
    ///
    /// With `partial`, more text may follow: a match that could still change with more text
    /// (one that ends at the very end of `text`) must not be reported; it is reported once a
    /// following character settles it. Without `partial`, the end of `text` is the end.
    fn find(&self, text: &str, partial: bool) -> Vec<SpanMatch>;

    /// [`find`](SpanMatcher::find) with `partial` set and [`hold_back`](SpanMatcher::hold_back)
    /// of the same `text`, in one call: how a stream checks each new stretch of text. The
    /// default calls both; a matcher whose two answers share work overrides it (the content
    /// filter folds the text and finds where it stops being final once, not twice).
    fn find_partial(&self, text: &str) -> (Vec<SpanMatch>, usize) {
        (self.find(text, true), self.hold_back(text))
    }
}

/// A guardrail from a closure that takes the input (owned) and returns a future.
///
/// ```
/// use guardrail_tower_core::{guardrail_fn, GuardrailInput, Verdict};
///
/// let no_secrets = guardrail_fn(|input: GuardrailInput| async move {
///     if input.texts().iter().any(|t| t.contains("sk-")) {
///         Ok(Verdict::block("API keys are not allowed"))
///     } else {
///         Ok(Verdict::allow())
///     }
/// });
/// ```
pub fn guardrail_fn<F, Fut>(f: F) -> GuardrailFn<F>
where
    F: Fn(GuardrailInput) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Verdict, GuardrailError>> + Send + 'static,
{
    GuardrailFn { f }
}

/// A guardrail made by [`guardrail_fn`].
#[derive(Clone, Copy)]
pub struct GuardrailFn<F> {
    f: F,
}

impl<F> fmt::Debug for GuardrailFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardrailFn").finish_non_exhaustive()
    }
}

impl<F, Fut> Guardrail for GuardrailFn<F>
where
    F: Fn(GuardrailInput) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Verdict, GuardrailError>> + Send + 'static,
{
    fn check(
        &self,
        input: &GuardrailInput,
    ) -> impl Future<Output = Result<Verdict, GuardrailError>> + Send {
        (self.f)(input.clone())
    }
}

/// The object-safe form of [`Guardrail`], used to hold different guardrails in one list.
pub(crate) trait ErasedGuardrail: Send + Sync + 'static {
    fn check_boxed<'a>(
        &'a self,
        input: &'a GuardrailInput,
    ) -> BoxFuture<'a, Result<Verdict, GuardrailError>>;
    fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>>;
    fn provider(&self) -> &str;
    fn span_matcher(&self) -> Option<&dyn SpanMatcher>;
    fn reads_request_body(&self) -> bool;
    fn reads_request_headers(&self) -> bool;
    fn reads_media(&self) -> bool;
}

impl<G: Guardrail> ErasedGuardrail for G {
    fn check_boxed<'a>(
        &'a self,
        input: &'a GuardrailInput,
    ) -> BoxFuture<'a, Result<Verdict, GuardrailError>> {
        Box::pin(Guardrail::check(self, input))
    }

    fn check_now(&self, input: &GuardrailInput) -> Option<Result<Verdict, GuardrailError>> {
        Guardrail::check_now(self, input)
    }

    fn provider(&self) -> &str {
        Guardrail::provider(self)
    }

    fn span_matcher(&self) -> Option<&dyn SpanMatcher> {
        Guardrail::span_matcher(self)
    }

    fn reads_request_body(&self) -> bool {
        Guardrail::reads_request_body(self)
    }

    fn reads_request_headers(&self) -> bool {
        Guardrail::reads_request_headers(self)
    }

    fn reads_media(&self) -> bool {
        Guardrail::reads_media(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_body_and_without_headers_drop_only_those() {
        let body: Arc<Value> = Arc::new(serde_json::json!({"messages": []}));
        let mut headers = HeaderMap::new();
        headers.insert("x-trace", HeaderValue::from_static("t-1"));
        let meta = Arc::new(
            RequestMeta::new(RequestId::generate(), CallType::ChatCompletions)
                .with_model(Some("m".into()))
                .with_stream(true)
                .with_body(Some(body))
                .with_headers(&headers),
        );
        let facts = |m: &RequestMeta| {
            (
                m.request_id().clone(),
                m.model().map(str::to_owned),
                m.is_stream(),
            )
        };
        // Shared facts are copied: the other holder keeps its body and headers.
        let bodiless = Arc::clone(&meta).without_body();
        assert!(meta.body().is_some() && meta.headers().contains_key("x-trace"));
        assert!(bodiless.body().is_none() && bodiless.body_bytes().is_none());
        assert_eq!(bodiless.headers()["x-trace"], "t-1");
        assert_eq!(facts(&bodiless), facts(&meta));
        let headerless = Arc::clone(&meta).without_headers();
        assert!(headerless.headers().is_empty() && headerless.body().is_some());
        assert_eq!(facts(&headerless), facts(&meta));
        // Unshared facts are changed in place; nothing to drop: the same facts, not a copy.
        let at = Arc::as_ptr(&bodiless);
        let neither = bodiless.without_headers();
        assert_eq!(Arc::as_ptr(&neither), at);
        assert!(neither.headers().is_empty() && neither.body().is_none());
        assert_eq!(facts(&neither), facts(&meta));
        let kept = Arc::clone(&neither);
        assert!(Arc::ptr_eq(
            &kept.without_body().without_headers(),
            &neither
        ));
    }

    #[test]
    fn headers_are_copied_without_credentials_and_without_the_read_buffer() {
        // hyper's header values are slices of the connection's read buffer: the facts a
        // stream's guardrails keep must not keep that buffer alive.
        let read_buffer = Bytes::from(
            b"application/json|Bearer sk-secret|trace-1|abc|sk-other|a=b|x".repeat(100),
        );
        let value = |at: usize, len: usize| {
            let mut v = HeaderValue::from_maybe_shared(read_buffer.slice(at..at + len)).unwrap();
            if at == 34 {
                v.set_sensitive(true);
            }
            v
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", value(0, 16));
        headers.insert("authorization", value(17, 16));
        headers.append("x-trace", value(34, 7));
        headers.append("x-trace", value(42, 3));
        headers.insert("x-api-key", value(46, 8));
        headers.insert("cookie", value(55, 3));
        headers.insert("x-empty", value(61, 0));
        let meta = RequestMeta::new("r".into(), CallType::ChatCompletions).with_headers(&headers);
        let kept: Vec<(&str, &[u8])> = meta
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            kept,
            [
                ("content-type", &b"application/json"[..]),
                ("x-trace", b"trace-1"),
                ("x-trace", b"abc"),
                ("x-empty", b""),
            ]
        );
        let trace: Vec<bool> = meta
            .headers()
            .get_all("x-trace")
            .iter()
            .map(HeaderValue::is_sensitive)
            .collect();
        assert_eq!(trace, [true, false]);
        let whole = read_buffer.as_ptr_range();
        for value in meta.headers().values() {
            assert!(!whole.contains(&value.as_bytes().as_ptr()));
        }
        drop(headers);
        assert!(
            read_buffer.is_unique(),
            "the facts keep the read buffer alive"
        );
    }
}
