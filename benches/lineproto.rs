//! Line-protocol parse throughput on TSBS cpu-only lines, one core.
//!
//!     cargo bench --bench lineproto

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gannet::storage::lineproto::parse_lines;

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
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
