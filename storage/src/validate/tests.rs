use super::*;
use crate::lineproto::parse_lines;
use arrow::util::pretty::pretty_format_batches;
use proptest::prelude::*;

fn write(catalog: &RwLock<Catalog>, body: &str) -> ValidatedWrite {
    validate(
        catalog,
        "db",
        body.as_bytes(),
        Precision::Second,
        99,
        &WriteLimits::default(),
    )
    .unwrap()
}

#[test]
fn builds_one_batch_per_table_with_the_columns_written() {
    let catalog = RwLock::new(Catalog::default());
    let w = write(
        &catalog,
        "cpu,host=a u=1,n=2i 1\nmem free=3u\ncpu,host=b,dc=x u=2 2",
    );
    assert!(w.errors.is_empty());
    assert_eq!(w.rows, 3);
    assert_eq!(w.tables.len(), 2);
    let cpu = &w.tables[0].batch;
    assert_eq!(
        pretty_format_batches(std::slice::from_ref(cpu))
            .unwrap()
            .to_string(),
        "+----+------+---+-----+---------------------+\n\
         | dc | host | n | u   | time                |\n\
         +----+------+---+-----+---------------------+\n\
         |    | a    | 2 | 1.0 | 1970-01-01T00:00:01 |\n\
         | x  | b    |   | 2.0 | 1970-01-01T00:00:02 |\n\
         +----+------+---+-----+---------------------+"
    );
    // A line without a timestamp takes the server's time.
    let mem = &w.tables[1].batch;
    let time = mem.column_by_name("time").unwrap();
    let time = time
        .as_any()
        .downcast_ref::<arrow::array::TimestampNanosecondArray>()
        .unwrap();
    assert_eq!(time.value(0), 99);
}

#[test]
fn a_type_conflict_rejects_only_that_line() {
    let catalog = RwLock::new(Catalog::default());
    write(&catalog, "cpu,host=a u=1 1");
    let w = write(
        &catalog,
        "cpu,host=a u=1i 2\ncpu,host=a u=2 3\ncpu host=1 4\ncpu,u=x v=1 5",
    );
    assert_eq!(w.rows, 1);
    let messages: Vec<String> = w.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "line 1: field 'u' of table 'cpu' has type float; this line writes integer",
            "line 3: column 'host' of table 'cpu' is a tag; this line writes it as a float field",
            "line 4: column 'u' of table 'cpu' is a float field; this line writes it as a tag",
        ]
    );
    assert_eq!(w.errors[0].original_line, "cpu,host=a u=1i 2");
    // The rejected line's new column was not added.
    assert_eq!(
        catalog
            .read()
            .unwrap()
            .table("db", "cpu")
            .unwrap()
            .column_type("v"),
        None
    );
}

#[test]
fn conflicts_within_one_body_keep_the_first_type() {
    let catalog = RwLock::new(Catalog::default());
    let w = write(&catalog, "m v=1 1\nm v=true 2\nm v=2 3");
    assert_eq!(w.rows, 2);
    assert_eq!(w.errors.len(), 1);
    assert_eq!(w.errors[0].line_number, 2);
}

#[test]
fn time_is_reserved_and_timestamps_must_fit() {
    let catalog = RwLock::new(Catalog::default());
    let w = write(
        &catalog,
        "m,time=1 v=1\nm time=1\nm v=1 9223372036854775807",
    );
    let messages: Vec<String> = w.errors.iter().map(|e| e.message.clone()).collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].contains("tag key 'time' is reserved"));
    assert!(messages[1].contains("field key 'time' is reserved"));
    assert!(messages[2].contains("outside the range"));
}

#[test]
fn parse_errors_are_reported_in_line_order() {
    let catalog = RwLock::new(Catalog::default());
    let w = write(&catalog, "m v=1i 1\nbad\nm v=1.5 2\nalso bad");
    let lines: Vec<usize> = w.errors.iter().map(|e| e.line_number).collect();
    assert_eq!(lines, [2, 3, 4]);
}

#[test]
fn repeated_series_reuse_their_dictionary_keys() {
    let catalog = RwLock::new(Catalog::default());
    let body = "cpu,host=a,dc=x u=1 1\ncpu,host=b u=2 1\ncpu,host=a,dc=x u=3 2\n\
                cpu,dc=x,host=a u=4 3\ncpu,host=b u=5i 4\ncpu,host=b u=6 5\ncpu,host=a,dc=x u=7 6";
    let w = write(&catalog, body);
    assert_eq!(w.rows, 6);
    assert_eq!(
        w.errors.len(),
        1,
        "a known series still has its fields checked"
    );
    assert_eq!(
        pretty_format_batches(std::slice::from_ref(&w.tables[0].batch))
            .unwrap()
            .to_string(),
        "+----+------+-----+---------------------+\n\
         | dc | host | u   | time                |\n\
         +----+------+-----+---------------------+\n\
         | x  | a    | 1.0 | 1970-01-01T00:00:01 |\n\
         |    | b    | 2.0 | 1970-01-01T00:00:01 |\n\
         | x  | a    | 3.0 | 1970-01-01T00:00:02 |\n\
         | x  | a    | 4.0 | 1970-01-01T00:00:03 |\n\
         |    | b    | 6.0 | 1970-01-01T00:00:05 |\n\
         | x  | a    | 7.0 | 1970-01-01T00:00:06 |\n\
         +----+------+-----+---------------------+"
    );
    let host = w.tables[0].batch.column_by_name("host").unwrap();
    let host = host
        .as_any()
        .downcast_ref::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>()
        .unwrap();
    assert_eq!(
        host.values().len(),
        2,
        "each distinct tag value is stored once"
    );
}

#[test]
fn lines_beyond_a_limit_are_rejected_and_name_it_while_the_others_are_written() {
    let catalog = RwLock::new(Catalog::default());
    let limits = WriteLimits {
        max_line_bytes: 60,
        max_string_bytes: 5,
        max_columns_per_table: 4,
        max_tables_per_database: 2,
    };
    let body = [
        "cpu,host=a u=1 1",                              // time, host, u: 3 columns
        "cpu,host=a u=1,v=2,w=3 2",                      // would make 5
        "cpu,host=a v=2 3",                              // 4: fits
        "log msg=\"hello!\" 4",                          // a 6-byte string
        "log msg=\"hi\" 5",                              // second table
        "third x=1 6",                                   // third table
        &format!("cpu,host=a u=1 7 {}", "#".repeat(50)), // not a valid line, and too long
        &format!("cpu,host={} u=1 8", "b".repeat(60)),
    ]
    .join("\n");
    let w = validate(
        &catalog,
        "db",
        body.as_bytes(),
        Precision::Second,
        99,
        &limits,
    )
    .unwrap();
    let errors: Vec<(usize, &str)> = w
        .errors
        .iter()
        .map(|e| (e.line_number, e.message.as_str()))
        .collect();
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert_eq!(errors[0].0, 2);
    assert!(
        errors[0]
            .1
            .contains("give table 'cpu' 5 columns; the limit is 4")
    );
    assert_eq!(errors[1].0, 4);
    assert!(
        errors[1]
            .1
            .contains("string field 'msg' is 6 bytes long; the limit is 5")
    );
    assert_eq!(errors[2].0, 6);
    assert!(errors[2].1.contains("limit is 2 tables per database"));
    assert_eq!(errors[3].0, 7);
    assert_eq!(errors[4].0, 8);
    assert!(errors[4].1.contains("the limit is 60 bytes per line"));
    assert_eq!(w.rows, 3);
    let cat = catalog.read().unwrap();
    assert_eq!(cat.table("db", "cpu").unwrap().columns.len(), 4);
    assert!(cat.table("db", "third").is_none());
}

#[test]
fn keys_compare_equal_only_when_every_byte_is() {
    for n in 0..24 {
        let a: String = (0..n).map(|i| (b'a' + i as u8) as char).collect();
        assert!(same_key(&a, &a.clone()), "{a}");
        for at in 0..n {
            let mut b = a.clone().into_bytes();
            b[at] = b'Z';
            let b = String::from_utf8(b).unwrap();
            assert!(!same_key(&a, &b), "{a} vs {b}");
        }
        assert!(!same_key(&a, &format!("{a}x")));
    }
}

#[test]
fn a_write_mixing_new_columns_conflicts_and_known_series_builds_once() {
    let catalog = RwLock::new(Catalog::default());
    // The first write makes the table; the second brings a new field halfway, a type
    // conflict, and repeats a series: it must build on the second look only.
    test_write(
        &catalog,
        "m,host=a v=1 1\nm,host=b v=2 2",
        Precision::Nanosecond,
    );
    let body = "m,host=a v=3 3\nm,host=a v=4,w=1i 4\nm,host=b v=\"x\" 5\nm,host=b v=6 6";
    let w = validate(
        &catalog,
        "db",
        body.as_bytes(),
        Precision::Nanosecond,
        0,
        &WriteLimits::default(),
    )
    .unwrap();
    assert_eq!(w.rows, 3);
    assert_eq!(w.errors.len(), 1, "{:?}", w.errors);
    assert_eq!(w.errors[0].line_number, 3);
    assert!(
        w.errors[0].message.contains("has type float"),
        "{}",
        w.errors[0]
    );
    let batch = &w.tables[0].batch;
    assert_eq!(batch.num_rows(), 3);
    assert_eq!(batch.schema().fields().len(), 4);
}

#[test]
fn a_new_table_whose_lines_all_fail_is_not_made() {
    let catalog = RwLock::new(Catalog::default());
    // One key as both a tag and a field: the line is rejected and leaves no table.
    let w = write(&catalog, "n,a=x a=1 1");
    assert_eq!(w.rows, 0);
    assert_eq!(w.errors.len(), 1);
    assert!(
        w.errors[0]
            .message
            .contains("'a' is both a tag and a field"),
        "{}",
        w.errors[0].message
    );
    assert!(catalog.read().unwrap().table("db", "n").is_none());

    // Lines older than the database's retention: rejected as such, no table either.
    {
        let mut cat = catalog.write().unwrap();
        cat.create_database("db").unwrap();
        cat.databases.get_mut("db").unwrap().retention_ns = Some(10_000_000_000);
    }
    // Validated at 100 s: the cutoff is 90 s.
    let at_100s = |body: &str| {
        let limits = WriteLimits::default();
        validate(
            &catalog,
            "db",
            body.as_bytes(),
            Precision::Second,
            100_000_000_000,
            &limits,
        )
        .unwrap()
    };
    let w = at_100s("old v=1 5\nold v=2 6");
    assert_eq!(w.rows, 0);
    assert_eq!(w.errors.len(), 2);
    for e in &w.errors {
        assert!(
            e.message.contains("older than the retention period"),
            "{}",
            e.message
        );
    }
    assert!(catalog.read().unwrap().table("db", "old").is_none());

    // A good line next to them makes the table, with only its row.
    let w = at_100s("old v=1 5\nold,h=a v=2 95");
    assert_eq!(w.rows, 1);
    assert_eq!(w.errors.len(), 1);
    assert_eq!(w.errors[0].line_number, 1);
    assert!(catalog.read().unwrap().table("db", "old").is_some());
}

/// One line of a body for [`one_pass_equals_the_two_pass_validation`]: known tables, tags
/// and fields in any order and subset, values of the wrong type, escaped tag values that
/// equal plain ones, missing timestamps, old timestamps, bad lines and blank lines; and, if
/// `novel`, sometimes a field or a table the catalog does not have.
fn body_line(novel: bool) -> impl Strategy<Value = String> {
    let table = if novel {
        prop::sample::select(vec!["a", "b", "c"]).boxed()
    } else {
        prop::sample::select(vec!["a", "b"]).boxed()
    };
    let tag_value = prop::sample::select(vec!["x", "y", "a=b", r"a\=b", r"p\ q", "é"]);
    let tags = prop::collection::vec(
        (prop::sample::select(vec!["t1", "t2", "t3"]), tag_value),
        0..3,
    );
    let field_value = prop::sample::select(vec!["1", "-2.5", "3i", "4u", "\"s\"", "true"]);
    let mut keys = vec!["f", "i", "u", "s", "b"];
    if novel {
        keys.push("new");
    }
    let fields = prop::collection::vec((prop::sample::select(keys), field_value), 1..4);
    let timestamp = prop::sample::select(vec!["", " 5", " 200", " 300", " x"]);
    let kind = 0..20u8;
    (table, tags, fields, timestamp, kind).prop_map(|(table, tags, fields, ts, kind)| {
        match kind {
            0 => return "bad line".to_owned(),
            1 => return String::new(),
            2 => return "# comment".to_owned(),
            _ => {}
        }
        let mut line = table.to_owned();
        for (k, v) in tags {
            line.push_str(&format!(",{k}={v}"));
        }
        for (i, (k, v)) in fields.into_iter().enumerate() {
            line.push(if i == 0 { ' ' } else { ',' });
            line.push_str(&format!("{k}={v}"));
        }
        line + ts
    })
}

/// The catalog [`one_pass_equals_the_two_pass_validation`] writes into: tables `a` and `b`
/// with tags t1..t3 and fields f (float), i (integer), u (unsigned), s (string), b (bool);
/// a retention period that rejects timestamps before 100 s.
fn known_tables() -> RwLock<Catalog> {
    let catalog = RwLock::new(Catalog::default());
    for table in ["a", "b"] {
        let body = format!("{table},t1=x,t2=x,t3=x f=1,i=1i,u=1u,s=\"s\",b=true 1000");
        test_write(&catalog, &body, Precision::Second);
    }
    catalog
        .write()
        .unwrap()
        .databases
        .get_mut("db")
        .unwrap()
        .retention_ns = Some(100_000_000_000);
    catalog
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Streaming a body into its batches gives the batches, rows and errors that grouping
    /// its lines by table first gives; and a body bringing a table or a field is left to
    /// the second way.
    #[test]
    fn one_pass_equals_the_two_pass_validation(
        novel in any::<bool>(),
        lines in prop::collection::vec(body_line(true), 1..40),
    ) {
        let lines: Vec<String> = if novel {
            lines
        } else {
            lines.into_iter().filter(|l| !l.starts_with('c') && !l.contains("new=")).collect()
        };
        let body = lines.join("\n");
        let catalog = known_tables();
        let now = 1_000_000_000_000;
        let limits = WriteLimits::default();
        let fast = stream(&catalog.read().unwrap(), "db", body.as_bytes(), Precision::Second, now, &limits);
        let slow = validate_lines(&catalog, "db", parse_lines(body.as_bytes()), Precision::Second, now, &limits).unwrap();
        let brings_columns = lines.iter().any(|l| l.starts_with('c') || l.contains("new="));
        if !brings_columns {
            prop_assert!(fast.is_some(), "every column exists: {body:?}");
        }
        if let Some(fast) = fast {
            prop_assert_eq!(fast.rows, slow.rows);
            prop_assert_eq!(&fast.errors, &slow.errors);
            prop_assert_eq!(fast.tables.len(), slow.tables.len());
            for (f, s) in fast.tables.iter().zip(&slow.tables) {
                prop_assert_eq!(&f.table, &s.table);
                prop_assert_eq!(&f.batch, &s.batch);
            }
        }
    }
}

#[test]
fn a_large_body_over_several_tables_streams_as_the_two_pass_validation_builds() {
    // Past the first table's room and the later tables' starting room, so that builders
    // grow and batches are shrunk; with string fields and repeated series.
    let catalog = known_tables();
    let body: String = (0..6000)
        .map(|i| {
            let table = ["a", "a", "b"][i % 3];
            format!("{table},t1=h{} f={i}.5,s=\"v{i}\" {}\n", i % 700, 950 + i)
        })
        .collect();
    let limits = WriteLimits::default();
    let now = 1_000_000_000_000;
    let fast = stream(
        &catalog.read().unwrap(),
        "db",
        body.as_bytes(),
        Precision::Second,
        now,
        &limits,
    )
    .expect("every column exists");
    let slow = validate_lines(
        &catalog,
        "db",
        parse_lines(body.as_bytes()),
        Precision::Second,
        now,
        &limits,
    )
    .unwrap();
    assert_eq!(fast.rows, 6000);
    assert!(fast.errors.is_empty());
    assert_eq!(fast.tables.len(), 2);
    for (f, s) in fast.tables.iter().zip(&slow.tables) {
        assert_eq!(f.batch, s.batch);
        // What the buffer will count is about what the batch holds.
        let held: usize = f
            .batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap())
            .sum();
        let counted = f.batch.get_array_memory_size();
        assert!(
            counted < held + held / 4 + 4096,
            "{counted} counted for {held} held"
        );
    }
}
