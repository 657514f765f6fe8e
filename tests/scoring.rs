//! Scoring rules: a model bound to a table scores every acknowledged write, and the rows it
//! flags land in `alerts`, exactly the rows scikit-learn flags. Embedded here; kill -9 of the
//! real server at the end.

use std::collections::BTreeSet;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use gannet::{Gannet, Precision};

use crate::onnx::{Expected, error, eventually, models, one, rt};
use crate::support::TestServer;

const RULE: &str = "CREATE SCORING RULE odd ON events \
                    USING onnx_predict('iforest', x1, x2, x3) WHERE score = -1";

/// A database `ml` with the isolation forest in its models dir.
fn open() -> (tempfile::TempDir, Gannet) {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::copy(
        models.join("iforest.onnx"),
        dir.path().join("models/iforest.onnx"),
    )
    .unwrap();
    let db = Gannet::open(dir.path()).unwrap();
    (dir, db)
}

/// The times (in seconds) of the rows scikit-learn's forest flags.
fn flagged() -> BTreeSet<i64> {
    let expected = Expected::load(&models());
    (0..expected.rows.len())
        .filter(|row| expected.i64(*row, "iforest_label") == -1)
        .map(|row| row as i64)
        .collect()
}

fn count(rt: &tokio::runtime::Runtime, db: &Gannet, sql: &str) -> i64 {
    match rt.block_on(db.sql("ml", sql)) {
        Ok(batches) => one(&batches).column(0).as_primitive::<Int64Type>().value(0),
        // The table appears with its first row.
        Err(_) => 0,
    }
}

#[test]
fn a_rule_scores_every_acknowledged_write_and_alerts_exactly_on_the_flagged_rows() {
    let (_dir, db) = open();
    let rt = rt();
    // Written before the rule: not scored.
    db.write_lp(
        "ml",
        "events,src=early x1=0.0,x2=0.0,x3=0.0,id=-1i 100000",
        Precision::Second,
    )
    .unwrap();
    rt.block_on(db.sql("ml", RULE)).unwrap();
    let rows = std::fs::read(models().join("rows.lp")).unwrap();
    // In several writes, as clients send them.
    let text = String::from_utf8(rows).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(300) {
        db.write_lp("ml", chunk.join("\n"), Precision::Second)
            .unwrap();
    }

    let scored = eventually(
        || count(&rt, &db, "SELECT count(*) FROM odd_scores"),
        |n| *n >= 2000,
    );
    assert_eq!(
        scored, 2000,
        "the row written before the rule is not scored"
    );
    let want = flagged();
    let alerts = eventually(
        || count(&rt, &db, "SELECT count(*) FROM alerts"),
        |n| *n >= want.len() as i64,
    );
    assert_eq!(alerts, want.len() as i64);
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT time, rule, \"table\", src, score FROM alerts ORDER BY time",
        ))
        .unwrap());
    let times: BTreeSet<i64> = batch
        .column(0)
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .iter()
        .map(|t| t / 1_000_000_000)
        .collect();
    assert_eq!(times, want);
    let text = |i: usize| {
        let column = arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8);
        let column = column.unwrap();
        column
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap().to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(text(1), BTreeSet::from(["odd".to_owned()]));
    assert_eq!(text(2), BTreeSet::from(["events".to_owned()]));
    assert_eq!(text(3), BTreeSet::from(["test".to_owned()]));
    let scores = batch.column(4).as_primitive::<Float64Type>();
    assert!(scores.values().iter().all(|s| *s == -1.0));
    // The scores line up with the data by tags and time.
    let joined = count(
        &rt,
        &db,
        "SELECT count(*) FROM events e JOIN odd_scores s ON e.time = s.time AND e.src = s.src \
         WHERE (s.score = -1) = (e.id IN (SELECT CAST(extract(epoch FROM time) AS BIGINT) FROM alerts))",
    );
    assert_eq!(joined, 2000);

    // system.scoring_rules shows the rule and what it did.
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT name, table_name, expression, condition, rows_scored, alerts, last_error \
             FROM system.scoring_rules",
        ))
        .unwrap());
    assert_eq!(batch.column(0).as_string::<i32>().value(0), "odd");
    assert_eq!(batch.column(1).as_string::<i32>().value(0), "events");
    assert_eq!(
        batch.column(2).as_string::<i32>().value(0),
        "onnx_predict('iforest', x1, x2, x3)"
    );
    assert_eq!(batch.column(3).as_string::<i32>().value(0), "score = -1");
    assert_eq!(batch.column(4).as_primitive::<Int64Type>().value(0), 2000);
    assert_eq!(
        batch.column(5).as_primitive::<Int64Type>().value(0),
        want.len() as i64
    );
    assert!(batch.column(6).is_null(0));

    // Dropped: writes are no longer scored.
    rt.block_on(db.sql("ml", "DROP SCORING RULE odd")).unwrap();
    db.write_lp(
        "ml",
        "events,src=late x1=9.0,x2=9.0,x3=9.0,id=-2i 200000",
        Precision::Second,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(count(&rt, &db, "SELECT count(*) FROM odd_scores"), 2000);
    assert_eq!(
        count(&rt, &db, "SELECT count(*) FROM system.scoring_rules"),
        0
    );
}

#[test]
fn rules_are_checked_when_made() {
    let (_dir, db) = open();
    let rt = rt();
    db.write_lp(
        "ml",
        "events,src=a x1=1.0,x2=2.0,x3=3.0,note=\"hi\" 1",
        Precision::Second,
    )
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "CREATE SCORING RULE r ON nope USING onnx_predict('iforest', x1, x2, x3)",
            "42P01",
            "nope",
        ),
        (
            "CREATE SCORING RULE r ON events USING onnx_predict('missing', x1, x2, x3)",
            "42704",
            "model \"missing\" does not exist",
        ),
        (
            "CREATE SCORING RULE r ON events USING onnx_predict('iforest', x1, x2)",
            "42883",
            "takes 3 features",
        ),
        (
            "CREATE SCORING RULE r ON events USING note",
            "42804",
            "a score must be a number",
        ),
        (
            "CREATE SCORING RULE r ON events USING x1 WHERE score + 1",
            "42804",
            "must be true or false",
        ),
        (
            "CREATE SCORING RULE r ON alerts USING x1",
            "0A000",
            "would score its own output",
        ),
        ("CREATE SCORING RULE r ON events x1", "42601", "USING"),
        ("DROP SCORING RULE never_made", "42704", "does not exist"),
    ];
    for (sql, code, phrase) in cases {
        let (got, message) = error(&rt, &db, sql);
        assert_eq!(&got, code, "{sql}: {message}");
        assert!(message.contains(phrase), "{sql}: {message}");
    }
    rt.block_on(db.sql("ml", "CREATE SCORING RULE r ON events USING x1 + x2"))
        .unwrap();
    let (code, _) = error(&rt, &db, "CREATE SCORING RULE r ON events USING x1");
    assert_eq!(code, "42710");
    rt.block_on(db.sql(
        "ml",
        "CREATE SCORING RULE IF NOT EXISTS r ON events USING x1",
    ))
    .unwrap();
    rt.block_on(db.sql("ml", "DROP SCORING RULE IF EXISTS never_made"))
        .unwrap();
}

#[test]
fn writes_acknowledged_but_not_scored_before_a_crash_are_scored_after_it() {
    let (dir, db) = open();
    let rt = rt();
    db.write_lp(
        "ml",
        "events,src=a x1=0.0,x2=0.0,x3=0.0 1",
        Precision::Second,
    )
    .unwrap();
    rt.block_on(db.sql("ml", RULE)).unwrap();
    // The data directory as a crash right after the acknowledgement leaves it: the writes
    // are in the WAL, and no scorer saw them.
    let engine = db.engine().clone();
    let query = db.query().clone();
    drop(db);
    let rows = std::fs::read(models().join("rows.lp")).unwrap();
    let outcome = engine.write_lp("ml", &rows, Precision::Second).unwrap();
    assert_eq!(outcome.rows, 2000);
    engine.stop_background();
    drop(query);
    drop(engine);

    let db = Gannet::open(dir.path()).unwrap();
    let want = flagged();
    let alerts = eventually(
        || count(&rt, &db, "SELECT count(*) FROM alerts"),
        |n| *n >= want.len() as i64,
    );
    assert_eq!(alerts, want.len() as i64);
    // And once only, after another restart.
    db.close().unwrap();
    let db = Gannet::open(dir.path()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        count(&rt, &db, "SELECT count(*) FROM alerts"),
        want.len() as i64
    );
    assert_eq!(count(&rt, &db, "SELECT count(*) FROM odd_scores"), 2000);
}

#[test]
fn kill_9_while_scoring_loses_no_alert_and_duplicates_none() {
    let models = models();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("models")).unwrap();
    std::fs::copy(
        models.join("iforest.onnx"),
        data.path().join("models/iforest.onnx"),
    )
    .unwrap();
    let server = TestServer::start_in(data, &[]);
    let rows = std::fs::read(models.join("rows.lp")).unwrap();
    // The table exists before the rule.
    let first = rows.split(|b| *b == b'\n').next().unwrap().to_vec();
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=ml&precision=s",
        &[],
        Some(&first),
    );
    assert_eq!(status, 204);
    let (ok, _, err) = server.psql("ml", &["-c", RULE]);
    assert!(ok, "{err}");
    // Acknowledged, then killed before (or while) the scorer gets to it.
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=ml&precision=s",
        &[],
        Some(&rows),
    );
    assert_eq!(status, 204);
    let data = server.kill();

    let server = TestServer::start_in(data, &[]);
    let want = flagged();
    let alerts = eventually(
        || {
            let (_, out, _) = server.psql("ml", &["-At", "-c", "SELECT count(*) FROM alerts"]);
            out.trim().parse::<usize>().unwrap_or(0)
        },
        |n| *n >= want.len(),
    );
    assert_eq!(alerts, want.len());
    let (_, out, _) = server.psql(
        "ml",
        &["-At", "-c", "SELECT count(DISTINCT time) FROM alerts"],
    );
    assert_eq!(out.trim(), want.len().to_string());
}
