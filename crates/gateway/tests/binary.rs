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
    let mut default = serve(&[]);
    let mut asked = serve(&["--transparent-huge-pages"]);
    let (off, kept) = (thp_enabled(default.id()), thp_enabled(asked.id()));
    for child in [&mut default, &mut asked] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(off, "0");
    // The flag is inherited: with the option, the gateway keeps what the test runner has.
    assert_eq!(kept, thp_enabled(std::process::id()));
}
