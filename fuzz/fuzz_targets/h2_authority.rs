#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_h2_compat::fuzzing::inbound(data));
