#![no_main]
//! `herald::fuzz::websocket_frames`: see its documentation for the input and the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald::fuzz::websocket_frames(data));
