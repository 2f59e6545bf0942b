//! Fuzz target: see `presently_fuzz::server_frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presently_fuzz::server_frame(data));
