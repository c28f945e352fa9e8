#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_server::fuzzing::peer_message(data));
