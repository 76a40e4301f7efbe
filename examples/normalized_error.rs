//! Starts a tiny server with `ErrorNormalizeLayer` in front of a failing upstream, sends it three
//! requests, and prints the normalized errors a client sees.
//!
//! ```text
//! cargo run --example normalized_error
//! ```

use bytes::Bytes;
use guardrail_tower::core::Error;
use guardrail_tower::error::ErrorNormalizeLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, service_fn};

/// An upstream that fails a different way on each endpoint.
async fn flaky_upstream(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    match req.uri().path() {
        // A load balancer in front of the model answers with HTML.
        "/v1/chat/completions" => Ok(Response::builder()
            .status(502)
            .header("content-type", "text/html")
            .body(Full::new(Bytes::from_static(
                b"<html><h1>502 Bad Gateway</h1></html>",
            )))?),
        // The connection to the model drops.
        "/v1/messages" => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )
        .into()),
        // A guardrail further in blocked the request.
        _ => Err(Error::guardrail_blocked(
            "block-words",
            "Blocked: the prompt mentions 'forbidden'",
        )
        .into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let service = ServiceBuilder::new()
        .layer(ErrorNormalizeLayer::new())
        .service(service_fn(flaky_upstream));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    println!("listening on http://{addr}\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        let req = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"model":"gpt-4o-mini"}"#)))?;
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!(
            "POST {path}\n  -> {status}\n  {}\n",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
