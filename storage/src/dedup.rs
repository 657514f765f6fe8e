//! Last write wins, field by field: one row per (tag set, time), sorted by tags then time.
//!
//! The input batches are in write order (oldest first) and share the table schema. Rows with
//! the same identity merge: each field takes its newest non-null value. This runs when a
//! chunk becomes a segment, when segments are compacted, and when a reader needs one
//! version of every point across the buffer and overlapping segments.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use crate::catalog::{COLUMN_KIND_KEY, TIME_COLUMN};

/// Indices of the identity columns (tags in name order, then time) in `schema`.
pub fn key_columns(schema: &SchemaRef) -> Vec<usize> {
    sort_key(schema, &[])
}

/// The columns a table's segments are sorted by: the tags named in `leading` first, in that
/// order (the table's choice, `TableDef::sort_tags`), then its other tags by name, then
/// time. Every order of the same columns identifies a point the same way.
pub fn sort_key(schema: &SchemaRef, leading: &[String]) -> Vec<usize> {
    let mut tags: Vec<(usize, usize, &String)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.metadata().get(COLUMN_KIND_KEY).map(String::as_str) == Some("tag"))
        .map(|(i, f)| {
            let rank = leading
                .iter()
                .position(|l| l == f.name())
                .unwrap_or(usize::MAX);
            (rank, i, f.name())
        })
        .collect();
    tags.sort_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    let mut keys: Vec<usize> = tags.into_iter().map(|(_, i, _)| i).collect();
    keys.push(
        schema
            .index_of(TIME_COLUMN)
            .expect("tables have a time column"),
    );
    keys
}

/// The tags of `names` ordered by how many distinct values `batches` hold of each, most
/// first (ties by name); a batch without a tag holds NULL for it.
pub fn by_distinct_values(batches: &[RecordBatch], names: &[String]) -> Vec<String> {
    let mut counted: Vec<(usize, &String)> = names
        .iter()
        .map(|name| {
            let columns: Vec<Option<ArrayRef>> = batches
                .iter()
                .map(|b| {
                    b.column_by_name(name)
                        .and_then(|c| cast(c, &DataType::Utf8).ok())
                })
                .collect();
            let mut values: HashSet<Option<&str>> = HashSet::new();
            for column in &columns {
                match column {
                    Some(strings) => values.extend(strings.as_string::<i32>().iter()),
                    None => {
                        values.insert(None);
                    }
                }
            }
            (values.len(), name)
        })
        .collect();
    counted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    counted.into_iter().map(|(_, name)| name.clone()).collect()
}

/// Sorts `batches` (oldest first, all of `schema`) by identity and merges duplicates.
pub fn dedup_sort(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    dedup_with(schema, &key_columns(schema), batches, true)
}

/// [`dedup_sort`], sorting by `keys` (a [`sort_key`] of `schema`).
pub fn dedup_sort_by(
    schema: &SchemaRef,
    keys: &[usize],
    batches: &[RecordBatch],
) -> Result<RecordBatch, ArrowError> {
    dedup_with(schema, keys, batches, true)
}

/// Merges duplicates of `batches` (oldest first, all of `schema`), in no particular order:
/// when no point appears twice (a hash set of identities says so), the rows are returned
/// as they are, without sorting; otherwise as [`dedup_sort`] returns them.
pub fn dedup(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    dedup_with(schema, &key_columns(schema), batches, false)
}

fn dedup_with(
    schema: &SchemaRef,
    keys: &[usize],
    batches: &[RecordBatch],
    sort: bool,
) -> Result<RecordBatch, ArrowError> {
    let all = concat_batches(schema, batches)?;
    let n = all.num_rows();
    if n == 0 {
        return Ok(all);
    }
    let rows = key_rows(&all, keys)?;

    let mut order: Vec<u32> = (0..n as u32).collect();
    let sorted = (1..n).all(|i| rows.row(i - 1) < rows.row(i));
    if sorted {
        return Ok(all);
    }
    if !sort {
        let mut seen = std::collections::HashSet::with_capacity(n);
        if rows.iter().all(|row| seen.insert(row)) {
            return Ok(all);
        }
    }
    // Stable: among equal identities the older row comes first.
    order.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));

    // Runs of equal identity; `first` indexes into `order`.
    let mut run_starts = Vec::with_capacity(n);
    run_starts.push(0usize);
    for i in 1..n {
        if rows.row(order[i - 1] as usize) != rows.row(order[i] as usize) {
            run_starts.push(i);
        }
    }
    if run_starts.len() == n {
        let indices = UInt32Array::from(order);
        return take_all(&all, schema, |_| &indices);
    }

    // Identity columns come from any row of the run; each field from its newest non-null.
    let run_ends: Vec<usize> = run_starts
        .iter()
        .skip(1)
        .copied()
        .chain(std::iter::once(n))
        .collect();
    let ident: UInt32Array = run_starts.iter().map(|&s| order[s]).collect();
    let mut per_column: Vec<Option<UInt32Array>> = vec![None; schema.fields().len()];
    for (c, slot) in per_column.iter_mut().enumerate() {
        if keys.contains(&c) {
            continue;
        }
        let column = all.column(c);
        let picks: UInt32Array = run_starts
            .iter()
            .zip(&run_ends)
            .map(|(&s, &e)| {
                let run = &order[s..e];
                let newest = *run.last().expect("runs are not empty");
                run.iter()
                    .rev()
                    .copied()
                    .find(|&i| column.is_valid(i as usize))
                    .unwrap_or(newest)
            })
            .collect();
        *slot = Some(picks);
    }
    take_all(&all, schema, |c| per_column[c].as_ref().unwrap_or(&ident))
}

/// Whether no two rows of `batch` are the same point (same tags, same time). The batch may
/// hold any subset of its table's columns.
pub fn has_unique_points(batch: &RecordBatch) -> Result<bool, ArrowError> {
    let rows = key_rows(batch, &key_columns(&batch.schema()))?;
    if (1..rows.num_rows()).all(|i| rows.row(i - 1) < rows.row(i)) {
        return Ok(true);
    }
    let mut seen = std::collections::HashSet::with_capacity(rows.num_rows());
    Ok(rows.iter().all(|row| seen.insert(row)))
}

/// The identities of `batch`'s rows (its `keys` columns) in a form that compares as they
/// sort.
fn key_rows(batch: &RecordBatch, keys: &[usize]) -> Result<Rows, ArrowError> {
    let schema = batch.schema();
    let converter = RowConverter::new(
        keys.iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?;
    let key_arrays: Vec<ArrayRef> = keys.iter().map(|&i| batch.column(i).clone()).collect();
    converter.convert_columns(&key_arrays)
}

fn take_all<'a>(
    all: &RecordBatch,
    schema: &SchemaRef,
    indices: impl Fn(usize) -> &'a UInt32Array,
) -> Result<RecordBatch, ArrowError> {
    let columns = (0..schema.fields().len())
        .map(|c| take(all.column(c).as_ref(), indices(c), None))
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::precision::Precision;
    use crate::validate::test_write;
    use arrow::util::pretty::pretty_format_batches;
    use std::sync::RwLock;

    fn batches(bodies: &[&str]) -> (SchemaRef, Vec<RecordBatch>) {
        let catalog = RwLock::new(Catalog::default());
        let mut out = Vec::new();
        for body in bodies {
            let w = test_write(&catalog, body, Precision::Second);
            out.extend(w.tables.into_iter().map(|t| t.batch));
        }
        let schema = catalog.read().unwrap().table("db", "m").unwrap().schema();
        let widened = out
            .iter()
            .map(|b| crate::buffer::widen(b, &schema))
            .collect();
        (schema, widened)
    }

    fn show(batch: &RecordBatch) -> String {
        pretty_format_batches(std::slice::from_ref(batch))
            .unwrap()
            .to_string()
    }

    #[test]
    fn last_write_wins_field_by_field() {
        let (schema, input) = batches(&[
            "m,h=b a=1,b=1 2\nm,h=a a=1,b=1 1",
            "m,h=a a=2 1",
            "m,h=a b=3 1\nm,h=a a=4 1",
        ]);
        let out = dedup_sort(&schema, &input).unwrap();
        assert_eq!(
            show(&out),
            "+---+-----+-----+---------------------+\n\
             | h | a   | b   | time                |\n\
             +---+-----+-----+---------------------+\n\
             | a | 4.0 | 3.0 | 1970-01-01T00:00:01 |\n\
             | b | 1.0 | 1.0 | 1970-01-01T00:00:02 |\n\
             +---+-----+-----+---------------------+"
        );
    }

    #[test]
    fn missing_tags_are_their_own_series() {
        let (schema, input) = batches(&["m,h=a v=1 1\nm v=2 1\nm,h=a,z=1 v=3 1\nm v=5 1"]);
        let out = dedup_sort(&schema, &input).unwrap();
        assert_eq!(out.num_rows(), 3);
    }

    #[test]
    fn unique_points_are_told_from_repeated_ones() {
        let (_, input) = batches(&[
            "m,h=b v=1 2\nm,h=a v=1 1\nm v=1 1\nm,h=a v=1 2",
            "m,h=a v=1 1\nm,h=b v=1 1\nm,h=a v=2 1",
            "m v=1 1\nm,h=a v=1 1\nm v=2 1",
        ]);
        let unique: Vec<bool> = input
            .iter()
            .map(|b| has_unique_points(b).unwrap())
            .collect();
        assert_eq!(unique, [true, false, false]);
    }

    #[test]
    fn unsorted_dedup_keeps_unique_rows_in_place_and_merges_repeated_ones() {
        let (schema, input) = batches(&["m,h=b v=1 2\nm,h=a v=1 1", "m,h=c v=3 1"]);
        let out = dedup(&schema, &input).unwrap();
        assert_eq!(out, concat_batches(&schema, &input).unwrap());
        let (schema, input) = batches(&["m,h=b v=1 2\nm,h=a v=1 1", "m,h=b v=3 2"]);
        let out = dedup(&schema, &input).unwrap();
        assert_eq!(out, dedup_sort(&schema, &input).unwrap());
        assert_eq!(out.num_rows(), 2);
    }

    #[test]
    fn sorted_unique_input_is_returned_as_is() {
        let (schema, input) = batches(&["m,h=a v=1 1\nm,h=a v=2 2\nm,h=b v=3 1"]);
        let out = dedup_sort(&schema, &input).unwrap();
        assert_eq!(out, input[0]);
    }
}
