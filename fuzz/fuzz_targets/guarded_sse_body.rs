//! Fuzz target `guarded_sse_body`: see `guardrail_tower_fuzz::guarded_sse_body` for the input layout and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardrail_tower_fuzz::guarded_sse_body::run(data));
