//! `mock-upstream`: serves [`guardrail_tower_testkit::mock::MockUpstream`] (an OpenAI-compatible mock
//! with the `x-mock-events` and `x-mock-delay-ms` control headers) on a fixed address, with
//! request recording off, until SIGINT or SIGTERM. The load benchmark's upstream and its
//! baseline target.
//!
//! ```text
//! mock-upstream --listen 127.0.0.1:18401
//! ```

/// The same allocator as the gateway binary, so the comparison measures the layers, not malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use guardrail_tower_testkit::mock::MockUpstream;

/// Serve the mock OpenAI-compatible upstream (recording off) until SIGINT or SIGTERM.
#[derive(Parser)]
#[command(name = "mock-upstream", version, about)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:18401")]
    listen: SocketAddr,
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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mock = match MockUpstream::start_on(listener) {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    mock.set_recording(false);
    eprintln!("mock-upstream: listening on {}", mock.origin());
    shutdown_signal().await;
    eprintln!(
        "mock-upstream: served {} requests, stopping",
        mock.request_count()
    );
    drop(mock);
    ExitCode::SUCCESS
}
