#![no_main]
//! `herald::fuzz::jwt`: see its documentation for the input and the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz::jwt(data));
