//! Fuzz target `sse_decoder`: see `guardrail_tower_fuzz::sse_decoder` for the input layout and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardrail_tower_fuzz::sse_decoder::run(data));
