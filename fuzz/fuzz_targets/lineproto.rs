//! Any body: the parser never panics, and every line it accepts re-parses to itself once
//! written back out with escaping.
#![no_main]

use gannet_storage::lineproto::{parse_line, parse_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for line in parse_lines(body).flatten() {
        let s = line.to_line_protocol();
        let again = parse_line(&s, 1).unwrap_or_else(|e| panic!("{s:?} does not re-parse: {e}"));
        assert_eq!(again.measurement, line.measurement);
        assert_eq!(again.tags, line.tags);
        assert_eq!(again.fields, line.fields);
        assert_eq!(again.timestamp, line.timestamp);
    }
});
