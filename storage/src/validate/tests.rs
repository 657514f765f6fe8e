use super::*;
use crate::lineproto::parse_lines;
use arrow::util::pretty::pretty_format_batches;

fn write(catalog: &RwLock<Catalog>, body: &str) -> ValidatedWrite {
    validate(
        catalog,
        "db",
        parse_lines(body.as_bytes()),
        Precision::Second,
        99,
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
