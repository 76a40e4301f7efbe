//! Test support for guardrail-tower: a mock LLM upstream and helpers for its tests.
//!
//! The layers are tested where a user runs them: in front of an upstream, over real sockets.
//! This crate is that upstream and the plumbing around it:
//!
//! - [`mock`]: a mock OpenAI- and Anthropic-compatible upstream with fault injection: the
//!   examples, the demo, the end-to-end tests and the load benchmark run against it.
//! - [`providers`]: contract mocks of guardrail services (Presidio, Lakera Guard, Azure AI
//!   Content Safety, Amazon Bedrock Guardrails, Aim) that record what they receive and can be
//!   scripted to fail.
//! - [`serve`]: run any tower service on a loopback socket with hyper, as a real server.
//! - [`client`]: a pooled hyper-util client, and [`send`] to read a whole response.
//! - [`body`]: request and response bodies for tests: split at chosen bytes, with trailers,
//!   failing after some chunks, pending forever (to force a drop), counting polls.
//!
//! ```text
//!      request in                        response out
//!           │                                  ▲
//!  ┌────────▼──────────────────────────────────┴──────────────┐
//!  │ SpendLogLayer                records the request         │
//!  │ ErrorNormalizeLayer          shapes every error          │
//!  │ ModelGuardrailMergeLayer     adds the model's guardrails │
//!  │ PreCallGuardrailLayer        checks the request          │
//!  │ StreamingGuardrailBodyLayer  checks the response         │
//!  └────────┬──────────────────────────────────▲──────────────┘
//!           ▼                                  │
//!   upstream client service: hyper-util, reqwest, a mock, ... ◀━━ mock::MockUpstream
//! ```
//!
//! # Example
//!
//! `ErrorNormalizeLayer` in front of a forwarder to the mock, which answers like a load balancer
//! in trouble when asked to (`x-mock-fault: html-500`):
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_error::ErrorNormalizeLayer;
//! use guardrail_tower_testkit::mock::{FAULT_HEADER, Fault, MockUpstream};
//! use guardrail_tower_testkit::{client, post_json};
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockUpstream::start().await.unwrap();
//! let origin = mock.origin();
//! let upstream = service_fn(move |mut req: Request<Full<Bytes>>| {
//!     *req.uri_mut() = format!("{origin}{}", req.uri().path()).parse().unwrap();
//!     client().request(req)
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorNormalizeLayer::new())
//!     .service(upstream);
//!
//! let mut req = post_json("/v1/chat/completions", r#"{"model":"m","messages":[]}"#);
//! req.headers_mut()
//!     .insert(FAULT_HEADER, Fault::Html500.as_str().parse().unwrap());
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 500);
//! let body = resp.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     body,
//!     r#"{"error":{"message":"upstream returned 500 Internal Server Error (HTML body omitted)","type":"internal_server_error","param":null,"code":null}}"#
//! );
//! assert_eq!(mock.request_count(), 1);
//! # }
//! ```
//!
//! A service of your own, served on loopback and read back with a real client:
//!
//! ```
//! use bytes::Bytes;
//! use guardrail_tower_testkit::{body, serve, send};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().service(service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body::chunks(["a", "b"])))
//! }));
//! let server = serve(svc).await;
//! let resp = send(http::Request::get(server.url("/")).body(Full::<Bytes>::default()).unwrap()).await;
//! assert_eq!(resp.body(), "ab");
//! # }
//! ```

pub mod body;
pub mod mock;
pub mod providers;

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running test server. Stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` over HTTP/1.1 on `127.0.0.1`, one task per connection.
pub async fn serve<S, B>(service: S) -> TestServer
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    serve_on(listener, service)
}

/// Serves `service` on an already bound listener.
pub fn serve_on<S, B>(listener: TcpListener, service: S) -> TestServer
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer { addr, task }
}

/// A shared pooled client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    CLIENT
        .get_or_init(|| Client::builder(TokioExecutor::new()).build_http())
        .clone()
}

/// Sends a request with a fresh client (no pooled connection shared across runtimes) and reads
/// the whole response.
pub async fn send(request: Request<Full<Bytes>>) -> Response<Bytes> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("request sent");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    Response::from_parts(parts, body)
}

/// A JSON POST to `url`.
pub fn post_json(url: &str, json: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(json.as_bytes())))
        .expect("valid request")
}
