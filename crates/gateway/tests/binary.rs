//! The `guardrail-gateway` binary as a process: what `serve` sets up before it listens.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const CONFIG: &str = "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: http://127.0.0.1:9/v1\n";

/// Starts `guardrail-gateway serve` with `extra` arguments on an ephemeral port and waits until
/// it says it listens.
fn serve(extra: &[&str]) -> Child {
    serve_on("127.0.0.1:0", CONFIG, extra).0
}

/// Starts `serve` with `config` on `listen`; returns it and what it wrote to stderr until it
/// said it listens.
fn serve_on(listen: &str, config: &str, extra: &[&str]) -> (Child, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--listen", listen])
        .args(extra)
        .env_remove("LITELLM_MASTER_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("guardrail-gateway listening") {
            return (child, seen);
        }
        seen.push(line);
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("the gateway exited before listening ({status:?}): {seen:#?}");
}

#[test]
fn serve_without_a_master_key_refuses_a_public_address_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&path)
        .env_remove("LITELLM_MASTER_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without a master key")
            && stderr.contains("--allow-unauthenticated"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");

    // Told, by the flag or by the config: it listens, and says loudly that it runs open.
    for (config, extra) in [
        (CONFIG.to_owned(), &["--allow-unauthenticated"][..]),
        (
            format!("{CONFIG}general_settings:\n  allow_unauthenticated: true\n"),
            &[][..],
        ),
    ] {
        let (mut child, seen) = serve_on("0.0.0.0:0", &config, extra);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            seen.iter()
                .any(|l| l.contains("WARN") && l.contains("NO MASTER KEY: this gateway runs OPEN")),
            "{seen:#?}"
        );
    }
    // With a master key it listens anywhere, and says nothing about running open.
    let config = format!("{CONFIG}general_settings:\n  master_key: sk-binary-test-master-key\n");
    let (mut child, seen) = serve_on("0.0.0.0:0", &config, &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!seen.iter().any(|l| l.contains("OPEN")), "{seen:#?}");
}

/// The `THP_enabled` line of `/proc/PID/status`: `0` when the process opted out.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 and later)")
        .trim()
        .to_owned()
}

#[test]
fn serve_opts_out_of_transparent_huge_pages_unless_asked() {
    // The children inherit the flag: with THP allowed here, a child that keeps it shows `1`, so
    // the two cases differ even where the test runner was started with THP off.
    nix::sys::prctl::set_thp_disable(false).unwrap();
    assert_eq!(thp_enabled(std::process::id()), "1");
    let mut default = serve(&[]);
    let mut asked = serve(&["--transparent-huge-pages"]);
    let (off, kept) = (thp_enabled(default.id()), thp_enabled(asked.id()));
    let (default_huge, asked_huge) = (anon_huge_kib(default.id()), anon_huge_kib(asked.id()));
    for child in [&mut default, &mut asked] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(off, "0");
    assert_eq!(kept, "1");
    // Not one huge page, not even from the allocations made before `main` (the program starts
    // itself again with THP off; before that, mimalloc's first arena kept 4 MiB of them).
    let mode =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if mode.contains("[never]") || mode.is_empty() {
        eprintln!("THP is off on this machine ({mode:?}): huge pages not checked");
    }
    assert_eq!(
        default_huge, 0,
        "huge pages at start (THP {mode:?}; with --transparent-huge-pages: {asked_huge} KiB)"
    );
}

/// The `AnonHugePages` of `/proc/PID/smaps_rollup`, in KiB.
fn anon_huge_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the kernel reports AnonHugePages")
}

// ---------------------------------------------------------------------------------------------
// Shutdown under load, and two replicas on one PostgreSQL
// ---------------------------------------------------------------------------------------------

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use guardrail_tower_spend_log::{SpendLogFilter, SpendLogStore, SqliteSink};
use guardrail_tower_testkit::mock::MockUpstream;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A running gateway process and the address it listens on.
struct Process {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `guardrail-gateway serve` with `config` on an ephemeral port; returns once it
    /// listens, with the address it logged. Its log goes on to the test's stderr.
    fn start(config: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("guardrail-gateway listening") {
                let addr: Option<String> = line.split("listen=").nth(1).map(|rest| {
                    rest.chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect()
                });
                let Some(addr) = addr.filter(|a| a.contains(':')) else {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the listening line names no address: {line}");
                };
                // Keep draining its log (a full pipe would block the gateway).
                std::thread::spawn(move || {
                    for line in lines.map_while(Result::ok) {
                        eprintln!("  gateway: {line}");
                    }
                });
                return Process {
                    child,
                    url: format!("http://{addr}"),
                    _dir: dir,
                };
            }
            seen.push(line);
        }
        let _ = child.kill();
        let status = child.wait();
        panic!("the gateway exited before listening ({status:?}): {seen:#?}");
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; its exit status.
    fn wait(&mut self, bound: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < bound,
                "the gateway did not exit within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client that opens a new connection for every request (no pooled connection races the
/// server closing it).
fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// Sends one chat request (streamed when `stream`) and reads it all; `Some(true)` when the
/// response was complete and well formed, `None` when no response came (connection refused).
async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    id: &str,
    stream: bool,
) -> Option<bool> {
    let body = serde_json::json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": format!("hello {id}")}]});
    let req = http::Request::post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .header("x-mock-events", "12")
        .header("x-mock-delay-ms", "5")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("an answer in time")
        .ok()?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("a body in time");
    let Ok(body) = body else {
        return Some(false);
    };
    let body = body.to_bytes();
    Some(
        status == 200
            && if stream {
                body.ends_with(b"data: [DONE]\n\n")
            } else {
                serde_json::from_slice::<serde_json::Value>(&body).is_ok()
            },
    )
}

fn config(upstream: &MockUpstream, spend_logs: &str) -> String {
    format!(
        "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: \"{}\"\n      api_key: sk-up\ngeneral_settings:\n  spend_logs: \"{spend_logs}\"\n  graceful_shutdown_timeout: 15\n",
        upstream.base_url()
    )
}

/// SIGTERM while 32 clients keep sending: the gateway stops accepting, the requests in flight
/// finish whole, and after the flush the spend log holds exactly one row per response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests_and_flushes_every_row() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_recording(false);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("spend.db");
    let mut gateway = Process::start(&config(&upstream, &format!("sqlite://{}", db.display())));
    let completed = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (url, completed, broken, refused) = (
                gateway.url.clone(),
                Arc::clone(&completed),
                Arc::clone(&broken),
                Arc::clone(&refused),
            );
            tokio::spawn(async move {
                let client = client();
                for i in 0..10_000 {
                    match one(&client, &url, &format!("w{w}-{i}"), i % 3 != 0).await {
                        Some(true) => completed.fetch_add(1, Ordering::SeqCst),
                        Some(false) => broken.fetch_add(1, Ordering::SeqCst),
                        None => {
                            refused.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                }
            })
        })
        .collect();
    // Signal once the load is well under way (counted, not timed).
    while completed.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.terminate();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("every client stopped")
            .unwrap();
    }
    let status = tokio::task::block_in_place(|| gateway.wait(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    assert!(
        refused.load(Ordering::SeqCst),
        "new connections were refused"
    );
    assert_eq!(
        broken.load(Ordering::SeqCst),
        0,
        "no request in flight was cut"
    );
    let responses = completed.load(Ordering::SeqCst);
    let rows = SqliteSink::open(&db)
        .await
        .unwrap()
        .query(&SpendLogFilter::new())
        .await
        .unwrap();
    eprintln!(
        "SIGTERM under load: {responses} complete responses, {} rows",
        rows.len()
    );
    assert_eq!(rows.len() as u64, responses, "rows == responses");
    assert!(rows.iter().all(|r| r.status.as_str() == "success"));
    let ids: std::collections::BTreeSet<_> = rows.iter().map(|r| &r.request_id).collect();
    assert_eq!(ids.len(), rows.len());
}

/// The PostgreSQL test server: `None` (skipped, said so) when `GUARDRAIL_TOWER_TEST_PG_URL` is
/// unset; a failure when it is set and the server cannot be reached.
async fn pg() -> Option<(String, tokio_postgres::Client)> {
    let url = match std::env::var("GUARDRAIL_TOWER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!("skipped: GUARDRAIL_TOWER_TEST_PG_URL is not set");
            return None;
        }
    };
    let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            panic!("GUARDRAIL_TOWER_TEST_PG_URL is set but the server cannot be reached: {e}")
        }
    };
    tokio::spawn(connection);
    Some((url, client))
}

/// `url` with `search_path` set to `schema` (a schema of the test's own).
fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Two gateway processes on one PostgreSQL table under load, with clients that reuse their
/// `x-request-id`s across both: one row per request, no key collision, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_lose_no_row_and_collide_on_no_key() {
    let Some((url, db)) = pg().await else { return };
    let schema = format!(
        "gt_replicas_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    db.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
        .await
        .unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_recording(false);
    let spend_logs = with_schema(&url, &schema);
    // Both start at once: they race to create the table.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Process::start(&config(&upstream, &spend_logs)));
        let b = s.spawn(|| Process::start(&config(&upstream, &spend_logs)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut replicas = [a, b];
    let urls: Vec<String> = replicas.iter().map(|p| p.url.clone()).collect();
    let completed = Arc::new(AtomicU64::new(0));
    let per_worker = 40;
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (urls, completed) = (urls.clone(), Arc::clone(&completed));
            tokio::spawn(async move {
                let client = client();
                for i in 0..per_worker {
                    // The same client id goes to both replicas.
                    let id = format!("w{w}-{}", i / 2);
                    let url = &urls[i % 2];
                    let ok = one(&client, url, &id, i % 4 < 2).await;
                    assert_eq!(ok, Some(true), "{url} {id}");
                    completed.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    for r in &replicas {
        r.terminate();
    }
    for r in &mut replicas {
        let status = tokio::task::block_in_place(|| r.wait(Duration::from_secs(30)));
        assert!(status.success(), "{status:?}");
    }
    let sent = completed.load(Ordering::SeqCst);
    assert_eq!(sent, 16 * per_worker as u64);
    let table = format!("\"{schema}\".\"LiteLLM_SpendLogs\"");
    let row = db
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT request_id), count(DISTINCT client_request_id),
                        count(*) FILTER (WHERE status = 'success')
                 FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    let (rows, keys, client_ids, successes): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    eprintln!(
        "two replicas: {sent} requests -> {rows} rows, {keys} distinct keys, {client_ids} client ids"
    );
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
    assert_eq!(rows as u64, sent, "rows == requests");
    assert_eq!(keys, rows, "no key collision");
    assert_eq!(
        client_ids as u64,
        sent / 2,
        "each client id twice, once per replica"
    );
    assert_eq!(successes, rows);
}
