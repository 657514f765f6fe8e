use super::*;
use proptest::prelude::*;

fn one(line: &str) -> ParsedLine<'_> {
    parse_line(line, 1).unwrap_or_else(|e| panic!("{line:?} should parse: {e}"))
}

fn err(line: &str) -> String {
    parse_line(line, 7).expect_err(line).to_string()
}

#[test]
fn parses_a_full_line() {
    let p =
        one("cpu,host=a,region=eu usage=0.5,count=3i,big=7u,ok=t,name=\"x y\" 1700000000000000000");
    assert_eq!(p.measurement, "cpu");
    assert_eq!(
        p.tags[..],
        [("host".into(), "a".into()), ("region".into(), "eu".into())]
    );
    assert_eq!(
        p.fields,
        vec![
            ("usage".into(), FieldValue::Float(0.5)),
            ("count".into(), FieldValue::Integer(3)),
            ("big".into(), FieldValue::UInteger(7)),
            ("ok".into(), FieldValue::Boolean(true)),
            ("name".into(), FieldValue::String("x y".into())),
        ]
    );
    assert_eq!(p.timestamp, Some(1_700_000_000_000_000_000));
}

#[test]
fn elements_without_escapes_borrow_from_the_body() {
    let p = one("cpu,host=a usage=1");
    assert!(matches!(p.measurement, Cow::Borrowed(_)));
    assert!(matches!(p.tags[0].1, Cow::Borrowed(_)));
    assert_eq!(p.timestamp, None);
}

#[test]
fn floats_take_every_form() {
    for (text, want) in [
        ("1", 1.0),
        ("-1.5", -1.5),
        ("1e3", 1000.0),
        ("1.5E-3", 0.0015),
        (".5", 0.5),
        ("+2", 2.0),
    ] {
        let line = format!("m v={text}");
        assert_eq!(one(&line).fields[0].1, FieldValue::Float(want), "{text}");
    }
}

#[test]
fn booleans_take_every_spelling() {
    for t in ["t", "T", "true", "True", "TRUE"] {
        assert_eq!(
            one(&format!("m v={t}")).fields[0].1,
            FieldValue::Boolean(true)
        );
    }
    for f in ["f", "F", "false", "False", "FALSE"] {
        assert_eq!(
            one(&format!("m v={f}")).fields[0].1,
            FieldValue::Boolean(false)
        );
    }
}

#[test]
fn escapes_are_undone_per_element() {
    let p = one(r#"my\ cpu\,x,ho\=st=a\ b\,c f\ 1="say \"hi\" \\ \n" 5"#);
    assert_eq!(p.measurement, "my cpu,x");
    assert_eq!(p.tags[0], ("ho=st".into(), "a b,c".into()));
    assert_eq!(p.fields[0].0, "f 1");
    assert_eq!(p.fields[0].1, FieldValue::String(r#"say "hi" \ \n"#.into()));
    assert_eq!(p.timestamp, Some(5));
}

#[test]
fn string_values_may_hold_separators() {
    let p = one(r#"m s="a,b=c d",n=1i"#);
    assert_eq!(p.fields[0].1, FieldValue::String("a,b=c d".into()));
    assert_eq!(p.fields[1].1, FieldValue::Integer(1));
}

#[test]
fn body_skips_comments_blank_lines_and_crlf() {
    let body = b"# header\r\n\r\ncpu v=1 1\r\n   \n  # indented comment\ncpu v=2 2\n";
    let lines: Vec<_> = parse_lines(body).collect::<Result<_, _>>().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].line_number, 3);
    assert_eq!(lines[0].raw, "cpu v=1 1");
    assert_eq!(lines[1].line_number, 6);
    assert_eq!(lines[1].timestamp, Some(2));
}

#[test]
fn a_bad_line_rejects_only_itself() {
    let body = b"cpu v=1 1\ncpu v= 2\ncpu v=3 3";
    let results: Vec<_> = parse_lines(body).collect();
    assert!(results[0].is_ok());
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.line_number, 2);
    assert_eq!(e.original_line, "cpu v= 2");
    assert!(e.message.contains("missing value for field 'v'"), "{e}");
    assert!(results[2].is_ok());
}

#[test]
fn errors_say_what_and_where() {
    let cases = [
        ("cpu", "missing fields"),
        ("cpu,host=a", "missing fields"),
        (",host=a v=1", "missing measurement"),
        ("cpu,host v=1", "expected '=' after tag key 'host'"),
        ("cpu,host= v=1", "missing value for tag 'host'"),
        ("cpu,=a v=1", "missing tag key"),
        ("cpu v", "expected '=' after field key 'v'"),
        ("cpu =1", "missing field key"),
        ("cpu v=abc", "invalid field value 'abc' for field 'v'"),
        ("cpu v=1.2.3", "invalid float value '1.2.3'"),
        ("cpu v=9223372036854775808i", "invalid integer value"),
        ("cpu v=-1u", "invalid unsigned value"),
        ("cpu v=NaN", "invalid field value 'NaN'"),
        ("cpu v=inf", "invalid field value 'inf'"),
        ("cpu v=\"open", "unterminated string value for field 'v'"),
        ("cpu v=1 12x", "invalid timestamp '12x'"),
        ("cpu v=1 1 2", "invalid timestamp '1 2'"),
        ("cpu,a=1,a=2 v=1", "duplicate tag 'a'"),
        ("cpu v=1,v=2", "duplicate field 'v'"),
        ("cpu v=1,", "missing field key"),
    ];
    for (line, want) in cases {
        let got = err(line);
        assert!(got.starts_with("line 7: "), "{got}");
        assert!(got.contains(want), "{line:?}: got {got:?}, want {want:?}");
        assert!(got.contains("(column "), "{got}");
    }
}

#[test]
fn invalid_utf8_rejects_the_line() {
    let body = b"cpu v=1\ncpu,h=\xff v=1\n";
    let results: Vec<_> = parse_lines(body).collect();
    assert!(results[0].is_ok());
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.line_number, 2);
    assert!(e.message.contains("invalid UTF-8 at column 7"), "{e}");
}

#[test]
fn negative_and_trailing_space_timestamps() {
    assert_eq!(one("m v=1 -5  ").timestamp, Some(-5));
    assert_eq!(one("m v=1   ").timestamp, None);
}

// --- property: writing points as line protocol and parsing them gives them back ---

#[derive(Debug, Clone)]
struct Point {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, FieldValue<'static>)>,
    timestamp: Option<i64>,
}

fn name() -> impl Strategy<Value = String> {
    // Printable text, including every character that needs escaping somewhere.
    prop::string::string_regex(r#"[a-zA-Z0-9_ ,="\\é\-]{1,12}"#).unwrap()
}

fn field_value() -> impl Strategy<Value = FieldValue<'static>> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(FieldValue::Float),
        any::<i64>().prop_map(FieldValue::Integer),
        any::<u64>().prop_map(FieldValue::UInteger),
        any::<bool>().prop_map(FieldValue::Boolean),
        prop::string::string_regex(r#"[a-z ,="\\]{0,10}"#)
            .unwrap()
            .prop_map(|s| FieldValue::String(s.into())),
    ]
}

fn point() -> impl Strategy<Value = Point> {
    (
        name().prop_filter("no leading #", |m| {
            !m.starts_with('#') && !m.starts_with(' ')
        }),
        prop::collection::btree_map(name(), name(), 0..4),
        prop::collection::btree_map(name(), field_value(), 1..5),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(measurement, tags, fields, timestamp)| Point {
            measurement,
            tags: tags.into_iter().collect(),
            fields: fields.into_iter().collect(),
            timestamp,
        })
}

fn to_line(p: &Point) -> String {
    let line = ParsedLine {
        line_number: 1,
        measurement: Cow::Borrowed(&p.measurement),
        tags: p
            .tags
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
            .collect(),
        fields: p
            .fields
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), v.clone()))
            .collect(),
        timestamp: p.timestamp,
        raw: "",
        series: "",
    };
    line.to_line_protocol()
}

proptest! {
    #[test]
    fn roundtrip(points in prop::collection::vec(point(), 1..20)) {
        let body = points.iter().map(to_line).collect::<Vec<_>>().join("\n");
        let parsed: Vec<_> = parse_lines(body.as_bytes()).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(parsed.len(), points.len());
        for (p, got) in points.iter().zip(&parsed) {
            prop_assert_eq!(&got.measurement, &p.measurement);
            let tags: Vec<(String, String)> =
                got.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(&tags, &p.tags);
            let fields: Vec<(String, FieldValue<'_>)> =
                got.fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            prop_assert_eq!(&fields, &p.fields);
            prop_assert_eq!(got.timestamp, p.timestamp);
        }
    }

    /// The one-pass number path gives exactly what the standard library's parsers give,
    /// for the plain forms it takes and the near misses it hands on.
    #[test]
    fn numbers_parse_as_the_standard_library_does(
        sign in prop::sample::select(vec!["", "-", "+"]),
        whole in "[0-9]{0,21}",
        point in any::<bool>(),
        fraction in "[0-9]{0,24}",
        suffix in prop::sample::select(vec!["", "i", "u", "e3", "E-7", "x"]),
    ) {
        let point = if point { "." } else { "" };
        let text = format!("{sign}{whole}{point}{fraction}{suffix}");
        let line = format!("m v={text},w=1i 5");
        let got = parse_line(&line, 1).map(|l| l.fields[0].1.clone());
        let want = match suffix {
            "i" => text[..text.len() - 1].parse::<i64>().ok().map(FieldValue::Integer),
            "u" => text[..text.len() - 1].parse::<u64>().ok().map(FieldValue::UInteger),
            "x" => None,
            _ => text.parse::<f64>().ok().filter(|v| v.is_finite()).map(FieldValue::Float),
        };
        match (got, want) {
            (Ok(FieldValue::Float(g)), Some(FieldValue::Float(w))) => {
                prop_assert_eq!(g.to_bits(), w.to_bits(), "{}", text)
            }
            (Ok(g), Some(w)) => prop_assert_eq!(g, w, "{}", text),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{text}: parsed {got:?}, expected {want:?}"),
        }
    }

    /// A body parses line by line exactly as each line does alone, though repeated series
    /// are parsed once: series made of the bytes escapes and separators are made of, so
    /// that repeats, near repeats, escaped spaces and bad series all occur.
    #[test]
    fn repeated_series_parse_as_each_line_alone(
        series in prop::collection::vec(r#"[a\\, =]{0,3}(,[ab\\ =]{0,3}=[ab\\, ]{0,3}){0,3}"#, 1..6),
        lines in prop::collection::vec((0usize..6, r#"[ab\\=]{0,2}(=1i?)? ?[0-9]{0,2}"#), 1..40),
    ) {
        let lines: Vec<String> = lines
            .iter()
            .map(|(i, rest)| format!("{} {rest}", series[i % series.len()]))
            .collect();
        let body = lines.join("\n");
        let together: Vec<_> = parse_lines(body.as_bytes()).collect();
        let alone: Vec<_> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let t = l.trim_start_matches([' ', '\t']);
                !t.is_empty() && !t.starts_with('#')
            })
            .map(|(i, l)| parse_line(l, i + 1))
            .collect();
        prop_assert_eq!(together, alone);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..200)) {
        for line in parse_lines(&body) {
            let _ = line;
        }
    }
}

#[test]
fn lines_of_one_series_share_its_tags() {
    let body = "cpu,host=a\\ b,dc=x u=1 1\ncpu,host=b u=2 2\ncpu,host=a\\ b,dc=x u=3 3\n";
    let lines: Vec<_> = parse_lines(body.as_bytes()).map(Result::unwrap).collect();
    assert!(Arc::ptr_eq(&lines[0].tags, &lines[2].tags));
    assert_eq!(lines[2].tags[0], ("host".into(), "a b".into()));
    assert_eq!(lines[2].series, r"cpu,host=a\ b,dc=x");
    assert_eq!(lines[1].tags[0], ("host".into(), "b".into()));
    // A series that failed to parse is not remembered: each repeat fails the same way.
    let errors: Vec<_> = parse_lines(b"m,t u=1\nm,t u=2\n")
        .map(|l| l.unwrap_err())
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors[1].message.contains("expected '=' after tag key 't'"));
}

#[test]
fn series_cache_turns_off_when_series_do_not_repeat() {
    let body: String = (0..3000)
        .map(|i| format!("m,host=h{i} v=1 {i}\n"))
        .collect();
    let mut lines = parse_lines(body.as_bytes());
    let parsed: Vec<_> = lines.by_ref().map(Result::unwrap).collect();
    assert_eq!(parsed.len(), 3000);
    assert_eq!(parsed[2999].tags[0].1, "h2999");
    assert!(lines.series.off);
    assert!(lines.series.parsed.is_empty());
}

#[test]
fn series_cache_stays_on_when_series_come_round_after_the_first_window() {
    // 1,500 series in turn, three times: the first 1,024 lookups all miss.
    let body: String = (0..4500)
        .map(|i| format!("m,host=h{} v=1 {i}\n", i % 1500))
        .collect();
    let mut lines = parse_lines(body.as_bytes());
    let parsed: Vec<_> = lines.by_ref().map(Result::unwrap).collect();
    assert!(!lines.series.off);
    assert!(Arc::ptr_eq(&parsed[10].tags, &parsed[4510 - 3000].tags));
}

#[test]
fn duplicates_are_found_past_signature_collisions_and_many_keys() {
    // Same length and last two bytes: signatures collide, the strings differ.
    assert_eq!(one("m xab=1,yab=2").fields.len(), 2);
    assert!(err("m xab=1,yab=2,xab=3").contains("duplicate field 'xab'"));
    let many: Vec<String> = (0..40).map(|i| format!("f{i}=1")).collect();
    let line = format!("m {}", many.join(","));
    assert_eq!(one(&line).fields.len(), 40);
    assert!(err(&format!("{line},f35=2")).contains("duplicate field 'f35'"));
    assert!(err(&format!("{line},f3=2")).contains("duplicate field 'f3'"));
}
