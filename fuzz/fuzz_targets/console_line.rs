#![no_main]
//! `marketbox::fuzzing::console_line` under libFuzzer (its invariants are asserted there).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| marketbox::fuzzing::console_line(data));
