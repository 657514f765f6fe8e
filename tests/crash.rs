//! Crash consistency with real processes: a child writes in a loop and prints each
//! acknowledged batch, while queries run, the buffer is flushed every few hundred rows and
//! segments are compacted; the parent kills it with SIGKILL at a random moment, reopens the
//! data directory, and checks that every acknowledged row is there exactly once. 50 trials
//! (`GANNET_CRASH_TRIALS` to change).
//!
//! The child is this test binary itself, run as `crash::writer_loop` with the data
//! directory in `GANNET_CRASH_DIR`. Run on its own, the same test writes a few batches
//! in-process and checks them, so it is a test in both roles.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use gannet::{EngineConfig, Gannet, Precision};
use rand::Rng;

const DIR_ENV: &str = "GANNET_CRASH_DIR";
const FIRST_ENV: &str = "GANNET_CRASH_FIRST_BATCH";
const WRITERS: usize = 4;
const ROWS_PER_BATCH: usize = 50;

fn config(dir: &Path) -> EngineConfig {
    // Flush often and keep WAL files small, so that kills land in every phase: appends,
    // group commits, segment writes, catalog updates, WAL file removal.
    let mut config = EngineConfig::new(dir);
    config.flush_rows = 400;
    config.flush_interval = Duration::from_millis(20);
    config.compact_segments = 2;
    config.wal.max_file_bytes = 64 << 10;
    config
}

/// Batch `i` of writer `w`: rows with value `(w * 10_000_000 + i) * 100 + j`, each its own
/// point, spread over several 10-minute windows.
fn batch(w: usize, i: usize) -> String {
    (0..ROWS_PER_BATCH)
        .map(|j| {
            let ts = (i * ROWS_PER_BATCH + j) as i64 + 1_700_000_000;
            format!(
                "events,writer=w{w},host=h{} v={}i {ts}\n",
                j % 5,
                value(w, i, j)
            )
        })
        .collect()
}

fn value(w: usize, i: usize, j: usize) -> i64 {
    ((w * 10_000_000 + i) * 100 + j) as i64
}

/// Writes batches `first..first + batches` from each writer thread; `ack` hears of each.
fn write_batches(db: &Gannet, first: usize, batches: usize, mut ack: impl FnMut(usize, usize)) {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for w in 0..WRITERS {
            let tx = tx.clone();
            s.spawn(move || {
                for i in first..first.saturating_add(batches) {
                    let out = db
                        .write_lp("crash", batch(w, i), Precision::Second)
                        .unwrap();
                    assert_eq!(out.rows, ROWS_PER_BATCH);
                    tx.send((w, i)).unwrap();
                }
            });
        }
        drop(tx);
        for (w, i) in rx {
            ack(w, i);
        }
    });
}

/// Queries the table over and over, as readers do while the child is killed.
fn query_loop(db: &Gannet) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    loop {
        // The table may not exist yet: errors are fine, panics are not.
        let _ = runtime.block_on(db.sql(
            "crash",
            "SELECT host, count(*), max(v) FROM events WHERE v > 0 GROUP BY host",
        ));
    }
}

#[test]
fn writer_loop() {
    match std::env::var(DIR_ENV) {
        Ok(dir) => {
            // The child: write until killed, announcing each acknowledged batch.
            let first: usize = std::env::var(FIRST_ENV).unwrap().parse().unwrap();
            let db = Gannet::open_with(config(Path::new(&dir))).unwrap();
            for _ in 0..2 {
                let db = db.clone();
                std::thread::spawn(move || query_loop(&db));
            }
            write_batches(&db, first, usize::MAX, |w, i| println!("ACK {w} {i}"));
        }
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            let mut acked = BTreeSet::new();
            {
                let db = Gannet::open_with(config(dir.path())).unwrap();
                write_batches(&db, 0, 20, |w, i| {
                    acked.insert((w, i));
                });
            }
            check(dir.path(), &acked);
        }
    }
}

/// Reopens `dir` and checks every acknowledged batch is there once, and nothing else is
/// there but whole batches that were written.
fn check(dir: &Path, acked: &BTreeSet<(usize, usize)>) {
    let db = Gannet::open_with(EngineConfig {
        background_flush: false,
        ..config(dir)
    })
    .unwrap();
    let snapshot = db.snapshot("crash", "events");
    let Some(snapshot) = snapshot else {
        assert!(acked.is_empty(), "acknowledged writes but no table");
        return;
    };
    let table = snapshot.read_all().unwrap();
    let values = table
        .column_by_name("v")
        .unwrap()
        .as_primitive::<Int64Type>();
    let mut seen = BTreeSet::new();
    for k in 0..values.len() {
        assert!(values.is_valid(k));
        seen.insert(values.value(k));
    }
    for &(w, i) in acked {
        for j in 0..ROWS_PER_BATCH {
            assert!(
                seen.contains(&value(w, i, j)),
                "acknowledged row w{w} batch {i} row {j} is missing"
            );
        }
    }
    // Rows of writes that were durable but not yet acknowledged may be there too, but only
    // whole batches: a write is all or nothing.
    let mut batches: std::collections::BTreeMap<(i64, i64), usize> = Default::default();
    for v in &seen {
        *batches
            .entry((v / 100 / 10_000_000, v / 100 % 10_000_000))
            .or_default() += 1;
    }
    for ((w, i), rows) in batches {
        assert_eq!(
            rows, ROWS_PER_BATCH,
            "batch {i} of writer {w} is partly there"
        );
    }
    // Stored exactly once: the raw rows (segments + buffer, before deduplication) add up.
    let raw: usize = snapshot
        .segments
        .iter()
        .map(|s| s.rows as usize)
        .sum::<usize>()
        + snapshot
            .buffer
            .iter()
            .map(|b| b.batch.num_rows())
            .sum::<usize>();
    assert_eq!(raw, table.num_rows(), "some rows are stored twice");
    db.close().unwrap();
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let trials: usize = std::env::var("GANNET_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let mut acked = BTreeSet::new();
    let mut rng = rand::rng();
    for trial in 0..trials {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash::writer_loop",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(FIRST_ENV, (trial * 100_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        // The kill lands at a random moment after the first acknowledgement: counting from
        // start-up instead would, on a loaded machine, sometimes kill a child that has not
        // written yet and test nothing.
        let run_for = Duration::from_millis(rng.random_range(0..400));
        let mut deadline = Instant::now() + Duration::from_secs(60);
        let mut this_trial = 0;
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let mut parts = rest.split(' ').map(|p| p.parse::<usize>().unwrap());
                acked.insert((parts.next().unwrap(), parts.next().unwrap()));
                if this_trial == 0 {
                    deadline = Instant::now() + run_for;
                }
                this_trial += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            this_trial > 0,
            "trial {trial}: the child acknowledged nothing in 60 s"
        );
        check(dir.path(), &acked);
    }
}
