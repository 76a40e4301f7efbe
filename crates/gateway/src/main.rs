//! `guardrail-gateway`: run the guardrail-tower stack from a LiteLLM-style config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guardrail_gateway::app::Gateway;
use guardrail_gateway::telemetry::{self, Telemetry};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

mod demo;

/// mimalloc: its thread-local free lists suit a server that allocates and frees many small
/// objects per request on every worker thread (see the `mimalloc` feature).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An LLM gateway with guardrails, OpenAI-style errors and spend logs.
#[derive(Parser)]
#[command(name = "guardrail-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Let the kernel back the heap with transparent huge pages. Off by default: where THP is
    /// enabled (`always` or `madvise`), it doubles the gateway's resident memory for no
    /// measurable gain (see BENCHMARKS.md). To keep it off from the first allocation, the
    /// gateway then starts itself again once, in the same process, with THP off.
    #[arg(long, global = true)]
    transparent_huge_pages: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway from a config file.
    Serve {
        /// The LiteLLM-style YAML config.
        #[arg(long, short)]
        config: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: SocketAddr,
        /// Listen on a non-loopback address without a master key: anyone who reaches the port
        /// can call every model and read the spend logs. Without this flag (or
        /// `general_settings.allow_unauthenticated: true`) `serve` refuses to.
        #[arg(long)]
        allow_unauthenticated: bool,
        /// Serve Prometheus metrics on `GET /metrics` (as `litellm_settings.callbacks:
        /// ["prometheus"]` does); behind the master key when there is one.
        #[arg(long)]
        metrics: bool,
    },
    /// Run a self-contained demo on loopback (a mock upstream and the gateway) and print what
    /// clients see.
    Demo,
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!(
        "shutting down: no new connections; finishing in-flight requests (bounded by \
         general_settings.graceful_shutdown_timeout), then flushing the spend log"
    );
}

async fn serve(
    config: PathBuf,
    listen: SocketAddr,
    allow_unauthenticated: bool,
    metrics: bool,
) -> ExitCode {
    if let Err(e) = std::fs::metadata(&config) {
        eprintln!("error: cannot read {}: {e}", config.display());
        return ExitCode::from(2);
    }
    // Before the gateway is built: its default connection limit comes from this limit.
    if let Some((before, after)) = guardrail_gateway::process::raise_open_file_limit() {
        tracing::debug!(before, after, "open-file limit raised to the hard limit");
    }
    // Read again on SIGHUP and POST /config/reload.
    let gateway = match Gateway::from_config_file_with_metrics(&config, metrics).await {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("error: {}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    if let Err(e) = gateway.check_exposure(listen, allow_unauthenticated) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if !gateway.requires_keys() {
        tracing::warn!(
            %listen,
            "NO MASTER KEY: this gateway runs OPEN. Every route answers without a key: anyone \
             who can reach {listen} can call every model and read every spend log. Set \
             general_settings.master_key to require keys."
        );
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    // The bound address (with `--listen 127.0.0.1:0`, the port the system chose).
    let listen = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        %listen,
        max_client_connections = gateway.max_client_connections(),
        "guardrail-gateway listening"
    );
    guardrail_gateway::reload::spawn_sighup_listener(gateway.reload_handle());
    match gateway.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime's threads exist: the program starts again with THP off when it was on.
    if !cli.transparent_huge_pages {
        guardrail_gateway::process::disable_transparent_huge_pages_from_start();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let default_level = match cli.command {
        Command::Demo => "warn",
        Command::Serve { .. } => "info",
    };
    // The trace spans (`telemetry::TARGET`) go to the OTLP exporter only, never to the log.
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level))
        .add_directive(
            format!("{}=off", telemetry::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(log_filter);
    let otel = match (&cli.command, telemetry::OtelSettings::from_env()) {
        (Command::Serve { .. }, Some(settings)) => {
            match Telemetry::start(&settings, tokio::runtime::Handle::current()) {
                Ok(started) => Some(started),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let (telemetry, otel_layer) = otel.unzip();
    let registry = tracing_subscriber::registry().with(log);
    match otel_layer {
        Some(otel_layer) => registry.with(otel_layer).init(),
        // No exporter: no layer at all. An absent `Option` layer would still declare interest
        // in every callsite, and every request would build its trace spans for nothing.
        None => registry.init(),
    }
    if telemetry.is_some() {
        tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)");
    }
    let code = match cli.command {
        Command::Serve {
            config,
            listen,
            allow_unauthenticated,
            metrics,
        } => serve(config, listen, allow_unauthenticated, metrics).await,
        Command::Demo => match demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e}");
                ExitCode::FAILURE
            }
        },
    };
    if let Some(telemetry) = telemetry {
        // Exports the last batch; blocking, so off the async threads.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    code
}
