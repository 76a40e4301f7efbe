//! What the examples share: a minimal upstream forwarder over the pooled HTTP(S) client.

use bytes::Bytes;
use guardrail_tower::guardrails::HttpClient;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::{BoxError, Service, service_fn};

/// Forwards each request to `base` (an OpenAI-compatible base URL such as
/// `https://api.openai.com/v1`), with `key` as the bearer token. `/v1/chat/completions` goes to
/// `{base}/chat/completions`.
pub(crate) fn forward(
    base: String,
    key: Option<String>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let client = HttpClient::new();
    service_fn(move |mut req: Request<Full<Bytes>>| {
        let client = client.clone();
        let path = req
            .uri()
            .path()
            .strip_prefix("/v1")
            .unwrap_or(req.uri().path())
            .to_owned();
        let uri: Result<Uri, _> = format!("{base}{path}").parse();
        if let Some(key) = &key {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
                req.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
        }
        req.headers_mut().remove(http::header::HOST);
        req.headers_mut().remove(http::header::ACCEPT_ENCODING);
        async move {
            *req.uri_mut() = uri?;
            Ok::<_, BoxError>(client.request(req).await?)
        }
    })
}

/// The upstream base URL from `UPSTREAM_BASE` (default: a local OpenAI-compatible server, e.g.
/// `guardrail-gateway mock`).
pub(crate) fn upstream_base() -> String {
    std::env::var("UPSTREAM_BASE").unwrap_or_else(|_| "http://127.0.0.1:9000/v1".to_owned())
}
