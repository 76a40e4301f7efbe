//! Fuzz target `request_parsing`: see `guardrail_tower_fuzz::request_parsing` for the input layout and the checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guardrail_tower_fuzz::request_parsing::run(data));
