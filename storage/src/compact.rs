//! Compaction: segments whose time spans overlap (early flushes, late data, overwrites, all
//! of which may hold versions of one point) become one sorted, deduplicated segment; and once
//! the buffer holds none of a stretch of `compact_span` (an hour by default), the segments of
//! its windows become one, so that old data is read from few, large files.

use std::collections::BTreeMap;

use arrow::record_batch::RecordBatch;

use crate::buffer::{ChunkKey, widen};
use crate::catalog::SegmentMeta;
use crate::dedup::dedup_sort_by;
use crate::delete::{Tombstone, deleted_rows, remove_rows};
use crate::engine::Engine;
use crate::error::Result;
use crate::{paths, segment};

/// A window whose segments should be merged.
#[derive(Debug)]
struct Plan {
    db: String,
    table: String,
    window_start: i64,
    /// Oldest writes first.
    segments: Vec<SegmentMeta>,
    /// The table's deletes; those that apply to a segment are carried out on it.
    tombstones: Vec<Tombstone>,
}

impl Engine {
    /// Merges segments whose spans overlap: from two on once the buffer holds none of their
    /// rows, from `compact_segments` on within one window even while it is written to. And
    /// merges the segments of each `compact_span`-long stretch of time the buffer holds none
    /// of. Segments with deletes to carry out are rewritten. More than `compact_max_bytes`
    /// together are left alone. Returns how many merges it made.
    pub fn compact(&self) -> Result<usize> {
        let _guard = self.persist_lock.lock().expect("persist lock");
        let plans = self.plan_compactions();
        let count = plans.len();
        for plan in plans {
            self.compact_window(plan)?;
        }
        self.drop_spent_tombstones()?;
        Ok(count)
    }

    /// Removes tombstones that hide rows of no segment any more. Runs under the persist
    /// lock, so no segment with older writes can be on its way into the catalog.
    fn drop_spent_tombstones(&self) -> Result<()> {
        let mut changed = false;
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            for db in catalog.databases.values_mut() {
                for table in db.tables.values_mut() {
                    let before = table.tombstones.len();
                    let segments = &table.segments;
                    table
                        .tombstones
                        .retain(|t| segments.iter().any(|s| t.applies_to(s)));
                    changed |= table.tombstones.len() != before;
                }
            }
        }
        if changed {
            self.persist_catalog()?;
        }
        Ok(())
    }

    fn plan_compactions(&self) -> Vec<Plan> {
        let catalog = self.catalog.read().expect("catalog lock");
        let buffer = self.buffer.read().expect("buffer lock");
        let window = i64::try_from(self.config.window.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        let span = i64::try_from(self.config.compact_span.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        let mut plans = Vec::new();
        for db in catalog.databases.values() {
            for table in db.tables.values() {
                // Whether the buffer holds rows of the table between two times.
                let quiet = |min_time: i64, max_time: i64| {
                    let mut start = buffer.window_start(min_time);
                    while start <= max_time {
                        let key = ChunkKey {
                            db: db.name.clone(),
                            table: table.name.clone(),
                            window_start: start,
                        };
                        if buffer.chunk(&key).is_some() {
                            return false;
                        }
                        match start.checked_add(window) {
                            Some(next) => start = next,
                            None => break,
                        }
                    }
                    true
                };
                let plan = |window_start: i64, mut segments: Vec<SegmentMeta>| {
                    segments.sort_by_key(|s| (s.max_seq, s.id));
                    Plan {
                        db: db.name.clone(),
                        table: table.name.clone(),
                        window_start,
                        segments,
                        tombstones: table.tombstones.clone(),
                    }
                };
                // Segments whose spans overlap may hold versions of one point: merged.
                let mut segments = table.segments.clone();
                segments.sort_by_key(|s| s.min_time);
                let mut overlapping: Vec<Vec<SegmentMeta>> = Vec::new();
                for segment in segments {
                    match overlapping.last_mut() {
                        Some(run) if segment.min_time <= run_max_time(run) => run.push(segment),
                        _ => overlapping.push(vec![segment]),
                    }
                }
                // Segments alone in their span: gathered by the span-long stretch of time
                // (`compact_span`) they lie in, oldest first, or else by their window.
                let mut stretches: BTreeMap<i64, Vec<SegmentMeta>> = BTreeMap::new();
                let mut windows: BTreeMap<i64, Vec<SegmentMeta>> = BTreeMap::new();
                for run in overlapping {
                    let bytes: u64 = run.iter().map(|s| s.bytes).sum();
                    let has_deletes = run
                        .iter()
                        .any(|s| table.tombstones.iter().any(|t| t.applies_to(s)));
                    if bytes > self.config.compact_max_bytes {
                        continue;
                    }
                    let (min_time, max_time) = (run[0].min_time, run_max_time(&run));
                    let window_start = run.iter().map(|s| s.window_start).min().unwrap_or(0);
                    // A merged segment stands for every window it spans (recovery takes the
                    // buffered rows of those windows up to its sequence number as written),
                    // so segments of several windows are merged only while the buffer holds
                    // none of their rows.
                    let safe = run.len() == 1
                        || quiet(min_time, max_time)
                        || buffer.window_start(min_time) == buffer.window_start(max_time);
                    let due = has_deletes
                        || (run.len() >= 2
                            && (run.len() >= self.config.compact_segments
                                || quiet(min_time, max_time)));
                    if due && safe {
                        plans.push(plan(window_start, run));
                    } else if let [segment] = run.as_slice() {
                        if span > window && min_time.div_euclid(span) == max_time.div_euclid(span) {
                            stretches
                                .entry(min_time.div_euclid(span))
                                .or_default()
                                .push(segment.clone());
                        } else {
                            windows
                                .entry(buffer.window_start(min_time))
                                .or_default()
                                .push(segment.clone());
                        }
                    }
                }
                // A stretch's segments become one once the buffer holds none of its rows, so
                // old data is read from few, large files. A stretch still written to, or too
                // big for one file, is merged window by window below.
                for (stretch, segments) in stretches {
                    let start = stretch.saturating_mul(span);
                    let end = start.checked_add(span - 1).unwrap_or(i64::MAX);
                    let bytes: u64 = segments.iter().map(|s| s.bytes).sum();
                    if segments.len() >= 2
                        && bytes <= self.config.compact_max_bytes
                        && quiet(start, end)
                    {
                        plans.push(plan(buffer.window_start(start), segments));
                    } else {
                        for segment in segments {
                            windows
                                .entry(buffer.window_start(segment.min_time))
                                .or_default()
                                .push(segment);
                        }
                    }
                }
                // The segments that lie within one window (a merged one stands for that
                // window alone, so this is safe while it is written to): merged once the
                // window is quiet, or once there are `compact_segments` of them.
                for (window_start, segments) in windows {
                    let end = window_start.checked_add(window - 1).unwrap_or(i64::MAX);
                    let segments: Vec<SegmentMeta> =
                        segments.into_iter().filter(|s| s.max_time <= end).collect();
                    let bytes: u64 = segments.iter().map(|s| s.bytes).sum();
                    if segments.len() >= 2
                        && bytes <= self.config.compact_max_bytes
                        && (segments.len() >= self.config.compact_segments
                            || quiet(window_start, end))
                    {
                        plans.push(plan(window_start, segments));
                    }
                }
            }
        }
        plans
    }

    fn compact_window(&self, plan: Plan) -> Result<()> {
        let (schema, sort_key, rel_path, id) = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let id = catalog.next_segment_id();
            let Some(db) = catalog.database(&plan.db) else {
                return Ok(());
            };
            let Some(table) = db.tables.get(&plan.table) else {
                return Ok(());
            };
            let path = paths::segment_path(
                &db.name,
                db.id,
                &table.name,
                table.id,
                plan.window_start,
                id.0,
            );
            (table.schema(), table.sort_key(), path, id)
        };
        let mut batches: Vec<RecordBatch> = Vec::new();
        for s in &plan.segments {
            let rows = segment::read(&self.config.data_dir.join(&s.path))?;
            let applicable = plan.tombstones.iter().filter(|t| t.applies_to(s));
            let deleted = deleted_rows(&rows, applicable);
            batches.extend(
                remove_rows(rows, &deleted)
                    .iter()
                    .map(|b| widen(b, &schema)),
            );
        }
        let merged = dedup_sort_by(&schema, &sort_key, &batches)?;
        // Deletes may have emptied the window: then there is nothing to write.
        let info = match merged.num_rows() {
            0 => None,
            _ => Some(segment::write(
                &self.config.data_dir.join(&rel_path),
                &merged,
                &sort_key,
            )?),
        };
        let max_seq = plan.segments.iter().map(|s| s.max_seq).max().unwrap_or(0);
        // Every tombstone the plan knew of was carried out on the merged rows.
        let deletes_applied = plan
            .tombstones
            .iter()
            .map(|t| t.seq)
            .chain(plan.segments.iter().map(|s| s.deletes_applied))
            .max()
            .unwrap_or(0);
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let Some(table) = catalog.table_mut(&plan.db, &plan.table) else {
                return Ok(());
            };
            let old: Vec<_> = plan.segments.iter().map(|s| s.id).collect();
            table.segments.retain(|s| !old.contains(&s.id));
            if let Some(info) = info {
                table.segments.push(SegmentMeta::written(
                    id,
                    plan.window_start,
                    rel_path,
                    info,
                    max_seq,
                    deletes_applied,
                ));
            }
            // The plan's tombstones are carried out: keep only those that still hide rows.
            let segments = &table.segments;
            table
                .tombstones
                .retain(|t| segments.iter().any(|s| t.applies_to(s)));
        }
        self.persist_catalog()?;
        for s in &plan.segments {
            self.pins.retire(&self.config.data_dir.join(&s.path));
        }
        tracing::debug!(
            db = %plan.db, table = %plan.table, merged = plan.segments.len(),
            rows = merged.num_rows(), "compacted a window"
        );
        Ok(())
    }
}

/// The end of a run of segments' time span.
fn run_max_time(run: &[SegmentMeta]) -> i64 {
    run.iter().map(|s| s.max_time).max().unwrap_or(i64::MIN)
}

/// Rows of `db.cpu` as a reader sees them, for the tests below.
#[cfg(test)]
fn cpu_rows(engine: &Engine) -> usize {
    engine
        .snapshot("db", "cpu")
        .unwrap()
        .read_all()
        .unwrap()
        .num_rows()
}

#[cfg(test)]
mod tests {
    use super::cpu_rows;
    use crate::{Engine, EngineConfig, Precision};

    #[test]
    fn merges_a_windows_segments_and_keeps_the_newest_values() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        for v in 1..=3 {
            let body = format!("cpu,host=a v={v} 10\ncpu,host=b w={v} 20\n");
            engine
                .write_lp("db", body.as_bytes(), Precision::Second)
                .unwrap();
            engine.flush().unwrap();
        }
        let before = engine.snapshot("db", "cpu").unwrap();
        assert_eq!(before.segments.len(), 3);
        let expected = before.read_all().unwrap();

        assert_eq!(engine.compact().unwrap(), 1);
        let after = engine.snapshot("db", "cpu").unwrap();
        assert_eq!(after.segments.len(), 1);
        assert_eq!(after.segments[0].rows, 2);
        assert_eq!(after.read_all().unwrap(), expected);

        // The old snapshot still reads: its files are pinned until it is dropped.
        assert_eq!(before.read_all().unwrap(), expected);
        let old_paths: Vec<_> = before
            .segments
            .iter()
            .map(|s| before.segment_path(s))
            .collect();
        assert!(old_paths.iter().all(|p| p.exists()));
        drop(before);
        assert!(old_paths.iter().all(|p| !p.exists()));
        assert_eq!(engine.compact().unwrap(), 0, "nothing left to compact");
    }

    #[test]
    fn a_window_still_being_written_waits_for_enough_segments() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        for v in 1..=2 {
            engine
                .write_lp("db", format!("cpu v={v} {v}").as_bytes(), Precision::Second)
                .unwrap();
            engine.flush().unwrap();
        }
        engine
            .write_lp("db", b"cpu v=9 9", Precision::Second)
            .unwrap();
        assert_eq!(engine.compact().unwrap(), 0);
        engine.flush().unwrap();
        assert_eq!(engine.compact().unwrap(), 1);
        assert_eq!(cpu_rows(&engine), 3);
    }
}

#[cfg(test)]
mod stretch_tests {
    use super::cpu_rows;
    use crate::{Engine, EngineConfig, Precision};

    fn values(engine: &Engine) -> Vec<String> {
        let batch = engine.snapshot("db", "cpu").unwrap().read_all().unwrap();
        let batch =
            arrow::compute::sort_to_indices(batch.column_by_name("time").unwrap(), None, None)
                .and_then(|order| arrow::compute::take_record_batch(&batch, &order))
                .unwrap();
        let v = arrow::compute::cast(
            batch.column_by_name("v").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let v = v
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        v.iter().map(|v| v.unwrap_or("-").to_owned()).collect()
    }

    #[test]
    fn an_hour_of_quiet_windows_becomes_one_segment_and_late_data_merges_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        // Three 10-minute windows of the first hour, one of the second.
        engine
            .write_lp(
                "db",
                b"cpu v=1 0\ncpu v=2 700\ncpu v=3 1300\ncpu v=4 3700",
                Precision::Second,
            )
            .unwrap();
        engine.flush().unwrap();
        assert_eq!(engine.snapshot("db", "cpu").unwrap().segments.len(), 4);
        assert_eq!(engine.compact().unwrap(), 1);
        let mut segments = engine.snapshot("db", "cpu").unwrap().segments.clone();
        segments.sort_by_key(|s| s.min_time);
        assert_eq!(segments.len(), 2);
        assert_eq!(
            (segments[0].min_time, segments[0].max_time),
            (0, 1_300_000_000_000)
        );
        assert_eq!(segments[0].rows, 3);
        assert_eq!(engine.compact().unwrap(), 0, "nothing left to compact");

        // A late write overwrites a point of the compacted hour: read once, newest value,
        // from the buffer and then from its own segment.
        engine
            .write_lp("db", b"cpu v=20 700", Precision::Second)
            .unwrap();
        assert_eq!(values(&engine), ["1.0", "20.0", "3.0", "4.0"]);
        // While the buffer holds rows of the hour, its segments stay as they are.
        engine
            .write_lp("db", b"cpu v=5 1900", Precision::Second)
            .unwrap();
        assert_eq!(engine.compact().unwrap(), 0);
        engine.flush().unwrap();
        assert_eq!(values(&engine), ["1.0", "20.0", "3.0", "5.0", "4.0"]);
        assert_eq!(engine.compact().unwrap(), 1, "the overlapping pair");
        assert_eq!(engine.compact().unwrap(), 1, "then the hour");
        assert_eq!(engine.compact().unwrap(), 0);
        assert_eq!(engine.snapshot("db", "cpu").unwrap().segments.len(), 2);
        assert_eq!(values(&engine), ["1.0", "20.0", "3.0", "5.0", "4.0"]);

        // Recovery replays the WAL over the compacted segments: nothing lost or doubled.
        drop(engine);
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        assert_eq!(values(&engine), ["1.0", "20.0", "3.0", "5.0", "4.0"]);
        assert_eq!(cpu_rows(&engine), 5);
    }

    #[test]
    fn a_windows_segments_merge_while_another_window_of_its_hour_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        for line in ["cpu v=1 0", "cpu v=2 60"] {
            engine
                .write_lp("db", line.as_bytes(), Precision::Second)
                .unwrap();
            engine.flush().unwrap();
        }
        // The hour is not quiet, the first window is.
        engine
            .write_lp("db", b"cpu v=3 1300", Precision::Second)
            .unwrap();
        assert_eq!(engine.compact().unwrap(), 1);
        assert_eq!(engine.snapshot("db", "cpu").unwrap().segments.len(), 1);
        assert_eq!(values(&engine), ["1.0", "2.0", "3.0"]);
    }

    #[test]
    fn the_last_representable_time_compacts_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        for line in [
            "cpu v=1 9223372036854775807",
            "cpu v=2 9223372036854775807",
            "cpu v=3 9223372036854775000",
        ] {
            engine
                .write_lp("db", line.as_bytes(), Precision::Nanosecond)
                .unwrap();
            engine.flush().unwrap();
        }
        assert!(engine.compact().unwrap() >= 1);
        while engine.compact().unwrap() > 0 {}
        assert_eq!(engine.snapshot("db", "cpu").unwrap().segments.len(), 1);
        assert_eq!(values(&engine), ["3.0", "2.0"]);
    }
}

#[cfg(test)]
mod delete_tests {
    use super::cpu_rows;
    use crate::{DeletePredicate, Engine, EngineConfig, Precision};
    use arrow::array::Array;

    fn hosts(engine: &Engine) -> Vec<String> {
        let batch = engine.snapshot("db", "cpu").unwrap().read_all().unwrap();
        let col = arrow::compute::cast(
            batch.column_by_name("host").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        (0..col.len())
            .map(|i| format!("{}@{}", col.value(i), batch.num_rows()))
            .collect()
    }

    #[test]
    fn deletes_hide_rows_in_buffer_and_segments_then_compaction_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        engine
            .write_lp(
                "db",
                b"cpu,host=a v=1 1\ncpu,host=b v=2 1\ncpu,host=a v=3 500",
                Precision::Second,
            )
            .unwrap();
        engine.flush().unwrap();
        engine
            .write_lp(
                "db",
                b"cpu,host=a v=4 2\ncpu,host=b v=5 2",
                Precision::Second,
            )
            .unwrap();

        let only_a_early = DeletePredicate {
            min_time: 0,
            max_time: 100_000_000_000,
            tags: vec![("host".into(), "a".into())],
        };
        engine.delete("db", "cpu", only_a_early).unwrap();
        // a@1 (segment) and a@2 (buffer) are gone; a@500 is outside the range.
        assert_eq!(hosts(&engine), ["a@3", "b@3", "b@3"]);

        // A write after the delete is not hidden by it.
        engine
            .write_lp("db", b"cpu,host=a v=6 1", Precision::Second)
            .unwrap();
        assert_eq!(hosts(&engine).len(), 4);

        // Durable: a reopen (replaying the WAL) hides the same rows.
        drop(engine);
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        assert_eq!(hosts(&engine).len(), 4);

        engine.flush().unwrap();
        assert!(engine.compact().unwrap() >= 1);
        let catalog = engine.catalog();
        let table = catalog.table("db", "cpu").unwrap();
        assert!(
            table.tombstones.is_empty(),
            "compaction carried the delete out"
        );
        let stored: u64 = table.segments.iter().map(|s| s.rows).sum();
        assert_eq!(stored, 4, "deleted rows are gone from the files");
        assert_eq!(hosts(&engine).len(), 4);
    }

    #[test]
    fn deleting_everything_leaves_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::test_config(dir.path())).unwrap();
        engine
            .write_lp("db", b"cpu,host=a v=1 1", Precision::Second)
            .unwrap();
        engine.flush().unwrap();
        engine
            .write_lp("db", b"cpu,host=a v=2 2", Precision::Second)
            .unwrap();
        engine.delete("db", "cpu", DeletePredicate::all()).unwrap();
        assert_eq!(cpu_rows(&engine), 0);
        assert_eq!(engine.compact().unwrap(), 1);
        assert!(
            engine
                .catalog()
                .table("db", "cpu")
                .unwrap()
                .segments
                .is_empty()
        );
        let err = engine
            .delete("db", "nope", DeletePredicate::all())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "table 'nope' does not exist in database 'db'"
        );
    }
}
