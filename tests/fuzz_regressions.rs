//! Replays every saved fuzz input (`tests/fuzz_regressions/<target>/`) through the checks of its
//! fuzz target, so what the fuzzer found stays fixed. The checks are the fuzz crate's own source
//! (`fuzz/src`), included here; `fuzz/run.sh` adds crash inputs to these folders.
#![cfg(all(feature = "error", feature = "streaming", feature = "guardrails"))]

use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

/// Runs every saved input of `target`, and reports all that fail at once.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no saved inputs in {}", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(
                file.file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} saved inputs fail (messages above): {failed:?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn sse_decoder() {
    replay("sse_decoder", fuzz::sse_decoder::run);
}

#[test]
fn request_parsing() {
    replay("request_parsing", fuzz::request_parsing::run);
}

#[test]
fn error_normalizer() {
    replay("error_normalizer", fuzz::error_normalizer::run);
}

#[test]
fn guarded_sse_body() {
    replay("guarded_sse_body", fuzz::guarded_sse_body::run);
}
