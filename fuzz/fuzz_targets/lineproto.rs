//! Any body: the parser never panics, and every line it accepts re-parses to itself once
//! written back out with escaping.
#![no_main]

use gannet_storage::lineproto::{Element, FieldValue, escape_into, parse_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for line in parse_lines(body).flatten() {
        let mut s = String::new();
        escape_into(&mut s, &line.measurement, Element::Measurement);
        for (k, v) in &line.tags {
            s.push(',');
            escape_into(&mut s, k, Element::Key);
            s.push('=');
            escape_into(&mut s, v, Element::Key);
        }
        for (i, (k, v)) in line.fields.iter().enumerate() {
            s.push(if i == 0 { ' ' } else { ',' });
            escape_into(&mut s, k, Element::Key);
            s.push('=');
            match v {
                FieldValue::Float(f) => s.push_str(&format!("{f:?}")),
                FieldValue::Integer(n) => s.push_str(&format!("{n}i")),
                FieldValue::UInteger(n) => s.push_str(&format!("{n}u")),
                FieldValue::Boolean(b) => s.push_str(if *b { "t" } else { "f" }),
                FieldValue::String(v) => {
                    s.push('"');
                    escape_into(&mut s, v, Element::StringValue);
                    s.push('"');
                }
            }
        }
        if let Some(ts) = line.timestamp {
            s.push_str(&format!(" {ts}"));
        }
        let again = gannet_storage::lineproto::parse_line(&s, 1)
            .unwrap_or_else(|e| panic!("{s:?} does not re-parse: {e}"));
        assert_eq!(again.measurement, line.measurement);
        assert_eq!(again.tags, line.tags);
        assert_eq!(again.fields, line.fields);
        assert_eq!(again.timestamp, line.timestamp);
    }
});
