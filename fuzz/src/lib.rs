//! The checks behind guardrail-tower's fuzz targets, shared with the regression test
//! (`tests/fuzz_regressions.rs` includes this file), so a saved input is checked exactly as the
//! fuzzer checked it.
//!
//! Each module has one `run(data: &[u8])` that reads its structured input from the raw bytes
//! with [`common::Input`] (no `arbitrary`: the layout is explicit and stable, so saved inputs
//! keep their meaning) and panics when a property does not hold.

pub mod common;
pub mod error_normalizer;
pub mod guarded_sse_body;
pub mod request_parsing;
pub mod sse_decoder;
