//! Fuzz target: see `presently_fuzz::sse_stream` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presently_fuzz::sse_stream(data));
