#![no_main]
//! `herald::fuzz::ticket`: see its documentation for the input and the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz::ticket(data));
