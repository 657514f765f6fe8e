//! Any bytes as a WAL file body: framing and payload decoding never fail but with an error.
#![no_main]

use gannet_storage::wal::format::{Frame, decode_entry, decode_frame, decode_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // libfuzzer-sys makes every panic abort; the panics Gannet catches (arrow-ipc's, while
    // decoding a record's batch) must unwind to its catch, as they do in the engine.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let _ = decode_header(bytes);
    let _ = decode_entry(bytes);
    let mut pos = 0;
    while let Frame::Record { payload, len, .. } = decode_frame(&bytes[pos..]) {
        let _ = decode_entry(payload);
        pos += len;
    }
});
