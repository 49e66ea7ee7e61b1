#![no_main]
//! The SIP front end (scanner, redirect responder, stateless proxy) on arbitrary bytes.

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| sip_front(data));
