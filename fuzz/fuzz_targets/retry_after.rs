#![no_main]
//! `marketbox::fuzzing::retry_after` under libFuzzer (its invariants are asserted there).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| marketbox::fuzzing::retry_after(data));
