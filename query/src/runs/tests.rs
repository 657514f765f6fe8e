use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use super::*;

#[test]
fn runs_are_found_only_where_they_are_long_enough() {
    let mut runs = Runs::default();
    let long: Vec<usize> = (0..100).map(|row| row / 10).collect();
    assert!(runs.find(&long));
    assert_eq!(runs.starts, (0..10).map(|run| run * 10).collect::<Vec<_>>());
    assert_eq!(runs.groups, (0..10).collect::<Vec<_>>());
    assert_eq!(runs.lengths(100).collect::<Vec<_>>(), vec![10; 10]);

    // Groups that alternate, as rows in arrival order do, are left to the accumulator.
    let alternating: Vec<usize> = (0..100).map(|row| row % 7).collect();
    assert!(!runs.find(&alternating));
    assert!(runs.starts.is_empty());
    // So is a batch too small to be worth it.
    assert!(!runs.find(&[3; MIN_ROWS - 1]));
    // A group that comes back later is a new run.
    let back: Vec<usize> = [vec![1; 40], vec![2; 40], vec![1; 40]].concat();
    assert!(runs.find(&back));
    assert_eq!(runs.groups, vec![1, 2, 1]);
    assert_eq!(
        runs.ranges(120).collect::<Vec<_>>(),
        vec![(0, 40), (40, 80), (80, 120)]
    );
}

#[test]
fn a_run_folds_to_its_partial_state() {
    let mut runs = Runs::default();
    assert!(runs.find(&[vec![0; 50], vec![1; 30]].concat()));
    let values: Vec<f64> = (0..80).map(f64::from).collect();
    let values: ArrayRef = Arc::new(Float64Array::from(values));

    let avg = Fold::Avg.state(&values, &runs).unwrap();
    assert_eq!(avg[0].as_primitive::<UInt64Type>().values(), &[50, 30]);
    // 0 + ... + 49 and 50 + ... + 79.
    assert_eq!(
        avg[1].as_primitive::<Float64Type>().values(),
        &[1225.0, 1935.0]
    );
    let sum = Fold::Sum.state(&values, &runs).unwrap();
    assert_eq!(
        sum[0].as_primitive::<Float64Type>().values(),
        &[1225.0, 1935.0]
    );

    // Types the fold does not build a state for are left alone.
    let integers: ArrayRef = Arc::new(Int64Array::from((0..80).collect::<Vec<i64>>()));
    assert!(Fold::Avg.state(&integers, &runs).is_none());
    assert!(Fold::Sum.state(&integers, &runs).is_none());
}

/// One group's rows, in a run: its group key, how many rows, and whether they hold nulls.
fn table(runs: &[(i64, usize, bool)], seed: u64) -> RecordBatch {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift: values that vary without a generator per row from proptest.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut g, mut v, mut i, mut t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(group, rows, nulls) in runs {
        for row in 0..rows {
            g.push(group);
            let random = next();
            let value = (random % 2_000_001) as f64 / 1000.0 - 1000.0;
            v.push((!(nulls && random % 3 == 0)).then_some(value));
            i.push((random >> 20) as i64 - (1 << 42));
            t.push(
                1_600_000_000_000_000_000 + row as i64 * 10_000_000_000 + (random % 1000) as i64,
            );
        }
    }
    let schema = Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
        Field::new("i", DataType::Int64, false),
        Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(g)),
            Arc::new(Float64Array::from(v)),
            Arc::new(Int64Array::from(i)),
            Arc::new(TimestampNanosecondArray::from(t)),
        ],
    )
    .unwrap()
}

/// The query's answer, one row per group: floats as numbers (sums folded four lanes at a
/// time add in another order, so they are compared within a relative 1e-9), the rest as
/// text.
async fn answer(batch: &RecordBatch, folding: bool) -> Vec<Vec<Cell>> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    if folding {
        register(&ctx);
    }
    let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    let sql = "SELECT g, avg(v), sum(v), min(v), max(v), min(i), max(i), min(t), max(t), \
               count(v) FROM t GROUP BY g ORDER BY g";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut lines = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<Cell> = batch
                .columns()
                .iter()
                .map(
                    |column| match ScalarValue::try_from_array(column, row).unwrap() {
                        ScalarValue::Float64(Some(x)) => Cell::Float(x),
                        other => Cell::Text(other.to_string()),
                    },
                )
                .collect();
            lines.push(cells);
        }
    }
    lines
}

fn same_answers(runs: &[(i64, usize, bool)], seed: u64) {
    let batch = table(runs, seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (folded, plain) =
        runtime.block_on(async { (answer(&batch, true).await, answer(&batch, false).await) });
    let same = folded.len() == plain.len()
        && folded.iter().zip(&plain).all(|(a, b)| {
            a.len() == b.len()
                && a.iter().zip(b).all(|pair| match pair {
                    (Cell::Float(x), Cell::Float(y)) => {
                        (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
                    }
                    (x, y) => x == y,
                })
        });
    assert!(same, "folded {folded:?}\nplain {plain:?}");
}

#[derive(Debug, PartialEq)]
enum Cell {
    Float(f64),
    Text(String),
}

#[test]
fn sorted_groups_aggregate_as_datafusion_does() {
    // Long runs, a group coming back, a run of nulls only (avg and sum NULL, not NaN).
    same_answers(
        &[
            (1, 500, false),
            (2, 300, false),
            (1, 200, false),
            (3, 100, true),
        ],
        7,
    );
    let batch = table(&[(5, 100, false)], 3);
    let nulls = RecordBatch::try_new(
        batch.schema(),
        vec![
            batch.column(0).clone(),
            Arc::new(Float64Array::from(vec![None::<f64>; 100])),
            batch.column(2).clone(),
            batch.column(3).clone(),
        ],
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let folded = runtime.block_on(answer(&nulls, true));
    assert_eq!(folded, runtime.block_on(answer(&nulls, false)));
    assert!(
        folded[0][..5] == ["5", "NULL", "NULL", "NULL", "NULL"].map(|c| Cell::Text(c.to_owned())),
        "{folded:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn folded_aggregates_equal_datafusions(
        runs in proptest::collection::vec((0i64..6, 1usize..200, proptest::bool::weighted(0.2)), 1..40),
        seed in any::<u64>(),
    ) {
        same_answers(&runs, seed);
    }
}
