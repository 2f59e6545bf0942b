//! Fuzz target: see `presently_fuzz::dnd_schedule` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| presently_fuzz::dnd_schedule(data));
