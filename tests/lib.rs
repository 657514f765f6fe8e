//! Integration tests: real processes, real files, real Parquet readers.

mod crash;
mod import;
mod parquet_readers;
mod sql_cli;
