//! `bare-proxy`: the physical limit for an HTTP proxy in this benchmark. A hyper HTTP/1.1 server
//! that forwards every request (method, path and query, headers, body) to an upstream base URL
//! through a pooled hyper-util legacy client, and streams the response back as it arrives. No
//! middleware, no parsing, no buffering: request and response bodies are passed through frame
//! by frame. Multi-threaded Tokio runtime (one worker per core), like the gateway.
//!
//! ```text
//! bare-proxy --listen 127.0.0.1:18402 --upstream http://127.0.0.1:18401
//! ```
//!
//! `POST /v1/chat/completions` on the proxy becomes `POST {upstream}/v1/chat/completions`.
//! Hop-by-hop headers and `host` are dropped (the client sets `host` from the upstream URL). A
//! failed upstream call is a 502 with a plain-text body. Accepted and upstream sockets use
//! `TCP_NODELAY` unless `--no-nodelay` is given (to measure what Nagle's algorithm costs).

/// The same allocator as the gateway binary, so the comparison measures the layers, not malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Forward every request to an upstream, streaming bodies both ways.
#[derive(Parser)]
#[command(name = "bare-proxy", version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:18402")]
    listen: SocketAddr,
    /// The upstream base URL; the request's path and query are appended to it.
    #[arg(long)]
    upstream: String,
    /// Leave Nagle's algorithm on for accepted (client-side) connections.
    #[arg(long)]
    no_nodelay: bool,
}

/// Headers that belong to one connection (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// How long an idle pooled upstream connection is kept (the gateway's value).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type ProxyBody = Either<Incoming, Full<Bytes>>;

struct Proxy {
    client: Client<HttpConnector, Incoming>,
    base: String,
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn bad_gateway(message: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn forward(
    proxy: Arc<Proxy>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{path}", proxy.base);
    parts.uri = match url.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return Ok(bad_gateway(format!("invalid upstream URL '{url}': {e}"))),
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    match proxy.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(e) => Ok(bad_gateway(format!("upstream request failed: {e}"))),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, nodelay: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a reset before accept: back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(Arc::clone(&proxy), request));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // As the gateway binary does by default, so that both hold memory the same way.
    guardrail_gateway::process::disable_transparent_huge_pages();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts")
        .block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let base = args.upstream.trim_end_matches('/').to_owned();
    if let Err(e) = format!("{base}/").parse::<Uri>() {
        eprintln!("bare-proxy: invalid --upstream '{}': {e}", args.upstream);
        return ExitCode::from(2);
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bare-proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("bare-proxy: listening on {} -> {base}", args.listen);
    let proxy = Arc::new(Proxy { client, base });
    tokio::select! {
        () = accept_loop(listener, proxy, !args.no_nodelay) => {}
        () = shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}
