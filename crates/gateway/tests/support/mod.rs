//! A gateway served on a loopback socket for the operations tests.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use guardrail_gateway::app::{Gateway, RunningGateway};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Serves `gateway` on `127.0.0.1:0` (stopped when the handle is dropped).
pub async fn serve(gateway: Gateway) -> RunningGateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway.spawn(listener).unwrap()
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request (a JSON body when given, a bearer key when given); the status, the
/// headers and the whole body.
pub async fn call(
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    (
        status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// [`call`], the body as JSON.
pub async fn call_json(
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, _, bytes) = call(method, url, key, body).await;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

/// Every row of the SQLite spend log at `path`, newest first (after the writer has stopped).
pub async fn spend_rows(path: &std::path::Path) -> Vec<guardrail_tower_spend_log::SpendRecord> {
    let store = guardrail_tower_spend_log::SqliteSink::open(path)
        .await
        .unwrap();
    guardrail_tower_spend_log::SpendLogStore::query(
        &store,
        &guardrail_tower_spend_log::SpendLogFilter::new(),
    )
    .await
    .unwrap()
}
