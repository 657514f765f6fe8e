//! `gannet sql` as a user runs it: the real binary against a data directory.

use std::process::Command;

use gannet::{EngineConfig, Gannet, Precision};

fn sql(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gannet"))
        .arg("sql")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn prints_tables_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Gannet::open_with(EngineConfig::test_config(dir.path())).unwrap();
        let body = "cpu,host=a u=1.5 1\ncpu,host=b u=2.5 1\ncpu,host=a u=3.5 2\n";
        db.write_lp("m", body, Precision::Second).unwrap();
        db.close().unwrap();
    }
    let q = "SELECT host, max(u) AS top FROM cpu GROUP BY host ORDER BY host";
    let (ok, out, err) = sql(dir.path(), &[q]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "+------+-----+\n| host | top |\n+------+-----+\n| a    | 3.5 |\n| b    | 2.5 |\n+------+-----+\n(2 rows)\n"
    );
    let (ok, out, _) = sql(dir.path(), &["--db", "m", "--format", "csv", q]);
    assert!(ok);
    assert_eq!(out, "host,top\na,3.5\nb,2.5\n");
    let (ok, out, _) = sql(dir.path(), &["--format", "json", q]);
    assert!(ok);
    assert_eq!(
        out,
        "[{\"host\":\"a\",\"top\":3.5},{\"host\":\"b\",\"top\":2.5}]\n"
    );

    let (ok, _, err) = sql(dir.path(), &["SELECT nope FROM cpu"]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
    let (ok, _, err) = sql(dir.path(), &["--db", "absent", "SELECT 1"]);
    assert!(!ok);
    assert!(err.contains("database \"absent\" does not exist"), "{err}");
}
