use std::fmt::Write;

use arrow::util::pretty::pretty_format_batches;
use gannet_storage::{Engine, EngineConfig, Precision};
use proptest::prelude::*;

use crate::QueryEngine;

/// Points of hosts a, b and c in 10-second slots of the first 20 minutes: each slot
/// present or not, so that the newest buckets may have gaps.
fn points() -> impl Strategy<Value = Vec<(u8, i64, i32)>> {
    proptest::collection::vec((0u8..3, 0i64..120, -50i32..50), 1..120)
}

/// A limited, descending time-bucket query: bucket, second group key, WHERE bound,
/// HAVING, limit and offset.
fn query() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("date_trunc('minute', time)"),
            Just("date_bin(INTERVAL '30 seconds', time)"),
            Just("date_bin(INTERVAL '2 minutes', time, TIMESTAMP '1970-01-01 00:00:10')"),
            Just("time_bucket(INTERVAL '90 seconds', time)"),
        ],
        any::<bool>(),
        proptest::option::of(0i64..1300),
        proptest::option::of(1i64..4),
        1usize..8,
        0usize..4,
    )
        .prop_map(|(bucket, by_host, before, having, limit, offset)| {
            let mut sql = format!("SELECT {bucket} AS b");
            sql.push_str(if by_host { ", host" } else { "" });
            sql.push_str(", count(*), sum(u), max(u) FROM cpu");
            if let Some(before) = before {
                write!(sql, " WHERE time < to_timestamp_seconds({before})").unwrap();
            }
            sql.push_str(if by_host {
                " GROUP BY 1, 2"
            } else {
                " GROUP BY 1"
            });
            if let Some(having) = having {
                write!(sql, " HAVING count(*) > {having}").unwrap();
            }
            sql.push_str(if by_host {
                " ORDER BY 1 DESC, 2"
            } else {
                " ORDER BY 1 DESC"
            });
            write!(sql, " LIMIT {limit} OFFSET {offset}").unwrap();
            sql
        })
}

async fn answer(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Narrowed or not, a query answers the same, whether the newest buckets fill its
    /// limit or not.
    #[test]
    fn narrowed_queries_answer_as_the_whole_query(
        points in points(),
        flushed in 0usize..120,
        queries in proptest::collection::vec(query(), 1..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        let line = |&(host, slot, u): &(u8, i64, i32)| {
            format!("cpu,host={} u={u} {}\n", (b'a' + host) as char, slot * 10)
        };
        let (old, new) = points.split_at(flushed.min(points.len()));
        let old: String = old.iter().map(line).collect();
        let new: String = new.iter().map(line).collect();
        if !old.is_empty() {
            engine.write_lp("db", old.as_bytes(), Precision::Second).unwrap();
            engine.flush().unwrap();
        }
        if !new.is_empty() {
            engine.write_lp("db", new.as_bytes(), Precision::Second).unwrap();
        }
        let query = QueryEngine::new(engine);
        let narrowing = query.session("db").unwrap();
        let whole = query.session("db").unwrap();
        prop_assert!(whole.remove_optimizer_rule("gannet_newest_buckets"));
        for sql in &queries {
            let expected = runtime.block_on(answer(&whole, sql));
            let actual = runtime.block_on(answer(&narrowing, sql));
            prop_assert_eq!(actual, expected, "{}", sql);
        }
    }
}

/// `EXPLAIN ANALYZE`'s line for the narrowing node.
async fn analyzed(query: &QueryEngine, sql: &str) -> String {
    let batches = query
        .sql("db", &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .unwrap();
    let plan = pretty_format_batches(&batches).unwrap().to_string();
    plan.lines()
        .find_map(|line| {
            let at = line.find("NewestBucketsExec")?;
            Some(line[at..].trim_end_matches([' ', '|']).to_owned())
        })
        .unwrap_or_else(|| panic!("not narrowed: {plan}"))
}

#[tokio::test]
async fn the_whole_query_runs_only_when_the_newest_buckets_come_back_short() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
    // Minutes 0 to 9, then a gap, then minute 30.
    let mut lines = String::new();
    for t in (0..600).step_by(10).chain([1800]) {
        writeln!(lines, "cpu,host=a u=1 {t}").unwrap();
    }
    engine
        .write_lp("db", lines.as_bytes(), Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    let sql = |limit: usize, before: &str| {
        format!(
            "SELECT date_trunc('minute', time), count(*) FROM cpu {before} GROUP BY 1 \
             ORDER BY 1 DESC LIMIT {limit}"
        )
    };
    assert_eq!(
        analyzed(&query, &sql(1, "")).await,
        "NewestBucketsExec: fetch=1, metrics=[whole_runs=0]"
    );
    assert_eq!(
        analyzed(&query, &sql(2, "")).await,
        "NewestBucketsExec: fetch=2, metrics=[whole_runs=1]"
    );
    let before = "WHERE time < '1970-01-01 00:10:00'";
    assert_eq!(
        analyzed(&query, &sql(5, before)).await,
        "NewestBucketsExec: fetch=5, metrics=[whole_runs=0]"
    );
    // The rows an OFFSET skips are read too: five minutes back for LIMIT 2 OFFSET 3.
    assert_eq!(
        analyzed(&query, &format!("{} OFFSET 3", sql(2, before))).await,
        "NewestBucketsExec: fetch=2, metrics=[whole_runs=0]"
    );
}

#[tokio::test]
async fn buckets_that_are_not_floors_are_not_narrowed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
    let mut lines = String::new();
    for t in (0..600).step_by(60) {
        writeln!(lines, "cpu,host=a u=1 {t}").unwrap();
    }
    engine
        .write_lp("db", lines.as_bytes(), Precision::Second)
        .unwrap();
    let query = QueryEngine::new(engine);
    // A negative stride rounds up before the origin; an origin 300 years away overflows
    // into NULL buckets.
    for bucket in [
        "date_bin(INTERVAL '-1 minute', time, TIMESTAMP '2100-01-01')",
        "date_bin(INTERVAL '1 minute', time, TIMESTAMP '2270-01-01')",
    ] {
        let sql = format!(
            "EXPLAIN SELECT {bucket}, count(*) FROM cpu GROUP BY 1 ORDER BY 1 DESC LIMIT 1"
        );
        let plan = match query.sql("db", &sql).await {
            Ok(batches) => pretty_format_batches(&batches).unwrap().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(!plan.contains("NewestBuckets"), "{bucket}: {plan}");
    }
}
