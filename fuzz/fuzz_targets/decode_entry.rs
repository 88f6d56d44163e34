//! Fuzz target: decoding arbitrary bytes as a log entry never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_log::testing::fuzz_decode(data));
