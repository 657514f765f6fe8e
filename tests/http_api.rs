//! The HTTP API as InfluxDB clients and curl use it, against the real `gannet serve`.

use std::io::Write;

use serde_json::{Value, json};

use crate::support::{TestServer, run_python};

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn query(server: &TestServer, db: &str, sql: &str, format: &str) -> (u16, Vec<u8>) {
    let q: String = sql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    server.curl(
        "GET",
        &format!("/api/v3/query_sql?db={db}&format={format}&q={q}"),
        &[],
        None,
    )
}

#[test]
fn v3_writes_report_bad_lines_and_keep_the_good_ones() {
    let server = TestServer::start();
    let body = b"cpu,host=a usage=0.5 1700000000000000000\n\
                 cpu,host=b usage=oops 1700000000000000000\n\
                 cpu,host=c usage=1.5 1700000000000000000\n";
    let (status, out) = server.curl("POST", "/api/v3/write_lp?db=m", &[], Some(body));
    assert_eq!(status, 400);
    let answer = json_body(&out);
    assert_eq!(answer["error"], "partial write of line protocol occurred");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(
        answer["data"][0]["original_line"],
        "cpu,host=b usage=oops 1700000000000000000"
    );
    assert_eq!(answer["data"][0]["line_number"], 2);
    let message = answer["data"][0]["error_message"].as_str().unwrap();
    assert!(message.contains("usage"), "{message}");

    // accept_partial=false: one bad line and nothing is written.
    let body = b"cpu,host=d usage=1 1700000000000000000\ncpu,host=e usage=\n";
    let (status, out) = server.curl(
        "POST",
        "/api/v3/write_lp?db=m&accept_partial=false",
        &[],
        Some(body),
    );
    assert_eq!(status, 400);
    assert_eq!(
        json_body(&out)["error"],
        "parsing failed for write_lp endpoint"
    );

    // A type conflict rejects its line with the table, column and both types.
    let (status, out) = server.curl(
        "POST",
        "/api/v3/write_lp?db=m&precision=second",
        &[],
        Some(b"cpu,host=f usage=\"high\" 1700000000"),
    );
    assert_eq!(status, 400);
    let message = json_body(&out)["data"][0]["error_message"].to_string();
    assert!(
        message.contains("usage") && message.contains("string"),
        "{message}"
    );

    let (status, out) = query(&server, "m", "SELECT host FROM cpu ORDER BY host", "csv");
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(out).unwrap(), "host\na\nc\n");
}

#[test]
fn v1_and_v2_writes_with_precisions_and_gzip() {
    let server = TestServer::start();
    let (status, out) = server.curl(
        "POST",
        "/write?db=m&precision=s&rp=ignored",
        &[],
        Some(b"cpu,host=a usage=1 1700000000"),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&out));

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"cpu,host=b usage=2 1700000000000\n").unwrap();
    let gz = gz.finish().unwrap();
    let (status, out) = server.curl(
        "POST",
        "/api/v2/write?bucket=m&org=ignored&precision=ms",
        &["Content-Encoding: gzip"],
        Some(&gz),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&out));

    let (status, out) = query(
        &server,
        "m",
        "SELECT host, usage, CAST(time AS BIGINT) AS t FROM cpu ORDER BY host",
        "json",
    );
    assert_eq!(status, 200);
    assert_eq!(
        json_body(&out),
        json!([
            {"host": "a", "usage": 1.0, "t": 1_700_000_000_000_000_000i64},
            {"host": "b", "usage": 2.0, "t": 1_700_000_000_000_000_000i64},
        ])
    );

    // Missing database, bad precision, garbage gzip: 400 with a JSON error.
    for (path, headers, body) in [
        ("/write", &[][..], &b"cpu v=1"[..]),
        (
            "/api/v2/write?bucket=m&precision=fortnight",
            &[][..],
            &b"cpu v=1"[..],
        ),
        (
            "/api/v2/write?bucket=m",
            &["Content-Encoding: gzip"][..],
            &b"not gzip"[..],
        ),
    ] {
        let (status, out) = server.curl("POST", path, headers, Some(body));
        assert_eq!(status, 400, "{path}");
        assert!(json_body(&out)["error"].is_string(), "{path}");
    }
}

#[test]
fn the_influxdb2_python_client_writes() {
    let server = TestServer::start();
    let script = r#"
import sys
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
with InfluxDBClient(url=sys.argv[1], token="unused", org="unused") as client:
    write = client.write_api(write_options=SYNCHRONOUS)
    write.write(bucket="sensors", record=[
        Point("air").tag("room", "kitchen").field("temp", 21.5).time(1700000000, WritePrecision.S),
        Point("air").tag("room", "hall").field("temp", 19.25).field("ok", True).time(1700000000, WritePrecision.S),
    ], write_precision=WritePrecision.S)
    write.write(bucket="sensors", record="air,room=attic temp=30.5 1700000001000000000")
print("ok")
"#;
    assert_eq!(run_python(script, &[&server.url("")]).trim(), "ok");
    let (status, out) = query(
        &server,
        "sensors",
        "SELECT room, temp FROM air ORDER BY room",
        "jsonl",
    );
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"room\":\"attic\",\"temp\":30.5}\n{\"room\":\"hall\",\"temp\":19.25}\n{\"room\":\"kitchen\",\"temp\":21.5}\n"
    );
}

#[test]
fn queries_in_every_format_and_their_errors() {
    let server = TestServer::start();
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=m",
        &[],
        Some(b"cpu,host=a usage=0.5 1700000000000000000\ncpu,host=b usage=1.5 1700000000000000000"),
    );
    assert_eq!(status, 204);
    let sql = "SELECT host, usage FROM cpu ORDER BY host";
    let text = |(status, body): (u16, Vec<u8>)| {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    };
    assert_eq!(
        text(query(&server, "m", sql, "csv")),
        "host,usage\na,0.5\nb,1.5\n"
    );
    assert_eq!(
        text(query(&server, "m", sql, "pretty")),
        "+------+-------+\n| host | usage |\n+------+-------+\n| a    | 0.5   |\n| b    | 1.5   |\n+------+-------+\n"
    );
    let (status, parquet) = query(&server, "m", sql, "parquet");
    assert_eq!(status, 200);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &parquet).unwrap();
    let read = run_python(
        "import sys, pyarrow.parquet as pq; print(pq.read_table(sys.argv[1]).to_pylist())",
        &[file.path().to_str().unwrap()],
    );
    assert_eq!(
        read.trim(),
        "[{'host': 'a', 'usage': 0.5}, {'host': 'b', 'usage': 1.5}]"
    );

    // POST with a JSON body, as InfluxDB 3 clients send it.
    let (status, out) = server.curl(
        "POST",
        "/api/v3/query_sql",
        &["Content-Type: application/json"],
        Some(br#"{"db": "m", "q": "SELECT count(*) AS n FROM cpu", "format": "json"}"#),
    );
    assert_eq!(status, 200);
    assert_eq!(json_body(&out), json!([{"n": 2}]));

    let (status, out) = query(&server, "m", "SELECT nope FROM cpu", "json");
    assert_eq!(status, 400);
    assert!(json_body(&out)["error"].to_string().contains("nope"));
    let (status, out) = query(&server, "absent", "SELECT 1", "json");
    assert_eq!(status, 404);
    assert_eq!(
        json_body(&out)["error"],
        "database \"absent\" does not exist"
    );
    let (status, _) = query(&server, "m", "SELECT 1", "xml");
    assert_eq!(status, 400);
}

#[test]
fn large_results_stream_in_every_format() {
    let server = TestServer::start();
    assert_eq!(server.write("m", b"cpu usage=1 1700000000").0, 204);
    // 100,000 rows: a dozen DataFusion batches, sent as they come (chunked, no length).
    let sql = "SELECT value FROM generate_series(1, 100000) AS t(value)";
    let script = r#"
import io, json, sys, urllib.parse, urllib.request
import pyarrow.parquet as pq
base, sql = sys.argv[1], sys.argv[2]
out = {}
for fmt in ["json", "jsonl", "csv", "parquet"]:
    url = base + "?" + urllib.parse.urlencode({"db": "m", "q": sql, "format": fmt})
    with urllib.request.urlopen(url) as r:
        body = r.read()
        chunked = r.headers.get("Transfer-Encoding") == "chunked" and r.headers.get("Content-Length") is None
    if fmt == "json":
        rows = [r["value"] for r in json.loads(body)]
    elif fmt == "jsonl":
        rows = [json.loads(l)["value"] for l in body.decode().splitlines()]
    elif fmt == "csv":
        lines = body.decode().splitlines()
        assert lines[0] == "value", lines[0]
        rows = [int(l) for l in lines[1:]]
    else:
        rows = pq.read_table(io.BytesIO(body)).column("value").to_pylist()
    out[fmt] = [len(rows), rows[0], rows[-1], sum(rows), chunked]
print(json.dumps(out), flush=True)
# pyarrow's thread pool can abort the interpreter's teardown ("terminate called without an
# active exception", seen once in CI after a correct answer): the answer is out, leave now.
import os
os._exit(0)
"#;
    let out = run_python(script, &[&server.url("/api/v3/query_sql"), sql]);
    let expected = json!([100000, 1, 100000, 5000050000u64, true]);
    let got = json_body(out.trim().as_bytes());
    for format in ["json", "jsonl", "csv", "parquet"] {
        assert_eq!(got[format], expected, "{format}: {out}");
    }
    // Nothing was lost to the early answers: an empty result is still a valid document.
    let (status, out) = query(&server, "m", "SELECT * FROM cpu WHERE usage > 5", "json");
    assert_eq!((status, json_body(&out)), (200, json!([])));
}

#[test]
fn bodies_beyond_the_limit_are_refused_and_nothing_is_written() {
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), &["--max-body-bytes", "4096"]);
    let big: Vec<u8> = (0..200)
        .flat_map(|i| format!("cpu,host=h{i} usage=1 1700000000000000000\n").into_bytes())
        .collect();
    assert!(big.len() > 4096);
    let (status, _) = server.curl("POST", "/api/v3/write_lp?db=m", &[], Some(&big));
    assert_eq!(status, 413);

    // A small gzip body that inflates beyond the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&big).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 4096);
    let (status, out) = server.curl(
        "POST",
        "/api/v3/write_lp?db=m",
        &["Content-Encoding: gzip"],
        Some(&gz),
    );
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&out));

    let (status, _) = query(&server, "m", "SELECT 1", "json");
    assert_eq!(status, 404, "nothing may have been written");
}

#[test]
fn health_ping_and_metrics() {
    let server = TestServer::start();
    assert_eq!(
        server.curl("GET", "/health", &[], None),
        (200, b"OK".to_vec())
    );
    assert_eq!(server.curl("GET", "/ping", &[], None).0, 204);
    let (status, _) = server.curl(
        "POST",
        "/write?db=m",
        &[],
        Some(b"cpu v=1 1\ncpu v=2 2\nbad\n"),
    );
    assert_eq!(status, 400);
    query(&server, "m", "SELECT * FROM cpu", "json");
    let (status, out) = server.curl("GET", "/metrics", &[], None);
    assert_eq!(status, 200);
    let text = String::from_utf8(out).unwrap();
    for expected in [
        "gannet_write_requests_total 1\n",
        "gannet_rows_written_total 2\n",
        "gannet_lines_rejected_total 1\n",
        "gannet_query_duration_seconds_count 1\n",
        "# TYPE gannet_wal_fsync_seconds summary\n",
        "gannet_tables 1\n",
        "gannet_query_memory_bytes ",
        "gannet_kept_merge_bytes ",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // Memory gauges: the resident size, and what the heap holds, as numbers (glibc).
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
            .parse()
            .unwrap()
    };
    let resident = gauge("process_resident_memory_bytes");
    assert!(resident > 1e6, "resident {resident}");
    let allocated = gauge("gannet_heap_allocated_bytes");
    assert!(
        allocated > 1e5 && allocated < resident * 2.0,
        "allocated {allocated}"
    );
    assert!(gauge("gannet_heap_free_bytes") >= 0.0);
}
