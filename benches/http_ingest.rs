//! End-to-end ingest over HTTP, side by side with InfluxDB 1.x: the same TSBS cpu-only
//! lines, in batches of 5,000, posted by several concurrent connections to `gannet serve`
//! (`/write`) and to `influxd` (`/write`), each answering only once the batch is durable.
//! Then the Postgres-wire round trip of `SELECT 1` (psycopg, from the project's .venv).
//!
//!     apt-get install influxdb     # InfluxDB 1.x from Debian; skipped if missing
//!     cargo bench --bench http_ingest
//!
//! HTTP_ROWS (default 1,000,000), HTTP_WRITERS (8), HTTP_ROUNDS (3) and INFLUXD (path of
//! influxd) tune it. Both servers run on loopback with their data in a temporary directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/harness.rs"]
mod harness;
use harness::{Server, env_or, free_port, start_gannet, wait_until_up};

#[path = "common/tsbs.rs"]
mod tsbs;

const BATCH_LINES: usize = 5_000;

fn start_influxd(influxd: &str, dir: &Path) -> Option<Server> {
    let http = free_port();
    let rpc = free_port();
    let config = format!(
        "reporting-disabled = true\n\
         bind-address = \"127.0.0.1:{rpc}\"\n\
         [meta]\n  dir = \"{d}/meta\"\n\
         [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
         [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n\
         [monitor]\n  store-enabled = false\n\
         [continuous_queries]\n  enabled = false\n",
        d = dir.display()
    );
    let config_path = dir.join("influxdb.conf");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(influxd)
        .arg("-config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_until_up(&format!("http://127.0.0.1:{http}/ping"), 204);
    // influxd answers /ping before its meta store takes statements: retry until
    // CREATE DATABASE reports no error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ureq::post(&format!("http://127.0.0.1:{http}/query"))
            .send_form([("q", "CREATE DATABASE bench")])
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if answer.contains("\"results\"") && !answer.contains("\"error\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "influxd: CREATE DATABASE failed: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Server {
        name: "influxdb 1.x",
        child,
        write_url: format!("http://127.0.0.1:{http}/write?db=bench&precision=ns"),
    })
}

struct Run {
    rows_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Posts every batch once, `writers` requests in flight.
fn ingest(server: &Server, batches: &[String], writers: usize) -> Run {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(batches.len()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers {
            scope.spawn(|| {
                let agent = ureq::Agent::new_with_defaults();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    let t = Instant::now();
                    let response = agent
                        .post(&server.write_url)
                        .send(batch.as_bytes())
                        .unwrap_or_else(|e| panic!("{}: write failed: {e}", server.name));
                    assert_eq!(response.status().as_u16(), 204, "{}", server.name);
                    mine.push(t.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let elapsed = started.elapsed();
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    Run {
        rows_per_sec: (batches.len() * BATCH_LINES) as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `SELECT 1` round trips through psycopg (prepared, binary), microseconds: (p50, p99).
fn select_one_round_trip(pg_port: u16) -> Option<(f64, f64)> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !python.exists() {
        println!("(no .venv: run scripts/setup for the Postgres round-trip measurement)");
        return None;
    }
    let script = r#"
import sys, time, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), dbname="bench", user="bench", autocommit=True) as conn:
    cur = conn.cursor(binary=True)
    for _ in range(200):
        cur.execute("SELECT 1", prepare=True).fetchone()
    times = []
    for _ in range(5000):
        t = time.perf_counter()
        cur.execute("SELECT 1", prepare=True).fetchone()
        times.append(time.perf_counter() - t)
    times.sort()
    print(times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6)
"#;
    let out = Command::new(python)
        .args(["-c", script, &pg_port.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().filter_map(|n| n.parse().ok());
    Some((numbers.next()?, numbers.next()?))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows: usize = env_or("HTTP_ROWS", 1_000_000);
    let writers: usize = env_or("HTTP_WRITERS", 8);
    let rounds: usize = env_or("HTTP_ROUNDS", 3);
    let influxd: String = env_or("INFLUXD", "influxd".to_owned());

    let mut generator = tsbs::Generator::new(1000, 7);
    let batches: Vec<String> = (0..rows / BATCH_LINES)
        .map(|_| generator.lines(BATCH_LINES))
        .collect();
    let mb = batches.iter().map(String::len).sum::<usize>() as f64 / 1e6;
    println!(
        "{} TSBS cpu rows ({mb:.0} MB), batches of {BATCH_LINES} lines, {writers} connections, {rounds} rounds",
        batches.len() * BATCH_LINES
    );

    let mut results: Vec<(&'static str, Vec<Run>)> = Vec::new();
    let mut pg_port = None;
    for round in 0..rounds {
        // A fresh data directory per round and server, alternating servers.
        let dir = tempfile::tempdir().unwrap();
        let (gannet, port) = start_gannet(dir.path());
        let run = ingest(&gannet, &batches, writers);
        println!(
            "round {round}: gannet       {:>10.0} rows/s",
            run.rows_per_sec
        );
        push(&mut results, gannet.name, run);
        if round + 1 == rounds {
            pg_port = Some((port, gannet, dir));
        } else {
            drop(gannet);
        }

        let dir = tempfile::tempdir().unwrap();
        match start_influxd(&influxd, dir.path()) {
            Some(influx) => {
                let run = ingest(&influx, &batches, writers);
                println!(
                    "round {round}: influxdb 1.x {:>10.0} rows/s",
                    run.rows_per_sec
                );
                push(&mut results, influx.name, run);
            }
            None => println!("round {round}: {influxd} not found; InfluxDB skipped"),
        }
    }

    println!();
    println!("| server | rows/s (median) | range | batch p50 | batch p99 |");
    println!("|---|---:|---:|---:|---:|");
    for (name, runs) in &results {
        let rates: Vec<f64> = runs.iter().map(|r| r.rows_per_sec).collect();
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.0} | {:.0}-{:.0} k | {:.1} ms | {:.1} ms |",
            median(rates),
            lo / 1e3,
            hi / 1e3,
            median(runs.iter().map(|r| r.p50_ms).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
        );
    }
    if let [(_, gannet), (_, influx)] = results.as_slice() {
        let ratio = median(gannet.iter().map(|r| r.rows_per_sec).collect())
            / median(influx.iter().map(|r| r.rows_per_sec).collect());
        println!("\ngannet / influxdb 1.x: {ratio:.1}x");
    }

    if let Some((port, _gannet, _dir)) = pg_port
        && let Some((p50, p99)) = select_one_round_trip(port)
    {
        println!(
            "\nPostgres wire, SELECT 1 round trip (psycopg, prepared): p50 {p50:.0} us, p99 {p99:.0} us"
        );
    }
}

fn push(results: &mut Vec<(&'static str, Vec<Run>)>, name: &'static str, run: Run) {
    match results.iter_mut().find(|(n, _)| *n == name) {
        Some((_, runs)) => runs.push(run),
        None => results.push((name, vec![run])),
    }
}
