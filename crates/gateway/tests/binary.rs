//! The `guardrail-gateway` binary as a process: what `serve` sets up before it listens.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `guardrail-gateway serve` with `extra` arguments on an ephemeral port and waits until
/// it says it listens.
fn serve(extra: &[&str]) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: http://127.0.0.1:9/v1\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrail-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("guardrail-gateway listening") {
            return child;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let status = child.wait();
    panic!("the gateway exited before listening ({status:?}): {seen:#?}");
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
    for child in [&mut default, &mut asked] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(off, "0");
    assert_eq!(kept, "1");
}
