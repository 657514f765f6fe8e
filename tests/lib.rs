//! Integration tests: real processes, real files, real clients.

mod support;
/// The TSBS cpu-only generator the benchmarks use.
#[allow(dead_code)]
#[path = "../benches/common/tsbs.rs"]
mod tsbs;

mod crash;
mod duckdb_compare;
mod examples;
mod faults;
mod hostile;
mod http_api;
mod import;
mod limits;
mod onnx;
mod parquet_readers;
mod pg_wire;
mod scoring;
mod security;
mod serve;
mod sql_cli;
