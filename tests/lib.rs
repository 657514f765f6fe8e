//! Integration tests: real processes, real files, real Parquet readers.

mod crash;
mod parquet_readers;
