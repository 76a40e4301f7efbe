//! What the examples share: where the upstream is, and a minimal forwarder to it.
//!
//! Every example runs with no network beyond loopback: without `UPSTREAM_BASE` it starts the
//! mock OpenAI- and Anthropic-compatible upstream of `guardrail-tower-testkit` on `127.0.0.1`.
//! The tests in `tests/examples.rs` run each example's own functions against that mock.

#![allow(dead_code)] // each example uses its own part of this module

use bytes::Bytes;
use guardrail_tower::guardrails::HttpClient;
use guardrail_tower_testkit::mock::MockUpstream;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::{BoxError, Service, service_fn};

/// The upstream an example talks to: `UPSTREAM_BASE` (an OpenAI-compatible base URL such as
/// `https://api.openai.com/v1`, with the key in `OPENAI_API_KEY`), or else a mock upstream on
/// loopback, kept running while this value lives.
pub(crate) struct Upstream {
    /// The base URL, ending in `/v1`.
    pub(crate) base: String,
    /// The bearer key for the upstream, if any.
    pub(crate) key: Option<String>,
    _mock: Option<MockUpstream>,
}

impl Upstream {
    /// `UPSTREAM_BASE` and `OPENAI_API_KEY`, or a mock upstream on loopback.
    pub(crate) async fn from_env() -> Result<Upstream, BoxError> {
        match std::env::var("UPSTREAM_BASE") {
            Ok(base) => Ok(Upstream {
                base,
                key: std::env::var("OPENAI_API_KEY").ok(),
                _mock: None,
            }),
            Err(_) => {
                let mock = MockUpstream::start().await?;
                println!(
                    "upstream: a mock on {} (set UPSTREAM_BASE for a real one)",
                    mock.base_url()
                );
                Ok(Upstream {
                    base: mock.base_url(),
                    key: None,
                    _mock: Some(mock),
                })
            }
        }
    }
}

/// Forwards each request to `base` (an OpenAI-compatible base URL such as
/// `https://api.openai.com/v1`), with `key` as the bearer token: `/v1/chat/completions` goes to
/// `{base}/chat/completions`. The body streams back as it arrives.
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
        let path = req.uri().path();
        let path = path.strip_prefix("/v1").unwrap_or(path).to_owned();
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
