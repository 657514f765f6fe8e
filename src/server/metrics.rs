//! The server's counters, rendered in the Prometheus text format on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gannet_query::QueryEngine;
use gannet_storage::Engine;

/// Upper bounds (seconds) of the query latency histogram's buckets.
const QUERY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub write_requests: AtomicU64,
    pub write_bytes: AtomicU64,
    pub rows_written: AtomicU64,
    pub lines_rejected: AtomicU64,
    pub write_errors: AtomicU64,
    queries: Histogram,
    pub query_errors: AtomicU64,
    pub auth_failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; QUERY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in QUERY_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn query_done(&self, elapsed: Duration, ok: bool) {
        self.queries.observe(elapsed);
        if !ok {
            self.query_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of these counters and of the engine's state.
    pub fn render(&self, engine: &Engine, query: &QueryEngine) -> String {
        let mut out = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let wal = engine.wal_stats();
        let counters = [
            (
                "gannet_write_requests_total",
                "Line-protocol write requests received over HTTP.",
                get(&self.write_requests),
            ),
            (
                "gannet_write_bytes_total",
                "Bytes of line protocol received (after decompression).",
                get(&self.write_bytes),
            ),
            (
                "gannet_rows_written_total",
                "Rows written and acknowledged.",
                get(&self.rows_written),
            ),
            (
                "gannet_lines_rejected_total",
                "Line-protocol lines rejected as invalid.",
                get(&self.lines_rejected),
            ),
            (
                "gannet_write_errors_total",
                "Write requests that failed as a whole.",
                get(&self.write_errors),
            ),
            (
                "gannet_wal_records_total",
                "Records appended to the write-ahead log.",
                wal.records,
            ),
            (
                "gannet_wal_bytes_total",
                "Bytes appended to the write-ahead log.",
                wal.bytes,
            ),
            (
                "gannet_query_errors_total",
                "Queries over HTTP that failed.",
                get(&self.query_errors),
            ),
            (
                "gannet_http_auth_failures_total",
                "HTTP requests refused for a missing, unknown or insufficient token.",
                get(&self.auth_failures),
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut out, name, help, value);
        }
        let _ = writeln!(
            out,
            "# HELP gannet_wal_fsync_seconds Time spent in WAL fsyncs.\n\
             # TYPE gannet_wal_fsync_seconds summary\n\
             gannet_wal_fsync_seconds_sum {}\n\
             gannet_wal_fsync_seconds_count {}",
            wal.fsync_nanos_total as f64 / 1e9,
            wal.fsyncs
        );
        gauge(
            &mut out,
            "gannet_wal_fsync_max_seconds",
            "The longest WAL fsync so far.",
            wal.fsync_nanos_max as f64 / 1e9,
        );

        let buffer = engine.buffer_stats();
        gauge(
            &mut out,
            "gannet_buffer_bytes",
            "Bytes held by the in-memory write buffer.",
            buffer.bytes as f64,
        );
        gauge(
            &mut out,
            "gannet_buffer_rows",
            "Rows held by the in-memory write buffer.",
            buffer.rows as f64,
        );
        gauge(
            &mut out,
            "gannet_wal_files",
            "Write-ahead log files on disk.",
            buffer.wal_files as f64,
        );
        let (running, kept) = query.memory_held();
        gauge(
            &mut out,
            "gannet_query_memory_bytes",
            "Bytes reserved by running queries in the query memory pool.",
            running as f64,
        );
        gauge(
            &mut out,
            "gannet_kept_merge_bytes",
            "Bytes of merged buffer and segment data kept for later queries.",
            kept as f64,
        );
        memory(&mut out);
        let catalog = engine.catalog();
        let (tables, segments, segment_bytes) = catalog
            .databases
            .values()
            .flat_map(|db| db.tables.values())
            .fold((0u64, 0u64, 0u64), |(t, s, b), table| {
                let bytes: u64 = table.segments.iter().map(|s| s.bytes).sum();
                (t + 1, s + table.segments.len() as u64, b + bytes)
            });
        gauge(
            &mut out,
            "gannet_databases",
            "Databases.",
            catalog.databases.len() as f64,
        );
        gauge(&mut out, "gannet_tables", "Tables.", tables as f64);
        gauge(
            &mut out,
            "gannet_segments",
            "Parquet segments.",
            segments as f64,
        );
        gauge(
            &mut out,
            "gannet_segment_bytes",
            "Bytes of Parquet segments.",
            segment_bytes as f64,
        );

        let _ = writeln!(
            out,
            "# HELP gannet_query_duration_seconds Time to answer a query over HTTP.\n\
             # TYPE gannet_query_duration_seconds histogram"
        );
        for (bound, bucket) in QUERY_BUCKETS.iter().zip(&self.queries.buckets) {
            let _ = writeln!(
                out,
                "gannet_query_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.queries.count);
        let _ = writeln!(
            out,
            "gannet_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             gannet_query_duration_seconds_sum {}\n\
             gannet_query_duration_seconds_count {count}",
            get(&self.queries.sum_nanos) as f64 / 1e9
        );
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The process's resident memory and, with glibc, what its heap holds in use and free.
/// The limits account for the buffer and the query gauges; the resident size beyond them
/// is everything else.
fn memory(out: &mut String) {
    if let Some(resident) = super::memory::resident_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            resident as f64,
        );
    }
    if let Some(heap) = super::memory::heap() {
        gauge(
            out,
            "gannet_heap_allocated_bytes",
            "Bytes the memory allocator has handed out and not had back.",
            heap.allocated as f64,
        );
        gauge(
            out,
            "gannet_heap_free_bytes",
            "Bytes the memory allocator holds free for reuse.",
            heap.free as f64,
        );
    }
}
