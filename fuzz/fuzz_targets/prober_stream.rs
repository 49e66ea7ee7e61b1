#![no_main]
//! The registrar prober's stream reader on arbitrary bytes.

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| prober_stream(data));
