//! Deletes: `DELETE FROM t WHERE <time range> AND tag = 'v' ...`.
//!
//! A delete is logged in the WAL like a write. When it is applied (in sequence order) it
//! removes matching rows from the buffer at once, and adds a [`Tombstone`] to the table in
//! the catalog. A tombstone hides matching rows of every segment whose writes are all older
//! than it (`max_seq < tombstone.seq`): readers turn it into a roaring bitmap of row
//! positions per segment and skip those rows; compaction drops them for good, after which
//! the tombstone no longer applies to anything and is removed.

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int32Type, TimestampNanosecondType};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::catalog::{SegmentMeta, TIME_COLUMN};

/// Which rows a delete removes: a time range (inclusive) and tag equalities, all of which
/// must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePredicate {
    pub min_time: i64,
    pub max_time: i64,
    /// `(tag, value)` pairs; a row matches only if it has every tag with that value.
    pub tags: Vec<(String, String)>,
}

impl DeletePredicate {
    /// Every row of the table.
    pub fn all() -> DeletePredicate {
        DeletePredicate {
            min_time: i64::MIN,
            max_time: i64::MAX,
            tags: Vec::new(),
        }
    }

    /// Which rows of `batch` match. A tag column the batch lacks matches no row.
    pub fn matches(&self, batch: &RecordBatch) -> BooleanArray {
        let n = batch.num_rows();
        let times = batch
            .column_by_name(TIME_COLUMN)
            .expect("tables have a time column")
            .as_primitive::<TimestampNanosecondType>();
        let mut mask: Vec<bool> = times
            .values()
            .iter()
            .map(|&t| t >= self.min_time && t <= self.max_time)
            .collect();
        for (tag, value) in &self.tags {
            let Some(column) = batch.column_by_name(tag) else {
                return BooleanArray::from(vec![false; n]);
            };
            let Some(dict) = column.as_dictionary_opt::<Int32Type>() else {
                return BooleanArray::from(vec![false; n]);
            };
            let values = dict.values().as_string::<i32>();
            let wanted: Vec<i32> = (0..values.len())
                .filter(|&k| values.is_valid(k) && values.value(k) == value)
                .map(|k| k as i32)
                .collect();
            let keys = dict.keys();
            for (i, m) in mask.iter_mut().enumerate() {
                *m = *m && keys.is_valid(i) && wanted.contains(&keys.value(i));
            }
        }
        BooleanArray::from(mask)
    }

    /// `batch` without the rows this predicate matches.
    pub fn retain_unmatched(&self, batch: &RecordBatch) -> RecordBatch {
        let keep = arrow::compute::not(&self.matches(batch)).expect("no nulls in the mask");
        filter_record_batch(batch, &keep).expect("mask has the batch's length")
    }
}

/// A delete recorded against a table's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The delete's WAL sequence number: it applies to segments whose `max_seq` is lower.
    pub seq: u64,
    pub predicate: DeletePredicate,
}

impl Tombstone {
    pub fn applies_to(&self, segment: &SegmentMeta) -> bool {
        segment.max_seq < self.seq
            && segment.deletes_applied < self.seq
            && segment.max_time >= self.predicate.min_time
            && segment.min_time <= self.predicate.max_time
    }
}

/// Row positions of a segment's rows (its batches in file order) that `tombstones` delete.
pub fn deleted_rows<'a>(
    batches: &[RecordBatch],
    tombstones: impl IntoIterator<Item = &'a Tombstone> + Clone,
) -> RoaringBitmap {
    let mut deleted = RoaringBitmap::new();
    let mut offset = 0u32;
    for batch in batches {
        for tombstone in tombstones.clone() {
            let mask = tombstone.predicate.matches(batch);
            deleted.extend(mask.values().set_indices().map(|i| offset + i as u32));
        }
        offset += batch.num_rows() as u32;
    }
    deleted
}

/// `batches` (a segment's, in file order) without the rows in `deleted`.
pub fn remove_rows(batches: Vec<RecordBatch>, deleted: &RoaringBitmap) -> Vec<RecordBatch> {
    if deleted.is_empty() {
        return batches;
    }
    let mut offset = 0u32;
    batches
        .into_iter()
        .map(|batch| {
            let n = batch.num_rows() as u32;
            let keep: BooleanArray = (offset..offset + n)
                .map(|i| Some(!deleted.contains(i)))
                .collect();
            offset += n;
            filter_record_batch(&batch, &keep).expect("mask has the batch's length")
        })
        .filter(|b| b.num_rows() > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::precision::Precision;
    use crate::validate::test_write;
    use std::sync::RwLock;

    fn batch(body: &str) -> RecordBatch {
        let catalog = RwLock::new(Catalog::default());
        let w = test_write(&catalog, body, Precision::Nanosecond);
        w.tables.into_iter().next().unwrap().batch
    }

    #[test]
    fn matches_time_range_and_every_tag() {
        let b = batch(
            "m,h=a,r=x v=1 1\nm,h=a,r=y v=1 2\nm,h=b,r=x v=1 3\nm,r=x v=1 4\nm,h=a,r=x v=1 9",
        );
        let p = DeletePredicate {
            min_time: 0,
            max_time: 5,
            tags: vec![("h".into(), "a".into()), ("r".into(), "x".into())],
        };
        assert_eq!(
            p.matches(&b),
            BooleanArray::from(vec![true, false, false, false, false])
        );
        let p = DeletePredicate {
            min_time: 2,
            max_time: 4,
            tags: vec![],
        };
        assert_eq!(p.retain_unmatched(&b).num_rows(), 2);
        let p = DeletePredicate {
            tags: vec![("nope".into(), "a".into())],
            ..DeletePredicate::all()
        };
        assert_eq!(p.retain_unmatched(&b).num_rows(), 5);
    }

    #[test]
    fn bitmaps_count_rows_across_batches() {
        let batches = vec![batch("m,h=a v=1 1\nm,h=b v=1 2"), batch("m,h=a v=1 3")];
        let t = Tombstone {
            seq: 9,
            predicate: DeletePredicate {
                tags: vec![("h".into(), "a".into())],
                ..DeletePredicate::all()
            },
        };
        let deleted = deleted_rows(&batches, [&t]);
        assert_eq!(deleted.iter().collect::<Vec<_>>(), [0, 2]);
        let kept = remove_rows(batches, &deleted);
        assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    }
}
