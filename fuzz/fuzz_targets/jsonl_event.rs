//! One JSON Lines line: it parses or it does not; when it does, writing it back as an event and
//! as a record reads back to the same key, payload bytes and headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = fnmill_connector_file::fuzzing::check_jsonl_line(data) {
        panic!("{e}");
    }
});
