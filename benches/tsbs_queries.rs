//! The TSBS devops query set on TSBS cpu-only data, Gannet (embedded, DataFusion over its
//! segments and buffer) side by side with DuckDB (from the project's .venv) on the same rows.
//!
//!     scripts/setup && cargo bench --bench tsbs_queries
//!
//! TSBS_HOSTS (default 1000), TSBS_HOURS (12) and TSBS_RUNS (5) tune it: 1000 hosts x 12 h is
//! 4.32 M rows. The first half of the hours is flushed to Parquet segments and compacted (one
//! segment per hour, as the background compactor leaves hours no longer written to), the
//! rest stays in Gannet's write buffer. DuckDB loads the same rows from a Parquet export into its own
//! table. Then `gannet serve` opens the same directory (the buffered half replayed from the
//! WAL) and psycopg sends the queries over the Postgres wire protocol, as DuckDB's are sent
//! through its Python API: both results are fetched into Python rows. Each query runs once
//! to warm up, then TSBS_RUNS times; the table shows medians.
//! TSBS_EXPLAIN=<query name> prints that query's EXPLAIN ANALYZE instead; TSBS_PROFILE=<query
//! name> runs it over and over (TSBS_PROFILE_SECS, 10) for a profiler, or only plans it
//! (TSBS_PROFILE_PLAN=1); TSBS_SQL="<sql>;;<sql>" runs variants of it in turn instead.
//! TSBS_SERVE=1 keeps `gannet serve` up at the end, for psql.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use gannet::storage::{Engine, EngineConfig, Precision};

#[path = "common/harness.rs"]
mod harness;
use harness::env_or;

#[allow(dead_code)]
#[path = "common/tsbs.rs"]
mod tsbs;

const DUCKDB: &str = r#"
import sys, json, time, statistics, duckdb
parquet, runs, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
db = duckdb.connect()
started = time.perf_counter()
db.execute(f"CREATE TABLE cpu AS SELECT * REPLACE (time::TIMESTAMP AS time) FROM read_parquet('{parquet}')")
load = time.perf_counter() - started
out = {"_load_s": load}
for name, sql in queries:
    db.execute(sql).fetchall()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        rows = db.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    out[name] = [statistics.median(times) * 1e3, len(rows)]
print(json.dumps(out))
"#;

const PSYCOPG: &str = r#"
import sys, json, time, statistics, psycopg
port, runs, queries = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
out = {}
with psycopg.connect(host="127.0.0.1", port=port, dbname="bench", user="bench", autocommit=True) as conn:
    for name, sql in queries:
        conn.execute(sql).fetchall()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            rows = conn.execute(sql).fetchall()
            times.append(time.perf_counter() - t)
        out[name] = [statistics.median(times) * 1e3, len(rows)]
print(json.dumps(out))
"#;

/// The bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hosts = env_or("TSBS_HOSTS", 1000);
    let hours = env_or("TSBS_HOURS", 12);
    let runs = env_or("TSBS_RUNS", 5);
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/setup first (DuckDB comes from .venv)"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.background_flush = false;
    config.flush_rows = usize::MAX;
    let engine = Engine::open(config).unwrap();
    let steps = hours * 360;
    let mut generator = tsbs::Generator::new(hosts, 7);
    let started = Instant::now();
    for step in 0..steps {
        let mut body = String::new();
        generator.next_step(&mut body);
        engine
            .write_lp("bench", body.as_bytes(), Precision::Nanosecond)
            .unwrap();
        if step + 1 == steps / 2 {
            engine.flush().unwrap();
            // As the background compactor leaves them: the flushed hours, no longer
            // written to, in one segment each.
            while engine.compact().unwrap() > 0 {}
        }
    }
    let rows = hosts * steps;
    println!(
        "{rows} rows ({hosts} hosts x {hours} h) written in {:.1} s; first half in segments, \
         second half buffered",
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let query = gannet_query_engine(&engine);
    let queries = tsbs::devops_queries(hours);
    // TSBS_EXPLAIN=<query name>: where that query's time goes (EXPLAIN ANALYZE, after a
    // warm-up run), and nothing else.
    if let Ok(wanted) = std::env::var("TSBS_EXPLAIN") {
        let (_, sql) = queries
            .iter()
            .find(|(name, _)| *name == wanted)
            .unwrap_or_else(|| panic!("no TSBS query named {wanted}"));
        runtime.block_on(query.sql("bench", sql)).unwrap();
        let plan = runtime
            .block_on(query.sql("bench", &format!("EXPLAIN ANALYZE {sql}")))
            .unwrap();
        println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&plan).unwrap()
        );
        return;
    }
    // TSBS_PROFILE=<query name>: that query over and over for TSBS_PROFILE_SECS (10), for a
    // profiler to watch (`perf record -g -p <pid>`), and nothing else.
    if let Ok(wanted) = std::env::var("TSBS_PROFILE") {
        let (_, sql) = queries
            .iter()
            .find(|(name, _)| *name == wanted)
            .unwrap_or_else(|| panic!("no TSBS query named {wanted}"));
        // TSBS_SQL: run these statements (separated by `;;`) in its place, taking turns, for
        // a side-by-side comparison of variants of the named query in one process.
        let variants: Vec<String> = match std::env::var("TSBS_SQL") {
            Ok(list) => list.split(";;").map(|s| s.trim().to_owned()).collect(),
            Err(_) => vec![sql.clone()],
        };
        // TSBS_PROFILE_PLAN=1: plan it only (SQL to physical plan), without running it.
        let plan_only = std::env::var("TSBS_PROFILE_PLAN").is_ok();
        let until =
            Instant::now() + std::time::Duration::from_secs(env_or("TSBS_PROFILE_SECS", 10u64));
        let mut times = vec![Vec::new(); variants.len()];
        while Instant::now() < until {
            for (sql, times) in variants.iter().zip(times.iter_mut()) {
                let t = Instant::now();
                if plan_only {
                    runtime
                        .block_on(async {
                            let frame = query.session("bench").unwrap().sql(sql).await?;
                            frame.create_physical_plan().await
                        })
                        .unwrap();
                } else {
                    runtime.block_on(query.sql("bench", sql)).unwrap();
                }
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (i, times) in times.into_iter().enumerate() {
            let which = if variants.len() > 1 {
                format!(" (variant {})", i + 1)
            } else {
                String::new()
            };
            println!(
                "{wanted}{which}: {} runs, median {:.2} ms",
                times.len(),
                median(times)
            );
        }
        return;
    }
    let mut gannet = Vec::new();
    for (name, sql) in &queries {
        let run = || {
            let t = Instant::now();
            let batches = runtime
                .block_on(query.sql("bench", sql))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            (t.elapsed().as_secs_f64() * 1e3, rows)
        };
        run();
        let results: Vec<(f64, usize)> = (0..runs).map(|_| run()).collect();
        gannet.push((median(results.iter().map(|r| r.0).collect()), results[0].1));
    }

    // DuckDB reads the same rows from a Parquet export of the table.
    let export = dir.path().join("cpu.parquet");
    let table = engine.snapshot("bench", "cpu").unwrap().read_all().unwrap();
    let file = std::fs::File::create(&export).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, table.schema(), None).unwrap();
    writer.write(&table).unwrap();
    writer.close().unwrap();
    drop(table);
    let out = Command::new(&python)
        .args(["-c", DUCKDB, export.to_str().unwrap(), &runs.to_string()])
        .arg(serde_json::to_string(&queries).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The same queries through `gannet serve` and psycopg, on the same data directory: the
    // engine is dropped without flushing, so the server replays the buffered half from
    // the WAL into its buffer.
    drop(query);
    let wal_bytes = dir_bytes(&dir.path().join("wal"));
    assert_eq!(
        std::sync::Arc::strong_count(&engine),
        1,
        "the engine is still in use"
    );
    drop(engine);
    let started = Instant::now();
    let (server, pg_port) = harness::start_gannet(dir.path());
    println!(
        "gannet serve up in {:.1} s (WAL replay of {:.0} MB)",
        started.elapsed().as_secs_f64(),
        wal_bytes as f64 / 1e6
    );
    let out = Command::new(&python)
        .args(["-c", PSYCOPG, &pg_port.to_string(), &runs.to_string()])
        .arg(serde_json::to_string(&queries).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psycopg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wire: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // TSBS_SERVE=1: keep the server up to look into it (until the bench is interrupted).
    if std::env::var("TSBS_SERVE").is_ok() {
        println!("{wire}\nserving: psql -h 127.0.0.1 -p {pg_port} -d bench");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    drop(server);

    println!(
        "\n| query | Gannet (ms) | Gannet via psycopg (ms) | DuckDB (ms) | Gannet / DuckDB | \
         via psycopg / DuckDB | rows |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for ((name, _), (ms, rows)) in queries.iter().zip(&gannet) {
        let duck_ms = duck[name][0].as_f64().unwrap();
        let duck_rows = duck[name][1].as_u64().unwrap() as usize;
        let wire_ms = wire[name][0].as_f64().unwrap();
        let wire_rows = wire[name][1].as_u64().unwrap() as usize;
        assert_eq!(
            (*rows, *rows),
            (duck_rows, wire_rows),
            "{name}: Gannet {rows} rows, DuckDB {duck_rows}, through psycopg {wire_rows}"
        );
        println!(
            "| {name} | {ms:.1} | {wire_ms:.1} | {duck_ms:.1} | {:.2} | {:.2} | {rows} |",
            ms / duck_ms,
            wire_ms / duck_ms
        );
    }
    println!(
        "\nDuckDB loaded the Parquet export in {:.1} s",
        duck["_load_s"].as_f64().unwrap()
    );
}

fn gannet_query_engine(engine: &std::sync::Arc<Engine>) -> gannet::query::QueryEngine {
    gannet::query::QueryEngine::new(engine.clone())
}
