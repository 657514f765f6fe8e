//! Gannet and DuckDB answer the same TSBS devops queries on the same rows with the same
//! results: half of the rows in Parquet segments, half in Gannet's write buffer; DuckDB
//! (from the project's .venv) loads the same line protocol.

use crate::support::{TestServer, run_python};
use crate::tsbs;

/// Each query as Gannet and as DuckDB take it (the same text unless DuckDB spells it
/// differently).
const QUERIES: &[(&str, &str)] = &[
    // single-groupby-1-1-1
    (
        "SELECT date_trunc('minute', time) AS minute, max(usage_user) AS max_user FROM cpu \
         WHERE hostname = 'host_1' AND time >= '2016-01-01 00:10:00' AND time < '2016-01-01 00:40:00' \
         GROUP BY 1 ORDER BY 1",
        "",
    ),
    // single-groupby-5-1-1
    (
        "SELECT date_trunc('minute', time) AS minute, max(usage_user) AS max_user FROM cpu \
         WHERE hostname IN ('host_0', 'host_2', 'host_4', 'host_6', 'host_8') \
         AND time >= '2016-01-01 00:10:00' AND time < '2016-01-01 00:40:00' GROUP BY 1 ORDER BY 1",
        "",
    ),
    // cpu-max-all-1
    (
        "SELECT time_bucket(INTERVAL '10 minutes', time) AS bucket, max(usage_user), max(usage_system), \
         max(usage_idle), max(usage_nice), max(usage_iowait), max(usage_irq), max(usage_softirq), \
         max(usage_steal), max(usage_guest), max(usage_guest_nice) FROM cpu \
         WHERE hostname = 'host_3' GROUP BY 1 ORDER BY 1",
        "",
    ),
    // double-groupby-1
    (
        "SELECT hostname, time_bucket(INTERVAL '10 minutes', time) AS bucket, avg(usage_user) AS mean \
         FROM cpu GROUP BY 1, 2 ORDER BY 1, 2",
        "",
    ),
    // high-cpu-all
    (
        "SELECT hostname, time, usage_user FROM cpu WHERE usage_user > 90 ORDER BY hostname, time",
        "",
    ),
    // lastpoint
    (
        "SELECT DISTINCT ON (hostname) hostname, region, rack, time, usage_user, usage_system \
         FROM cpu ORDER BY hostname, time DESC",
        "",
    ),
    // groupby-orderby-limit
    (
        "SELECT date_trunc('minute', time) AS minute, max(usage_user) AS max_user FROM cpu \
         WHERE time < '2016-01-01 00:30:00' GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
        "",
    ),
    // Gannet's selectors against DuckDB's arg_min / arg_max.
    (
        "SELECT hostname, first(usage_user, time) AS f, last(usage_user, time) AS l, count(*) AS n \
         FROM cpu GROUP BY hostname ORDER BY hostname",
        "SELECT hostname, arg_min(usage_user, time) AS f, arg_max(usage_user, time) AS l, count(*) AS n \
         FROM cpu GROUP BY hostname ORDER BY hostname",
    ),
];

const COMPARE: &str = r#"
import sys, json, math, datetime, duckdb, psycopg

dsn, lp_path, queries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tags = ["hostname", "region", "datacenter", "rack", "os", "arch", "team", "service",
        "service_version", "service_environment"]
fields = ["usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait", "usage_irq",
          "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice"]
rows = []
for line in open(lp_path):
    series, values, ts = line.split(" ")
    t = dict(kv.split("=") for kv in series.split(",")[1:])
    f = dict(kv.split("=") for kv in values.split(","))
    time = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=int(ts) // 1000)
    rows.append([t[k] for k in tags] + [float(f[k]) for k in fields] + [time])
db = duckdb.connect()
db.execute("CREATE TABLE cpu (" + ", ".join(f"{t} VARCHAR" for t in tags) + ", "
           + ", ".join(f"{f} DOUBLE" for f in fields) + ", time TIMESTAMP)")
db.executemany("INSERT INTO cpu VALUES (" + ", ".join("?" * (len(tags) + len(fields) + 1)) + ")", rows)

def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b

with psycopg.connect(dsn, autocommit=True) as gannet:
    for ours, theirs in queries:
        got = gannet.execute(ours).fetchall()
        want = db.execute(theirs or ours).fetchall()
        assert len(got) > 0, f"no rows: {ours}"
        assert len(got) == len(want), f"{len(got)} rows, DuckDB {len(want)}: {ours}"
        for g, w in zip(got, want):
            assert len(g) == len(w) and all(same(x, y) for x, y in zip(g, w)), f"{ours}\n{g}\n{w}"
print(len(queries), "queries agree")
"#;

#[test]
fn tsbs_queries_agree_with_duckdb() {
    // Ten hosts, one hour: 3,600 rows.
    let lines = tsbs::Generator::new(10, 42).lines(3_600);
    let half = lines.len() / 2;
    let cut = lines[..half].rfind('\n').map_or(0, |i| i + 1);
    let (first, second) = (&lines[..cut], &lines[cut..]);
    assert!(!first.is_empty() && !second.is_empty());

    // The first half is flushed to segments at a clean shutdown; the second stays buffered.
    let server = TestServer::start();
    let (status, _) = server.curl("POST", "/write?db=tsbs", &[], Some(first.as_bytes()));
    assert_eq!(status, 204);
    let (exit, data_dir, log) = server.terminate();
    assert!(exit.success(), "{log}");
    let server = TestServer::start_in(data_dir, &[]);
    let (status, _) = server.curl("POST", "/write?db=tsbs", &[], Some(second.as_bytes()));
    assert_eq!(status, 204);
    let (ok, out, err) = server.psql(
        "tsbs",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT segments > 0 FROM system.tables WHERE table_name = 'cpu'",
        ],
    );
    assert!(ok && out == "t\n", "{out}{err}");

    let lp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(lp.path(), &lines).unwrap();
    let queries: Vec<(&str, &str)> = QUERIES.to_vec();
    let out = run_python(
        COMPARE,
        &[
            &server.dsn("tsbs"),
            lp.path().to_str().unwrap(),
            &serde_json::to_string(&queries).unwrap(),
        ],
    );
    assert_eq!(out.trim(), format!("{} queries agree", QUERIES.len()));
}
