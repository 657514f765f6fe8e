//! ONNX models inside SQL, with real models: scikit-learn trains them and skl2onnx exports them
//! (tests/python/make_models.py), and Gannet's answers are compared with scikit-learn's, row
//! by row. Embedded through the library here; over psql and HTTP at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use gannet::{Gannet, Precision};

use crate::support::{TestServer, python};

/// The models and data tests/python/make_models.py makes, made once per version of the script
/// and shared by every test (nextest runs each test in its own process).
pub(crate) fn models() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_models.py");
    let source = std::fs::read(&script).unwrap();
    let hash = source.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join(format!("onnx-models-{hash:016x}"));
    if dir.join("expected.csv").exists() {
        return dir;
    }
    let temp = tempfile::tempdir_in(root).unwrap();
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(temp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_models.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test process may have finished first: either copy is the same.
    let made = temp.keep();
    if std::fs::rename(&made, &dir).is_err() {
        std::fs::remove_dir_all(&made).unwrap();
    }
    dir
}

/// scikit-learn's answers, one row per id.
pub(crate) struct Expected {
    pub(crate) rows: Vec<HashMap<String, String>>,
}

impl Expected {
    pub(crate) fn load(dir: &Path) -> Expected {
        let text = std::fs::read_to_string(dir.join("expected.csv")).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows = lines
            .map(|line| {
                header
                    .iter()
                    .zip(line.split(','))
                    .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                    .collect()
            })
            .collect();
        Expected { rows }
    }

    pub(crate) fn f64(&self, row: usize, column: &str) -> f64 {
        self.rows[row][column].parse().unwrap()
    }

    pub(crate) fn i64(&self, row: usize, column: &str) -> i64 {
        self.rows[row][column].parse().unwrap()
    }
}

/// A database `ml` with the feature rows in table `events` and the models in its models dir.
fn open_with_models() -> (tempfile::TempDir, Gannet, PathBuf) {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for name in ["iforest", "gbr", "clf", "fraud", "wide", "zipmap", "multi"] {
        let file = format!("{name}.onnx");
        std::fs::copy(models.join(&file), dir.path().join("models").join(&file)).unwrap();
    }
    let db = Gannet::open(dir.path()).unwrap();
    let rows = std::fs::read(models.join("rows.lp")).unwrap();
    let outcome = db.write_lp("ml", rows, Precision::Second).unwrap();
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    (dir, db, models)
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn one(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

/// `a` equals `b` within float32's precision, relative to the size of the values.
pub(crate) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// The SQLSTATE and message a statement fails with.
pub(crate) fn error(rt: &tokio::runtime::Runtime, db: &Gannet, sql: &str) -> (String, String) {
    let e = rt.block_on(db.sql("ml", sql)).expect_err(sql);
    let gannet::Error::Query(gannet::query::QueryError::DataFusion(e)) = &e else {
        panic!("{sql}: not a query error: {e}");
    };
    (
        gannet::query::error::sqlstate(e).to_owned(),
        gannet::query::error::message(e),
    )
}

#[test]
fn isolation_forest_labels_and_scores_equal_scikit_learns() {
    let (_dir, db, models) = open_with_models();
    let expected = Expected::load(&models);
    let rt = rt();
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT id, onnx_predict('iforest', x1, x2, x3) AS label, \
             onnx_predict_output('iforest', 'scores', x1, x2, x3) AS score \
             FROM events ORDER BY id",
        ))
        .unwrap());
    assert_eq!(batch.num_rows(), expected.rows.len());
    let ids = batch.column(0).as_primitive::<Int64Type>();
    let labels = batch.column(1).as_primitive::<Int64Type>();
    let scores = batch.column(2).as_primitive::<Float64Type>();
    let mut anomalies = 0;
    for row in 0..batch.num_rows() {
        assert_eq!(ids.value(row), row as i64);
        assert_eq!(
            labels.value(row),
            expected.i64(row, "iforest_label"),
            "label of row {row}"
        );
        let want = expected.f64(row, "iforest_score");
        assert!(
            close(scores.value(row), want),
            "row {row}: {} vs {want}",
            scores.value(row)
        );
        anomalies += usize::from(labels.value(row) == -1);
    }
    // The injected anomalies are there to be found.
    assert!(anomalies >= 20, "{anomalies} anomalies");
}

#[test]
fn regressor_and_classifier_equal_scikit_learns() {
    let (_dir, db, models) = open_with_models();
    let expected = Expected::load(&models);
    let rt = rt();
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT onnx_predict('gbr', x1, x2, x3) AS y, onnx_predict('clf', x1, x2, x3) AS class, \
             onnx_predict_output('clf', 'probabilities', x1, x2, x3) AS p, \
             onnx_predict('fraud', x1, x2, x3) AS fraud \
             FROM events ORDER BY id",
        ))
        .unwrap());
    let y = batch.column(0).as_primitive::<Float64Type>();
    let class = batch.column(1).as_primitive::<Int64Type>();
    let p = batch.column(2).as_list::<i32>();
    let fraud = batch.column(3).as_primitive::<Int64Type>();
    for row in 0..batch.num_rows() {
        assert_eq!(
            fraud.value(row),
            expected.i64(row, "fraud_label"),
            "fraud label of row {row}"
        );
        let want = expected.f64(row, "gbr");
        assert!(
            close(y.value(row), want),
            "row {row}: {} vs {want}",
            y.value(row)
        );
        assert_eq!(
            class.value(row),
            expected.i64(row, "clf_label"),
            "class of row {row}"
        );
        let probabilities = p.value(row);
        let probabilities = probabilities.as_primitive::<Float64Type>();
        assert_eq!(probabilities.len(), 3);
        for k in 0..3 {
            let want = expected.f64(row, &format!("clf_p{k}"));
            assert!(close(probabilities.value(k), want), "row {row} p{k}");
        }
    }
}

#[test]
fn features_are_cast_to_each_inputs_type_and_spread_over_inputs() {
    let (_dir, db, _) = open_with_models();
    let rt = rt();
    // `multi` takes a: float32[N,1] and b: int64[N,2]: y = a + 10 b0 + 100 b1.
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT onnx_predict('multi', 1.5, 2, CAST(3 AS INT)) AS y, \
             onnx_predict('multi', id, id, id) AS z FROM events WHERE id < 3 ORDER BY id",
        ))
        .unwrap());
    let y = batch.column(0).as_primitive::<Float64Type>();
    let z = batch.column(1).as_primitive::<Float64Type>();
    assert_eq!(y.values().to_vec(), vec![321.5; 3]);
    assert_eq!(z.values().to_vec(), vec![0.0, 111.0, 222.0]);
    // Eight features into one [N, 8] input.
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT onnx_predict('wide', 1, 0, 0, 0, 0, 0, 0, 0) - onnx_predict('wide', 0, 0, 0, 0, 0, 0, 0, 0) AS w",
        ))
        .unwrap());
    let w = batch.column(0).as_primitive::<Float64Type>().value(0);
    assert!((w - 1.0).abs() < 1e-3, "{w}");
}

#[test]
fn a_row_with_a_null_feature_scores_null() {
    let (_dir, db, _) = open_with_models();
    db.write_lp(
        "ml",
        "gaps,k=a x1=0.5,x2=0.25,x3=1 1\ngaps,k=b x1=0.5,x3=1 2\ngaps,k=c x1=0.5,x2=0.25,x3=1 3\n",
        Precision::Second,
    )
    .unwrap();
    let rt = rt();
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT k, onnx_predict('gbr', x1, x2, x3) AS y, onnx_predict('gbr', x1, NULL, x3) AS n \
             FROM gaps ORDER BY k",
        ))
        .unwrap());
    let y = batch.column(1).as_primitive::<Float64Type>();
    assert!(y.is_valid(0) && y.is_null(1) && y.is_valid(2));
    assert_eq!(y.value(0), y.value(2));
    assert_eq!(batch.column(2).null_count(), 3);
}

#[test]
fn bad_calls_fail_with_errors_that_name_the_model_and_the_problem() {
    let (_dir, db, _) = open_with_models();
    let rt = rt();
    // Each statement, its SQLSTATE, and what its message says.
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "SELECT onnx_predict('nope', x1) FROM events",
            "42704",
            &["model \"nope\" does not exist", "nope.onnx"],
        ),
        (
            "SELECT onnx_predict('iforest', x1, x2) FROM events",
            "42883",
            &["model \"iforest\" takes 3 features (X: float32[?,3]), but 2 were given"],
        ),
        (
            "SELECT onnx_predict('iforest', x1, src, x3) FROM events",
            "42883",
            &["onnx_predict: feature 2 is text; features must be numbers"],
        ),
        (
            "SELECT onnx_predict_output('iforest', 'score', x1, x2, x3) FROM events",
            "22023",
            &[
                "no output \"score\"",
                "label: int64[?,1], scores: float32[?,1]",
            ],
        ),
        (
            "SELECT onnx_predict_output('zipmap', 'output_probability', x1, x2, x3) FROM events",
            "0A000",
            &["zipmap': False"],
        ),
        (
            "SELECT onnx_predict(src, x1, x2, x3) FROM events",
            "42000",
            &["constant string"],
        ),
        (
            "SELECT onnx_predict('iforest')",
            "42883",
            &["takes a model name and features"],
        ),
    ];
    for (sql, want_code, phrases) in cases {
        let (code, message) = error(&rt, &db, sql);
        assert_eq!(&code, want_code, "{sql}: {message}");
        for phrase in *phrases {
            assert!(message.contains(phrase), "{sql}: {message}");
        }
    }

    // A file that is not a model.
    std::fs::write(_dir.path().join("models/broken.onnx"), b"not a model").unwrap();
    let (code, message) = error(&rt, &db, "SELECT onnx_predict('broken', 1.0)");
    assert_eq!(code, "38000");
    assert!(
        message.contains("broken.onnx is not an ONNX model"),
        "{message}"
    );

    // None of it stopped the engine.
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT count(onnx_predict('gbr', x1, x2, x3)) FROM events",
        ))
        .unwrap());
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 2000);
}

#[test]
fn system_models_lists_models_with_their_inputs_outputs_and_use() {
    let (dir, db, _) = open_with_models();
    std::fs::write(dir.path().join("models/broken.onnx"), b"not a model").unwrap();
    let rt = rt();
    rt.block_on(db.sql("ml", "SELECT onnx_predict('gbr', x1, x2, x3) FROM events"))
        .unwrap();
    let batch = one(&rt
        .block_on(db.sql(
            "ml",
            "SELECT name, inputs, outputs, size_bytes, calls, rows_scored FROM system.models \
             ORDER BY name",
        ))
        .unwrap());
    let names: Vec<&str> = batch
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(
        names,
        ["clf", "fraud", "gbr", "iforest", "multi", "wide", "zipmap"]
    );
    let row = names.iter().position(|n| *n == "iforest").unwrap();
    assert_eq!(
        batch.column(1).as_string::<i32>().value(row),
        "X: float32[?,3]"
    );
    assert_eq!(
        batch.column(2).as_string::<i32>().value(row),
        "label: int64[?,1], scores: float32[?,1]"
    );
    let gbr = names.iter().position(|n| *n == "gbr").unwrap();
    assert!(batch.column(4).as_primitive::<Int64Type>().value(gbr) >= 1);
    assert_eq!(batch.column(5).as_primitive::<Int64Type>().value(gbr), 2000);
}

#[test]
fn a_replaced_model_is_used_by_the_next_query_and_a_running_query_keeps_the_old_one() {
    let (dir, db, models) = open_with_models();
    let path = dir.path().join("models/m.onnx");
    std::fs::copy(models.join("gbr.onnx"), &path).unwrap();
    let rt = rt();
    let sql = "SELECT onnx_predict('m', x1, x2, x3) AS y FROM events ORDER BY id";
    let gbr = one(&rt.block_on(db.sql("ml", sql)).unwrap());
    assert_eq!(
        gbr.column(0).data_type(),
        &arrow::datatypes::DataType::Float64
    );

    // A query that is part-way through when the file is replaced finishes with the old model.
    let values = rt.block_on(async {
        let ctx = db.query().session("ml").unwrap();
        ctx.sql("SET datafusion.execution.batch_size = 100")
            .await
            .unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let mut stream = frame.execute_stream().await.unwrap();
        use futures::StreamExt;
        let first = stream.next().await.unwrap().unwrap();
        // Replace the file with the isolation forest (atomically, as a deploy would).
        let staged = dir.path().join("models/.m.tmp");
        std::fs::copy(models.join("iforest.onnx"), &staged).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let mut batches = vec![first];
        while let Some(batch) = stream.next().await {
            batches.push(batch.unwrap());
        }
        one(&batches)
    });
    assert_eq!(values.column(0), gbr.column(0));

    // The next query runs the new model: the forest's labels.
    let labels = one(&rt.block_on(db.sql("ml", sql)).unwrap());
    assert_eq!(
        labels.column(0).data_type(),
        &arrow::datatypes::DataType::Int64
    );

    // A broken replacement leaves the model before it in service.
    std::fs::write(&path, b"half a file").unwrap();
    let still = one(&rt.block_on(db.sql("ml", sql)).unwrap());
    assert_eq!(still.column(0), labels.column(0));

    // A removed model is gone.
    std::fs::remove_file(&path).unwrap();
    let (code, _) = error(&rt, &db, sql);
    assert_eq!(code, "42704");
}

#[test]
fn an_uploaded_model_is_checked_then_stored_whole() {
    let (dir, db, models) = open_with_models();
    let registry: &Arc<_> = db.models();
    let e = registry.put("junk", b"junk".to_vec()).unwrap_err();
    assert!(e.message.contains("is not an ONNX model"), "{e}");
    let e = registry
        .put("../escape", std::fs::read(models.join("gbr.onnx")).unwrap())
        .unwrap_err();
    assert!(e.message.contains("cannot name a model"), "{e}");
    let model = registry
        .put("uploaded", std::fs::read(models.join("gbr.onnx")).unwrap())
        .unwrap();
    assert_eq!(model.path, dir.path().join("models/uploaded.onnx"));
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert!(files.contains(&"uploaded.onnx".to_owned()), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with('.') || f.starts_with("junk")),
        "{files:?}"
    );
    let rt = rt();
    let batch = one(&rt
        .block_on(db.sql("ml", "SELECT onnx_predict('uploaded', 0.5, 0.5, 0.5) AS y"))
        .unwrap());
    assert_eq!(batch.num_rows(), 1);
    assert!(registry.remove("uploaded").unwrap());
    assert!(!registry.remove("uploaded").unwrap());
}

/// Waits until `check` holds, or panics after 20 s with what it last saw.
pub(crate) fn eventually<T: std::fmt::Debug>(
    mut probe: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = probe();
        if check(&seen) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting; last saw {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_server_loads_the_models_dir_and_manages_models_over_http() {
    let models = models();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("models");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(models.join("gbr.onnx"), dir.join("gbr.onnx")).unwrap();
    std::fs::write(dir.join("garbage.onnx"), b"\x00\x01 not a model").unwrap();
    let server = TestServer::start_in(data, &[]);

    // At start: the good model is loaded, the bad file is named in a warning.
    let log = eventually(|| server.log(), |log| log.contains("garbage.onnx"));
    assert!(
        log.contains("WARN") && log.contains("is not an ONNX model"),
        "{log}"
    );
    let (status, body) = server.curl("GET", "/api/v1/models", &[], None);
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "gbr");
    assert_eq!(listed[0]["inputs"][0]["type"], "float32[?,3]");

    // Upload: a bad file is refused (and not stored); a good one is stored and used.
    let (status, body) = server.curl("PUT", "/api/v1/models/junk", &[], Some(b"junk"));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("is not an ONNX model"));
    assert!(!server.data_dir.path().join("models/junk.onnx").exists());
    let iforest = std::fs::read(models.join("iforest.onnx")).unwrap();
    let (status, body) = server.curl("PUT", "/api/v1/models/iforest", &[], Some(&iforest));
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let described: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(described["outputs"][1]["name"], "scores");
    let (status, _) = server.curl("PUT", "/api/v1/models/iforest", &[], Some(&iforest));
    assert_eq!(status, 200);

    // Score over psql and over HTTP.
    let rows = std::fs::read(models.join("rows.lp")).unwrap();
    let (status, _) = server.curl(
        "POST",
        "/api/v3/write_lp?db=ml&precision=s",
        &[],
        Some(&rows),
    );
    assert_eq!(status, 204);
    let (ok, out, err) = server.psql(
        "ml",
        &[
            "-At",
            "-c",
            "SELECT count(*) FROM events WHERE onnx_predict('iforest', x1, x2, x3) = -1",
        ],
    );
    assert!(ok, "{err}");
    let expected = Expected::load(&models);
    let anomalies = (0..expected.rows.len())
        .filter(|row| expected.i64(*row, "iforest_label") == -1)
        .count();
    assert_eq!(out.trim(), anomalies.to_string());
    let (ok, _, err) = server.psql(
        "ml",
        &["-c", "SELECT onnx_predict('iforest', x1) FROM events"],
    );
    assert!(!ok);
    assert!(err.contains("takes 3 features"), "{err}");
    let (status, body) = server.curl(
        "GET",
        "/api/v3/query_sql?db=ml&format=jsonl&q=SELECT%20onnx_predict('gbr',%20x1,%20x2,%20x3)%20AS%20y%20FROM%20events%20WHERE%20id%20%3D%201",
        &[],
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let y: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        close(y["y"].as_f64().unwrap(), expected.f64(1, "gbr")),
        "{y}"
    );

    // A file dropped into the directory is picked up without a restart, and shows in
    // system.models.
    std::fs::copy(
        models.join("clf.onnx"),
        server.data_dir.path().join("models/clf.onnx"),
    )
    .unwrap();
    eventually(
        || {
            server
                .psql(
                    "ml",
                    &["-At", "-c", "SELECT name FROM system.models ORDER BY name"],
                )
                .1
        },
        |names| names.trim() == "clf\ngbr\niforest",
    );

    // Delete: gone from the list, the directory and SQL.
    let (status, _) = server.curl("DELETE", "/api/v1/models/iforest", &[], None);
    assert_eq!(status, 204);
    let (status, _) = server.curl("DELETE", "/api/v1/models/iforest", &[], None);
    assert_eq!(status, 404);
    assert!(!server.data_dir.path().join("models/iforest.onnx").exists());
    let (ok, _, err) = server.psql(
        "ml",
        &[
            "-c",
            "SELECT onnx_predict('iforest', x1, x2, x3) FROM events",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("42704") || err.contains("does not exist"),
        "{err}"
    );
    // The server still serves.
    let (ok, out, _) = server.psql("ml", &["-At", "-c", "SELECT count(*) FROM events"]);
    assert!(ok);
    assert_eq!(out.trim(), "2000");
}

#[test]
fn without_onnx_runtime_the_server_serves_everything_else_and_says_how_to_install_it() {
    let models = models();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("models")).unwrap();
    std::fs::copy(models.join("gbr.onnx"), data.path().join("models/gbr.onnx")).unwrap();
    let missing = data.path().join("no-such/libonnxruntime.so");
    let server =
        TestServer::start_with(data, &[], &[("ORT_DYLIB_PATH", missing.to_str().unwrap())]);
    let log = eventually(
        || server.log(),
        |log| log.contains("ONNX functions are unavailable"),
    );
    assert!(log.contains("scripts/install-onnxruntime"), "{log}");

    let (status, _) = server.curl("POST", "/api/v3/write_lp?db=ml", &[], Some(b"t x=1i 1"));
    assert_eq!(status, 204);
    let (ok, out, _) = server.psql("ml", &["-At", "-c", "SELECT x FROM t"]);
    assert!(ok);
    assert_eq!(out.trim(), "1");
    let (ok, _, err) = server.psql("ml", &["-c", "SELECT onnx_predict('gbr', x, x, x) FROM t"]);
    assert!(!ok);
    assert!(
        err.contains("58P01") || err.contains("scripts/install-onnxruntime"),
        "{err}"
    );
    assert!(err.contains("scripts/install-onnxruntime"), "{err}");
    let (status, body) = server.curl("GET", "/api/v1/models", &[], None);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}
