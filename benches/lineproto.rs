//! Line-protocol parse throughput on TSBS cpu-only lines, one core; and parse + validate
//! (catalog checks and Arrow batch building, what a write does before its WAL record),
//! on the same core, without the WAL's fsync.
//!
//!     cargo bench --bench lineproto

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::RwLock;

use gannet::storage::catalog::Catalog;
use gannet::storage::lineproto::parse_lines;
use gannet::storage::validate::validate;
use gannet::storage::{Precision, WriteLimits};

#[path = "common/tsbs.rs"]
mod tsbs;

fn parse(c: &mut Criterion) {
    let body = tsbs::Generator::new(100, 1).lines(10_000);
    let mut group = c.benchmark_group("lineproto");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_tsbs_cpu_10k_lines", |b| {
        b.iter(|| {
            let mut fields = 0;
            for line in parse_lines(body.as_bytes()) {
                fields += line.expect("generated lines are valid").fields.len();
            }
            assert_eq!(fields, 100_000);
        })
    });
    // A write of 5,000 lines, as the ingest benchmark sends, into a table that exists.
    let write = tsbs::Generator::new(1000, 1).lines(5_000);
    let catalog = RwLock::new(Catalog::default());
    let limits = WriteLimits::default();
    let run = |body: &str| {
        validate(
            &catalog,
            "bench",
            body.as_bytes(),
            Precision::Nanosecond,
            0,
            &limits,
        )
        .unwrap()
    };
    run(&write);
    group.throughput(Throughput::Bytes(write.len() as u64));
    group.bench_function("parse_validate_tsbs_cpu_5k_lines", |b| {
        b.iter(|| assert_eq!(run(&write).rows, 5_000))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
