//! What the integration tests share: the project's Python, and the real `gannet serve`
//! binary started on free loopback ports.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Python of the project's virtualenv (scripts/setup installs it and the client libraries).
pub fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup (scripts/test does) to install the Python test tools",
        venv.display()
    );
    venv
}

/// Runs a Python script with the given arguments; panics with its stderr if it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `gannet serve` process on a temporary data directory, killed when dropped.
pub struct TestServer {
    child: Option<Child>,
    pub data_dir: tempfile::TempDir,
    pub pg: SocketAddr,
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts a server on `data_dir` with extra `gannet serve` flags.
    pub fn start_in(data_dir: tempfile::TempDir, args: &[&str]) -> TestServer {
        Self::start_with(data_dir, args, &[])
    }

    /// Starts a server on `data_dir` with extra `gannet serve` flags and environment variables.
    pub fn start_with(
        data_dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gannet"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .env("GANNET_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log_writer.lock().unwrap().push_str(&line);
                log_writer.lock().unwrap().push('\n');
                let _ = lines_tx.send(line);
            }
        });
        let (mut pg, mut http) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.is_none() || http.is_none() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(wait) else {
                let _ = child.kill();
                panic!(
                    "gannet serve did not start:\n{}",
                    log.lock().unwrap().as_str()
                );
            };
            // "... on http://ADDR" or "... on https://ADDR"; "... on ADDR" or "ADDR (TLS)".
            let addr = |marker: &str| {
                let rest = line.split(marker).nth(1)?;
                let rest = rest.rsplit("://").next()?;
                rest.split_whitespace().next()?.parse().ok()
            };
            http = http.or_else(|| addr("HTTP API listening on "));
            pg = pg.or_else(|| addr("Postgres wire protocol listening on "));
        }
        TestServer {
            child: Some(child),
            data_dir,
            pg: pg.unwrap(),
            http: http.unwrap(),
            log,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.http)
    }

    /// A libpq connection string for database `db`.
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} dbname={db} user=gannet_test",
            self.pg.ip(),
            self.pg.port()
        )
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and the data dir.
    pub fn terminate(mut self) -> (ExitStatus, tempfile::TempDir, String) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        // The log reader sees end of file once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        (status, data_dir, log)
    }

    /// Writes line protocol with second timestamps to database `db`: `(status, body)`.
    pub fn write(&self, db: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.curl(
            "POST",
            &format!("/api/v3/write_lp?db={db}&precision=s"),
            &[],
            Some(body),
        )
    }

    /// Kills the process with SIGKILL (kill -9) and returns its data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap())
    }

    /// Runs psql against database `db` with the given arguments (`-c SQL`, ...); returns
    /// whether it succeeded, stdout and stderr.
    pub fn psql(&self, db: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("psql")
            .args(["-X", "-h", &self.pg.ip().to_string(), "-p"])
            .arg(self.pg.port().to_string())
            .args(["-U", "gannet_test", "-d", db])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql is installed (.ci/run installs postgresql-client)");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// An HTTP request with curl: `(status, body)`.
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>) {
        curl(method, &self.url(path), headers, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP request with the real curl: `(status, body)`.
pub fn curl(method: &str, url: &str, headers: &[&str], body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let mut command = Command::new("curl");
    command.args(["-s", "-S", "-X", method, "-o", "-", "-w", "\n%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = body.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let Some(body) = body {
            // curl may stop reading early (413): a broken pipe is fine.
            let _ = stdin.write_all(&body);
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stdout = out.stdout;
    let split = stdout.iter().rposition(|&b| b == b'\n').unwrap();
    let status = std::str::from_utf8(&stdout[split + 1..])
        .unwrap()
        .parse()
        .unwrap();
    stdout.truncate(split);
    (status, stdout)
}
