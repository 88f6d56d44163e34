//! Fuzz target: arbitrary bytes read as a framed entry stream are chain-checked without panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_log::testing::fuzz_chain(data));
