//! `slow-streams`: many concurrent, slowly paced chat streams against one target (the mock
//! upstream, the bare proxy or the gateway), as users of a gateway run them: thousands of
//! streams open at once, each paced by the model. Also measures idle keep-alive connections.
//!
//! ```text
//! # 1,000 streams of 30 events a second for 20 s, started over 5 s, against a proxy at :18402;
//! # reports the proxy's (pid 1234) CPU time and peak RSS too
//! slow-streams streams --url http://127.0.0.1:18402/v1/chat/completions \
//!     --streams 1000 --rate 30 --seconds 20 --ramp 5 --pid 1234
//!
//! # 10,000 idle keep-alive connections, each after one GET: memory per connection
//! slow-streams idle --url http://127.0.0.1:18402/health --connections 10000 --pid 1234
//! ```
//!
//! `streams`: each stream is its own HTTP/1.1 connection sending the chat request of
//! `bench/chat.json` with `"stream": true` and the mock's control headers
//! `x-mock-events: RATE * SECONDS` and `x-mock-events-per-second: RATE`, so the mock sends the
//! events on a fixed schedule (event `i` at `i / RATE` s after the head). The client records
//! when each content word arrives (the mock sends one word per content delta, each with its
//! leading space; a proxy may split or merge deltas, so words are counted, not events). The delay of word
//! `k` is its arrival time minus its scheduled time, taking as the stream's offset its most
//! punctual word: 0 for that word, and for every other word how much later than the schedule it
//! came than the best one did. Printed as one line of `key=value` pairs: streams completed and
//! failed, words received, the delay percentiles (µs), and, with `--pid`, the process's CPU
//! seconds during the run and its peak RSS (`VmHWM`).
//!
//! `idle`: opens the connections one by one, sends one `GET` on each and reads the answer, then
//! keeps them all open and idle; prints the process's RSS before the first connection and after
//! the last (with `--pid`), and the difference per connection.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Slow paced streams and idle connections against one target.
#[derive(Parser)]
#[command(name = "slow-streams", version, about)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Many concurrent paced streams.
    Streams {
        /// The chat completions URL.
        #[arg(long)]
        url: Uri,
        /// Concurrent streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Events (content words) a second per stream.
        #[arg(long, default_value_t = 30)]
        rate: u32,
        /// Seconds each stream lasts.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// Seconds over which the streams are started (evenly).
        #[arg(long, default_value_t = 5.0)]
        ramp: f64,
        /// The request body: a chat request; `"stream": true` and usage are set here.
        #[arg(long)]
        body: std::path::PathBuf,
        /// An `authorization` header value to send.
        #[arg(long)]
        authorization: Option<String>,
        /// The process to report CPU time and peak RSS for.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Many idle keep-alive connections, one GET each.
    Idle {
        /// The URL to GET once on each connection.
        #[arg(long)]
        url: Uri,
        /// How many connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The process to report RSS for.
        #[arg(long)]
        pid: Option<u32>,
    },
}

/// User + system CPU ticks of `pid`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Counts the words that start in one body frame, over every `"content":"` string in it;
/// `space` says whether the content so far ended in a space (true at the start), and is updated.
/// The mock's deltas concatenate to its reply, so this counts the reply's words however a
/// proxy splits or merges the deltas.
fn words_in(frame: &[u8], space: &mut bool) -> usize {
    const KEY: &[u8] = b"\"content\":\"";
    let mut words = 0;
    let mut rest = frame;
    while let Some(at) = memchr::memmem::find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let mut i = 0;
        while i < rest.len() && rest[i] != b'"' {
            let b = if rest[i] == b'\\' {
                i += 1;
                b'x'
            } else {
                rest[i]
            };
            if b == b' ' {
                *space = true;
            } else if *space {
                *space = false;
                words += 1;
            }
            i += 1;
        }
        rest = &rest[i.min(rest.len())..];
    }
    words
}

/// One stream: connects, sends, and returns the arrival offset (µs from the request) of every
/// word, or why it failed.
async fn one_stream(
    url: Uri,
    body: Bytes,
    events: u64,
    rate: u32,
    authorization: Option<String>,
) -> Result<Vec<u64>, String> {
    let authority = url.authority().ok_or("the URL has no host")?.clone();
    let tcp = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut request = Request::post(url.clone())
        .header("host", authority.as_str())
        .header("content-type", "application/json")
        .header("x-mock-events", events)
        .header("x-mock-events-per-second", rate);
    if let Some(auth) = &authorization {
        request = request.header("authorization", auth);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let sent = Instant::now();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut arrivals = Vec::with_capacity(usize::try_from(events).unwrap_or(0));
    let mut space = true;
    // Bytes of an event not complete yet: a proxy (or TCP) may split an event across frames,
    // so words are counted per whole event, when its last byte arrives.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            let at = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            pending.extend_from_slice(data);
            let Some(end) = memchr::memmem::rfind(&pending, b"\n\n") else {
                continue;
            };
            for _ in 0..words_in(&pending[..end], &mut space) {
                arrivals.push(at);
            }
            pending.drain(..end + 2);
        }
    }
    if arrivals.len() as u64 != events {
        return Err(format!("{} words of {events}", arrivals.len()));
    }
    Ok(arrivals)
}

/// The delays (µs) of a stream's words against its schedule, its most punctual word at 0.
fn delays(arrivals: &[u64], interval_us: f64) -> impl Iterator<Item = u64> + '_ {
    // Word k is the mock's event k + 1 (event 0 is the role delta).
    let late = move |(k, &at): (usize, &u64)| at as f64 - (k + 1) as f64 * interval_us;
    let best = arrivals
        .iter()
        .enumerate()
        .map(late)
        .fold(f64::INFINITY, f64::min);
    arrivals
        .iter()
        .enumerate()
        .map(move |w| (late(w) - best).max(0.0) as u64)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
async fn streams(
    url: Uri,
    count: usize,
    rate: u32,
    seconds: u32,
    ramp: f64,
    body: std::path::PathBuf,
    authorization: Option<String>,
    pid: Option<u32>,
) -> Result<String, String> {
    let raw = std::fs::read(&body).map_err(|e| format!("cannot read {}: {e}", body.display()))?;
    let mut json: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", body.display()))?;
    json["stream"] = true.into();
    json["stream_options"] = serde_json::json!({"include_usage": true});
    let body = Bytes::from(json.to_string());
    let events = u64::from(rate) * u64::from(seconds);
    let interval_us = 1e6 / f64::from(rate);
    let ticks = clock_ticks();
    let cpu0 = pid.and_then(cpu_ticks);
    let started = Instant::now();
    let gap = Duration::from_secs_f64(ramp.max(0.0) / count.max(1) as f64);
    let active = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let due = started + gap * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let (url, body, auth) = (url.clone(), body.clone(), authorization.clone());
        let (active, peak) = (Arc::clone(&active), Arc::clone(&peak));
        tasks.spawn(async move {
            let now = active.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
            let result = one_stream(url, body, events, rate, auth).await;
            active.fetch_sub(1, Ordering::Relaxed);
            result
        });
    }
    let mut all = Vec::new();
    let mut failed = 0usize;
    let mut first_error = None;
    let mut done = 0usize;
    while let Some(result) = tasks.join_next().await {
        match result.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(arrivals) => {
                done += 1;
                all.extend(delays(&arrivals, interval_us));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(cpu_ticks);
    all.sort_unstable();
    let mut out = String::new();
    let _ = write!(
        out,
        "streams={count} completed={done} failed={failed} peak_concurrent={} words={} wall_s={wall:.1} \
         delay_p50_us={} delay_p99_us={} delay_p999_us={} delay_max_us={}",
        peak.load(Ordering::Relaxed),
        all.len(),
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        all.last().copied().unwrap_or(0),
    );
    if let (Some(pid), Some(c0), Some(c1)) = (pid, cpu0, cpu1) {
        let cpu = (c1 - c0) as f64 / ticks as f64;
        let _ = write!(
            out,
            " cpu_s={cpu:.2} cpu_s_per_1000_streams={:.2} peak_rss_mib={:.1}",
            cpu * 1000.0 / done.max(1) as f64,
            status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
        );
    }
    if let Some(e) = first_error {
        let _ = write!(out, " first_error={e:?}");
    }
    Ok(out)
}

async fn idle(url: Uri, count: usize, pid: Option<u32>) -> Result<String, String> {
    let authority = url.authority().ok_or("the URL has no host")?.clone();
    let before = pid.and_then(|p| status_kib(p, "VmRSS"));
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| format!("connection {i}: connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("connection {i}: handshake: {e}"))?;
        tokio::spawn(conn);
        let request = Request::get(url.clone())
            .header("host", authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("connection {i}: {e}"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("connection {i}: body: {e}"))?;
        if !status.is_success() {
            return Err(format!("connection {i}: status {status}"));
        }
        held.push(sender);
    }
    // Let the server settle (buffers released after the answers), then read its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pid.and_then(|p| status_kib(p, "VmRSS"));
    let open = held.iter().filter(|s| !s.is_closed()).count();
    let mut out = format!("connections={count} still_open={open}");
    if let (Some(b), Some(a)) = (before, after) {
        let _ = write!(
            out,
            " rss_before_mib={:.1} rss_after_mib={:.1} bytes_per_connection={:.0}",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            (a.saturating_sub(b) * 1024) as f64 / count.max(1) as f64
        );
    }
    drop(held);
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.mode {
        Mode::Streams {
            url,
            streams: count,
            rate,
            seconds,
            ramp,
            body,
            authorization,
            pid,
        } => {
            if rate == 0 || seconds == 0 || count == 0 {
                Err("--streams, --rate and --seconds must be positive".to_owned())
            } else {
                streams(url, count, rate, seconds, ramp, body, authorization, pid).await
            }
        }
        Mode::Idle {
            url,
            connections,
            pid,
        } => idle(url, connections, pid).await,
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slow-streams: {e}");
            ExitCode::FAILURE
        }
    }
}
