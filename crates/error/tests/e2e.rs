//! ErrorNormalizeLayer over real sockets: a hyper server with the layer in front of a hyper-util
//! client that forwards to a real upstream.

use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_error::ErrorNormalizeLayer;
use guardrail_tower_testkit::{body, post_json, send, serve};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, service_fn};

/// A gateway whose upstream client forwards every request to `upstream`, behind a 300 ms timeout.
async fn gateway(upstream: String) -> guardrail_tower_testkit::TestServer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let forward = service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("{upstream}{}", parts.uri.path()).parse()?;
            let body = body.collect().await?.to_bytes();
            let response = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            Ok::<_, BoxError>(response)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(ErrorNormalizeLayer::new())
        .timeout(Duration::from_millis(300))
        .service(forward);
    serve(svc).await
}

#[tokio::test]
async fn html_502_from_upstream_becomes_json_in_each_shape() {
    let upstream = serve(service_fn(|_req: Request<Incoming>| async {
        Ok::<_, BoxError>(
            Response::builder()
                .status(502)
                .header("content-type", "text/html")
                .body(body::chunks([
                    "<html><body><h1>502 Bad Gateway</h1>",
                    "</body></html>",
                ]))
                .unwrap(),
        )
    }))
    .await;
    let gw = gateway(format!("http://{}", upstream.addr())).await;

    let resp = send(post_json(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m"}"#,
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.body(),
        r#"{"error":{"message":"upstream returned 502 Bad Gateway (HTML body omitted)","type":"bad_gateway_error","param":null,"code":null}}"#
    );

    let resp = send(post_json(&gw.url("/v1/messages"), r#"{"model":"m"}"#)).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.body(),
        r#"{"type":"error","error":{"type":"api_error","message":"upstream returned 502 Bad Gateway (HTML body omitted)"}}"#
    );
}

#[tokio::test]
async fn refused_upstream_is_502_and_hung_upstream_is_504() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway(format!("http://127.0.0.1:{closed_port}")).await;
    let resp = send(post_json(&gw.url("/v1/responses"), "{}")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");

    let hung = serve(service_fn(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await; // never answers
        Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
    }))
    .await;
    let gw = gateway(format!("http://{}", hung.addr())).await;
    let resp = send(post_json(&gw.url("/v1/chat/completions"), "{}")).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        resp.body(),
        r#"{"error":{"message":"upstream timed out: request timed out","type":"timeout_error","param":null,"code":"upstream_timeout"}}"#
    );
}
