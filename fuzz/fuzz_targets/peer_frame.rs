#![no_main]
//! The peer link's frame reader and decoder on arbitrary bytes.

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| peer_frame(data));
