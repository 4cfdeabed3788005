#![no_main]
//! `marketbox::fuzzing::binance_protocol` under libFuzzer (its invariants are asserted there).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| marketbox::fuzzing::binance_protocol(data));
