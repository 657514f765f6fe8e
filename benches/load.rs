//! Load: `gannet serve` in its own process, 64 Postgres clients running the TSBS devops
//! queries (pgbench, extended protocol) while 8 writers post TSBS line protocol over HTTP as
//! fast as they can, for a fixed time. Reports query throughput and latency, write
//! throughput, errors, and the server's peak memory against its configured limits.
//!
//!     cargo bench --bench load
//!
//! LOAD_SECONDS (300), LOAD_CLIENTS (64), LOAD_WRITERS (8), LOAD_HOSTS (200) and
//! LOAD_HOURS of data loaded first (12) tune it; the server runs with a 1 GiB write buffer
//! and a 1 GiB query memory limit. LOAD_WRITE_RATE (rows per second, all writers together;
//! 0, the default, is as fast as the server answers) holds the writers to a fixed pace, so
//! that query figures of two versions compare over the same amount of data.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "common/harness.rs"]
mod harness;
use harness::{env_or, free_port};

#[path = "common/tsbs.rs"]
mod tsbs;

const BATCH_LINES: usize = 5_000;
const BUFFER_MEMORY: &str = "1GiB";
const QUERY_MEMORY: &str = "1GiB";

struct Server {
    child: Child,
    http: u16,
    pg: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let (http, pg) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_gannet"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--pg-addr", &format!("127.0.0.1:{pg}")])
        .args(["--buffer-memory-limit", BUFFER_MEMORY])
        .args(["--query-memory-limit", QUERY_MEMORY])
        .args(["--max-connections", "200"])
        .env(
            "GANNET_LOG",
            std::env::var("GANNET_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("gannet serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("http://127.0.0.1:{http}/health"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "gannet serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Server { child, http, pg }
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = env_or("LOAD_SECONDS", 300);
    let clients: usize = env_or("LOAD_CLIENTS", 64);
    let writers: usize = env_or("LOAD_WRITERS", 8);
    let hosts: usize = env_or("LOAD_HOSTS", 200);
    let hours: usize = env_or("LOAD_HOURS", 12);
    let write_rate: f64 = env_or("LOAD_WRITE_RATE", 0.0);
    if Command::new("pgbench").arg("--version").output().is_err() {
        eprintln!("SKIPPED: pgbench is not installed (apt-get install postgresql-client)");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let write_url = format!(
        "http://127.0.0.1:{}/write?db=tsbs&precision=ns",
        server.http
    );

    // The data the queries read: `hours` of TSBS cpu for `hosts` hosts.
    let mut generator = tsbs::Generator::new(hosts, 7);
    let steps = hours * 360;
    let agent = ureq::Agent::new_with_defaults();
    let started = Instant::now();
    let mut loaded = 0;
    while loaded < steps * hosts {
        let body = generator.lines(BATCH_LINES);
        loaded += body.lines().count();
        agent
            .post(&write_url)
            .send(&body)
            .expect("loading the data");
    }
    eprintln!(
        "loaded {loaded} rows ({hosts} hosts x {hours} h) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // pgbench: one script per query, picked at random for each transaction.
    let scripts = tempfile::tempdir().unwrap();
    let queries = tsbs::devops_queries(hours);
    let mut args: Vec<String> = Vec::new();
    for (i, (_, sql)) in queries.iter().enumerate() {
        let path = scripts.path().join(format!("q{i}.sql"));
        std::fs::write(&path, format!("{sql};\n")).unwrap();
        args.push("-f".into());
        args.push(path.display().to_string());
    }
    let log_prefix = scripts.path().join("log");

    // Writers: fresh TSBS points after the loaded hours, as fast as the server takes them.
    let stop = AtomicBool::new(false);
    let (rows_written, write_errors, writes) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let write_latencies = std::sync::Mutex::new(Vec::new());
    let peak_sample = std::sync::Mutex::new(None::<MemorySample>);
    let pgbench_out = std::thread::scope(|scope| {
        for w in 0..writers {
            let (stop, rows_written, write_errors, writes, url) =
                (&stop, &rows_written, &write_errors, &writes, &write_url);
            let write_latencies = &write_latencies;
            scope.spawn(move || {
                let agent = ureq::Agent::new_with_defaults();
                // Each writer its own hosts, so that writers do not overwrite each other.
                let mut generator = tsbs::Generator::new(hosts, 100 + w as u64);
                let mut skip = String::new();
                for _ in 0..steps {
                    skip.clear();
                    generator.next_step(&mut skip);
                }
                let mut mine = Vec::new();
                let (began, mut sent) = (Instant::now(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    if write_rate > 0.0 {
                        // Each writer its share of the rate: wait until the pace allows
                        // the next batch.
                        let due = sent as f64 / (write_rate / writers as f64);
                        let ahead = due - began.elapsed().as_secs_f64();
                        if ahead > 0.0 {
                            std::thread::sleep(Duration::from_secs_f64(ahead.min(1.0)));
                            continue;
                        }
                    }
                    sent += BATCH_LINES;
                    let body = generator
                        .lines(BATCH_LINES)
                        .replace("hostname=host_", &format!("hostname=w{w}_host_"));
                    let t = Instant::now();
                    match agent.post(url).send(&body) {
                        Ok(_) => {
                            rows_written.fetch_add(body.lines().count() as u64, Ordering::Relaxed);
                            mine.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(e) => {
                            eprintln!("write failed: {e}");
                            write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                write_latencies.lock().unwrap().extend(mine);
            });
        }
        // Every second, the server's memory gauges; the sample with the largest resident
        // size says where the memory was at the peak.
        let metrics_url = format!("http://127.0.0.1:{}/metrics", server.http);
        let (stop_ref, peak_ref) = (&stop, &peak_sample);
        scope.spawn(move || {
            let agent = ureq::Agent::new_with_defaults();
            while !stop_ref.load(Ordering::Relaxed) {
                if let Some(sample) = memory_sample(&agent, &metrics_url) {
                    let mut peak = peak_ref.lock().unwrap();
                    if peak.as_ref().is_none_or(|p| p.resident < sample.resident) {
                        *peak = Some(sample);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let out = Command::new("pgbench")
            .args(["-n", "-M", "extended", "-h", "127.0.0.1", "-U", "load"])
            .args(["-p", &server.pg.to_string()])
            .args(["-c", &clients.to_string(), "-j", "4"])
            .args(["-T", &seconds.to_string()])
            .args(["-l", "--log-prefix"])
            .arg(&log_prefix)
            .args(&args)
            .arg("tsbs")
            .output()
            .expect("pgbench");
        stop.store(true, Ordering::Relaxed);
        out
    });
    let peak = peak_rss_mib(server.child.id());
    let pgbench_text = String::from_utf8_lossy(&pgbench_out.stdout).into_owned();
    if !pgbench_out.status.success() {
        eprintln!(
            "pgbench failed:\n{pgbench_text}{}",
            String::from_utf8_lossy(&pgbench_out.stderr)
        );
    }

    // Per-transaction log lines: client, transaction, latency (us), script, epoch, us.
    let mut latencies: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut failed = 0usize;
    for entry in std::fs::read_dir(scripts.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("log")
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            match (fields[2].parse::<f64>(), fields[3].parse::<usize>()) {
                (Ok(us), Ok(script)) => latencies.entry(script).or_default().push(us / 1e3),
                _ => failed += 1,
            }
        }
    }
    let mut all: Vec<f64> = latencies.values().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let mut write_ms = write_latencies.into_inner().unwrap();
    write_ms.sort_by(f64::total_cmp);

    let failed_line = pgbench_text
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .unwrap_or("")
        .trim();
    let pace = match write_rate {
        r if r > 0.0 => format!("at {r} rows/s together"),
        _ => "at full speed".to_owned(),
    };
    println!(
        "\n{clients} pg clients (pgbench -M extended, 12 TSBS queries) + {writers} HTTP writers \
         {pace}, {seconds} s, {hosts} hosts x {hours} h loaded first ({loaded} rows)\n"
    );
    println!("| | count | per second | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| queries | {} | {:.1} | {:.1} | {:.1} | {} |",
        all.len(),
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        failed + if pgbench_out.status.success() { 0 } else { 1 },
    );
    println!(
        "| writes (5,000 rows) | {} | {:.0} rows/s | {:.1} | {:.1} | {} |",
        writes.load(Ordering::Relaxed),
        rows_written.load(Ordering::Relaxed) as f64 / seconds as f64,
        percentile(&write_ms, 0.5),
        percentile(&write_ms, 0.99),
        write_errors.load(Ordering::Relaxed),
    );
    println!("\npgbench: {failed_line}");
    println!("\n| query | count | p50 ms | p99 ms |\n|---|---|---|---|");
    for (script, mut ms) in latencies {
        ms.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            queries[script].0,
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        );
    }
    println!(
        "\npeak server RSS: {peak:.0} MiB (write buffer limit {BUFFER_MEMORY}, query memory \
         limit {QUERY_MEMORY})"
    );
    if let Some(p) = peak_sample.into_inner().unwrap() {
        let mib = |b: f64| b / (1024.0 * 1024.0);
        println!(
            "at the largest sampled RSS ({:.0} MiB): buffer {:.0} MiB, running queries {:.0} \
             MiB, kept merges {:.0} MiB, heap allocated {:.0} MiB, heap free {:.0} MiB",
            mib(p.resident),
            mib(p.buffer),
            mib(p.queries),
            mib(p.kept),
            mib(p.heap_allocated),
            mib(p.heap_free),
        );
    }
}

/// The server's memory gauges from `/metrics`, in bytes.
#[derive(Debug)]
struct MemorySample {
    resident: f64,
    buffer: f64,
    queries: f64,
    kept: f64,
    heap_allocated: f64,
    heap_free: f64,
}

fn memory_sample(agent: &ureq::Agent, url: &str) -> Option<MemorySample> {
    let text = agent
        .get(url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Some(MemorySample {
        resident: gauge("process_resident_memory_bytes"),
        buffer: gauge("gannet_buffer_bytes"),
        queries: gauge("gannet_query_memory_bytes"),
        kept: gauge("gannet_kept_merge_bytes"),
        heap_allocated: gauge("gannet_heap_allocated_bytes"),
        heap_free: gauge("gannet_heap_free_bytes"),
    })
}
