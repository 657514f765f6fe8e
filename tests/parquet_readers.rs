//! Segments are plain Parquet: pyarrow (installed by scripts/setup into .venv) reads them.

use std::process::Command;

use gannet::{EngineConfig, Gannet, Precision};

use crate::support::python;

#[test]
fn pyarrow_reads_segments() {
    let dir = tempfile::tempdir().unwrap();
    let db = Gannet::open_with(EngineConfig::test_config(dir.path())).unwrap();
    let body = "cpu,host=b,region=eu usage=2.5,count=7i,ok=true,note=\"x\" 1700000000\n\
                cpu,host=a,region=eu usage=1.5,count=3i,ok=false 1700000000\n\
                cpu,host=a,region=eu usage=9.5 1700000001\n";
    assert_eq!(db.write_lp("m", body, Precision::Second).unwrap().rows, 3);
    db.flush().unwrap();
    let segments = db.snapshot("m", "cpu").unwrap().segments;
    assert_eq!(segments.len(), 1);
    let path = dir.path().join(&segments[0].path);

    let script = r#"
import sys, json, pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
t = f.read()
md = f.metadata.row_group(0)
print(json.dumps({
    "columns": t.column_names,
    "host": [str(v) for v in t.column("host").to_pylist()],
    "usage": t.column("usage").to_pylist(),
    "count": t.column("count").to_pylist(),
    "time": [v.value for v in t.column("time")],
    "compression": md.column(0).compression,
    "sorting": [c.column_index for c in (md.sorting_columns or [])],
    "has_stats": md.column(t.column_names.index("time")).statistics is not None,
}))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["columns"],
        serde_json::json!(["host", "region", "count", "note", "ok", "usage", "time"])
    );
    // Sorted by tags (host, region), then time.
    assert_eq!(got["host"], serde_json::json!(["a", "a", "b"]));
    assert_eq!(got["usage"], serde_json::json!([1.5, 9.5, 2.5]));
    assert_eq!(got["count"], serde_json::json!([3, null, 7]));
    assert_eq!(
        got["time"],
        serde_json::json!([
            1_700_000_000_000_000_000i64,
            1_700_000_001_000_000_000i64,
            1_700_000_000_000_000_000i64
        ])
    );
    assert_eq!(got["compression"], "ZSTD");
    assert_eq!(got["sorting"], serde_json::json!([0, 1, 6]));
    assert_eq!(got["has_stats"], true);
}
