//! The examples work against the real server: the Python client, and every query of the
//! Grafana dashboard, expanded as Grafana expands its macros.

use std::process::Command;

use crate::support::{TestServer, python};
use crate::tsbs;

/// Runs a Python example against a fresh server; returns what it printed.
fn run_example(name: &str) -> String {
    let server = TestServer::start();
    let example = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(example)
        .env("GANNET_HTTP", server.url(""))
        .env("GANNET_PG", server.pg.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_client_example_writes_and_queries() {
    let stdout = run_example("python_client.py");
    assert!(stdout.starts_with("wrote 180 points\n"), "{stdout}");
    assert_eq!(stdout.matches(" 60 points ").count(), 3, "{stdout}");
}

/// Expands Grafana's PostgreSQL macros the way Grafana does before it sends a query.
fn expand_grafana_macros(sql: &str) -> String {
    sql.replace(
        "$__timeGroupAlias(time, $__interval)",
        "floor(extract(epoch from time)/60)*60 AS \"time\"",
    )
    .replace(
        "$__timeFilter(time)",
        "time BETWEEN '2016-01-01T00:00:00Z' AND '2016-01-01T01:00:00Z'",
    )
    .replace("$host", "'host_0','host_1'")
}

#[test]
fn every_grafana_dashboard_query_runs() {
    let server = TestServer::start();
    // Three hosts, five minutes of TSBS cpu-only points from 2016-01-01T00:00:00Z.
    let body = tsbs::Generator::new(3, 1).lines(90);
    let (status, out) = server.curl("POST", "/write?db=tsbs", &[], Some(body.as_bytes()));
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&out));

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana/tsbs-cpu-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = vec![
        dashboard["templating"]["list"][0]["query"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push(target["rawSql"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(queries.len(), 5);
    for query in queries {
        let sql = expand_grafana_macros(&query);
        let (ok, out, err) = server.psql("tsbs", &["-A", "-t", "-c", &sql]);
        assert!(ok && err.is_empty(), "{sql}\n{err}");
        assert!(!out.trim().is_empty(), "no rows for:\n{sql}");
    }
}

#[test]
fn anomaly_detection_example_uploads_scores_and_hears_its_alert() {
    let stdout = run_example("anomaly_detection.py");
    assert!(
        stdout.starts_with("uploaded cpu_iforest -> 201\nwrote 180 points\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alert: cpu_odd db-1 2023-11-14T23:13:20Z score -1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alerts table: [('db-1', 'cpu_odd', -1.0)]"),
        "{stdout}"
    );
}
