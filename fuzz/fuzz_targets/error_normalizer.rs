//! Fuzz target `error_normalizer`: see `guardrail_tower_fuzz::error_normalizer` for the input layout and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardrail_tower_fuzz::error_normalizer::run(data));
