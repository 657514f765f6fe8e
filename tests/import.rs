//! `gannet import` as a user runs it: the real binary on plain and gzipped files.

use std::io::Write;
use std::process::Command;

use gannet::{EngineConfig, Gannet};

fn gannet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gannet"))
}

#[test]
fn imports_plain_and_gzip_files_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.lp");
    let lines: String = (0..3000)
        .map(|i| format!("cpu,host=h{} v={i} {i}\n", i % 7))
        .collect();
    std::fs::write(&plain, format!("# header\n{lines}cpu v=oops 1\n")).unwrap();
    let gz = dir.path().join("b.lp.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(b"mem,host=h0 free=1i 5\nmem,host=h1 free=2i 5\n")
        .unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    let data = dir.path().join("data");

    let out = gannet()
        .args([
            "import",
            "--quiet",
            "--db",
            "m",
            "--precision",
            "s",
            "--data-dir",
        ])
        .arg(&data)
        .arg(&plain)
        .arg(&gz)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad lines make the exit code 1: {stdout}"
    );
    assert!(
        stdout.contains("imported 3002 rows into database 'm'"),
        "{stdout}"
    );
    assert!(stdout.contains("rejected 1 lines"), "{stdout}");
    assert!(
        stdout.contains("a.lp:3002: invalid field value 'oops' for field 'v'"),
        "{stdout}"
    );

    let db = Gannet::open_with(EngineConfig::test_config(&data)).unwrap();
    assert_eq!(db.read_table("m", "cpu").unwrap().unwrap().num_rows(), 3000);
    assert_eq!(db.read_table("m", "mem").unwrap().unwrap().num_rows(), 2);
}

#[test]
fn a_missing_file_or_a_locked_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = gannet()
        .args(["import", "--db", "m", "--data-dir"])
        .arg(dir.path())
        .arg(dir.path().join("nope.lp"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.lp: no such file"));

    let file = dir.path().join("a.lp");
    std::fs::write(&file, "cpu v=1 1\n").unwrap();
    let _owner = Gannet::open_with(EngineConfig::test_config(dir.path())).unwrap();
    let out = gannet()
        .args(["import", "--db", "m", "--data-dir"])
        .arg(dir.path())
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("in use by another Gannet process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
}
