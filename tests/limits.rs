//! Limits: each refuses what goes beyond it with an error that names it, writes what is
//! within it, and leaves the server serving.

use std::process::Command;

use crate::support::{TestServer, run_python};

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn long_lines_long_strings_and_too_many_columns_are_refused_by_name() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        &["--max-columns-per-table", "5", "--max-string-bytes", "1KiB"],
    );
    let huge_line = format!("cpu,host=a usage=1,note=\"{}\" 1", "x".repeat(1 << 20));
    let body = format!(
        "cpu,host=a usage=1 1\n{huge_line}\nlog,host=a msg=\"{}\" 2\n\
         cpu,host=b usage=2,a=1,b=2,c=3 3\ncpu,host=c usage=3 4\n",
        "y".repeat(2000)
    );
    let (status, out) = server.write("m", body.as_bytes());
    assert_eq!(status, 400, "{}", text(&out));
    let errors: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let messages: Vec<(u64, String)> = errors["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line_number"].as_u64().unwrap(),
                e["error_message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert_eq!(messages[0].0, 2);
    assert!(messages[0].1.contains("bytes per line"), "{messages:?}");
    assert_eq!(messages[1].0, 3);
    assert!(
        messages[1].1.contains("limit is 1024 bytes per string"),
        "{messages:?}"
    );
    assert_eq!(messages[2].0, 4);
    assert!(
        messages[2].1.contains("limit is 5 columns per table"),
        "{messages:?}"
    );
    // The rejected line does not echo a megabyte back.
    assert!(out.len() < 300_000, "{} bytes of errors", out.len());

    let (ok, rows, err) = server.psql(
        "m",
        &["-A", "-t", "-c", "SELECT host FROM cpu ORDER BY host"],
    );
    assert!(ok, "{err}");
    assert_eq!(rows.split_whitespace().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn connections_queries_and_memory_have_limits() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--max-connections",
            "2",
            "--statement-timeout",
            "1s",
            "--query-memory-limit",
            "8MiB",
        ],
    );
    let script = r#"
import sys, psycopg
host, port = sys.argv[1], int(sys.argv[2])
connect = lambda: psycopg.connect(host=host, port=port, dbname="postgres", user="u", autocommit=True)
a, b = connect(), connect()
try:
    connect()
    print("third connection accepted")
except psycopg.OperationalError as e:
    print("refused:", "too many clients" in str(e))
# A join whose hash table needs far more than 8 MiB.
try:
    a.execute("SELECT count(*) FROM generate_series(1, 3000000) AS l(x) JOIN generate_series(1, 3000000) AS r(y) ON x = y").fetchall()
    print("join ran")
except psycopg.Error as e:
    print("memory:", e.sqlstate)
# Endless: cancelled by the statement timeout.
try:
    b.execute("SELECT count(*) FROM generate_series(1, 100000) AS l(x), generate_series(1, 100000000) AS r(y)").fetchall()
    print("cross join ran")
except psycopg.Error as e:
    print("timeout:", e.sqlstate)
# Both connections still serve.
print(a.execute("SELECT 1").fetchone()[0], b.execute("SHOW statement_timeout").fetchone()[0])
a.close()
# The server notices the closed connection a moment later.
import time
for attempt in range(50):
    try:
        with connect() as c:
            print("after close:", c.execute("SELECT 2").fetchone()[0])
        break
    except psycopg.OperationalError:
        time.sleep(0.1)
"#;
    let out = run_python(
        script,
        &[&server.pg.ip().to_string(), &server.pg.port().to_string()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "refused: True",
            "memory: 53200",
            "timeout: 57014",
            "1 1000ms",
            "after close: 2"
        ],
        "{out}"
    );
}

#[test]
fn a_full_write_buffer_answers_503_with_retry_after_and_recovers() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--buffer-memory-limit",
            "64KiB",
            "--max-write-wait",
            "300ms",
        ],
    );
    assert_eq!(server.write("m", b"cpu,host=a v=1 1").0, 204);
    // No segment can be written: a file stands where their directory goes.
    let blocked = server.data_dir.path().join("segments");
    let _ = std::fs::remove_dir_all(&blocked);
    std::fs::write(&blocked, b"not a directory").unwrap();

    let body: String = (0..2000)
        .map(|i| format!("cpu,host=h{i} v={i} {}\n", i + 10))
        .collect();
    let mut refused = None;
    for _ in 0..30 {
        let (status, out) = server.write("m", body.as_bytes());
        if status != 204 {
            refused = Some((status, out));
            break;
        }
    }
    let (status, out) = refused.expect("a write was refused once the buffer was full");
    assert_eq!(status, 503, "{}", text(&out));
    assert!(
        text(&out).contains("write buffer is full"),
        "{}",
        text(&out)
    );
    let headers = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--data-binary",
            "cpu,host=z v=1 5",
        ])
        .arg(server.url("/api/v3/write_lp?db=m&precision=s"))
        .output()
        .unwrap();
    let headers = text(&headers.stdout).to_ascii_lowercase();
    assert!(headers.contains("retry-after: 1"), "{headers}");

    // Queries still run; once segments can be written again, so do writes.
    let (ok, _, err) = server.psql("m", &["-c", "SELECT count(*) FROM cpu"]);
    assert!(ok, "{err}");
    std::fs::remove_file(&blocked).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = server.write("m", b"cpu,host=after v=1 99").0;
        if status == 204 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status, 204);
}
