//! Measures the spend log's behaviour under two faults, against the real `guardrail-gateway`
//! binary on loopback (a mock upstream runs in this process):
//!
//! - `sigkill`: load at `--rate` requests per second, then `SIGKILL` the gateway: how many
//!   requests that got their whole response have no row, and how long before the kill they
//!   finished (the loss window).
//! - `outage`: load at `--rate` against a PostgreSQL spend log reached through a TCP proxy in
//!   this process; the proxy is cut for `--down` seconds, then restored: the gateway's resident
//!   memory every second, and at the end rows + dead letters == requests.
//!
//! ```text
//! cargo build --release -p guardrail-gateway -p guardrail-tower-bench
//! target/release/spend-log-faults sigkill --gateway target/release/guardrail-gateway
//! target/release/spend-log-faults outage --gateway target/release/guardrail-gateway \
//!     --pg postgres://postgres@127.0.0.1:5432/test --rate 2000 --down 60
//! ```
//!
//! Figures from this tool are in RELIABILITY.md.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use guardrail_tower_spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Parser)]
#[command(about = "Spend-log fault measurements against the real gateway binary")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Load, then SIGKILL: rows lost and the loss window.
    Sigkill {
        /// The gateway binary.
        #[arg(long)]
        gateway: PathBuf,
        /// Requests per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of load before the kill.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Runs (each with a fresh database).
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
    /// Load with the PostgreSQL spend log cut for a while: memory, then rows + dead letters.
    Outage {
        /// The gateway binary.
        #[arg(long)]
        gateway: PathBuf,
        /// The PostgreSQL server (a fresh schema is created in it).
        #[arg(long)]
        pg: String,
        /// Requests per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of load before the cut.
        #[arg(long, default_value_t = 5)]
        before: u64,
        /// Seconds the database stays unreachable.
        #[arg(long, default_value_t = 60)]
        down: u64,
        /// Seconds of load after it is back.
        #[arg(long, default_value_t = 10)]
        after: u64,
        /// `general_settings.spend_logs_queue_size`.
        #[arg(long, default_value_t = 10_000)]
        queue: u64,
    },
}

#[tokio::main]
async fn main() {
    match Cli::parse().command {
        Mode::Sigkill {
            gateway,
            rate,
            secs,
            runs,
        } => {
            for run in 1..=runs {
                sigkill(&gateway, rate, secs, run).await;
            }
        }
        Mode::Outage {
            gateway,
            pg,
            rate,
            before,
            down,
            after,
            queue,
        } => outage(&gateway, &pg, rate, before, down, after, queue).await,
    }
}

/// A gateway process.
struct Gateway {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(binary: &Path, upstream: &MockUpstream, spend_logs: &str, queue: u64) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: \"{}\"\n      api_key: sk-up\ngeneral_settings:\n  spend_logs: \"{}\"\n  spend_logs_queue_size: {queue}\n",
            upstream.base_url(),
            spend_logs.replace("{dir}", &dir.path().display().to_string()),
        ),
    )
    .unwrap();
    let binary = std::fs::canonicalize(binary).expect("the gateway binary exists");
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn,guardrail_gateway=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("guardrail-gateway listening listen=").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
            return Gateway {
                child,
                url: format!("http://{addr}"),
                dir,
            };
        }
    }
    let status = child.wait();
    panic!("the gateway exited before listening: {status:?}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open-loop load: `rate` requests per second (at most 512 in flight), each with a unique
/// `x-request-id`; completion times of whole 200 responses by id.
struct Load {
    done: Arc<Mutex<HashMap<String, Instant>>>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

fn load(url: String, rate: u64, tag: String) -> Load {
    let done: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let task = tokio::spawn({
        let (done, sent, failed, stop) = (
            Arc::clone(&done),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let start = Instant::now();
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
                while n < due {
                    let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                        break;
                    };
                    n += 1;
                    sent.fetch_add(1, Ordering::SeqCst);
                    let id = format!("{tag}-{n}");
                    let (client, url, done, failed) = (
                        client.clone(),
                        url.clone(),
                        Arc::clone(&done),
                        Arc::clone(&failed),
                    );
                    tokio::spawn(async move {
                        let body = format!(
                            r#"{{"model":"m","messages":[{{"role":"user","content":"hello {id}"}}]}}"#
                        );
                        let req = http::Request::post(format!("{url}/v1/chat/completions"))
                            .header("content-type", "application/json")
                            .header("x-request-id", &id)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        let ok = match client.request(req).await {
                            Ok(resp) if resp.status() == 200 => {
                                resp.into_body().collect().await.is_ok()
                            }
                            _ => false,
                        };
                        if ok {
                            done.lock().unwrap().insert(id, Instant::now());
                        } else {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        drop(permit);
                    });
                }
                // Behind by more than the cap allows: catch up no faster than it.
                n = n.max(due.saturating_sub(512));
            }
        }
    });
    Load {
        done,
        sent,
        failed,
        stop,
        task,
    }
}

async fn sigkill(binary: &Path, rate: u64, secs: u64, run: u32) {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_recording(false);
    let mut gateway = start_gateway(binary, &upstream, "sqlite://{dir}/spend.db", 10_000);
    let db = gateway.dir.path().join("spend.db");
    let l = load(gateway.url.clone(), rate, format!("kill{run}"));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let killed_at = Instant::now();
    gateway.child.kill().unwrap(); // SIGKILL
    gateway.child.wait().unwrap();
    l.stop.store(true, Ordering::SeqCst);
    let _ = l.task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = l.done.lock().unwrap().clone();
    let rows = SqliteSink::open(&db)
        .await
        .unwrap()
        .query(&SpendLogFilter::new())
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = rows
        .into_iter()
        .filter_map(|r| r.client_request_id)
        .collect();
    let completed_before_kill: Vec<(&String, &Instant)> =
        done.iter().filter(|(_, t)| **t <= killed_at).collect();
    let mut lost: Vec<Duration> = completed_before_kill
        .iter()
        .filter(|(id, _)| !stored.contains(*id))
        .map(|(_, t)| killed_at.duration_since(**t))
        .collect();
    lost.sort();
    println!(
        "sigkill run {run}: {} sent, {} whole responses before the kill, {} rows, {} lost; \
         lost responses finished {:?} to {:?} before the kill",
        l.sent.load(Ordering::SeqCst),
        completed_before_kill.len(),
        stored.len(),
        lost.len(),
        lost.first().copied().unwrap_or_default(),
        lost.last().copied().unwrap_or_default(),
    );
}

/// A TCP proxy that can be cut (existing connections dropped, new ones refused) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        tokio::spawn({
            let (up, conns) = (Arc::clone(&up), Arc::clone(&conns));
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    conns.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            }
        });
        Proxy { addr, up, conns }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

async fn outage(
    binary: &Path,
    pg: &str,
    rate: u64,
    before: u64,
    down: u64,
    after: u64,
    queue: u64,
) {
    let (db, connection) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .expect("the PostgreSQL server answers");
    tokio::spawn(connection);
    let schema = format!("gt_outage_{}", std::process::id());
    db.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap();
    let rest = &pg[pg.find("://").map_or(0, |i| i + 3)..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit('@').next().unwrap();
    let target = tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let proxied = pg.replacen(hostport, &proxy.addr.to_string(), 1);
    let sep = if proxied.contains('?') { '&' } else { '?' };
    let spend_logs = format!("{proxied}{sep}options=-csearch_path%3D{schema}");
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_recording(false);
    let gateway = start_gateway(binary, &upstream, &spend_logs, queue);
    let pid = gateway.child.id();
    let dead_letter = gateway.dir.path().join("spend_logs.dead-letter.jsonl");
    let l = load(gateway.url.clone(), rate, "outage".into());
    let t0 = Instant::now();
    let sample = |phase: &str| {
        println!(
            "t={:>5.1}s {phase:<6} rss={:>7} KiB sent={} ok={} failed={}",
            t0.elapsed().as_secs_f64(),
            rss_kib(pid),
            l.sent.load(Ordering::SeqCst),
            l.done.lock().unwrap().len(),
            l.failed.load(Ordering::SeqCst),
        );
    };
    let mut peak_down = 0;
    for _ in 0..before {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sample("up");
    }
    let before_rss = rss_kib(pid);
    proxy.set(false);
    for _ in 0..down {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_down = peak_down.max(rss_kib(pid));
        sample("down");
    }
    proxy.set(true);
    for _ in 0..after {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sample("back");
    }
    l.stop.store(true, Ordering::SeqCst);
    let _ = l.task.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SIGTERM: flush.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut gateway = gateway;
    let status = gateway.child.wait().unwrap();
    let ok = l.done.lock().unwrap().len() as u64;
    let rows: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".\"LiteLLM_SpendLogs\""),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let letters = std::fs::read_to_string(&dead_letter)
        .unwrap_or_default()
        .lines()
        .count();
    println!(
        "outage: rate {rate}/s, database down {down}s, queue {queue}: RSS {before_rss} KiB before \
         the cut, peak {peak_down} KiB while down; {} sent, {ok} whole responses, {} failed; \
         {rows} rows + {letters} dead letters = {} (gateway exit: {status})",
        l.sent.load(Ordering::SeqCst),
        l.failed.load(Ordering::SeqCst),
        rows as u64 + letters as u64,
    );
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
