//! The write buffer: every acknowledged write, as Arrow batches, until it is in a segment.
//!
//! Per table, rows are kept by time window (a chunk per window). Each chunk holds the
//! batches of the writes that reached it, tagged with their WAL sequence numbers, in
//! sequence order; readers take cheap clones of them. Deduplication (last write wins) is
//! the reader's and the persister's job, done once over a sorted run, not on every write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::array::{Array, BooleanArray, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;

use crate::catalog::TIME_COLUMN;
use crate::delete::DeletePredicate;
use crate::validate::TableBatch;

/// Names a chunk: database, table, window start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub db: String,
    pub table: String,
    pub window_start: i64,
}

/// A buffered batch: the start of its window, the WAL sequence number that wrote it, and
/// the times it holds (inclusive; a delete may since have removed the rows at either end).
#[derive(Debug, Clone)]
pub struct Buffered {
    pub window: i64,
    pub seq: u64,
    pub batch: RecordBatch,
    pub min_time: i64,
    pub max_time: i64,
    /// What the batch counts for in the buffer's bytes.
    bytes: usize,
    /// Whether no point appears twice in the batch: found out when first asked (snapshots
    /// share the `Buffered`). A delete only removes rows, so it stays true.
    unique: OnceLock<bool>,
}

impl Buffered {
    /// Whether no point appears twice in the batch, so that it needs no deduplication when
    /// nothing else holds its points.
    pub fn has_unique_points(&self) -> bool {
        *self
            .unique
            .get_or_init(|| crate::dedup::has_unique_points(&self.batch).unwrap_or(false))
    }
}

#[derive(Debug)]
pub struct Chunk {
    /// The batches of the writes that reached this window, in sequence order. Shared with
    /// snapshots: taking one copies pointers, not batches.
    pub batches: Vec<Arc<Buffered>>,
    pub rows: usize,
    pub bytes: usize,
    /// When the oldest batch still here arrived.
    pub since: Instant,
}

impl Chunk {
    fn min_seq(&self) -> Option<u64> {
        self.batches.first().map(|b| b.seq)
    }
}

#[derive(Debug)]
pub struct Buffer {
    window_nanos: i64,
    tables: HashMap<(String, String), BTreeMap<i64, Chunk>>,
    bytes: usize,
    rows: usize,
    last_seq: u64,
}

impl Buffer {
    pub fn new(window_nanos: i64, last_seq: u64) -> Buffer {
        assert!(window_nanos > 0, "the window must be positive");
        Buffer {
            window_nanos,
            tables: HashMap::new(),
            bytes: 0,
            rows: 0,
            last_seq,
        }
    }

    pub fn window_start(&self, time: i64) -> i64 {
        // Saturates for times within one window of i64::MIN instead of overflowing.
        time.div_euclid(self.window_nanos)
            .saturating_mul(self.window_nanos)
    }

    /// Adds a durable write. Writes arrive in sequence order.
    pub fn apply(&mut self, seq: u64, db: &str, tables: Vec<TableBatch>) {
        self.apply_measured(seq, db, tables, RecordBatch::get_array_memory_size);
    }

    /// Adds a write replayed from the WAL. A replayed batch's columns are all slices of the
    /// one buffer its record was decoded from, and each column's memory size counts that
    /// whole buffer: a 1,000-row TSBS write measured 5 MB instead of 150 KB, and a replayed
    /// buffer of 400 MB counted 13 GB and was flushed at once. Its bytes are those of its
    /// values instead, about the record's size.
    pub fn apply_replayed(&mut self, seq: u64, db: &str, tables: Vec<TableBatch>) {
        self.apply_measured(seq, db, tables, values_size);
    }

    fn apply_measured(
        &mut self,
        seq: u64,
        db: &str,
        tables: Vec<TableBatch>,
        measure: fn(&RecordBatch) -> usize,
    ) {
        debug_assert!(
            seq > self.last_seq || self.last_seq == 0,
            "writes arrive in order"
        );
        self.last_seq = self.last_seq.max(seq);
        for TableBatch { table, batch } in tables {
            for (window_start, part, (min_time, max_time)) in self.split_by_window(batch) {
                let bytes = measure(&part);
                let rows = part.num_rows();
                let chunk = self
                    .tables
                    .entry((db.to_owned(), table.clone()))
                    .or_default()
                    .entry(window_start)
                    .or_insert_with(|| Chunk {
                        batches: Vec::new(),
                        rows: 0,
                        bytes: 0,
                        since: Instant::now(),
                    });
                if chunk.batches.is_empty() {
                    chunk.since = Instant::now();
                }
                chunk.batches.push(Arc::new(Buffered {
                    window: window_start,
                    seq,
                    batch: part,
                    min_time,
                    max_time,
                    bytes,
                    unique: OnceLock::new(),
                }));
                chunk.rows += rows;
                chunk.bytes += bytes;
                self.rows += rows;
                self.bytes += bytes;
            }
        }
    }

    /// The parts of `batch` in each window, with the least and greatest time of each.
    fn split_by_window(&self, batch: RecordBatch) -> Vec<(i64, RecordBatch, (i64, i64))> {
        let times = batch
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
            .expect("validated batches have a nanosecond time column")
            .clone();
        if times.is_empty() {
            return Vec::new();
        }
        let span = |times: &[i64]| {
            let (min, max) = times
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            (min, max)
        };
        let (min, max) = span(times.values());
        let first = self.window_start(min);
        if self.window_start(max) == first {
            return vec![(first, batch, (min, max))];
        }
        let mut windows: Vec<i64> = times
            .values()
            .iter()
            .map(|&t| self.window_start(t))
            .collect();
        let per_row = windows.clone();
        windows.sort_unstable();
        windows.dedup();
        windows
            .into_iter()
            .map(|w| {
                let mask = BooleanArray::from_iter(per_row.iter().map(|&r| Some(r == w)));
                let part = filter_record_batch(&batch, &mask).expect("mask has the batch's length");
                let part_times = part
                    .column_by_name(TIME_COLUMN)
                    .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
                    .expect("the part keeps the time column");
                let bounds = span(part_times.values());
                (w, part, bounds)
            })
            .collect()
    }

    /// A table's buffered batches, oldest write first.
    /// The oldest and newest times of a table's buffered rows (a delete may since have
    /// removed the rows at either end), or `None` if none are buffered.
    pub fn table_time_span(&self, db: &str, table: &str) -> Option<(i64, i64)> {
        let chunks = self.tables.get(&(db.to_owned(), table.to_owned()))?;
        chunks
            .values()
            .flat_map(|c| &c.batches)
            .map(|b| (b.min_time, b.max_time))
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }

    pub fn table_batches(&self, db: &str, table: &str) -> Vec<Arc<Buffered>> {
        let Some(chunks) = self.tables.get(&(db.to_owned(), table.to_owned())) else {
            return Vec::new();
        };
        let mut all: Vec<Arc<Buffered>> = chunks
            .values()
            .flat_map(|c| c.batches.iter().cloned())
            .collect();
        all.sort_by_key(|b| b.seq);
        all
    }

    pub fn chunks(&self) -> impl Iterator<Item = (ChunkKey, &Chunk)> {
        self.tables.iter().flat_map(|((db, table), chunks)| {
            chunks.iter().map(move |(&window_start, chunk)| {
                (
                    ChunkKey {
                        db: db.clone(),
                        table: table.clone(),
                        window_start,
                    },
                    chunk,
                )
            })
        })
    }

    pub fn chunk(&self, key: &ChunkKey) -> Option<&Chunk> {
        self.tables
            .get(&(key.db.clone(), key.table.clone()))?
            .get(&key.window_start)
    }

    /// Drops a chunk's batches up to and including sequence number `max_seq`: they are in a
    /// segment now. Later writes to the same window stay.
    pub fn remove_persisted(&mut self, key: &ChunkKey, max_seq: u64) {
        let table_key = (key.db.clone(), key.table.clone());
        let Some(chunks) = self.tables.get_mut(&table_key) else {
            return;
        };
        let Some(chunk) = chunks.get_mut(&key.window_start) else {
            return;
        };
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut chunk.batches)
            .into_iter()
            .partition(|b| b.seq <= max_seq);
        for buffered in &gone {
            let (rows, bytes) = (buffered.batch.num_rows(), buffered.bytes);
            chunk.rows -= rows;
            chunk.bytes -= bytes;
            self.rows -= rows;
            self.bytes -= bytes;
        }
        chunk.batches = kept;
        if chunk.batches.is_empty() {
            chunks.remove(&key.window_start);
            if chunks.is_empty() {
                self.tables.remove(&table_key);
            }
        }
    }

    /// Drops the windows of database `db` that end at or before `cutoff`.
    pub fn drop_windows_before(&mut self, db: &str, cutoff: i64) {
        let window = self.window_nanos;
        let mut freed = (0, 0);
        self.tables.retain(|(d, _), chunks| {
            if d == db {
                chunks.retain(|&start, chunk| {
                    let expired = start.saturating_add(window) <= cutoff;
                    if expired {
                        freed.0 += chunk.rows;
                        freed.1 += chunk.bytes;
                    }
                    !expired
                });
            }
            !chunks.is_empty()
        });
        self.rows -= freed.0;
        self.bytes -= freed.1;
    }

    /// Removes the rows of a table that `predicate` matches. Returns how many it removed.
    pub fn apply_delete(&mut self, db: &str, table: &str, predicate: &DeletePredicate) -> usize {
        let Some(chunks) = self.tables.get_mut(&(db.to_owned(), table.to_owned())) else {
            return 0;
        };
        let window = self.window_nanos;
        let mut removed = 0;
        let (mut old_bytes, mut new_bytes) = (0, 0);
        for (&start, chunk) in chunks.iter_mut() {
            if start > predicate.max_time || start.saturating_add(window) <= predicate.min_time {
                continue;
            }
            for buffered in chunk.batches.iter_mut() {
                let batch = &buffered.batch;
                let kept = predicate.retain_unmatched(batch);
                let gone = batch.num_rows() - kept.num_rows();
                if gone > 0 {
                    // An emptied batch is dropped below: it no longer counts.
                    let new = if kept.num_rows() == 0 {
                        0
                    } else {
                        // By its values: the filter copies keys and numbers but keeps
                        // dictionary values as slices, of a whole WAL record if replayed.
                        values_size(&kept)
                    };
                    let old = buffered.bytes;
                    chunk.bytes = chunk.bytes + new - old;
                    old_bytes += old;
                    new_bytes += new;
                    chunk.rows -= gone;
                    removed += gone;
                    // Snapshots taken before keep the batch as it was.
                    *buffered = Arc::new(Buffered {
                        batch: kept,
                        bytes: new,
                        ..Buffered::clone(buffered)
                    });
                }
            }
            chunk.batches.retain(|b| b.batch.num_rows() > 0);
        }
        chunks.retain(|_, c| !c.batches.is_empty());
        if chunks.is_empty() {
            self.tables.remove(&(db.to_owned(), table.to_owned()));
        }
        self.rows -= removed;
        self.bytes = self.bytes + new_bytes - old_bytes;
        removed
    }

    /// Drops everything buffered for a table.
    pub fn drop_table(&mut self, db: &str, table: &str) {
        if let Some(chunks) = self.tables.remove(&(db.to_owned(), table.to_owned())) {
            for chunk in chunks.values() {
                self.rows -= chunk.rows;
                self.bytes -= chunk.bytes;
            }
        }
    }

    /// The lowest sequence number still only in the buffer (not in a segment); everything
    /// below it is persisted.
    pub fn min_unpersisted_seq(&self) -> u64 {
        self.tables
            .values()
            .flat_map(|chunks| chunks.values())
            .filter_map(Chunk::min_seq)
            .min()
            .unwrap_or(self.last_seq + 1)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Sets the sequence number the next write follows (after replay).
    pub fn set_last_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// Arrow batches of one table with differing column subsets, widened to the table schema.
pub fn widen(batch: &RecordBatch, schema: &arrow::datatypes::SchemaRef) -> RecordBatch {
    if batch.schema().fields() == schema.fields() {
        return batch.clone();
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => column.clone(),
            None => arrow::array::new_null_array(field.data_type(), batch.num_rows()),
        })
        .collect::<Vec<Arc<dyn Array>>>();
    RecordBatch::try_new(schema.clone(), columns)
        .expect("catalog columns only ever grow and keep their types")
}

/// The bytes of `batch`'s values (its slices of its buffers), however big the buffers
/// they are sliced from.
fn values_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}
