use super::*;
use arrow::util::pretty::pretty_format_batches;
use gannet_storage::{DeletePredicate, EngineConfig, Precision};

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(EngineConfig::test_config(dir)).unwrap()
}

/// The one value a statement answers (a count, an aggregate), as text.
async fn scalar(query: &QueryEngine, db: &str, sql: &str) -> String {
    let batches = query
        .sql(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        1,
        "{sql}"
    );
    let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    arrow::util::display::array_value_to_string(batch.column(0), 0).unwrap()
}

/// The error a statement fails with, as text.
async fn error(query: &QueryEngine, db: &str, sql: &str) -> String {
    match query.sql(db, sql).await {
        Ok(_) => panic!("{sql}: no error"),
        Err(e) => e.to_string(),
    }
}

async fn show(query: &QueryEngine, db: &str, sql: &str) -> String {
    let batches = query
        .sql(db, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn queries_see_buffer_and_segments_once_with_the_last_write_winning() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=1,s=1 10\ncpu,host=b u=5 10",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=2 10\ncpu,host=a u=3 20",
            Precision::Second,
        )
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, u, s, time FROM cpu ORDER BY host, time"
        )
        .await,
        "+------+-----+-----+---------------------+\n\
         | host | u   | s   | time                |\n\
         +------+-----+-----+---------------------+\n\
         | a    | 2.0 | 1.0 | 1970-01-01T00:00:10 |\n\
         | a    | 3.0 |     | 1970-01-01T00:00:20 |\n\
         | b    | 5.0 |     | 1970-01-01T00:00:10 |\n\
         +------+-----+-----+---------------------+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, avg(u) AS avg_u FROM cpu GROUP BY host ORDER BY host"
        )
        .await,
        "+------+-------+\n\
         | host | avg_u |\n\
         +------+-------+\n\
         | a    | 2.5   |\n\
         | b    | 5.0   |\n\
         +------+-------+"
    );
}

#[tokio::test]
async fn deleted_rows_are_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=1 1\ncpu,host=b u=2 1",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let only_a = DeletePredicate {
        tags: vec![("host".into(), "a".into())],
        ..DeletePredicate::all()
    };
    engine.delete("m", "cpu", only_a).unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(&query, "m", "SELECT host FROM cpu").await,
        "+------+\n| host |\n+------+\n| b    |\n+------+"
    );
}

#[tokio::test]
async fn a_session_sees_its_own_database_as_postgres_does() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp("m", b"cpu u=1 1", Precision::Second)
        .unwrap();
    engine
        .write_lp("other", b"mem free=7i 1", Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(&query, "m", "SELECT u FROM m.public.cpu").await,
        "+-----+\n| u   |\n+-----+\n| 1.0 |\n+-----+"
    );
    assert_eq!(
        show(&query, "other", "SELECT free FROM public.mem").await,
        "+------+\n| free |\n+------+\n| 7    |\n+------+"
    );
    let tables = show(
        &query,
        "m",
        "SELECT table_catalog, table_schema, table_name FROM information_schema.tables \
         WHERE table_schema <> 'information_schema' ORDER BY 1, 2, 3",
    )
    .await;
    assert_eq!(
        tables,
        "+---------------+--------------+---------------+\n\
         | table_catalog | table_schema | table_name    |\n\
         +---------------+--------------+---------------+\n\
         | m             | public       | cpu           |\n\
         | m             | system       | models        |\n\
         | m             | system       | queries       |\n\
         | m             | system       | scoring_rules |\n\
         | m             | system       | segments      |\n\
         | m             | system       | tables        |\n\
         +---------------+--------------+---------------+"
    );
    let err = error(&query, "m", "SELECT * FROM other.public.mem").await;
    assert!(err.contains("other"), "{err}");

    let err = error(&query, "m", "SELECT * FROM nope").await;
    assert!(err.contains("nope"), "{err}");
    let err = error(&query, "absent", "SELECT 1").await;
    assert_eq!(err, "database \"absent\" does not exist");
}

/// Four ten-minute windows: 0 s in one segment, 600 s in two segments (an overwrite),
/// 1200 s in a segment and the buffer, 1800 s in the buffer alone.
fn four_windows(dir: &std::path::Path) -> Arc<Engine> {
    let engine = engine(dir);
    let write = |body: &[u8]| {
        engine.write_lp("m", body, Precision::Second).unwrap();
    };
    write(b"cpu,host=a u=1 10\ncpu,host=b u=2 10\ncpu,host=a u=3 610\ncpu,host=a u=5 1210");
    engine.flush().unwrap();
    write(b"cpu,host=a u=4 610");
    engine.flush().unwrap();
    write(b"cpu,host=a u=6 1210\ncpu,host=b u=7 1210\ncpu,host=a u=8 1810");
    engine
}

#[tokio::test]
async fn windows_read_from_parquet_and_merged_agree() {
    let dir = tempfile::tempdir().unwrap();
    let query = QueryEngine::new(four_windows(dir.path()));
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, u, CAST(time AS BIGINT) / 1000000000 AS t FROM cpu ORDER BY t, host"
        )
        .await,
        "+------+-----+------+\n\
         | host | u   | t    |\n\
         +------+-----+------+\n\
         | a    | 1.0 | 10   |\n\
         | b    | 2.0 | 10   |\n\
         | a    | 4.0 | 610  |\n\
         | a    | 6.0 | 1210 |\n\
         | b    | 7.0 | 1210 |\n\
         | a    | 8.0 | 1810 |\n\
         +------+-----+------+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT count(*) AS n, sum(u) AS total FROM cpu \
             WHERE time >= '1970-01-01T00:10:00Z' AND time < '1970-01-01T00:30:00Z'"
        )
        .await,
        "+---+-------+\n| n | total |\n+---+-------+\n| 3 | 17.0  |\n+---+-------+"
    );
}

/// The plan of a query, as EXPLAIN prints it.
async fn physical_plan(query: &QueryEngine, sql: &str) -> String {
    let batches = query.sql("m", &format!("EXPLAIN {sql}")).await.unwrap();
    let plan = pretty_format_batches(&batches).unwrap().to_string();
    plan.lines()
        .skip_while(|l| !l.contains("physical_plan"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_time_range_prunes_windows_and_segments_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let engine = four_windows(dir.path());
    let first_window: Vec<_> = engine
        .snapshot("m", "cpu")
        .unwrap()
        .segments
        .iter()
        .filter(|s| s.window_start == 0)
        .map(|s| dir.path().join(&s.path))
        .collect();
    assert_eq!(first_window.len(), 1);
    let query = QueryEngine::new(engine);

    // The first window alone is one Parquet file, read straight with the filters as its
    // predicate and only the columns asked for; the others are not in the plan.
    let sql = "SELECT host, u FROM cpu WHERE time < '1970-01-01T00:05:00Z' AND host = 'a'";
    let plan = physical_plan(&query, sql).await;
    assert_eq!(plan.matches(".parquet").count(), 1, "{plan}");
    assert!(plan.contains("DataSourceExec"), "{plan}");
    assert!(plan.contains("projection=[host, u"), "{plan}");
    assert!(plan.contains("predicate="), "{plan}");
    assert!(!plan.contains("MemorySourceConfig"), "{plan}");
    assert_eq!(
        show(&query, "m", sql).await,
        "+------+-----+\n| host | u   |\n+------+-----+\n| a    | 1.0 |\n+------+-----+"
    );

    // Without the first window's file, a query that needs its rows fails and one that does
    // not still answers: pruned files are never opened. (The file's footer is in the
    // metadata cache by now, so the failing query must read rows, not just count them.)
    for file in &first_window {
        std::fs::rename(file, file.with_extension("moved")).unwrap();
    }
    assert!(query.sql("m", "SELECT sum(u) FROM cpu").await.is_err());
    assert_eq!(
        scalar(
            &query,
            "m",
            "SELECT count(*) AS n FROM cpu WHERE time > '1970-01-01T00:10:00Z'"
        )
        .await,
        "4"
    );
}

#[tokio::test]
async fn a_window_with_deletes_is_merged_and_hides_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a u=1 10\ncpu,host=b u=2 10",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let query = QueryEngine::new(engine.clone());
    let sql = "SELECT host FROM cpu ORDER BY host";
    assert!(physical_plan(&query, sql).await.contains("DataSourceExec"));
    let only_b = DeletePredicate {
        tags: vec![("host".into(), "b".into())],
        ..DeletePredicate::all()
    };
    engine.delete("m", "cpu", only_b).unwrap();
    let plan = physical_plan(&query, sql).await;
    assert!(!plan.contains(".parquet"), "{plan}");
    assert_eq!(
        show(&query, "m", sql).await,
        "+------+\n| host |\n+------+\n| a    |\n+------+"
    );
}

#[test]
fn time_ranges_from_filters() {
    use datafusion::logical_expr::{col, lit};
    use datafusion::scalar::ScalarValue;
    let ts = |s: i64| lit(ScalarValue::TimestampSecond(Some(s), None));
    let range = |filters: Vec<datafusion::logical_expr::Expr>| {
        let r = table::TimeRange::from_filters(&filters);
        (r.min, r.max)
    };
    let s = 1_000_000_000;
    assert_eq!(range(vec![col("time").gt(ts(10))]), (10 * s + 1, i64::MAX));
    assert_eq!(
        range(vec![col("time").gt_eq(ts(10)).and(col("time").lt(ts(20)))]),
        (10 * s, 20 * s - 1)
    );
    assert_eq!(range(vec![ts(20).gt(col("time"))]), (i64::MIN, 20 * s - 1));
    assert_eq!(
        range(vec![
            col("time").between(ts(1), ts(2)),
            col("host").eq(lit("a"))
        ]),
        (s, 2 * s)
    );
    assert_eq!(range(vec![col("time").eq(ts(5))]), (5 * s, 5 * s));
    // OR, NOT BETWEEN and other columns do not narrow.
    assert_eq!(
        range(vec![col("time").gt(ts(10)).or(col("time").lt(ts(1)))]),
        (i64::MIN, i64::MAX)
    );
    assert_eq!(
        range(vec![col("time").not_between(ts(1), ts(2))]),
        (i64::MIN, i64::MAX)
    );
}

#[tokio::test]
async fn time_bucket_and_the_first_and_last_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let query = QueryEngine::new(four_windows(dir.path()));
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, first(u, time) AS first_u, last(u, time) AS last_u, \
             last(CAST(time AS BIGINT) / 1000000000, time) AS last_t \
             FROM cpu GROUP BY host ORDER BY host"
        )
        .await,
        "+------+---------+--------+--------+\n\
         | host | first_u | last_u | last_t |\n\
         +------+---------+--------+--------+\n\
         | a    | 1.0     | 8.0    | 1810   |\n\
         | b    | 2.0     | 7.0    | 1210   |\n\
         +------+---------+--------+--------+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT time_bucket(INTERVAL '20 minutes', time) AS bucket, count(*) AS n, \
             max(u) AS top FROM cpu GROUP BY 1 ORDER BY 1"
        )
        .await,
        "+---------------------+---+-----+\n\
         | bucket              | n | top |\n\
         +---------------------+---+-----+\n\
         | 1970-01-01T00:00:00 | 3 | 4.0 |\n\
         | 1970-01-01T00:20:00 | 3 | 8.0 |\n\
         +---------------------+---+-----+"
    );
    // Weeks start on Monday, as in TimescaleDB (date_bin's 1970 origin is a Thursday); the
    // interval may be a string, as PostgreSQL coerces it.
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT time_bucket('1 week', TIMESTAMP '2023-11-15 12:00:00') AS week, \
             date_bin(INTERVAL '1 week', TIMESTAMP '2023-11-15 12:00:00') AS thursday"
        )
        .await,
        "+---------------------+---------------------+\n\
         | week                | thursday            |\n\
         +---------------------+---------------------+\n\
         | 2023-11-13T00:00:00 | 2023-11-09T00:00:00 |\n\
         +---------------------+---------------------+"
    );
    let err = error(&query, "m", "SELECT first(u, host) FROM cpu").await;
    assert!(err.contains("orders by a timestamp"), "{err}");
}

#[tokio::test]
async fn insert_writes_like_line_protocol_and_overwrites_fields() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp(
            "m",
            b"cpu,host=a,dc=x u=1,n=1i,ok=true,note=\"hi\" 10",
            Precision::Second,
        )
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(
            &query,
            "m",
            "INSERT INTO cpu (time, host, u, note) VALUES \
             ('1970-01-01T00:00:10Z', 'a', 2.5, 'say \"hi\", \\ = ok'), \
             ('1970-01-01T00:00:20Z', 'b c', 0.1, NULL)"
        )
        .await,
        "+-------+\n| count |\n+-------+\n| 2     |\n+-------+"
    );
    // host=a at 10 s is the same point: u and note are overwritten, n and ok kept; dc is a
    // tag, so the INSERT without dc is another series.
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, dc, u, n, ok, note, CAST(time AS BIGINT) / 1000000000 AS t \
             FROM cpu ORDER BY host, dc, t"
        )
        .await,
        "+------+----+-----+---+------+------------------+----+\n\
         | host | dc | u   | n | ok   | note             | t  |\n\
         +------+----+-----+---+------+------------------+----+\n\
         | a    | x  | 1.0 | 1 | true | hi               | 10 |\n\
         | a    |    | 2.5 |   |      | say \"hi\", \\ = ok | 10 |\n\
         | b c  |    | 0.1 |   |      |                  | 20 |\n\
         +------+----+-----+---+------+------------------+----+"
    );
    let err = error(
        &query,
        "m",
        "INSERT INTO cpu (time, host) VALUES ('1970-01-01T00:00:30Z', 'a')",
    )
    .await;
    assert!(err.contains("at least one field"), "{err}");
    let err = error(
        &query,
        "m",
        "INSERT INTO cpu (time, u) VALUES ('1970-01-01T00:00:30Z', 'NaN')",
    )
    .await;
    assert!(err.contains("cannot be stored"), "{err}");
    assert_eq!(
        scalar(&query, "m", "SELECT count(*) AS n FROM cpu").await,
        "3"
    );
}

#[tokio::test]
async fn delete_hides_a_time_range_of_some_series() {
    let dir = tempfile::tempdir().unwrap();
    let query = QueryEngine::new(four_windows(dir.path()));
    assert_eq!(
        scalar(
            &query,
            "m",
            "DELETE FROM cpu WHERE host = 'a' AND time >= '1970-01-01T00:10:00Z' \
             AND time < '1970-01-01T00:30:00Z'"
        )
        .await,
        "2"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, CAST(time AS BIGINT) / 1000000000 AS t FROM cpu ORDER BY t, host"
        )
        .await,
        "+------+------+\n\
         | host | t    |\n\
         +------+------+\n\
         | a    | 10   |\n\
         | b    | 10   |\n\
         | b    | 1210 |\n\
         | a    | 1810 |\n\
         +------+------+"
    );
    for (sql, expected) in [
        (
            "DELETE FROM cpu WHERE u > 1",
            "DELETE can match tags and time only",
        ),
        (
            "DELETE FROM cpu WHERE host = 'a' OR host = 'b'",
            "conjunctions (AND)",
        ),
    ] {
        let err = error(&query, "m", sql).await;
        assert!(err.contains(expected), "{sql}: {err}");
    }
    assert_eq!(scalar(&query, "m", "DELETE FROM cpu").await, "4");
    assert_eq!(
        scalar(&query, "m", "SELECT count(*) AS n FROM cpu").await,
        "0"
    );
}

#[tokio::test]
async fn create_database() {
    let dir = tempfile::tempdir().unwrap();
    let query = QueryEngine::new(engine(dir.path()));
    assert!(query.sql("new_db", "SELECT 1").await.is_err());
    query
        .sql("anything", "CREATE DATABASE new_db")
        .await
        .unwrap();
    assert_eq!(
        show(&query, "new_db", "SELECT 1 AS one").await,
        "+-----+\n| one |\n+-----+\n| 1   |\n+-----+"
    );
    let err = query
        .sql("new_db", "CREATE DATABASE new_db")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::DatabaseExists(_)), "{err}");
    query
        .sql("new_db", "CREATE DATABASE IF NOT EXISTS new_db")
        .await
        .unwrap();
    let long = format!("CREATE DATABASE \"{}\"", "x".repeat(300));
    let err = error(&query, "x", &long).await;
    assert!(err.contains("invalid name"), "{err}");
}

#[tokio::test]
async fn system_tables_show_tables_segments_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = four_windows(dir.path());
    engine
        .write_lp("other", b"mem,host=a free=1i 1", Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT database, table_name, tags, fields, segments, segment_rows FROM system.tables \
             ORDER BY database"
        )
        .await,
        "+----------+------------+------+--------+----------+--------------+\n\
         | database | table_name | tags | fields | segments | segment_rows |\n\
         +----------+------------+------+--------+----------+--------------+\n\
         | m        | cpu        | 1    | 1      | 4        | 5            |\n\
         | other    | mem        | 1    | 1      | 0        | 0            |\n\
         +----------+------------+------+--------+----------+--------------+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT window_start, min_time, max_time, rows FROM system.segments \
             ORDER BY window_start, rows"
        )
        .await,
        "+---------------------+---------------------+---------------------+------+\n\
         | window_start        | min_time            | max_time            | rows |\n\
         +---------------------+---------------------+---------------------+------+\n\
         | 1970-01-01T00:00:00 | 1970-01-01T00:00:10 | 1970-01-01T00:00:10 | 2    |\n\
         | 1970-01-01T00:10:00 | 1970-01-01T00:10:10 | 1970-01-01T00:10:10 | 1    |\n\
         | 1970-01-01T00:10:00 | 1970-01-01T00:10:10 | 1970-01-01T00:10:10 | 1    |\n\
         | 1970-01-01T00:20:00 | 1970-01-01T00:20:10 | 1970-01-01T00:20:10 | 1    |\n\
         +---------------------+---------------------+---------------------+------+"
    );
    assert!(query.sql("m", "SELECT nope FROM cpu").await.is_err());
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT query, rows, status FROM system.queries WHERE query LIKE '%cpu%' ORDER BY started"
        )
        .await,
        "+----------------------+------+--------+\n\
         | query                | rows | status |\n\
         +----------------------+------+--------+\n\
         | SELECT nope FROM cpu |      | error  |\n\
         +----------------------+------+--------+"
    );
}

#[tokio::test]
async fn merged_windows_are_reused_only_while_the_window_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = four_windows(dir.path());
    let query = QueryEngine::new(engine.clone());
    let sum = "SELECT sum(u) FROM cpu";
    assert_eq!(scalar(&query, "m", sum).await, "28.0");
    assert_eq!(scalar(&query, "m", sum).await, "28.0");
    // A new write to a merged window, an overwrite, a delete, a flush, a compaction: each
    // changes what the window holds, and the next query sees it.
    engine
        .write_lp("m", b"cpu,host=c u=100 1220", Precision::Second)
        .unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "128.0");
    engine
        .write_lp("m", b"cpu,host=c u=50 1220", Precision::Second)
        .unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "78.0");
    let only_c = DeletePredicate {
        tags: vec![("host".into(), "c".into())],
        ..DeletePredicate::all()
    };
    engine.delete("m", "cpu", only_c).unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "28.0");
    engine.flush().unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "28.0");
    engine.compact().unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "28.0");
    engine
        .write_lp("m", b"cpu,host=a u=1000 610", Precision::Second)
        .unwrap();
    assert_eq!(scalar(&query, "m", sum).await, "1024.0");
}

#[tokio::test]
async fn points_written_in_time_order_are_read_without_merging() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let write = |body: &[u8]| engine.write_lp("m", body, Precision::Second).unwrap();
    // One window, filled in time order: two flushes, then buffered writes.
    write(b"cpu,host=a u=1 10\ncpu,host=b u=2 20");
    engine.flush().unwrap();
    write(b"cpu,host=a u=3 30\ncpu,host=b u=4 40");
    engine.flush().unwrap();
    write(b"cpu,host=a u=5 50");
    write(b"cpu,host=a u=6 50\ncpu,host=b u=7 60");
    let query = QueryEngine::new(engine.clone());
    let sql = "SELECT host, u FROM cpu";
    let plan = physical_plan(&query, sql).await;
    assert_eq!(plan.matches(".parquet").count(), 2, "{plan}");
    assert!(
        plan.contains("MergeExec: table=cpu, partitions=1, runs=1, segments=0, buffered_writes=2"),
        "{plan}"
    );
    assert_eq!(scalar(&query, "m", "SELECT sum(u) FROM cpu").await, "23.0");

    // A time range past the segments leaves them out; one before the buffered writes
    // leaves the merge out.
    let late = "SELECT u FROM cpu WHERE time >= '1970-01-01T00:00:45Z'";
    assert!(!physical_plan(&query, late).await.contains(".parquet"));
    let early = "SELECT u FROM cpu WHERE time < '1970-01-01T00:00:45Z'";
    assert!(!physical_plan(&query, early).await.contains("MergeExec"));

    // A write back in time overlaps the second segment: the two are merged, the first
    // segment is still read as it is.
    write(b"cpu,host=b u=40 40");
    let plan = physical_plan(&query, sql).await;
    assert_eq!(plan.matches(".parquet").count(), 1, "{plan}");
    assert!(
        plan.contains("runs=2, segments=1, buffered_writes=3"),
        "{plan}"
    );
    assert_eq!(scalar(&query, "m", "SELECT sum(u) FROM cpu").await, "59.0");

    // A write after all the others, with no point twice, is not merged.
    write(b"cpu,host=a u=8 70\ncpu,host=b u=9 70");
    let plan = physical_plan(&query, sql).await;
    assert!(
        plan.contains("runs=2, segments=1, buffered_writes=3, unmerged_writes=1"),
        "{plan}"
    );
    assert_eq!(scalar(&query, "m", "SELECT sum(u) FROM cpu").await, "76.0");
    // Unless it repeats a point.
    write(b"cpu,host=a u=10 80\ncpu,host=a u=11 80");
    let plan = physical_plan(&query, sql).await;
    assert!(
        plan.contains("runs=3, segments=1, buffered_writes=4, unmerged_writes=1"),
        "{plan}"
    );
    assert_eq!(scalar(&query, "m", "SELECT sum(u) FROM cpu").await, "87.0");
}

mod model {
    //! Scans against a model of what they must return, for any order of writes, flushes,
    //! compactions and deletes.
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Points (host, second, u, v); `None` leaves a field out of the line.
        Write(Vec<(u8, i64, Option<i64>, Option<i64>)>),
        Flush,
        Compact,
        DeleteHost(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct times, so that writes repeat points and overlap one another.
        let point = (
            0u8..3,
            (0i64..30).prop_map(|t| t * 50),
            proptest::option::of(0i64..100),
            proptest::option::of(0i64..100),
        )
            .prop_filter("a line has a field", |p| p.2.is_some() || p.3.is_some());
        prop_oneof![
            6 => proptest::collection::vec(point, 1..6).prop_map(Op::Write),
            2 => Just(Op::Flush),
            1 => Just(Op::Compact),
            1 => (0u8..3).prop_map(Op::DeleteHost),
        ]
    }

    type Model = BTreeMap<(String, i64), (Option<i64>, Option<i64>)>;

    fn apply(engine: &Engine, model: &mut Model, op: &Op) {
        match op {
            Op::Write(points) => {
                let mut body = String::new();
                for (host, t, u, v) in points {
                    let fields: Vec<String> = [("u", u), ("v", v)]
                        .iter()
                        .filter_map(|(name, value)| value.map(|x| format!("{name}={x}i")))
                        .collect();
                    body.push_str(&format!("cpu,host=h{host} {} {t}\n", fields.join(",")));
                    let entry = model.entry((format!("h{host}"), *t)).or_default();
                    entry.0 = u.or(entry.0);
                    entry.1 = v.or(entry.1);
                }
                engine
                    .write_lp("m", body.as_bytes(), Precision::Second)
                    .unwrap();
            }
            Op::Flush => engine.flush().unwrap(),
            Op::Compact => {
                engine.compact().unwrap();
            }
            Op::DeleteHost(host) => {
                let predicate = DeletePredicate {
                    tags: vec![("host".into(), format!("h{host}"))],
                    ..DeletePredicate::all()
                };
                engine.delete("m", "cpu", predicate).unwrap();
                model.retain(|(h, _), _| *h != format!("h{host}"));
            }
        }
    }

    fn expected(model: &Model, from: i64, to: i64, hosts: &[String]) -> String {
        model
            .iter()
            .filter(|((h, t), _)| (from..to).contains(t) && (hosts.is_empty() || hosts.contains(h)))
            .map(|((h, t), (u, v))| {
                let show = |x: &Option<i64>| x.map_or("NULL".to_string(), |x| x.to_string());
                format!("{h} {t} {} {}", show(u), show(v))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The rows from `from` to `to`, of `hosts` only (by the tag index for buffered
    /// windows, the page index for segments) unless it is empty.
    async fn actual(query: &QueryEngine, from: i64, to: i64, hosts: &[String]) -> String {
        let only = match hosts {
            [] => String::new(),
            [host] => format!("AND host = '{host}'"),
            hosts => format!("AND host IN ('{}')", hosts.join("', '")),
        };
        let sql = format!(
            "SELECT concat_ws(' ', host, CAST(time AS BIGINT) / 1000000000, \
             coalesce(CAST(u AS VARCHAR), 'NULL'), coalesce(CAST(v AS VARCHAR), 'NULL')) AS row \
             FROM cpu WHERE time >= to_timestamp({from}) AND time < to_timestamp({to}) {only} \
             ORDER BY host, time"
        );
        let batches = query
            .sql("m", &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut rows = Vec::new();
        for batch in &batches {
            let column =
                arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let column = arrow::array::AsArray::as_string::<i32>(&column);
            rows.extend(column.iter().map(|r| r.unwrap().to_string()));
        }
        rows.join("\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn scans_return_the_last_write_of_every_point(
            ops in proptest::collection::vec(op(), 1..16),
            from in 0i64..1500,
            width in 1i64..1500,
            hosts in proptest::sample::subsequence(vec![0u8, 1, 2, 9], 0..3),
        ) {
            let hosts: Vec<String> = hosts.iter().map(|h| format!("h{h}")).collect();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let engine = engine(dir.path());
            let query = QueryEngine::new(engine.clone());
            let mut model = Model::new();
            // Both fields exist from the start, so that every query can name them.
            apply(&engine, &mut model, &Op::Write(vec![(9, 1499, Some(0), Some(0))]));
            for op in &ops {
                apply(&engine, &mut model, op);
                // A query after every step, so that kept merges meet later writes.
                let all = runtime.block_on(actual(&query, 0, 1500, &[]));
                prop_assert_eq!(all, expected(&model, 0, 1500, &[]), "after {:?}", op);
                let some = runtime.block_on(actual(&query, 0, 1500, &hosts));
                prop_assert_eq!(some, expected(&model, 0, 1500, &hosts), "{:?} after {:?}", hosts, op);
            }
            let to = from + width;
            let part = runtime.block_on(actual(&query, from, to, &hosts));
            prop_assert_eq!(part, expected(&model, from, to, &hosts));
        }
    }
}

#[tokio::test]
async fn first_and_last_value_of_tags_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let write = |body: &[u8]| engine.write_lp("m", body, Precision::Second).unwrap();
    // Tags are dictionaries: the wrapped first_value/last_value decode them for the
    // vectorized accumulator and encode the answer back, across segments, the buffer and
    // partial aggregates.
    write(b"cpu,host=a,rack=r1 u=1 10\ncpu,host=b,rack=r2 u=2 10\ncpu,host=a,rack=r3 u=3 20");
    engine.flush().unwrap();
    write(b"cpu,host=b,rack=r4 u=4 30\ncpu,host=a u=5 5\ncpu,host=c,rack=r5 u=6 40");
    let query = QueryEngine::new(engine.clone());
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT DISTINCT ON (host) host, rack, u FROM cpu ORDER BY host, time DESC"
        )
        .await,
        "+------+------+-----+\n\
         | host | rack | u   |\n\
         +------+------+-----+\n\
         | a    | r3   | 3.0 |\n\
         | b    | r4   | 4.0 |\n\
         | c    | r5   | 6.0 |\n\
         +------+------+-----+"
    );
    assert_eq!(
        show(
            &query,
            "m",
            "SELECT host, first_value(rack ORDER BY time) AS first, \
             last_value(rack ORDER BY time) AS last, arrow_typeof(last_value(rack ORDER BY time)) AS t \
             FROM cpu GROUP BY host ORDER BY host"
        )
        .await,
        "+------+-------+------+-------------------------+\n\
         | host | first | last | t                       |\n\
         +------+-------+------+-------------------------+\n\
         | a    |       | r3   | Dictionary(Int32, Utf8) |\n\
         | b    | r2    | r4   | Dictionary(Int32, Utf8) |\n\
         | c    | r5    | r5   | Dictionary(Int32, Utf8) |\n\
         +------+-------+------+-------------------------+"
    );
    // Without GROUP BY: DataFusion's own accumulator.
    assert_eq!(
        scalar(
            &query,
            "m",
            "SELECT last_value(rack ORDER BY time) FROM cpu"
        )
        .await,
        "r5"
    );
}

#[tokio::test]
async fn gap_filling_plans_a_gap_fill_over_the_sorted_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp("m", b"cpu,host=a u=1 60", Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    let sql = "EXPLAIN SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS t, host, \
               locf(avg(u)) FROM cpu \
               WHERE time >= '1970-01-01T00:00:00Z' AND time < now() GROUP BY 1, 2";
    let plan = show(&query, "m", sql).await;
    let lines: Vec<&str> = plan
        .lines()
        .map(|l| l.trim_matches(|c| c == '|' || c == ' '))
        .collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{plan}"))
    };
    // The bounds are constants by the time the node is planned: now() is folded.
    let logical = lines[find("GapFill:")];
    assert!(
        logical.contains("range=[TimestampNanosecond(0, None), TimestampNanosecond("),
        "{logical}"
    );
    assert!(
        logical.contains("series=[host], fill=[locf(avg(cpu.u))]"),
        "{logical}"
    );
    assert!(find("Aggregate: groupBy=[[date_bin(") > find("GapFill:"));
    // One partition, sorted by series and time, under the fill.
    let exec = find("GapFillExec:");
    assert!(
        lines[exec].contains("stride=60s, first=1970-01-01T00:00:00Z"),
        "{}",
        lines[exec]
    );
    assert!(lines[exec + 1].contains("SortPreservingMergeExec: [host@1 ASC"));
}

#[tokio::test]
async fn a_query_for_one_series_reads_only_its_pages_of_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    // 200 series x 20 points; `host` has the most distinct values, so segments are sorted
    // by host first and one host's rows sit in one page of the 4.
    let mut body = String::new();
    for t in 0..20 {
        for h in 0..200 {
            body.push_str(&format!(
                "cpu,dc=d{},host=h{h:03} u={t} {}\n",
                h % 3,
                1000 + t
            ));
        }
    }
    engine
        .write_lp("m", body.as_bytes(), Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    assert_eq!(
        engine.catalog().table("m", "cpu").unwrap().sort_tags,
        ["host", "dc"]
    );
    let query = QueryEngine::new(engine);
    let plan = show(
        &query,
        "m",
        "EXPLAIN ANALYZE SELECT avg(u) FROM cpu WHERE host = 'h042'",
    )
    .await;
    assert!(
        plan.contains("page_index_pages_pruned=4 total → 1 matched"),
        "{plan}"
    );
    assert_eq!(
        scalar(&query, "m", "SELECT avg(u) FROM cpu WHERE host = 'h042'").await,
        "9.5"
    );
    // The segment's page index is kept with its footer, not read again by every query.
    let cached = query
        .session("m")
        .unwrap()
        .runtime_env()
        .cache_manager
        .get_file_metadata_cache()
        .list_entries();
    assert_eq!(cached.len(), 1);
    for entry in cached.values() {
        let extra = entry.value.file_metadata.extra_info();
        assert_eq!(extra.get("page_index").map(String::as_str), Some("true"));
    }
}

#[tokio::test]
async fn a_query_for_some_series_takes_their_buffered_rows_by_the_tag_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    for t in 0..20 {
        let body: String = (0..200)
            .map(|h| format!("cpu,dc=d{},host=h{h:03} u={t} {}\n", h % 3, 1000 + t))
            .collect();
        engine
            .write_lp("m", body.as_bytes(), Precision::Second)
            .unwrap();
    }
    engine
        .write_lp("m", b"cpu u=100 1000", Precision::Second)
        .unwrap();
    // With a query memory limit this small the cache keeps no window: the selection is
    // found by one pass over each, without an index.
    let unkept = QueryEngine::new(engine.clone()).with_memory_limit(256 << 10);
    let query = QueryEngine::new(engine);
    for (selection, expected) in [
        ("host = 'h042'", "20 190.0"),
        ("'h042' = host", "20 190.0"),
        ("host IN ('h001', 'h002', 'nope')", "40 380.0"),
        ("(host = 'h001' OR host = 'h002') AND dc = 'd1'", "20 190.0"),
        ("host = 'nope'", "0"),
        // Not an equality on one tag: filtered row by row, same answer.
        ("(host = 'h001' OR dc = 'd1') AND host < 'h003'", "20 190.0"),
    ] {
        let sql = format!("SELECT concat_ws(' ', count(*), sum(u)) FROM cpu WHERE {selection}");
        // Twice: the second answer comes from the kept window and its index.
        for _ in 0..2 {
            assert_eq!(scalar(&query, "m", &sql).await, expected, "{sql}");
        }
        assert_eq!(scalar(&unkept, "m", &sql).await, expected, "unkept: {sql}");
    }
    let plan = show(
        &query,
        "m",
        "EXPLAIN ANALYZE SELECT count(*) FROM cpu WHERE host IN ('h001', 'h002')",
    )
    .await;
    let merge = plan
        .lines()
        .find(|l| l.contains("MergeExec"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        merge.contains("tag_index=[host in (h001, h002)]") && merge.contains("output_rows=40,"),
        "{merge}"
    );
}

/// `QueryEngine::sql` parses a statement once itself; it must read SQL as DataFusion's
/// `SessionContext::sql` does (its default dialect, not the pg server's PostgreSQL one:
/// `^` is xor there, a power in PostgreSQL), and fail as it does.
#[tokio::test]
async fn statements_are_parsed_as_datafusion_parses_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine
        .write_lp("db", b"cpu,host=a u=1 1", Precision::Nanosecond)
        .unwrap();
    let query = QueryEngine::new(engine);
    let plain = SessionContext::new();
    for sql in ["SELECT 2 ^ 3", "SELECT 'a' || 'b'"] {
        let expected = plain.sql(sql).await.unwrap().collect().await.unwrap();
        let expected = arrow::util::display::array_value_to_string(expected[0].column(0), 0);
        assert_eq!(scalar(&query, "db", sql).await, expected.unwrap(), "{sql}");
    }
    for sql in ["SELECT 1; SELECT 2", "", "SELEC 1"] {
        let expected = plain.sql(sql).await.unwrap_err().to_string();
        assert_eq!(error(&query, "db", sql).await, expected, "{sql}");
    }
}
