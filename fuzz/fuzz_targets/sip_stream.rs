#![no_main]
//! The framing of a SIP byte stream (front end TCP/TLS) on arbitrary bytes.

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| sip_stream(data));
