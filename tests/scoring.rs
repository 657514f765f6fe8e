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

/// A server with the isolation forest, a table `events` and the rule [`RULE`] on it.
fn server_with_rule() -> TestServer {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("models")).unwrap();
    let model = models().join("iforest.onnx");
    std::fs::copy(model, data.path().join("models/iforest.onnx")).unwrap();
    let server = TestServer::start_in(data, &[]);
    let (status, _) = server.write("ml", b"events,src=a x1=0.1,x2=-0.2,x3=0.3 1");
    assert_eq!(status, 204);
    let (ok, _, err) = server.psql("ml", &["-c", RULE]);
    assert!(ok, "{err}");
    server
}

#[test]
fn kill_9_while_scoring_loses_no_alert_and_duplicates_none() {
    let server = server_with_rule();
    let rows = std::fs::read(models().join("rows.lp")).unwrap();
    // Acknowledged, then killed before (or while) the scorer gets to it.
    let (status, _) = server.write("ml", &rows);
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

#[test]
fn listeners_hear_an_injected_anomaly_over_psql_and_psycopg() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let server = server_with_rule();
    // psycopg waits on the socket: the notification must come by itself.
    let listener = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("LISTEN gannet_alerts")
print("listening", flush=True)
for n in conn.notifies(timeout=30, stop_after=1):
    print(n.channel, n.payload, flush=True)
"#;
    let mut python = Command::new(crate::support::python())
        .args(["-c", listener, &server.dsn("ml")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    // psql, as a person would use it: LISTEN, then any later command shows what arrived.
    let mut psql = Command::new("psql")
        .args(["-X", "-h", &server.pg.ip().to_string(), "-p"])
        .arg(server.pg.port().to_string())
        .args(["-U", "gannet_test", "-d", "ml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut psql_in = psql.stdin.take().unwrap();
    writeln!(psql_in, "LISTEN gannet_alerts;").unwrap();
    // psql has listened once it answers this.
    writeln!(psql_in, "\\echo listening").unwrap();
    let mut psql_out = BufReader::new(psql.stdout.take().unwrap()).lines();
    eventually(
        || psql_out.next().unwrap().unwrap(),
        |line| line == "listening",
    );

    // The anomaly, and a normal row.
    let body =
        b"events,src=probe x1=30.0,x2=30.0,x3=30.0 2\nevents,src=probe x1=0.0,x2=0.1,x3=0.0 3";
    let (status, _) = server.write("ml", body);
    assert_eq!(status, 204);

    let heard = lines.next().unwrap().unwrap();
    let (channel, payload) = heard.split_once(' ').unwrap();
    assert_eq!(channel, "gannet_alerts");
    let alert: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(alert["rule"], "odd");
    assert_eq!(alert["table"], "events");
    assert_eq!(alert["tags"]["src"], "probe");
    assert_eq!(alert["time"], "1970-01-01T00:00:02Z");
    assert_eq!(alert["score"], -1.0);
    assert!(python.wait().unwrap().success());

    eventually(
        || {
            server
                .psql("ml", &["-At", "-c", "SELECT count(*) FROM alerts"])
                .1
        },
        |n| n.trim() == "1",
    );
    writeln!(psql_in, "SELECT 1 AS after;").unwrap();
    drop(psql_in);
    let rest: Vec<String> = psql_out.map(|l| l.unwrap()).collect();
    let rest = rest.join("\n");
    assert!(
        rest.contains("Asynchronous notification \"gannet_alerts\" with payload")
            && rest.contains("\"rule\":\"odd\""),
        "{rest}"
    );
    assert!(psql.wait().unwrap().success());
}

/// A webhook endpoint on loopback: answers 500 to the first `failures` requests and 204 to
/// the rest, and passes on each request's body with the status it got.
fn webhook_endpoint(failures: usize) -> (String, std::sync::mpsc::Receiver<(u16, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n < failures { 500 } else { 204 };
            let reason = if status == 500 {
                "Internal Server Error"
            } else {
                "No Content"
            };
            write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            if tx.send((status, String::from_utf8(body).unwrap())).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_rules_webhook_gets_each_alert_and_is_retried_when_it_fails() {
    let (_dir, db) = open();
    let rt = rt();
    db.write_lp(
        "ml",
        "events,src=a x1=0.1,x2=-0.2,x3=0.3 1",
        Precision::Second,
    )
    .unwrap();
    let (url, posts) = webhook_endpoint(1);
    rt.block_on(db.sql(
        "ml",
        &format!(
            "CREATE SCORING RULE hooked ON events USING onnx_predict('iforest', x1, x2, x3) \
             WHERE score = -1 WITH (webhook = '{url}')"
        ),
    ))
    .unwrap();
    db.write_lp(
        "ml",
        "events,src=probe x1=30.0,x2=30.0,x3=30.0 2\nevents,src=probe x1=0.0,x2=0.1,x3=0.0 3",
        Precision::Second,
    )
    .unwrap();
    let wait = std::time::Duration::from_secs(20);
    let (status, first) = posts.recv_timeout(wait).unwrap();
    assert_eq!(status, 500);
    let (status, retried) = posts.recv_timeout(wait).unwrap();
    assert_eq!(status, 204);
    assert_eq!(first, retried);
    let alert: serde_json::Value = serde_json::from_str(&retried).unwrap();
    assert_eq!(alert["rule"], "hooked");
    assert_eq!(alert["tags"]["src"], "probe");
    assert_eq!(alert["time"], "1970-01-01T00:00:02Z");
    // One alert, one delivery.
    assert!(
        posts
            .recv_timeout(std::time::Duration::from_secs(2))
            .is_err()
    );
}
