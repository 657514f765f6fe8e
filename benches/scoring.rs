//! Scoring at ingest: ingest with and without a scoring rule on the table, the latency from a
//! write's acknowledgement to its alert, and a per-event consumer (Python, onnxruntime, one
//! predict per event, as the common tutorial does) on the same stream, in one run.
//!
//!     scripts/setup && cargo bench --bench scoring
//!
//! Embedded (the library's write path: parse, WAL fsync, buffer). A writer offers
//! SCORING_RATE rows/s (default 100,000) for SCORING_SECONDS (10) in writes of 1,000 rows,
//! first with no rule, then, for each model of SCORING_MODELS (default `fraud,iforest`),
//! with `CREATE SCORING RULE odd_<model> ON events USING onnx_predict('<model>', x1, x2, x3)
//! WHERE score = <the far-off label>`. The models are tests/python/make_models.py's: `fraud`
//! a GradientBoostingClassifier (30 trees of depth 3, a fraud score's usual size), `iforest`
//! an IsolationForest of 100 trees, which ONNX Runtime runs as a graph of 2,710 nodes. Every
//! write carries one far-off row that both flag; its alert's latency is measured from the
//! write's acknowledgement to the alert's publication (the alert row is durable by then: it
//! is published after it is written).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gannet::{Gannet, Precision};
use rand::{Rng, SeedableRng};

#[path = "common/harness.rs"]
mod harness;
use harness::env_or;

const BATCH: usize = 1_000;

/// One write of `BATCH` rows at second `t`: normal rows (as the model was trained on) and,
/// last, one anomaly.
fn write_body(rng: &mut impl Rng, t: u64) -> String {
    let mut body = String::with_capacity(BATCH * 80);
    let mut normal = || {
        // The mean of three uniforms: near N(0, 1/3), well inside the training data.
        (0..3).map(|_| rng.random_range(-1.7..1.7f32)).sum::<f32>() / 3.0
    };
    for i in 0..BATCH - 1 {
        body.push_str(&format!(
            "events,src=s{} x1={:.4},x2={:.4},x3={:.4} {t}\n",
            i,
            normal(),
            normal(),
            normal(),
        ));
    }
    body.push_str(&format!("events,src=anomaly x1=30,x2=30,x3=30 {t}\n"));
    body
}

struct Run {
    rows: usize,
    elapsed: Duration,
    ack_p50: Duration,
    ack_p99: Duration,
    alert_latencies: Vec<Duration>,
}

/// Offers `rate` rows/s for `seconds`; returns what was ingested and, with a rule, the
/// latency of each write's alert.
fn run(db: &Gannet, rate: usize, seconds: usize, first_t: u64, rule: Option<&str>) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut alerts = db.query().scoring().subscribe();
    let writes = rate * seconds / BATCH;
    let interval = Duration::from_secs_f64(BATCH as f64 / rate as f64);
    let bodies: Vec<String> = (0..writes)
        .map(|w| write_body(&mut rng, first_t + w as u64))
        .collect();
    let mut acked_at: Vec<Option<Instant>> = vec![None; writes];
    let done = Arc::new(AtomicBool::new(false));
    // Alerts are collected on their own thread while the writer writes.
    let collector = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                loop {
                    match tokio::time::timeout(Duration::from_millis(200), alerts.recv()).await {
                        Ok(Ok(alert)) => {
                            let injected =
                                alert.tags.iter().any(|(k, v)| k == "src" && v == "anomaly");
                            if injected {
                                seen.push((alert.time, Instant::now()));
                            }
                        }
                        Ok(Err(_)) => break,
                        Err(_) if done.load(Ordering::Acquire) => break,
                        Err(_) => {}
                    }
                }
            });
            seen
        })
    };
    let mut acks = Vec::with_capacity(writes);
    let started = Instant::now();
    for (w, body) in bodies.iter().enumerate() {
        let due = started + interval * w as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        db.write_lp("bench", body, Precision::Second).unwrap();
        let acked = Instant::now();
        acks.push(acked - sent);
        acked_at[w] = Some(acked);
    }
    let elapsed = started.elapsed();
    // Alerts still being scored get up to 30 s.
    if let Some(rule) = rule {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let scored = db.query().scoring().stats("bench", rule);
            if scored.rows.load(Ordering::Relaxed) as usize >= writes * BATCH {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    done.store(true, Ordering::Release);
    let seen = collector.join().unwrap();
    let alert_latencies = seen
        .into_iter()
        .filter_map(|(time, at)| {
            let w = (time / 1_000_000_000) as u64;
            let w = w.checked_sub(first_t)? as usize;
            Some(at - acked_at.get(w).copied().flatten()?)
        })
        .collect();
    acks.sort();
    Run {
        rows: writes * BATCH,
        elapsed,
        ack_p50: acks[acks.len() / 2],
        ack_p99: acks[acks.len() * 99 / 100],
        alert_latencies,
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A model the benchmark scores with, and the rule's condition that flags the far-off row.
struct Model {
    name: &'static str,
    condition: &'static str,
    what: &'static str,
}

const MODELS: [Model; 2] = [
    Model {
        name: "fraud",
        condition: "score = 1",
        what: "GradientBoostingClassifier, 30 trees of depth 3",
    },
    Model {
        name: "iforest",
        condition: "score = -1",
        what: "IsolationForest, 100 trees",
    },
];

fn main() {
    let rate = env_or("SCORING_RATE", 100_000);
    let seconds = env_or("SCORING_SECONDS", 10);
    let wanted = std::env::var("SCORING_MODELS").unwrap_or_else(|_| "fraud,iforest".into());
    let wanted: Vec<&Model> = wanted
        .split(',')
        .map(|name| {
            MODELS
                .iter()
                .find(|m| m.name == name.trim())
                .unwrap_or_else(|| panic!("SCORING_MODELS: no model {name}"))
        })
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = root.join("target/onnx-bench-models");
    if MODELS
        .iter()
        .any(|m| !models.join(format!("{}.onnx", m.name)).exists())
    {
        let status = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/python/make_models.py"))
            .arg(&models)
            .status()
            .expect("run scripts/setup first");
        assert!(status.success());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for model in &wanted {
        let file = format!("{}.onnx", model.name);
        std::fs::copy(models.join(&file), dir.path().join("models").join(&file)).unwrap();
    }
    let db = Gannet::open(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // Warm up: the table exists and the models are loaded.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    db.write_lp("bench", write_body(&mut rng, 1), Precision::Second)
        .unwrap();
    println!("offered {rate} rows/s for {seconds} s, writes of {BATCH} rows\n");
    let plain = run(&db, rate, seconds, 1_000, None);
    let mut runs = vec![("no rule".to_owned(), plain)];
    let mut first_t = 1_000_000;
    for model in &wanted {
        let rule = format!("odd_{}", model.name);
        runtime
            .block_on(db.sql(
                "bench",
                &format!(
                    "CREATE SCORING RULE {rule} ON events \
                     USING onnx_predict('{}', x1, x2, x3) WHERE {}",
                    model.name, model.condition
                ),
            ))
            .unwrap();
        let scored = run(&db, rate, seconds, first_t, Some(&rule));
        runtime
            .block_on(db.sql("bench", &format!("DROP SCORING RULE {rule}")))
            .unwrap();
        first_t += 1_000_000;

        let mut latencies = scored.alert_latencies.clone();
        latencies.sort();
        let writes = scored.rows / BATCH;
        println!(
            "{} ({}): ack to alert (published after its row is written): {} of {writes} injected anomalies alerted, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            model.name,
            model.what,
            latencies.len(),
            percentile(&latencies, 50).as_secs_f64() * 1e3,
            percentile(&latencies, 99).as_secs_f64() * 1e3,
            latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1e3),
        );
        let stats = db.query().scoring().stats("bench", &rule);
        let (model_runs, model_rows) = db.models().get(model.name).unwrap().usage();
        println!(
            "  rows scored: {}, alerts: {}; the model ran {model_runs} times on {model_rows} rows",
            stats.rows.load(Ordering::Relaxed),
            stats.alerts.load(Ordering::Relaxed)
        );
        runs.push((format!("rule with {}", model.name), scored));
    }

    println!("\n| | rows/s ingested | ack p50 | ack p99 |");
    println!("|---|---|---|---|");
    for (name, r) in &runs {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms |",
            r.rows as f64 / r.elapsed.as_secs_f64(),
            r.ack_p50.as_secs_f64() * 1e3,
            r.ack_p99.as_secs_f64() * 1e3,
        );
    }

    // The per-event consumer: the same stream, one onnxruntime predict per event.
    let consumer = r#"
import sys, time, numpy as np, onnxruntime as rt
s = rt.InferenceSession(sys.argv[1])
rng = np.random.default_rng(7)
X = rng.uniform(-2, 2, size=(int(sys.argv[2]), 3)).astype(np.float32)
latencies = []
start = time.perf_counter()
for row in X:
    t = time.perf_counter()
    label = s.run(["label"], {"X": row.reshape(1, 3)})[0]
    latencies.append(time.perf_counter() - t)
elapsed = time.perf_counter() - start
latencies.sort()
print(f"{len(X) / elapsed:.0f} {latencies[len(latencies) // 2] * 1e3:.2f} {latencies[len(latencies) * 99 // 100] * 1e3:.2f}")
"#;
    let events = env_or("SCORING_CONSUMER_EVENTS", 5_000);
    println!();
    for model in &wanted {
        let out = Command::new(root.join(".venv/bin/python"))
            .args(["-c", consumer])
            .arg(models.join(format!("{}.onnx", model.name)))
            .arg(events.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let parts: Vec<&str> = text.split_whitespace().collect();
        if let [rate_out, p50, p99] = parts.as_slice() {
            println!(
                "per-event consumer, {} (Python onnxruntime, one predict per event, {events} events): {rate_out} events/s, predict p50 {p50} ms, p99 {p99} ms",
                model.name
            );
        } else {
            println!(
                "per-event consumer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    db.close().unwrap();
}
