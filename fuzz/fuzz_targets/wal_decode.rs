//! Any bytes as a WAL file body: framing and payload decoding never panic.
#![no_main]

use gannet_storage::wal::format::{Frame, decode_entry, decode_frame, decode_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_header(bytes);
    let _ = decode_entry(bytes);
    let mut pos = 0;
    while let Frame::Record { payload, len, .. } = decode_frame(&bytes[pos..]) {
        let _ = decode_entry(payload);
        pos += len;
    }
});
