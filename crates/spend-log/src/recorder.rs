//! The per-request record under construction, completed exactly once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use guardrail_tower_core::{
    CallType, Caller, ClientRequestId, Error, ErrorClass, GuardrailAction, GuardrailLog,
    ParsedRequest, RequestId, ResponseReport, Usage,
};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{ErrorInformation, SpendLogHandle, SpendMetadata, SpendRecord, SpendStatus};

/// The price of one model, in USD per token (LiteLLM's `input_cost_per_token` and
/// `output_cost_per_token`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct ModelPrice {
    /// USD per input token.
    #[serde(default)]
    pub input_cost_per_token: f64,
    /// USD per output token.
    #[serde(default)]
    pub output_cost_per_token: f64,
}

/// Prices per model name (the `model` a client sends). Unknown models cost 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

impl PriceTable {
    /// An empty table.
    pub fn new() -> Self {
        PriceTable::default()
    }

    /// Sets one model's price.
    pub fn model(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.models.insert(model.into(), price);
        self
    }

    /// The cost of `usage` on `model`.
    pub fn cost(&self, model: &str, usage: &Usage) -> f64 {
        self.models.get(model).map_or(0.0, |p| {
            usage.prompt_tokens as f64 * p.input_cost_per_token
                + usage.completion_tokens as f64 * p.output_cost_per_token
        })
    }
}

/// The upstream base URL of a response, as a response (or request) extension set by whatever
/// forwards the request (the gateway sets it); written to `api_base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBase(pub String);

/// How a request ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The body ended (or there was none).
    Complete,
    /// The inner service failed before a response.
    ServiceError(Error),
    /// The response body failed mid-way.
    BodyError(String),
    /// The client went away before the end (the future or the body was dropped).
    Disconnected,
}

/// Sees every spend-log record as it is completed, before it is queued (and before
/// `guardrail_response`s are redacted): for metrics. Called once per request, on the task that
/// finished it, so it must be cheap and must not block. Implemented for closures.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// use guardrail_tower_spend_log::{SpendLogObserver, SpendRecord, SpendStatus};
///
/// let failures = Arc::new(AtomicU64::new(0));
/// let counted = failures.clone();
/// let observer = move |record: &SpendRecord| {
///     if record.status == SpendStatus::Failure {
///         counted.fetch_add(1, Ordering::Relaxed);
///     }
/// };
/// # fn takes(_: impl SpendLogObserver) {}
/// # takes(observer);
/// ```
pub trait SpendLogObserver: Send + Sync + 'static {
    /// Called with each completed record.
    fn on_record(&self, record: &SpendRecord);
}

impl<F: Fn(&SpendRecord) + Send + Sync + 'static> SpendLogObserver for F {
    fn on_record(&self, record: &SpendRecord) {
        self(record)
    }
}

/// An observer, shared.
#[derive(Clone)]
pub(crate) struct Observer(pub(crate) Arc<dyn SpendLogObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpendLogObserver")
    }
}

/// Settings shared by all requests.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) prices: PriceTable,
    pub(crate) store_prompts: bool,
    pub(crate) observer: Option<Observer>,
    /// How long a record waits for its request's detached (monitor) guardrails.
    pub(crate) monitor_grace: std::time::Duration,
}

/// The record being built for one request.
pub(crate) struct Recorder {
    writer: SpendLogHandle,
    settings: Arc<Settings>,
    request_id: RequestId,
    client_request_id: Option<ClientRequestId>,
    call_type: CallType,
    api_key: Option<String>,
    caller: Option<Arc<Caller>>,
    start_time: SystemTime,
    pub(crate) first_byte: Option<SystemTime>,
    /// What the record needs of the request: model, user, stream and, for a usage estimate,
    /// how much text it had.
    request: Option<RequestFacts>,
    pub(crate) log: GuardrailLog,
    pub(crate) report: ResponseReport,
    pub(crate) status: Option<u16>,
    pub(crate) response_error: Option<Error>,
    pub(crate) api_base: Option<String>,
    /// Usage the body parser found (when no inner layer reported it).
    pub(crate) usage: Option<Usage>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("request_id", &self.request_id)
            .field("call_type", &self.call_type)
            .finish_non_exhaustive()
    }
}

/// SHA-256 (hex) of the client's key: `Authorization: Bearer ...` or `x-api-key`.
fn hashed_key(headers: &HeaderMap) -> Option<String> {
    let key = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Some(hex)
}

impl Recorder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        writer: SpendLogHandle,
        settings: Arc<Settings>,
        request_id: RequestId,
        client_request_id: Option<ClientRequestId>,
        call_type: CallType,
        headers: &HeaderMap,
        caller: Option<Arc<Caller>>,
        log: GuardrailLog,
        report: ResponseReport,
    ) -> Self {
        // An authenticated caller's key hash; else hash the bearer key here (no other layer
        // identified the caller).
        let api_key = match caller.as_ref().and_then(|c| c.api_key_hash.clone()) {
            Some(hash) => Some(hash),
            None => hashed_key(headers),
        };
        Recorder {
            writer,
            settings,
            request_id,
            client_request_id,
            call_type,
            api_key,
            caller,
            start_time: SystemTime::now(),
            first_byte: None,
            request: None,
            log,
            report,
            status: None,
            response_error: None,
            api_base: None,
            usage: None,
        }
    }

    /// Who called, as an authentication layer inside this one found it (in the response's
    /// extensions, or in the [`ResponseReport`] when the request ends): a caller already known
    /// wins. The caller's key hash replaces the one taken from the request's headers (the
    /// master key records its alias, never its hash).
    pub(crate) fn learn_caller(&mut self, caller: &Arc<Caller>) {
        if self.caller.is_some() {
            return;
        }
        if let Some(hash) = &caller.api_key_hash {
            self.api_key = Some(hash.clone());
        }
        self.caller = Some(Arc::clone(caller));
    }

    /// The gateway's request id, for the `x-litellm-call-id` response header.
    pub(crate) fn request_id_header(&self) -> http::HeaderValue {
        self.request_id.to_header_value()
    }

    /// The client's own id, to echo in the `x-request-id` response header (without one, the
    /// header repeats [`request_id_header`](Self::request_id_header)).
    pub(crate) fn client_request_id_header(&self) -> Option<http::HeaderValue> {
        self.client_request_id
            .as_ref()
            .map(ClientRequestId::to_header_value)
    }

    /// Keeps what the record needs of the parsed request.
    pub(crate) fn set_request(&mut self, parsed: &ParsedRequest) {
        self.request = Some(RequestFacts::of(parsed));
    }

    /// The usage to record, and whether it is (partly) an estimate.
    ///
    /// The upstream's report wins. A request that ended early (`complete` is false: a block, a
    /// failure, a client that left) may have released text to the client before the upstream's
    /// usage event, or without one: then what the upstream did not report (prompt tokens,
    /// completion tokens) is estimated from the request's text and the delivered text.
    fn usage(&self, complete: bool) -> (Usage, bool) {
        let reported = self.report.usage().or(self.usage);
        let delivered = self.report.delivered_chars();
        if complete && reported.is_some() {
            return (reported.unwrap_or_default(), false);
        }
        let mut usage = reported.unwrap_or_default();
        let mut estimated = false;
        let completion = estimate_tokens(delivered);
        if usage.completion_tokens < completion {
            usage.completion_tokens = completion;
            estimated = true;
        }
        // The prompt was sent upstream only when a response came back (a 200 head).
        let sent_upstream = delivered > 0 || self.first_byte.is_some() && self.status == Some(200);
        if usage.prompt_tokens == 0 && sent_upstream {
            if let Some(request) = &self.request {
                let prompt = estimate_tokens(request.text_chars());
                if prompt > 0 {
                    usage.prompt_tokens = prompt;
                    estimated = true;
                }
            }
        }
        if estimated {
            usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        }
        (usage, estimated)
    }

    /// Completes the record and queues it: at once, or, while monitor guardrails of the request
    /// still run detached, once they have finished (at most `monitor_grace` later).
    pub(crate) fn finish(self, ending: Ending) {
        let end_time = SystemTime::now();
        if self.log.detached_in_flight() > 0 {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let deferred = self.writer.defer();
                runtime.spawn(async move {
                    let grace = self.settings.monitor_grace;
                    if tokio::time::timeout(grace, self.log.settled())
                        .await
                        .is_err()
                    {
                        let running: Vec<String> = self
                            .log
                            .detached_guardrails()
                            .iter()
                            .map(|n| n.to_string())
                            .collect();
                        tracing::warn!(
                            request_id = self.request_id.as_str(),
                            guardrails = ?running,
                            grace = ?grace,
                            "monitor guardrails still running: the spend-log record is written \
                             without their entries"
                        );
                    }
                    let record = self.complete(ending, end_time);
                    deferred.submit(record);
                });
                return;
            }
        }
        let writer = self.writer.clone();
        writer.submit(self.complete(ending, end_time));
    }

    /// The record: built, shown to the observer, then redacted.
    fn complete(self, ending: Ending, end_time: SystemTime) -> SpendRecord {
        let settings = Arc::clone(&self.settings);
        let mut record = self.build(ending, end_time);
        if let Some(observer) = &settings.observer {
            observer.0.on_record(&record);
        }
        if !settings.store_prompts {
            for entry in &mut record.metadata.guardrail_information {
                if !entry.guardrail_response.is_null() {
                    entry.guardrail_response =
                        Value::String("[redacted: set store_prompts_in_spend_logs to keep]".into());
                }
            }
        }
        record
    }

    fn build(mut self, ending: Ending, end_time: SystemTime) -> SpendRecord {
        if let Some(caller) = self.report.caller().cloned() {
            self.learn_caller(&caller);
        }
        let http_status = match &ending {
            Ending::ServiceError(err) => err.status().as_u16(),
            _ => self.status.unwrap_or(0),
        };
        let guardrails = self.log.entries();
        let applied_guardrails = guardrail_tower_core::GuardrailLog::applied_of(&guardrails);
        // The error this request ended with, most specific first.
        let error = match ending {
            Ending::ServiceError(err) => Some(error_info(&err)),
            Ending::BodyError(message) => Some(ErrorInformation {
                error_class: ErrorClass::UpstreamFailure.as_str().to_owned(),
                error_type: "upstream_stream_error".to_owned(),
                error_code: "upstream_stream_error".to_owned(),
                error_message: message,
                guardrail: None,
            }),
            Ending::Disconnected => Some(ErrorInformation {
                error_class: ErrorClass::ClientError.as_str().to_owned(),
                error_type: "client_disconnected".to_owned(),
                error_code: "client_disconnected".to_owned(),
                error_message: "the client disconnected before the response ended".to_owned(),
                guardrail: None,
            }),
            Ending::Complete => self
                .response_error
                .as_ref()
                .or(self.report.in_band_error().as_ref())
                .map(error_info)
                .or_else(|| {
                    guardrails
                        .iter()
                        .find(|e| e.guardrail_action == GuardrailAction::Block)
                        .map(|e| ErrorInformation {
                            error_class: ErrorClass::PolicyBlock.as_str().to_owned(),
                            error_type: "invalid_request_error".to_owned(),
                            error_code: guardrail_tower_core::CONTENT_POLICY_VIOLATION.to_owned(),
                            error_message: format!("blocked by guardrail '{}'", e.guardrail_name),
                            guardrail: None,
                        })
                })
                .or_else(|| {
                    (http_status >= 400).then(|| {
                        let class = ErrorClass::from_status(
                            http::StatusCode::from_u16(http_status)
                                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                        );
                        ErrorInformation {
                            error_class: class.as_str().to_owned(),
                            error_type: "http_error".to_owned(),
                            error_code: http_status.to_string(),
                            error_message: format!("HTTP {http_status}"),
                            guardrail: None,
                        }
                    })
                }),
        };
        let status = if error.is_some() {
            SpendStatus::Failure
        } else {
            SpendStatus::Success
        };
        let (usage, usage_estimated) = self.usage(error.is_none());
        let caller = self.caller.as_deref();
        let from_caller = |f: fn(&Caller) -> &Option<String>| caller.and_then(|c| f(c).clone());
        let request = self.request.as_ref();
        let model = request
            .and_then(RequestFacts::model)
            .unwrap_or_default()
            .to_owned();
        let user = request
            .and_then(RequestFacts::user)
            .map(str::to_owned)
            .or_else(|| from_caller(|c| &c.user_id));
        SpendRecord {
            request_id: self.request_id.as_str().to_owned(),
            client_request_id: self
                .client_request_id
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            call_type: self.call_type.as_str().to_owned(),
            status,
            spend: self.settings.prices.cost(&model, &usage),
            model,
            api_base: self.api_base,
            user,
            api_key: self.api_key,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
            start_time: self.start_time,
            end_time,
            completion_start_time: self.first_byte,
            metadata: SpendMetadata {
                guardrail_information: guardrails,
                applied_guardrails,
                error_information: error,
                http_status,
                stream: request.is_some_and(RequestFacts::stream),
                user_api_key_alias: from_caller(|c| &c.key_alias),
                user_api_key_user_id: from_caller(|c| &c.user_id),
                user_api_key_team_id: from_caller(|c| &c.team_id),
                user_api_key_org_id: from_caller(|c| &c.org_id),
                usage_estimated,
                sanitized: false,
            },
        }
    }
}

/// What a record needs of the request.
///
/// A stream's record is written when the stream ends, minutes after the request: it keeps
/// only the facts (the request's text counted at once), not the parsed request, whose body
/// would otherwise stay in memory for the stream's whole life, however large the prompt. A
/// request answered at once keeps the parsed request (a handle), and its text is counted only
/// if a usage estimate needs it.
#[derive(Debug)]
enum RequestFacts {
    Parsed(ParsedRequest),
    Stream {
        model: Option<String>,
        user: Option<String>,
        text_chars: u64,
    },
}

impl RequestFacts {
    fn of(parsed: &ParsedRequest) -> Self {
        if parsed.stream() {
            RequestFacts::Stream {
                model: parsed.model().map(str::to_owned),
                user: parsed.user().map(str::to_owned),
                text_chars: parsed.text_chars(),
            }
        } else {
            RequestFacts::Parsed(parsed.clone())
        }
    }

    fn model(&self) -> Option<&str> {
        match self {
            RequestFacts::Parsed(parsed) => parsed.model(),
            RequestFacts::Stream { model, .. } => model.as_deref(),
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            RequestFacts::Parsed(parsed) => parsed.user(),
            RequestFacts::Stream { user, .. } => user.as_deref(),
        }
    }

    fn stream(&self) -> bool {
        match self {
            RequestFacts::Parsed(parsed) => parsed.stream(),
            RequestFacts::Stream { .. } => true,
        }
    }

    fn text_chars(&self) -> u64 {
        match self {
            RequestFacts::Parsed(parsed) => parsed.text_chars(),
            RequestFacts::Stream { text_chars, .. } => *text_chars,
        }
    }
}

/// A token estimate for `chars` characters of text: one token per 4 characters, rounded up
/// (the usual rule of thumb for English with OpenAI's and Anthropic's tokenizers).
fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

fn error_info(err: &Error) -> ErrorInformation {
    ErrorInformation {
        error_class: err.class().as_str().to_owned(),
        error_type: err.kind().to_owned(),
        error_code: err
            .code()
            .map(str::to_owned)
            .unwrap_or_else(|| err.status().as_u16().to_string()),
        error_message: err.message().to_owned(),
        guardrail: err.guardrail().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::*;

    #[test]
    fn keys_are_hashed() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer sk-test-123".parse().unwrap());
        let hash = hashed_key(&headers).unwrap();
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("sk-test"));
        let mut anthropic = HeaderMap::new();
        anthropic.insert("x-api-key", "sk-test-123".parse().unwrap());
        assert_eq!(hashed_key(&anthropic), Some(hash));
        assert_eq!(hashed_key(&HeaderMap::new()), None);
    }

    /// The owner of a request body, which says when it is dropped.
    struct Tracked(&'static [u8], Arc<AtomicBool>);

    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            self.0
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    fn parsed(body: &'static str, dropped: &Arc<AtomicBool>) -> ParsedRequest {
        let bytes = Bytes::from_owner(Tracked(body.as_bytes(), Arc::clone(dropped)));
        ParsedRequest::parse(CallType::ChatCompletions, bytes, None).unwrap()
    }

    /// A stream's record is written when the stream ends: what it keeps of the request must
    /// not hold the body (the prompt) in memory all that time.
    #[test]
    fn a_stream_keeps_the_facts_of_its_request_not_its_body() {
        let dropped = Arc::new(AtomicBool::new(false));
        let request = parsed(
            r#"{"model":"m","stream":true,"user":"u","messages":[{"role":"user","content":"caf\u00e9 ☕ 1234"}]}"#,
            &dropped,
        );
        let facts = RequestFacts::of(&request);
        drop(request);
        assert!(dropped.load(Ordering::SeqCst), "the body is still held");
        assert_eq!(
            (
                facts.model(),
                facts.user(),
                facts.stream(),
                facts.text_chars()
            ),
            (Some("m"), Some("u"), true, 11)
        );

        // A request answered at once keeps the parsed request (a handle, no copy) until its
        // record is written.
        let dropped = Arc::new(AtomicBool::new(false));
        let request = parsed(
            r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#,
            &dropped,
        );
        let facts = RequestFacts::of(&request);
        drop(request);
        assert!(!dropped.load(Ordering::SeqCst));
        assert_eq!(
            (
                facts.model(),
                facts.user(),
                facts.stream(),
                facts.text_chars()
            ),
            (Some("m"), None, false, 5)
        );
        drop(facts);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn token_estimates_round_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }

    #[test]
    fn prices() {
        let table = PriceTable::new().model(
            "gpt",
            ModelPrice {
                input_cost_per_token: 0.000_001,
                output_cost_per_token: 0.000_002,
            },
        );
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            total_tokens: 1500,
        };
        assert!((table.cost("gpt", &usage) - 0.002).abs() < 1e-12);
        assert_eq!(table.cost("other", &usage), 0.0);
    }
}
