#![no_main]
//! `herald::fuzz::client_frame`: see its documentation for the input and the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz::client_frame(data));
