//! Durable ingest: parse + validate + WAL (fsync, group commit) + buffer, with 1, 4, 8 and 16
//! concurrent writers sending 5,000-line TSBS batches; then WAL replay.
//!
//!     cargo bench --bench ingest
//!
//! Prints rows/s, MB/s, fsyncs, mean fsync latency, acknowledgement latency (p50, p99) and
//! peak RSS for each run; each configuration runs INGEST_ROUNDS times (default 3).
//! INGEST_WRITERS (e.g. `8` or `1,8`) runs only those writer counts.

use std::time::{Duration, Instant};

use gannet::storage::{Engine, EngineConfig, Precision};

#[path = "common/tsbs.rs"]
mod tsbs;

const BATCH_LINES: usize = 5_000;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo test --benches` and nextest ask for a list: there are no test cases here.
        return;
    }
    let total_rows: usize = std::env::var("INGEST_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    // 1000 hosts, like the TSBS query benchmark's data set.
    let mut generator = tsbs::Generator::new(1000, 7);
    let batches: Vec<String> = (0..total_rows / BATCH_LINES)
        .map(|_| generator.lines(BATCH_LINES))
        .collect();
    let bytes: usize = batches.iter().map(String::len).sum();
    let rows = batches.len() * BATCH_LINES;
    println!(
        "{rows} TSBS cpu rows, {:.1} MB of line protocol, batches of {BATCH_LINES} lines",
        bytes as f64 / 1e6
    );
    println!(
        "{:>8} {:>12} {:>9} {:>8} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "writers",
        "rows/s",
        "MB/s",
        "fsyncs",
        "mean fsync ms",
        "ack p50 ms",
        "ack p99 ms",
        "buffer",
        "peak RSS"
    );
    // This machine is shared and noisy: run each configuration several times.
    let rounds: usize = std::env::var("INGEST_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // INGEST_WRITERS=8 (or "1,8") runs only those configurations.
    let configs: Vec<usize> = std::env::var("INGEST_WRITERS")
        .ok()
        .map(|s| s.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 8, 16]);
    for (writers, _round) in configs
        .into_iter()
        .flat_map(|w| (0..rounds).map(move |r| (w, r)))
    {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.flush_age = Duration::from_secs(3600);
        let engine = Engine::open(config).unwrap();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let latencies = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..writers {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(batch) = batches.get(i) else { break };
                        let sent = Instant::now();
                        let out = engine
                            .write_lp("bench", batch.as_bytes(), Precision::Nanosecond)
                            .unwrap();
                        mine.push(sent.elapsed());
                        assert_eq!(out.rows, BATCH_LINES);
                    }
                    latencies.lock().unwrap().extend(mine);
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let mut latencies = latencies.into_inner().unwrap();
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        let wal = engine.wal_stats();
        println!(
            "{writers:>8} {:>12.0} {:>9.1} {:>8} {:>14.2} {:>10.1} {:>10.1} {:>6.0} MiB {:>8.0} MiB",
            rows as f64 / secs,
            bytes as f64 / secs / 1e6,
            wal.fsyncs,
            wal.fsync_nanos_total as f64 / wal.fsyncs.max(1) as f64 / 1e6,
            pct(0.5),
            pct(0.99),
            engine.buffer_stats().bytes as f64 / (1 << 20) as f64,
            peak_rss_mib()
        );
        if writers == 16 {
            // Replay: drop without flushing, reopen, time the WAL replay.
            let buffered = engine.buffer_stats().rows;
            drop(engine);
            let started = Instant::now();
            let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
            let secs = started.elapsed().as_secs_f64();
            let replayed = engine.buffer_stats().rows;
            assert_eq!(replayed, buffered);
            println!(
                "replay: {replayed} rows in {secs:.2} s = {:.0} rows/s",
                replayed as f64 / secs
            );
        }
    }
}
