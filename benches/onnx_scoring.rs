//! `onnx_predict` end to end in SQL, side by side with raw ONNX Runtime running the same model
//! on the same rows as one tensor in the same process (the limit), and with scoring one row
//! per run, as a per-event consumer does.
//!
//!     scripts/setup && cargo bench --bench onnx_scoring
//!
//! The models are tests/python/make_models.py's: an IsolationForest (100 trees) and a
//! GradientBoostingRegressor (50 trees of depth 3), each on 3 float features. ONNX_ROWS
//! (default 1,000,000) rows, from 100 sources one row per second each, are written to an
//! embedded Gannet and flushed to Parquet;
//! ONNX_RUNS (3) timed runs follow a warm-up, and the table shows medians. Per-row scoring
//! runs on the first ONNX_PER_ROW (200,000) rows, for at most 5 seconds, and is reported as a
//! rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use gannet::{Gannet, Precision};
use ort::session::Session;
use ort::value::Tensor;
use rand::{Rng, SeedableRng};

#[path = "common/harness.rs"]
mod harness;
use harness::env_or;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The test models, made by the same script the tests use.
fn make_models() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/onnx-bench-models");
    if !dir.join("iforest.onnx").exists() {
        let status = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/python/make_models.py"))
            .arg(&dir)
            .status()
            .expect("run scripts/setup first: it installs scikit-learn and skl2onnx into .venv");
        assert!(status.success(), "make_models.py failed");
    }
    dir
}

fn main() {
    let rows = env_or("ONNX_ROWS", 1_000_000);
    let runs = env_or("ONNX_RUNS", 3);
    let per_row = env_or("ONNX_PER_ROW", 200_000).min(rows);
    let models = make_models();

    // The rows: three float32-exact features.
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let features: Vec<[f32; 3]> = (0..rows)
        .map(|_| std::array::from_fn(|_| rng.random_range(-3.0f32..3.0)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for model in ["iforest", "gbr"] {
        let file = format!("{model}.onnx");
        std::fs::copy(models.join(&file), dir.path().join("models").join(&file)).unwrap();
    }
    let db = Gannet::open(dir.path()).unwrap();
    // 100 sources, one row each per second: windows of tens of thousands of rows.
    for (chunk_index, chunk) in features.chunks(100_000).enumerate() {
        let mut body = String::new();
        for (i, [a, b, c]) in chunk.iter().enumerate() {
            let n = chunk_index * 100_000 + i;
            body.push_str(&format!(
                "events,src=s{} x1={},x2={},x3={} {}\n",
                n % 100,
                f64::from(*a),
                f64::from(*b),
                f64::from(*c),
                n / 100
            ));
        }
        db.write_lp("ml", body, Precision::Second).unwrap();
    }
    db.flush().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let threads = gannet::query::onnx::default_threads();
    let environment = gannet::query::onnx::runtime::environment().unwrap();

    println!("{rows} rows x 3 features, {threads} cores, median of {runs} runs\n");
    println!(
        "| model | Gannet SQL | raw ONNX Runtime, one tensor | SQL / raw | per-row runs | batch speed-up over per-row |"
    );
    println!("|---|---|---|---|---|---|");
    let scan = {
        let sql = "SELECT sum(x1 + x2 + x3) FROM events";
        runtime.block_on(db.sql("ml", sql)).unwrap();
        median(
            (0..runs)
                .map(|_| {
                    let started = Instant::now();
                    runtime.block_on(db.sql("ml", sql)).unwrap();
                    started.elapsed()
                })
                .collect(),
        )
    };
    for (model, output) in [("iforest", "scores"), ("gbr", "variable")] {
        // Gannet: SQL over the table, summing the scores so every row is scored.
        let sql = format!(
            "SELECT sum(onnx_predict_output('{model}', '{output}', x1, x2, x3)) FROM events"
        );
        let answer = |batches: Vec<arrow::array::RecordBatch>| {
            batches[0].column(0).as_primitive::<Float64Type>().value(0)
        };
        let sql_sum = answer(runtime.block_on(db.sql("ml", &sql)).unwrap());
        if std::env::var_os("ONNX_EXPLAIN").is_some() {
            let plan = runtime
                .block_on(db.sql("ml", &format!("EXPLAIN ANALYZE {sql}")))
                .unwrap();
            println!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&plan).unwrap()
            );
        }
        let sql_time = median(
            (0..runs)
                .map(|_| {
                    let started = Instant::now();
                    runtime.block_on(db.sql("ml", &sql)).unwrap();
                    started.elapsed()
                })
                .collect(),
        );

        // Raw ONNX Runtime: the same model, the same rows as one [N, 3] tensor, on a session
        // with a thread per core.
        let bytes = std::fs::read(models.join(format!("{model}.onnx"))).unwrap();
        let session_with = |threads: usize| {
            Session::builder(environment)
                .unwrap()
                .with_intra_threads(threads)
                .unwrap()
                .commit_from_memory(&bytes)
                .unwrap()
        };
        let mut session = session_with(threads);
        let flat: Vec<f32> = features.iter().flatten().copied().collect();
        let mut raw = || {
            let input = Tensor::from_array(([rows, 3], flat.clone())).unwrap();
            let started = Instant::now();
            let outputs = session.run(ort::inputs!["X" => input]).unwrap();
            let (_, scores) = outputs[output].try_extract_tensor::<f32>().unwrap();
            let sum: f64 = scores.iter().map(|s| f64::from(*s)).sum();
            (started.elapsed(), sum)
        };
        let (_, raw_sum) = raw();
        let raw_time = median((0..runs).map(|_| raw().0).collect());
        assert!(
            (raw_sum - sql_sum).abs() <= 1e-6 * raw_sum.abs().max(1.0) * rows as f64,
            "{model}: SQL sum {sql_sum} vs raw {raw_sum}"
        );

        // Per-row: one run per row, as a consumer scoring each event does (on a session with
        // one thread, which is faster for one row than spreading it over threads).
        let mut session = session_with(1);
        let started = Instant::now();
        let mut scored = 0u32;
        for row in &features[..per_row] {
            let input = Tensor::from_array(([1usize, 3], row.to_vec())).unwrap();
            let outputs = session.run(ort::inputs!["X" => input]).unwrap();
            std::hint::black_box(outputs[output].try_extract_tensor::<f32>().unwrap());
            scored += 1;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        let per_row_time = started.elapsed() / scored;
        let batch_per_row = sql_time / rows as u32;

        println!(
            "| {model} | {:.2} s ({:.0} k rows/s) | {:.2} s ({:.0} k rows/s) | {:.2}x | {:.0} µs/row ({:.1} k rows/s) | {:.0}x |",
            sql_time.as_secs_f64(),
            rows as f64 / sql_time.as_secs_f64() / 1e3,
            raw_time.as_secs_f64(),
            rows as f64 / raw_time.as_secs_f64() / 1e3,
            sql_time.as_secs_f64() / raw_time.as_secs_f64(),
            per_row_time.as_secs_f64() * 1e6,
            1e-3 / per_row_time.as_secs_f64(),
            per_row_time.as_secs_f64() / batch_per_row.as_secs_f64(),
        );
    }
    println!(
        "\nThe same scan without a model (`SELECT sum(x1 + x2 + x3) FROM events`): {:.3} s",
        scan.as_secs_f64()
    );
}
