#![no_main]
//! `herald::fuzz::redis_envelope`: see its documentation for the input and the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz::redis_envelope(data));
