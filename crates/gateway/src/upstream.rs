//! The innermost service: forwards a request to its model's upstream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_core::{BoxError, CallType, Error, GATEWAY_ONLY_KEYS, ParsedRequest};
use guardrail_tower_guardrails::HttpClient;
use guardrail_tower_spend_log::ApiBase;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::{Deployment, Provider};

/// The Anthropic API version sent when the client sent none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Request headers never forwarded besides the hop-by-hop ones ([`HOP_BY_HOP`] and those the
/// request's `Connection` names): the ones for this hop of a request only (`te`, the proxy's own
/// credentials), the client's own credentials (replaced by the upstream key), `host` and
/// `content-length` (set for the upstream request), `accept-encoding` (guardrails read the
/// upstream body: the upstream is asked for `identity`, and what comes compressed anyway is
/// decoded before the layers see it), and OpenAI's `openai-organization` and `openai-project`,
/// which pick the organization and project the upstream key acts for and bills: which account
/// the gateway's key spends is the deployment's to say, not a client's.
const DROPPED: &[&str] = &[
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "host",
    "content-length",
    "authorization",
    "x-litellm-api-key",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
];

/// Where one model's requests go.
#[derive(Debug)]
struct Target {
    deployment: Deployment,
    /// The upstream key's header, marked sensitive.
    auth: Option<(HeaderName, HeaderValue)>,
    /// The upstream URL of each route's requests without a query string, parsed once: the
    /// path after `/v1` (OpenAI-compatible) or the messages route (Anthropic), and the URL.
    uris: Vec<(&'static str, Uri)>,
}

/// The paths, after `/v1`, of the routes forwarded to an OpenAI-compatible upstream.
const OPENAI_SUFFIXES: [&str; 2] = ["/chat/completions", "/responses"];

/// Forwards each request to the upstream of its `model`, with the deployment's model name and
/// key. Streaming responses pass through as they arrive; a response body that goes silent for
/// the idle limit fails (see [`IdleTimeout`]).
///
/// Cheap to clone (one reference count): every layer above it clones the stack it wraps for
/// each request.
#[derive(Clone, Debug)]
pub struct Forward {
    inner: Arc<ForwardInner>,
}

#[derive(Debug)]
struct ForwardInner {
    client: HttpClient,
    targets: HashMap<String, Arc<Target>>,
    idle: Duration,
}

pin_project! {
    /// A body that fails when its sender sends nothing for `idle` while it is being waited on:
    /// an upstream's response body (see [`IdleTimeout::new`]), or a client's request body (see
    /// [`crate::slow_client::client_body`]). The wait is measured only while the body is
    /// polled, so a client that reads an upstream's stream slowly never trips it; an upstream
    /// that stalls mid-stream does.
    ///
    /// The timer is made at the first wait: a body whose frames are there whenever it is read
    /// (a short JSON response read whole with its head, most request bodies) never makes one.
    /// Nor is it moved for every frame: a wait records when it began, and the timer, armed for
    /// an earlier wait's end, is moved on only when it fires before the current wait's end. Nor
    /// is it polled at every wait: while it holds the task's waker and its deadline has not
    /// come, it has nothing to say. A stream of many events costs a clock read per wait (not
    /// per poll: a wait polled again reads the timer's state instead), not a timer update or a
    /// timer poll.
    pub struct IdleTimeout<B> {
        #[pin]
        body: B,
        // Made at the first wait.
        timer: Option<Pin<Box<Sleep>>>,
        idle: Duration,
        // When the current wait for a frame began; `None` between waits.
        waiting_since: Option<Instant>,
        // The waker the timer holds since it was last polled; `None` before the first poll
        // and once it fired (firing takes the waker).
        armed: Option<Waker>,
        // The error of a silence of `idle`.
        timed_out: fn(Duration) -> BoxError,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps an upstream's response body: a silence fails it with an IO timeout ("the upstream
    /// sent nothing for N ms mid-response").
    pub fn new(body: B, idle: Duration) -> Self {
        IdleTimeout::with_error(body, idle, |idle| {
            Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the upstream sent nothing for {} ms mid-response",
                    idle.as_millis()
                ),
            ))
        })
    }

    /// Wraps `body`; a silence of `idle` fails it with `timed_out(idle)`.
    pub fn with_error(body: B, idle: Duration, timed_out: fn(Duration) -> BoxError) -> Self {
        IdleTimeout {
            body,
            timer: None,
            idle,
            waiting_since: None,
            armed: None,
            timed_out,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting_since = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let holds_waker = this
            .armed
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        // Polled again within a wait (the task was woken for something else, such as the
        // client's socket): the timer holds this task's waker and has not fired, so it has
        // nothing to say, and the clock need not be read. (A timer holds a waker only once
        // made.)
        if holds_waker
            && this.waiting_since.is_some()
            && this.timer.as_ref().is_some_and(|timer| !timer.is_elapsed())
        {
            return Poll::Pending;
        }
        let now = Instant::now();
        let since = *this.waiting_since.get_or_insert(now);
        let deadline = since + *this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if holds_waker && now < timer.deadline() {
            // The timer will wake this task at its deadline; the body, when it has a frame.
            return Poll::Pending;
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                match this.armed {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    armed => *armed = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            *this.armed = None;
            if timer.deadline() >= deadline {
                break;
            }
            // The timer was set for an earlier wait (it never ends later than this one): move
            // it on to this wait's end and poll it again, which registers the waker.
            timer.as_mut().reset(deadline);
        }
        *this.waiting_since = None;
        Poll::Ready(Some(Err((this.timed_out)(*this.idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> std::fmt::Debug for IdleTimeout<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// A forwarder for these deployments, using `client`; a response body that goes silent for
    /// `idle` fails.
    pub fn new(deployments: &[Deployment], client: HttpClient, idle: Duration) -> Self {
        let targets = deployments
            .iter()
            .map(|d| {
                let auth = d.api_key.as_ref().and_then(|key| {
                    let value = match d.provider {
                        Provider::OpenAi => HeaderValue::from_str(&format!("Bearer {key}")),
                        Provider::Anthropic => HeaderValue::from_str(key),
                    };
                    let mut value = value.ok()?;
                    value.set_sensitive(true);
                    let name = match d.provider {
                        Provider::OpenAi => header::AUTHORIZATION,
                        Provider::Anthropic => HeaderName::from_static("x-api-key"),
                    };
                    Some((name, value))
                });
                let suffixes: &[&'static str] = match d.provider {
                    Provider::OpenAi => &OPENAI_SUFFIXES,
                    Provider::Anthropic => &["/messages"],
                };
                let uris = suffixes
                    .iter()
                    .filter_map(|suffix| Some((*suffix, upstream_url(d, suffix).parse().ok()?)))
                    .collect();
                (
                    d.model_name.clone(),
                    Arc::new(Target {
                        deployment: d.clone(),
                        auth,
                        uris,
                    }),
                )
            })
            .collect();
        Forward {
            inner: Arc::new(ForwardInner {
                client,
                targets,
                idle,
            }),
        }
    }

    fn prepare(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Request<Full<Bytes>>, Arc<Target>), Error> {
        let (parts, _) = request.into_parts();
        let parsed = parts
            .extensions
            .get::<ParsedRequest>()
            .ok_or_else(|| Error::internal("the request was not parsed before forwarding"))?;
        let model = parsed.model().ok_or_else(|| {
            Error::new(StatusCode::BAD_REQUEST, "the request has no 'model'").with_param("model")
        })?;
        let target = self.inner.targets.get(model).ok_or_else(|| {
            let mut known: Vec<&str> = self.inner.targets.keys().map(String::as_str).collect();
            known.sort_unstable();
            Error::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "model '{model}' is not configured (configured: {})",
                    known.join(", ")
                ),
            )
            .with_param("model")
            .with_code("model_not_found")
        })?;
        let d = &target.deployment;
        let call_type = parsed.call_type();
        let anthropic_route = call_type == CallType::AnthropicMessages;
        if anthropic_route != (d.provider == Provider::Anthropic) {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "model '{model}' is served by {} and cannot be called on {}",
                    match d.provider {
                        Provider::OpenAi => "an OpenAI-compatible API",
                        Provider::Anthropic => "the Anthropic API",
                    },
                    parts.uri.path()
                ),
            )
            .with_param("model")
            .with_code("unsupported_endpoint"));
        }
        let path = parts.uri.path();
        let suffix = path.strip_prefix("/v1").unwrap_or(path);
        let known = target.uris.iter().find(|(s, _)| *s == suffix);
        let uri = match (known, parts.uri.query()) {
            (Some((_, uri)), None) => uri.clone(),
            (_, query) => {
                let url = upstream_url(d, suffix);
                let url = match query {
                    Some(q) => format!("{url}?{q}"),
                    None => url,
                };
                // The URL names an internal host: it goes in no error and no log line.
                url.parse().map_err(|_| {
                    tracing::error!(
                        model,
                        "the upstream URL built from the model's api_base is invalid"
                    );
                    Error::internal(format!("the upstream URL of model '{model}' is invalid"))
                })?
            }
        };
        let body = rewrite_body(parsed, &d.upstream_model)?;
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        let options = connection_options(&parts.headers);
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(name)
                && !DROPPED.contains(&name.as_str())
                && !options.contains(name)
            {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some((name, value)) = &target.auth {
            headers.insert(name.clone(), value.clone());
        }
        if d.provider == Provider::Anthropic && !headers.contains_key("anthropic-version") {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(DEFAULT_ANTHROPIC_VERSION),
            );
        }
        guardrail_tower_core::set_content_length(&mut headers, body.len());
        // Without `accept-encoding` a server may pick any coding (RFC 9110 section 12.5.3).
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok((request, Arc::clone(target)))
    }
}

/// The upstream URL of a request whose path, after `/v1`, is `suffix` (without its query).
fn upstream_url(d: &Deployment, suffix: &str) -> String {
    match d.provider {
        Provider::OpenAi => format!("{}{suffix}", d.api_base),
        Provider::Anthropic => {
            let base = d.api_base.strip_suffix("/v1").unwrap_or(&d.api_base);
            format!("{base}/v1/messages")
        }
    }
}

/// The body with `model` replaced by the upstream's name and the gateway-only keys removed.
///
/// The common case (only `model` changes) splices the new name into the original bytes; the
/// body is re-serialized only when keys must be removed.
fn rewrite_body(parsed: &ParsedRequest, upstream_model: &str) -> Result<Bytes, Error> {
    if !parsed.is_json() {
        return Ok(parsed.bytes().clone());
    }
    if let Some(json) = parsed
        .has_gateway_only_keys()
        .then(|| parsed.json())
        .flatten()
    {
        let mut json = json.clone();
        if let Value::Object(map) = &mut json {
            for key in GATEWAY_ONLY_KEYS {
                map.shift_remove(*key);
            }
            map.insert("model".into(), Value::String(upstream_model.to_owned()));
            if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
                metadata.shift_remove("guardrails");
            }
        }
        return Ok(serde_json::to_vec(&json)
            .map_err(|e| Error::internal(format!("could not serialize the request: {e}")))?
            .into());
    }
    if parsed.model() == Some(upstream_model) {
        // The usual LiteLLM config (`model_name: gpt-4o`, `model: openai/gpt-4o`): forwarded as
        // received, no copy.
        return Ok(parsed.bytes().clone());
    }
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        model: Option<&'a RawValue>,
    }
    let bytes = parsed.bytes();
    let top: Top<'_> = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("could not re-read the request: {e}")))?;
    let Some(raw) = top.model else {
        return Ok(bytes.clone());
    };
    let start = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
    let end = start + raw.get().len();
    let replacement = serde_json::to_string(upstream_model).expect("a string serializes");
    let mut out = Vec::with_capacity(bytes.len() + replacement.len());
    out.extend_from_slice(&bytes[..start]);
    out.extend_from_slice(replacement.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out.into())
}

/// The upstream response headers a client receives; every other header of an upstream
/// response is dropped. What passes describes the response (its type, length, coding and
/// caching, its date) or tells a client when to retry (`retry-after`, `retry-after-ms`,
/// OpenAI's `x-should-retry`, and the rate limits of [`FORWARDED_RESPONSE_PREFIXES`]). What is
/// dropped belongs to the upstream's origin or to the gateway's account with it: cookies set
/// for the upstream's site (`set-cookie`), its transport and security policies (`alt-svc`,
/// `strict-transport-security`, `content-security-policy`), a redirect's `location`, account
/// and project ids (`openai-organization`, `openai-project`, `anthropic-organization-id`), the
/// upstream's infrastructure (`server`, `via`, `cf-ray`, `x-envoy-*`), the upstream's own
/// request ids (`x-request-id`, Anthropic's `request-id`: the client's id for a request is the
/// gateway's), and any header the gateway's own layers write (`x-litellm-applied-guardrails`
/// from an upstream would tell a client that guardrails ran when none did).
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    header::DATE,
    header::RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
    HeaderName::from_static("x-should-retry"),
];

/// The prefixes of the upstream response headers a client receives besides
/// [`FORWARDED_RESPONSE_HEADERS`]: rate limits (OpenAI's and Anthropic's), which clients read
/// to pace themselves.
const FORWARDED_RESPONSE_PREFIXES: [&str; 2] = ["x-ratelimit-", "anthropic-ratelimit-"];

/// Whether an upstream response header reaches the client (see [`FORWARDED_RESPONSE_HEADERS`]).
fn forwarded(name: &HeaderName) -> bool {
    FORWARDED_RESPONSE_HEADERS.contains(name) || {
        let name = name.as_str();
        FORWARDED_RESPONSE_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
    }
}

/// Keeps of an upstream response's headers only those a client receives
/// ([`FORWARDED_RESPONSE_HEADERS`]): the hop-by-hop headers (RFC 9110 section 7.6.1) are among
/// those dropped, and so is any header its `Connection` names.
fn clean_response<B>(response: &mut Response<B>, api_base: String) {
    let headers = response.headers_mut();
    // One pass over the names, no lookups and no allocation, for a response with nothing to drop.
    if headers.keys().any(|name| !forwarded(name)) {
        let mut dropped: Vec<HeaderName> = connection_options(headers);
        dropped.extend(headers.keys().filter(|name| !forwarded(name)).cloned());
        for name in dropped {
            headers.remove(name);
        }
    }
    let coded = response.headers().contains_key(header::CONTENT_ENCODING);
    let extensions = response.extensions_mut();
    extensions.insert(ApiBase(api_base));
    if coded {
        extensions.insert(ContentCoded);
    }
}

/// Marks a response the upstream sent with a `content-encoding` (although it was asked for
/// `identity`): the gateway decodes its body. Every other response's body skips the decoding
/// layer, which would only pass its frames on.
#[derive(Debug, Clone, Copy)]
pub struct ContentCoded;

/// The headers that belong to one connection (RFC 9110 section 7.6.1), dropped from the
/// request and from the upstream's response.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// The headers a message's `Connection` header names (RFC 9110 section 7.6.1): like the
/// hop-by-hop headers, they belong to one connection and are not forwarded.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// Whether an upstream answer is about the gateway rather than the client's request: the
/// upstream refused the gateway's own credentials (401, 403, 407; a client's credentials never
/// reach the upstream, see [`DROPPED`]), or redirected it (3xx), which the gateway does not
/// follow. Either is the deployment's problem: the client gets a 502 that names neither the
/// upstream's message (OpenAI's 401 quotes part of the key) nor where it redirected.
fn refuses_the_gateway(status: StatusCode) -> bool {
    status.is_redirection()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::PROXY_AUTHENTICATION_REQUIRED
        )
}

/// The most of a refusing upstream's body read for the operator's log line.
const REFUSAL_BODY_LIMIT: usize = 4096;

/// The 502 a client gets for an upstream answer that [`refuses_the_gateway`]. What the
/// upstream said goes to the operator's log instead (a `warn` line with the model, the status
/// and the first 300 characters of the body, the deployment's key masked where it appears).
async fn refusal(target: &Target, response: Response<IdleTimeout<Incoming>>) -> Error {
    use http_body_util::BodyExt;
    let status = response.status();
    let model = &target.deployment.model_name;
    let body = http_body_util::Limited::new(response.into_body(), REFUSAL_BODY_LIMIT)
        .collect()
        .await
        .map(|body| body.to_bytes());
    let said: String = match &body {
        Ok(body) => String::from_utf8_lossy(body).chars().take(300).collect(),
        Err(_) => String::from("(the body could not be read)"),
    };
    let said = match &target.deployment.api_key {
        Some(key) if !key.is_empty() => said.replace(key.as_str(), "<redacted>"),
        _ => said,
    };
    tracing::warn!(
        model = %model,
        status = status.as_u16(),
        upstream_said = %said,
        "the upstream refused the gateway's request: check the deployment's api_key and api_base"
    );
    let (what, code) = if status.is_redirection() {
        (
            "redirected the request, which the gateway does not follow",
            "upstream_redirect",
        )
    } else {
        ("refused the gateway's credentials", "upstream_auth_error")
    };
    Error::new(
        StatusCode::BAD_GATEWAY,
        format!("the upstream of model '{model}' {what} ({status})"),
    )
    .with_code(code)
}

/// The future of [`Forward`].
pub type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<IdleTimeout<Incoming>>, BoxError>> + Send>>;

impl Service<Request<Full<Bytes>>> for Forward {
    type Response = Response<IdleTimeout<Incoming>>;
    type Error = BoxError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let (request, target) = match self.prepare(request) {
            Ok(prepared) => prepared,
            Err(err) => return Box::pin(std::future::ready(Err(err.into()))),
        };
        let pending = self.inner.client.request(request);
        let idle = self.inner.idle;
        Box::pin(async move {
            let mut response = pending.await?.map(|body| IdleTimeout::new(body, idle));
            let status = response.status();
            if refuses_the_gateway(status) {
                return Err(refusal(&target, response).await.into());
            }
            clean_response(&mut response, target.deployment.api_base.clone());
            Ok(response)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A body that sends a frame after each of `gaps` (tokio time), then ends.
    pub(crate) fn paced(gaps: Vec<Duration>) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames = futures_util::stream::unfold(gaps.into_iter(), |mut gaps| async move {
            let gap = gaps.next()?;
            tokio::time::sleep(gap).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), gaps))
        });
        http_body_util::StreamBody::new(frames)
    }

    /// Reads `body` to its end or first error, waiting `pause` between frames; the number of
    /// frames read and the error, if any.
    async fn read<B: Body<Data = Bytes, Error = BoxError>>(
        body: B,
        pause: Duration,
    ) -> (usize, Option<String>) {
        use http_body_util::BodyExt;
        let mut body = std::pin::pin!(body);
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(_) => frames += 1,
                Err(e) => return (frames, Some(e.to_string())),
            }
            tokio::time::sleep(pause).await;
        }
        (frames, None)
    }

    fn deployment(provider: Provider, api_base: &str) -> Deployment {
        Deployment {
            model_name: "m".into(),
            provider,
            upstream_model: "m".into(),
            api_base: api_base.into(),
            api_key: Some("sk-upstream".into()),
            guardrails: Vec::new(),
            price: None,
        }
    }

    /// The upstream request `Forward` makes of a client request to `path`.
    fn prepared(d: Deployment, path: &str) -> Request<Full<Bytes>> {
        let forward = Forward::new(&[d], HttpClient::new(), Duration::from_secs(1));
        let body = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let route = path.split('?').next().unwrap();
        let call_type = CallType::of(&http::Method::POST, route);
        let parsed = ParsedRequest::parse(call_type, body.clone(), None).unwrap();
        let mut request = Request::post(path)
            .header(header::AUTHORIZATION, "Bearer sk-client")
            .header("x-trace", "t1")
            .body(Full::new(body))
            .unwrap();
        request.extensions_mut().insert(parsed);
        forward.prepare(request).unwrap().0
    }

    #[test]
    fn headers_for_the_gateway_or_this_hop_are_not_forwarded() {
        let forward = Forward::new(
            &[deployment(Provider::OpenAi, "http://up.internal/v1")],
            HttpClient::new(),
            Duration::from_secs(1),
        );
        let body = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let call_type = CallType::of(&http::Method::POST, "/v1/chat/completions");
        let mut request = Request::post("/v1/chat/completions")
            .header(header::CONNECTION, "keep-alive, X-Hop")
            .header(header::CONNECTION, "x-other-hop")
            .header("x-hop", "for the next hop only")
            .header("x-other-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-trace", "t1")
            .header("x-trace", "t2")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .header("OpenAI-Organization", "org-another")
            .header("OpenAI-Project", "proj_another")
            .body(Full::new(body.clone()))
            .unwrap();
        request
            .extensions_mut()
            .insert(ParsedRequest::parse(call_type, body, None).unwrap());
        let (forwarded, _) = forward.prepare(request).unwrap();
        let mut names: Vec<&str> = forwarded.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-length",
                "x-trace"
            ]
        );
        // Every value of a kept header, in order; none of a dropped one's.
        let traces: Vec<_> = forwarded.headers().get_all("x-trace").iter().collect();
        assert_eq!(traces, ["t1", "t2"]);
    }

    #[test]
    fn an_upstream_response_keeps_only_the_headers_a_client_receives() {
        let response = |headers: &[(&str, &str)]| {
            let mut builder = Response::builder();
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let mut response = builder.body(()).unwrap();
            clean_response(&mut response, "http://up.internal".into());
            assert_eq!(
                response.extensions().get::<ApiBase>().map(|b| b.0.as_str()),
                Some("http://up.internal")
            );
            let mut kept: Vec<String> = response
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect();
            kept.sort_unstable();
            kept
        };
        assert_eq!(
            response(&[
                ("connection", "close, X-Upstream-Hop, Retry-After"),
                ("x-upstream-hop", "internal"),
                ("retry-after", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "h2c"),
                ("trailer", "x-checksum"),
                ("content-type", "application/json"),
                ("x-request-id", "r1"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-ratelimit-remaining-tokens", "10"),
            ]),
            [
                "content-type: application/json",
                "x-ratelimit-remaining-tokens: 10"
            ]
        );
        // Nothing to remove: the headers stay as they are.
        assert_eq!(
            response(&[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("anthropic-ratelimit-tokens-limit", "1")
            ]),
            [
                "anthropic-ratelimit-tokens-limit: 1",
                "cache-control: no-cache",
                "content-type: text/event-stream"
            ]
        );
    }

    #[test]
    fn the_upstream_url_keeps_the_base_path_and_the_query() {
        let openai = || deployment(Provider::OpenAi, "http://up.internal:8080/openai/v1");
        let cases = [
            (
                openai(),
                "/v1/chat/completions",
                "http://up.internal:8080/openai/v1/chat/completions",
            ),
            (
                openai(),
                "/chat/completions",
                "http://up.internal:8080/openai/v1/chat/completions",
            ),
            (
                openai(),
                "/v1/chat/completions?api-version=2024-10-21",
                "http://up.internal:8080/openai/v1/chat/completions?api-version=2024-10-21",
            ),
            (
                openai(),
                "/v1/responses",
                "http://up.internal:8080/openai/v1/responses",
            ),
            (
                deployment(Provider::Anthropic, "https://api.anthropic.example/v1"),
                "/v1/messages",
                "https://api.anthropic.example/v1/messages",
            ),
            (
                deployment(Provider::Anthropic, "https://api.anthropic.example"),
                "/v1/messages?beta=true",
                "https://api.anthropic.example/v1/messages?beta=true",
            ),
        ];
        for (d, path, want) in cases {
            let anthropic = d.provider == Provider::Anthropic;
            let request = prepared(d, path);
            assert_eq!(request.uri().to_string(), want, "{path}");
            let headers = request.headers();
            // The client's key never reaches the upstream; the deployment's does, once.
            let (name, value) = if anthropic {
                ("x-api-key", "sk-upstream")
            } else {
                ("authorization", "Bearer sk-upstream")
            };
            assert_eq!(headers.get_all(name).iter().collect::<Vec<_>>(), [value]);
            assert!(headers[name].is_sensitive());
            if anthropic {
                assert!(headers.get(header::AUTHORIZATION).is_none());
                assert_eq!(headers["anthropic-version"], DEFAULT_ANTHROPIC_VERSION);
            }
            assert_eq!(headers["x-trace"], "t1");
            assert_eq!(headers[header::ACCEPT_ENCODING], "identity");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_lets_a_steady_stream_run_past_the_limit() {
        // Twenty frames 60 ms apart: 1.2 s in all, each wait under the 100 ms limit.
        let body = IdleTimeout::new(
            paced(vec![Duration::from_millis(60); 20]),
            Duration::from_millis(100),
        );
        assert_eq!(read(body, Duration::ZERO).await, (20, None));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stream_that_stalls() {
        let started = Instant::now();
        let gaps = vec![
            Duration::from_millis(60),
            Duration::from_millis(60),
            Duration::from_millis(150),
        ];
        let body = IdleTimeout::new(paced(gaps), Duration::from_millis(100));
        assert_eq!(
            read(body, Duration::ZERO).await,
            (
                2,
                Some("the upstream sent nothing for 100 ms mid-response".to_owned())
            )
        );
        // At the end of the stalled wait, not later: 120 ms of frames, then 100 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(220));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_does_not_count_a_slow_reader() {
        // The upstream is quick; the reader waits 500 ms between frames (five times the
        // limit): only time spent waiting on the upstream counts.
        let body = IdleTimeout::new(
            paced(vec![Duration::from_millis(10); 5]),
            Duration::from_millis(100),
        );
        assert_eq!(read(body, Duration::from_millis(500)).await, (5, None));
    }

    /// A waker that counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn wakes(w: &Arc<Wakes>) -> usize {
        w.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_wakes_the_task_that_polled_last_at_the_limit_and_not_before() {
        // An upstream that never sends: the timer alone ends the wait.
        let silent = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let mut body = std::pin::pin!(IdleTimeout::new(silent, Duration::from_millis(100)));
        let (a, b) = (Arc::new(Wakes(0.into())), Arc::new(Wakes(0.into())));
        let (wa, wb) = (Waker::from(Arc::clone(&a)), Waker::from(Arc::clone(&b)));
        let mut poll = |waker: &Waker| body.as_mut().poll_frame(&mut Context::from_waker(waker));
        // Polled again and again before the limit (as a task woken for other reasons is).
        for _ in 0..5 {
            assert!(poll(&wa).is_pending());
        }
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(poll(&wa).is_pending());
        // Then by another task: the timer must wake that one.
        assert!(poll(&wb).is_pending());
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(poll(&wb).is_pending());
        assert_eq!((wakes(&a), wakes(&b)), (0, 0), "nothing before the limit");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!((wakes(&a), wakes(&b)), (0, 1));
        match poll(&wb) {
            Poll::Ready(Some(Err(e))) => assert_eq!(
                e.to_string(),
                "the upstream sent nothing for 100 ms mid-response"
            ),
            other => panic!("expected the idle timeout, got {other:?}"),
        }
    }

    #[test]
    fn forward_is_one_pointer() {
        // Every layer above clones the stack it wraps for each request (the instance polled
        // ready goes into the request's future); the client and the deployments are shared.
        assert_eq!(std::mem::size_of::<Forward>(), std::mem::size_of::<usize>());
    }

    fn parsed(body: &str) -> ParsedRequest {
        ParsedRequest::parse(
            CallType::ChatCompletions,
            Bytes::copy_from_slice(body.as_bytes()),
            None,
        )
        .unwrap()
    }

    /// The forwarded `content-length` is one value, the forwarded body's length, whatever the
    /// client sent (none, the right one, one written otherwise, a wrong one, two), with the body
    /// as received, with the model renamed, and with a gateway key removed.
    #[test]
    fn the_forwarded_content_length_is_the_forwarded_body_s() {
        let mut renamed = deployment(Provider::OpenAi, "http://up.internal/v1");
        renamed.upstream_model = "a-longer-upstream-name".into();
        let plain = r#"{"model":"m","messages":[]}"#;
        let cases: [(&str, &[&str], bool); 7] = [
            (plain, &[], false),
            (plain, &["27"], false),
            (plain, &["027"], false),
            (plain, &["99"], false),
            (plain, &["27", "27"], false),
            (plain, &["27"], true),
            (
                r#"{"model":"m","guardrails":["g"],"messages":[]}"#,
                &["44"],
                false,
            ),
        ];
        for (body, lengths, rename) in cases {
            let d = if rename {
                renamed.clone()
            } else {
                deployment(Provider::OpenAi, "http://up.internal/v1")
            };
            let forward = Forward::new(&[d], HttpClient::new(), Duration::from_secs(1));
            let bytes = Bytes::from_static(body.as_bytes());
            let call_type = CallType::of(&http::Method::POST, "/v1/chat/completions");
            let mut request = Request::post("/v1/chat/completions");
            for length in lengths {
                request = request.header(header::CONTENT_LENGTH, *length);
            }
            let mut request = request.body(Full::new(bytes.clone())).unwrap();
            request
                .extensions_mut()
                .insert(ParsedRequest::parse(call_type, bytes, None).unwrap());
            let (forwarded, _) = forward.prepare(request).unwrap();
            let (parts, sent) = forwarded.into_parts();
            let sent_len = http_body::Body::size_hint(&sent).exact().unwrap();
            assert_eq!(
                sent_len == body.len() as u64,
                !rename && !body.contains("guardrails"),
                "{body}"
            );
            let values: Vec<&str> = parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(
                values,
                [sent_len.to_string()],
                "{body} {lengths:?} {rename}"
            );
        }
    }

    #[test]
    fn model_is_spliced_in_place() {
        let body = "{ \"model\" : \"gpt-guarded\",\n \"messages\": [{\"role\":\"user\",\"content\":\"model: x\"}] }";
        let out = rewrite_body(&parsed(body), "gpt-4o-mini").unwrap();
        assert_eq!(
            out,
            "{ \"model\" : \"gpt-4o-mini\",\n \"messages\": [{\"role\":\"user\",\"content\":\"model: x\"}] }"
        );
        let out = rewrite_body(&parsed(r#"{"messages":[],"model":"a\"b"}"#), "m\"x").unwrap();
        assert_eq!(out, r#"{"messages":[],"model":"m\"x"}"#);
    }

    #[test]
    fn gateway_only_keys_are_removed() {
        let body = r#"{"model":"g","guardrails":["a"],"metadata":{"guardrails":["b"],"trace":"t"},"litellm_metadata":{"x":1},"messages":[]}"#;
        let out = rewrite_body(&parsed(body), "up").unwrap();
        assert_eq!(
            out,
            r#"{"model":"up","metadata":{"trace":"t"},"messages":[]}"#
        );
        // Each alone is removed too, even with the model name unchanged.
        for (body, want) in [
            (
                r#"{"model":"up","guardrails":["a"],"messages":[]}"#,
                r#"{"model":"up","messages":[]}"#,
            ),
            (
                r#"{"model":"up","litellm_metadata":{},"messages":[]}"#,
                r#"{"model":"up","messages":[]}"#,
            ),
            (
                r#"{"model":"up","metadata":{"guardrails":["b"]},"messages":[]}"#,
                r#"{"model":"up","metadata":{},"messages":[]}"#,
            ),
        ] {
            assert_eq!(rewrite_body(&parsed(body), "up").unwrap(), want, "{body}");
        }
    }
}
