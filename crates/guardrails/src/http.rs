//! The pooled HTTP(S) client the remote guardrails share, and the one JSON POST they all make.
//!
//! [`HttpClient`] is a [`hyper_util`] legacy client over a [`hyper_rustls`] connector: `http` and
//! `https` URLs, HTTP/1.1 and HTTP/2 (negotiated by ALPN over TLS), the `ring` crypto provider,
//! and the operating system's root certificates. Connections are pooled per host; clones share
//! the pool. [`shared_client`] hands out one client per process, so every guardrail (and the
//! gateway's upstream calls, if it wants) reuses the same connections.
//!
//! When the native root certificates cannot be loaded (a container without `ca-certificates`),
//! the client logs a warning and keeps working for `http` URLs; an `https` request then fails
//! with an error that says so, instead of the process panicking at start.
//!
//! [`HttpClient::post_json`] is what a guardrail calls: one JSON POST under an overall timeout,
//! with optional retries, a bounded response body, and every failure mapped to a
//! [`GuardrailError`] the runner understands:
//!
//! | what happened | error |
//! | --- | --- |
//! | connect, DNS or TLS failure | [`GuardrailErrorKind::Unreachable`] (not retried) |
//! | the connection broke after it was made | `Unreachable` (retried) |
//! | HTTP 502, 503, 504 | `Unreachable` (retried) |
//! | no complete answer within the timeout | [`GuardrailErrorKind::Timeout`] |
//! | any other non-2xx status | [`GuardrailErrorKind::Failed`], with the status and a body excerpt |
//! | a body that is not JSON, or larger than the limit | `Failed` |
//!
//! [`GuardrailErrorKind::Unreachable`]: guardrail_tower_core::GuardrailErrorKind::Unreachable
//! [`GuardrailErrorKind::Timeout`]: guardrail_tower_core::GuardrailErrorKind::Timeout
//! [`GuardrailErrorKind::Failed`]: guardrail_tower_core::GuardrailErrorKind::Failed

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::{BoxError, GuardrailError};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::time::Instant;

/// The default cap on a guardrail service's response body: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The first retry waits this long; each further retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How many characters of a response body an error message quotes.
const EXCERPT_CHARS: usize = 200;

/// A pooled HTTP(S) client: `http` and `https`, HTTP/1.1 and HTTP/2, native root certificates.
///
/// Cheap to clone; clones share one connection pool. `B` is the request body type
/// ([`Full<Bytes>`] unless a caller streams its own bodies).
///
/// ```no_run
/// use bytes::Bytes;
/// use guardrail_tower_guardrails::http::HttpClient;
/// use http_body_util::Full;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client: HttpClient = HttpClient::new();
/// let request = http::Request::post("https://api.openai.com/v1/chat/completions")
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from_static(b"{}")))?;
/// let response = client.request(request).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
pub struct HttpClient<B = Full<Bytes>> {
    inner: Inner<B>,
}

enum Inner<B> {
    /// TLS is available.
    Tls(Client<HttpsConnector<HttpConnector>, B>),
    /// The root certificates could not be loaded: `http` only, `https` fails with `tls_error`.
    PlainOnly {
        client: Client<HttpConnector, B>,
        tls_error: Arc<str>,
    },
}

impl<B> Clone for HttpClient<B> {
    fn clone(&self) -> Self {
        let inner = match &self.inner {
            Inner::Tls(client) => Inner::Tls(client.clone()),
            Inner::PlainOnly { client, tls_error } => Inner::PlainOnly {
                client: client.clone(),
                tls_error: tls_error.clone(),
            },
        };
        HttpClient { inner }
    }
}

impl<B> fmt::Debug for HttpClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpClient");
        match &self.inner {
            Inner::Tls(_) => d.field("tls", &true),
            Inner::PlainOnly { tls_error, .. } => {
                d.field("tls", &false).field("tls_error", tls_error)
            }
        };
        d.finish_non_exhaustive()
    }
}

impl<B> Default for HttpClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        HttpClient::new()
    }
}

impl<B> HttpClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new client with its own connection pool.
    ///
    /// Loads the operating system's root certificates. If that fails, it logs a warning and
    /// returns a client that serves `http` URLs and fails `https` requests with an error naming
    /// the cause (see [`HttpError::is_tls_unavailable`]).
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let inner = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(tls) => {
                let connector = tls
                    .https_or_http()
                    .enable_all_versions()
                    .wrap_connector(http);
                Inner::Tls(builder.build(connector))
            }
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "could not load the native root certificates; https requests will fail \
                     (install the system CA certificates)"
                );
                Inner::PlainOnly {
                    client: builder.build(http),
                    tls_error: format!(
                        "https is unavailable: no root certificates could be loaded ({error})"
                    )
                    .into(),
                }
            }
        };
        HttpClient { inner }
    }

    /// Whether `https` URLs can be used (the root certificates were loaded).
    pub fn supports_https(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// Sends `request` and returns the response head with its streaming body.
    ///
    /// The URI must be absolute (`http://` or `https://`). The `Host` header is set from it.
    pub fn request(
        &self,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<Response<Incoming>, HttpError>> + Send + 'static
    where
        B: Unpin,
    {
        if let Some(hook) = REQUEST_HOOK.get() {
            hook(request.headers_mut());
        }
        enum Pending {
            Sent(hyper_util::client::legacy::ResponseFuture),
            Refused(HttpError),
        }
        let pending = match &self.inner {
            Inner::Tls(client) => Pending::Sent(client.request(request)),
            Inner::PlainOnly { client, tls_error } => {
                if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                    Pending::Refused(HttpError {
                        kind: HttpErrorKind::TlsUnavailable,
                        source: tls_error.to_string().into(),
                    })
                } else {
                    Pending::Sent(client.request(request))
                }
            }
        };
        async move {
            match pending {
                Pending::Sent(future) => future.await.map_err(|error| HttpError {
                    kind: if error.is_connect() {
                        HttpErrorKind::Connect
                    } else {
                        HttpErrorKind::Transport
                    },
                    source: Box::new(error),
                }),
                Pending::Refused(error) => Err(error),
            }
        }
    }
}

impl HttpClient<Full<Bytes>> {
    /// POSTs `body` (JSON bytes) as `post` describes and returns the parsed JSON answer.
    ///
    /// The whole exchange (every attempt, and reading the body) runs under
    /// [`JsonPost::timeout`]. See the [module docs](self) for how failures map to
    /// [`GuardrailError`]s. Never panics.
    pub async fn post_json(&self, post: &JsonPost, body: Bytes) -> Result<Value, GuardrailError> {
        let deadline = Instant::now() + post.timeout;
        match tokio::time::timeout_at(deadline, self.attempts(post, body, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(GuardrailError::timeout(post.timeout)),
        }
    }

    async fn attempts(
        &self,
        post: &JsonPost,
        body: Bytes,
        deadline: Instant,
    ) -> Result<Value, GuardrailError> {
        let mut retry = 0;
        loop {
            let failure = match self.attempt(post, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            if !failure.retryable || retry >= post.retries {
                return Err(failure.error);
            }
            let backoff = backoff(retry);
            if Instant::now() + backoff >= deadline {
                return Err(failure.error);
            }
            retry += 1;
            tracing::debug!(
                uri = %post.uri,
                retry,
                of = post.retries,
                error = %failure.error,
                "guardrail request failed; retrying"
            );
            tokio::time::sleep(backoff).await;
        }
    }

    async fn attempt(&self, post: &JsonPost, body: Bytes) -> Result<Value, Failure> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = post.uri.clone();
        *request.headers_mut() = post.headers.clone();
        let response = self.request(request).await.map_err(|error| {
            let retryable = error.kind == HttpErrorKind::Transport;
            Failure {
                error: GuardrailError::unreachable(format!(
                    "request to {} failed: {}",
                    post.uri,
                    error_chain(&error)
                ))
                .with_source(error),
                retryable,
            }
        })?;
        let status = response.status();
        let read = read_bounded(response.into_body(), post.max_response_bytes).await;
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            return Err(Failure {
                error: GuardrailError::unreachable(format!(
                    "{} answered HTTP {status}{}",
                    post.uri,
                    excerpt_suffix(&read)
                )),
                retryable: true,
            });
        }
        if !status.is_success() {
            return Err(Failure {
                error: GuardrailError::failed(format!(
                    "{} answered HTTP {status}{}",
                    post.uri,
                    excerpt_suffix(&read)
                )),
                retryable: false,
            });
        }
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => {
                return Err(Failure {
                    error: GuardrailError::failed(format!(
                        "the answer from {} is larger than {} bytes",
                        post.uri, post.max_response_bytes
                    )),
                    retryable: false,
                });
            }
            Err(ReadError::Io(source)) => {
                return Err(Failure {
                    error: GuardrailError::unreachable(format!(
                        "reading the answer from {} failed: {}",
                        post.uri,
                        error_chain(&*source)
                    ))
                    .with_source(source),
                    retryable: true,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|error| Failure {
            error: GuardrailError::failed(format!(
                "the answer from {} is not JSON ({error}): {}",
                post.uri,
                excerpt(&bytes)
            )),
            retryable: false,
        })
    }
}

/// What [`HttpClient::post_json`] sends where: the URI, the headers, the overall timeout, the
/// number of retries and the response size limit. Built once (from a guardrail's config) and
/// reused for every call.
#[derive(Debug, Clone)]
pub struct JsonPost {
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    retries: u32,
    max_response_bytes: usize,
}

impl JsonPost {
    /// A POST to `uri` with `content-type: application/json`, a 10 second timeout, no retries,
    /// and a [`DEFAULT_MAX_RESPONSE_BYTES`] response limit.
    pub fn new(uri: Uri) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        JsonPost {
            uri,
            headers,
            timeout: Duration::from_secs(10),
            retries: 0,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Sets a header (replacing any value of the same name, `content-type` included).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The longest the whole exchange may take, retries and backoff included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times to retry a failure that happened after the connection was made
    /// (HTTP 502/503/504, a connection broken mid-exchange), with a short exponential backoff
    /// (25 ms, 50 ms, ... up to 500 ms) that must fit in the timeout. Connect failures are not
    /// retried: they are reported at once as unreachable.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The largest response body accepted.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// The URI posted to.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The headers sent.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The overall timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The number of retries.
    pub fn get_retries(&self) -> u32 {
        self.retries
    }
}

static REQUEST_HOOK: OnceLock<fn(&mut HeaderMap)> = OnceLock::new();

/// Sets a function that sees the headers of every request an [`HttpClient`] sends, in the
/// task that sends it, just before it is sent: a gateway adds its trace context
/// (`traceparent`) to guardrail service calls with it. Set once per process; returns `false`
/// (and changes nothing) when a hook is already set.
pub fn set_request_hook(hook: fn(&mut HeaderMap)) -> bool {
    REQUEST_HOOK.set(hook).is_ok()
}

/// One process-wide pooled client, created on first use.
///
/// Every built-in guardrail uses it unless given its own client.
pub fn shared_client() -> HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(HttpClient::new).clone()
}

/// A request sent by [`HttpClient::request`] failed before a response head arrived.
#[derive(Debug)]
pub struct HttpError {
    kind: HttpErrorKind,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpErrorKind {
    /// Connect, DNS or TLS handshake.
    Connect,
    /// `https` asked for, but no root certificates were loaded.
    TlsUnavailable,
    /// The connection was made, then failed.
    Transport,
}

impl HttpError {
    /// Whether no connection could be made (connect, DNS or TLS failure, or `https` without
    /// root certificates). The request was then certainly not received by the server.
    pub fn is_connect(&self) -> bool {
        matches!(
            self.kind,
            HttpErrorKind::Connect | HttpErrorKind::TlsUnavailable
        )
    }

    /// Whether it failed because `https` was asked for and the client could not load any root
    /// certificates.
    pub fn is_tls_unavailable(&self) -> bool {
        self.kind == HttpErrorKind::TlsUnavailable
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HttpErrorKind::Connect => f.write_str("connect error"),
            HttpErrorKind::TlsUnavailable => f.write_str("tls unavailable"),
            HttpErrorKind::Transport => f.write_str("connection error"),
        }
    }
}

impl StdError for HttpError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A guardrail's configuration is invalid: which setting, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    message: String,
}

impl ConfigError {
    /// An error in the setting `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The setting at fault (`api_base`, `headers.x-team`, ...).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.message)
    }
}

impl StdError for ConfigError {}

/// Parses an absolute `http`/`https` URL with a host and no query, for `field`.
pub(crate) fn parse_base_url(field: &str, url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| ConfigError::new(field, format!("'{url}' is not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(ConfigError::new(
                field,
                format!("'{url}' has scheme '{other}'; expected http or https"),
            ));
        }
        None => {
            return Err(ConfigError::new(
                field,
                format!("'{url}' is not absolute; expected http://host/... or https://host/..."),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::new(field, format!("'{url}' has no host")));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(
            field,
            format!("'{url}' has a query string; give the base URL only"),
        ));
    }
    Ok(uri)
}

/// Parses a header name and value from config, for `field`.
pub(crate) fn parse_header(
    field: &str,
    name: &str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let header_name = HeaderName::try_from(name)
        .map_err(|_| ConfigError::new(field, format!("'{name}' is not a valid header name")))?;
    let header_value = HeaderValue::try_from(value).map_err(|_| {
        ConfigError::new(
            format!("{field}.{name}"),
            "the value is not a valid header value (control characters or newlines)",
        )
    })?;
    Ok((header_name, header_value))
}

/// Converts a timeout in seconds (a LiteLLM float) to a duration, for `field`.
pub(crate) fn parse_timeout(field: &str, seconds: f64) -> Result<Duration, ConfigError> {
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(ConfigError::new(
            field,
            format!("{seconds} is not a positive number of seconds"),
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|e| ConfigError::new(field, format!("{seconds} seconds: {e}")))
}

struct Failure {
    error: GuardrailError,
    retryable: bool,
}

enum ReadError {
    TooLarge,
    Io(BoxError),
}

async fn read_bounded(body: Incoming, max: usize) -> Result<Bytes, ReadError> {
    if body.size_hint().exact().is_some_and(|len| len > max as u64) {
        return Err(ReadError::TooLarge);
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(error) => Err(ReadError::Io(error)),
    }
}

fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// `": <excerpt>"` of a body read for an error message, or a note when it could not be read.
fn excerpt_suffix(read: &Result<Bytes, ReadError>) -> String {
    match read {
        Ok(bytes) if bytes.is_empty() => String::new(),
        Ok(bytes) => format!(": {}", excerpt(bytes)),
        Err(ReadError::TooLarge) => " (body too large to quote)".to_owned(),
        Err(ReadError::Io(_)) => " (body unreadable)".to_owned(),
    }
}

/// The first [`EXCERPT_CHARS`] characters of `bytes`, lossily decoded.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// An error and its sources, joined with `": "`.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(25));
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(parse_base_url("api_base", "http://localhost:8080/x").is_ok());
        assert!(parse_base_url("api_base", "https://guard.example.com").is_ok());
        let err = parse_base_url("api_base", "localhost:8080").unwrap_err();
        assert_eq!(err.field(), "api_base");
        assert!(err.to_string().starts_with("invalid `api_base`:"), "{err}");
        assert!(parse_base_url("api_base", "ftp://host/").is_err());
        assert!(parse_base_url("api_base", "/relative").is_err());
        assert!(parse_base_url("api_base", "http://host/?q=1").is_err());
        assert!(parse_base_url("api_base", "not a url").is_err());
    }

    #[test]
    fn headers_and_timeouts_are_checked() {
        assert!(parse_header("headers", "x-team", "a").is_ok());
        assert_eq!(
            parse_header("headers", "bad name", "a")
                .unwrap_err()
                .field(),
            "headers"
        );
        assert_eq!(
            parse_header("headers", "x-team", "a\nb")
                .unwrap_err()
                .field(),
            "headers.x-team"
        );
        assert_eq!(
            parse_timeout("timeout", 0.25).unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_timeout("timeout", 0.0).is_err());
        assert!(parse_timeout("timeout", -1.0).is_err());
        assert!(parse_timeout("timeout", f64::NAN).is_err());
        assert!(parse_timeout("timeout", f64::INFINITY).is_err());
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt(b"short"), "short");
        let long = "é".repeat(300);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
    }
}
