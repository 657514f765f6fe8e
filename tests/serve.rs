//! `gannet serve` as a process: start-up checks, clean shutdown, restart.

use std::process::Command;

use crate::support::TestServer;

#[test]
fn sigterm_shuts_down_cleanly_and_a_restart_serves_the_same_data() {
    let server = TestServer::start();
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=m",
        &[],
        Some(b"cpu,host=a usage=1 1700000000000000000\ncpu,host=b usage=2 1700000000000000000"),
    );
    assert_eq!(status, 204);
    let (status, data_dir, log) = server.terminate();
    assert!(status.success(), "exit {status:?}:\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");

    let server = TestServer::start_in(data_dir, &[]);
    let (ok, out, err) = server.psql("m", &["-A", "-t", "-c", "SELECT count(*) FROM cpu"]);
    assert!(ok, "{err}");
    assert_eq!(out, "2\n");
}

/// Runs `gannet serve` expecting it to refuse to start; returns its stderr.
fn refused(data_dir: &std::path::Path, http_addr: &str, pg_addr: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gannet"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http-addr", http_addr, "--pg-addr", pg_addr])
        .output()
        .unwrap();
    assert!(!out.status.success(), "gannet serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn refuses_what_it_cannot_do_safely() {
    let dir = tempfile::tempdir().unwrap();
    // A non-loopback address without authentication.
    let err = refused(dir.path(), "0.0.0.0:0", "127.0.0.1:0");
    assert!(err.contains("--insecure-no-auth"), "{err}");

    // A data directory another server holds.
    let server = TestServer::start();
    let err = refused(server.data_dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    assert!(err.contains("in use by another Gannet process"), "{err}");

    // An address already taken.
    let err = refused(dir.path(), &server.http.to_string(), "127.0.0.1:0");
    assert!(
        err.contains(&format!("cannot listen on {}", server.http)),
        "{err}"
    );
}
