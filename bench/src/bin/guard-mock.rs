//! `guard-mock`: a Generic Guardrail API service (LiteLLM's `generic_guardrail_api`,
//! `POST /beta/litellm_basic_guardrail_api`) that answers `{"action": "NONE"}` (allow) after a
//! fixed latency, and counts what it serves: the remote-guardrail benchmark's service.
//!
//! ```text
//! guard-mock --listen 127.0.0.1:18409 --latency-ms 5
//! curl -s http://127.0.0.1:18409/stats   # {"connections":N,"requests":N,"open":N}
//! ```
//!
//! `connections` counts the TCP connections accepted since the start, `open` those still open,
//! and `requests` the guardrail checks answered: a client that pools and reuses its connections
//! makes `connections` stay small while `requests` grows. `GET /stats` is not counted.

/// The same allocator as the gateway binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Serve a Generic Guardrail API mock that allows everything after a fixed latency.
#[derive(Parser)]
#[command(name = "guard-mock", version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:18409")]
    listen: SocketAddr,
    /// How long each check takes, in milliseconds (0: answer at once).
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    closed: AtomicU64,
    requests: AtomicU64,
}

async fn handle(
    counts: Arc<Counts>,
    latency: Duration,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let _ = request.into_body().collect().await;
    let (status, body) = if path == "/stats" {
        let connections = counts.connections.load(Ordering::Relaxed);
        let body = format!(
            "{{\"connections\":{connections},\"requests\":{},\"open\":{}}}",
            counts.requests.load(Ordering::Relaxed),
            connections - counts.closed.load(Ordering::Relaxed)
        );
        (StatusCode::OK, body)
    } else if path.ends_with("/beta/litellm_basic_guardrail_api") {
        // A thread's sleep, not Tokio's timer: the timer fires on whole milliseconds, which
        // added 0.2-1.4 ms to the nominal latency depending on when in a millisecond the check
        // arrived, more than the gateway's own overhead being measured. At 0 ms the answer
        // comes at once.
        if !latency.is_zero() {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(latency)).await;
        }
        counts.requests.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, r#"{"action":"NONE"}"#.to_owned())
    } else {
        (StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.to_owned())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("guard-mock: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let counts = Arc::new(Counts::default());
    let latency = Duration::from_millis(args.latency_ms);
    eprintln!(
        "guard-mock: listening on {} ({} ms per check)",
        args.listen, args.latency_ms
    );
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            counts.connections.fetch_add(1, Ordering::Relaxed);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let c = Arc::clone(&counts);
                let service = service_fn(move |req| handle(Arc::clone(&c), latency, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counts.closed.fetch_add(1, Ordering::Relaxed);
            });
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!(
        "guard-mock: {} checks on {} connections",
        counts.requests.load(Ordering::Relaxed),
        counts.connections.load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}
