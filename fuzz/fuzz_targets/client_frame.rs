//! Fuzz target: see `presently_fuzz::client_frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presently_fuzz::client_frame(data));
