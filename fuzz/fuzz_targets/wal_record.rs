#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rampart_storage::fuzzing::wal_segment(data));
