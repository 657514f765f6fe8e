//! Integration tests: real processes, real files, real clients.

mod support;

mod crash;
mod examples;
mod http_api;
mod import;
mod parquet_readers;
mod pg_wire;
mod serve;
mod sql_cli;
