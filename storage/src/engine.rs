//! The engine: owns a data directory and ties the write path together.
//!
//! `write_lp`: [`lineproto`](crate::lineproto) -> [`validate`](crate::validate) ->
//! [`wal`](crate::wal) (group commit, fsync) -> [`buffer`](crate::buffer) -> acknowledged.
//! In the background the flusher turns buffered windows into [`segment`](crate::segment)s,
//! records them in the [`catalog`](crate::catalog), and removes WAL files that are fully
//! persisted.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam::channel::{RecvTimeoutError, Sender};

use crate::buffer::{Buffer, ChunkKey, widen};
use crate::catalog::{COLUMN_KIND_KEY, Catalog, ColumnType, ScoringRule, SegmentMeta};
use crate::config::EngineConfig;
use crate::dedup::{by_distinct_values, dedup, dedup_sort, dedup_sort_by};
use crate::delete::{DeletePredicate, Tombstone, deleted_rows, remove_rows};
use crate::error::{Error, Result};
use crate::lineproto::LineError;
use crate::precision::Precision;
use crate::retire::{Pins, SegmentPin};
use crate::segment::SegmentError;
use crate::validate::{TableBatch, validate};
use crate::wal::{self, Wal, WalEntry};
use crate::{paths, segment};
use roaring::RoaringBitmap;

#[cfg(test)]
mod tests;

/// What a write did: rows written, lines rejected.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// Rows written (one per accepted line).
    pub rows: usize,
    /// Rejected lines, in line order.
    pub errors: Vec<LineError>,
    /// The WAL sequence number of the write, if anything was written.
    pub seq: Option<u64>,
}

/// One consistent view of a table: its segments and its buffered batches, taken together.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub db: String,
    pub table: String,
    /// The table's schema; segments and buffered batches may hold a subset of its columns.
    pub schema: SchemaRef,
    /// Segments, oldest writes first.
    pub segments: Vec<SegmentMeta>,
    /// Buffered batches with their windows and sequence numbers, oldest first; every one
    /// is newer than every segment.
    pub buffer: Vec<Arc<crate::buffer::Buffered>>,
    /// The length of a time window in nanoseconds: window `w` holds times in `[w, w + window)`.
    pub window: i64,
    /// Deletes that hide rows of some of the segments (see [`Tombstone::applies_to`]).
    pub tombstones: Vec<Tombstone>,
    pub data_dir: PathBuf,
    /// Keeps the segment files on disk while the snapshot lives.
    _pins: Vec<Arc<SegmentPin>>,
}

impl TableSnapshot {
    /// Row positions of a segment (read whole, in file order) that tombstones delete.
    pub fn deleted_rows(&self, segment: &SegmentMeta, batches: &[RecordBatch]) -> RoaringBitmap {
        let applicable: Vec<&Tombstone> = self
            .tombstones
            .iter()
            .filter(|t| t.applies_to(segment))
            .collect();
        if applicable.is_empty() {
            return RoaringBitmap::new();
        }
        deleted_rows(batches, applicable.iter().copied())
    }

    pub fn segment_path(&self, segment: &SegmentMeta) -> PathBuf {
        self.data_dir.join(&segment.path)
    }

    /// Whether any delete hides rows of `segment`.
    pub fn has_deletes(&self, segment: &SegmentMeta) -> bool {
        self.tombstones.iter().any(|t| t.applies_to(segment))
    }

    /// Reads the whole table: one row per point, last write winning, sorted by tags and time.
    pub fn read_all(&self) -> Result<RecordBatch> {
        self.read_merged(&self.segments, self.buffer.iter().map(|b| &b.batch))
    }

    /// Reads some of the snapshot's segments and buffered batches as one: one row per point,
    /// last write winning, deleted rows gone, sorted by tags and time. Both must come in the
    /// snapshot's order (oldest writes first), and must include every version of the points
    /// they hold: all the segments and batches of a time window that overlap a time range.
    pub fn read_merged<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a SegmentMeta>,
        buffered: impl IntoIterator<Item = &'a RecordBatch>,
    ) -> Result<RecordBatch> {
        Ok(dedup_sort(
            &self.schema,
            &self.read_versions(segments, buffered)?,
        )?)
    }

    /// As [`TableSnapshot::read_merged`], in no particular order: what holds no point twice
    /// is not sorted (queries sort what they need themselves).
    pub fn read_merged_unordered<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a SegmentMeta>,
        buffered: impl IntoIterator<Item = &'a RecordBatch>,
    ) -> Result<RecordBatch> {
        Ok(dedup(
            &self.schema,
            &self.read_versions(segments, buffered)?,
        )?)
    }

    /// Every version of the rows of `segments` (deletes applied) and `buffered`, widened.
    fn read_versions<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a SegmentMeta>,
        buffered: impl IntoIterator<Item = &'a RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for seg in segments {
            let rows = segment::read(&self.segment_path(seg))?;
            let deleted = self.deleted_rows(seg, &rows);
            let rows = remove_rows(rows, &deleted);
            batches.extend(rows.iter().map(|b| widen(b, &self.schema)));
        }
        batches.extend(buffered.into_iter().map(|b| widen(b, &self.schema)));
        Ok(batches)
    }

    /// `merged` (a [`TableSnapshot::read_merged_unordered`] result) with newer buffered
    /// batches of the same points merged in, in no particular order.
    pub fn merge_newer<'a>(
        &self,
        merged: RecordBatch,
        newer: impl IntoIterator<Item = &'a RecordBatch>,
    ) -> Result<RecordBatch> {
        let mut batches = vec![widen(&merged, &self.schema)];
        batches.extend(newer.into_iter().map(|b| widen(b, &self.schema)));
        Ok(dedup(&self.schema, &batches)?)
    }
}

/// Where a flush stands, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub rows: usize,
    pub bytes: usize,
    pub wal_files: usize,
}

/// Called with every write the WAL applies (after its fsync, in sequence order), on the
/// WAL's thread: it must be quick and must not block.
pub type WriteObserver = Box<dyn Fn(u64, &str, &[TableBatch]) + Send + Sync>;

/// Scoring rules by (database, rule): the WAL sequence number their scoring has reached.
type ScoredUpTo = std::collections::BTreeMap<(String, String), u64>;

pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) catalog: Arc<RwLock<Catalog>>,
    pub(crate) buffer: Arc<RwLock<Buffer>>,
    wal: Wal,
    /// One persist (or compaction) at a time.
    pub(crate) persist_lock: Mutex<()>,
    /// Segment files in use by snapshots.
    pub(crate) pins: Pins,
    /// Serialises catalog file writes so that a newer version is never overwritten.
    catalog_file_lock: Mutex<()>,
    /// Signalled whenever the buffer shrinks; writers over the memory limit wait on it.
    space: Arc<(Mutex<()>, Condvar)>,
    flusher: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
    closed: AtomicBool,
    /// The last catalog write failed: the file on disk lags the segments written.
    catalog_stale: AtomicBool,
    /// The oldest delete whose tombstone is not in the catalog file yet: WAL files from it
    /// on must stay.
    unpersisted_delete: Arc<Mutex<Option<PendingDeletes>>>,
    observer: Arc<RwLock<Option<WriteObserver>>>,
    /// How far each scoring rule has scored: WAL files from there on are kept.
    scored: Mutex<ScoredUpTo>,
    _lock: File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

fn load_scored(dir: &Path) -> Result<ScoredUpTo> {
    let path = paths::scoring_file(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ScoredUpTo::new()),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let entries: Vec<(String, String, u64)> =
        serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    Ok(entries
        .into_iter()
        .map(|(db, rule, seq)| ((db, rule), seq))
        .collect())
}

fn persist_scored(dir: &Path, scored: &ScoredUpTo) -> Result<()> {
    let entries: Vec<(&str, &str, u64)> = scored
        .iter()
        .map(|((db, rule), seq)| (db.as_str(), rule.as_str(), *seq))
        .collect();
    let path = paths::scoring_file(dir);
    let bytes = serde_json::to_vec(&entries).expect("plain data serializes");
    paths::write_atomic(&path, &bytes).map_err(io_error(&path))
}

pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Engine {
    /// Opens (or creates) a data directory, replays its WAL, and starts the flusher.
    pub fn open(config: EngineConfig) -> Result<Arc<Engine>> {
        let dir = config.data_dir.clone();
        paths::create_dir_all_durable(&dir).map_err(io_error(&dir))?;
        let lock = lock_data_dir(&dir)?;
        let mut catalog = Catalog::load(&dir)?;
        remove_orphans(&dir, &catalog);
        let quarantined = quarantine_damaged_segments(&dir, &mut catalog)?;

        let window = i64::try_from(config.window.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        let max_segment_seq = catalog
            .databases
            .values()
            .flat_map(|d| d.tables.values())
            .flat_map(|t| t.segments.iter())
            .map(|s| s.max_seq)
            .max()
            .unwrap_or(0);
        let mut buffer = Buffer::new(window, 0);
        // Segments of tables the WAL drops whose catalog file still listed them.
        let mut dropped_segments = Vec::new();
        let started = std::time::Instant::now();
        let stats = wal::replay(&dir, |seq, entry| match entry {
            WalEntry::Write { db, tables } => {
                for t in &tables {
                    merge_schema(&mut catalog, &db, t);
                }
                buffer.apply_replayed(seq, &db, tables);
            }
            WalEntry::Delete {
                db,
                table,
                predicate,
            } => {
                apply_delete(&mut catalog, &mut buffer, seq, &db, &table, predicate);
            }
            WalEntry::DropTable { db, table } => {
                dropped_segments.extend(apply_drop(&mut catalog, &mut buffer, &db, &table));
            }
        })?;
        // Windows already persisted before the crash need not be buffered again.
        let keys: Vec<ChunkKey> = buffer.chunks().map(|(k, _)| k).collect();
        for key in keys {
            let persisted = persisted_seq(&catalog, &key, |time| buffer.window_start(time));
            if let Some(persisted) = persisted {
                buffer.remove_persisted(&key, persisted);
            }
        }
        // Windows past their retention period stay dropped.
        let now = now_nanos();
        for db in catalog.databases.values() {
            if let Some(retention) = db.retention_ns {
                buffer.drop_windows_before(&db.name, now.saturating_sub(retention));
            }
        }
        if stats.records > 0 {
            tracing::info!(
                files = stats.files,
                records = stats.records,
                rows = buffer.rows(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replayed the write-ahead log"
            );
        }
        // Sequence numbers never go back: not below anything the WAL, the segments, the
        // tombstones or the catalog's high-water mark have seen.
        let max_tombstone_seq = catalog
            .databases
            .values()
            .flat_map(|d| d.tables.values())
            .flat_map(|t| t.tombstones.iter())
            .map(|t| t.seq)
            .max()
            .unwrap_or(0);
        let last_seq = stats
            .last_seq
            .max(max_segment_seq)
            .max(buffer.last_seq())
            .max(max_tombstone_seq)
            .max(catalog.last_seq);
        buffer.set_last_seq(last_seq);

        let buffer = Arc::new(RwLock::new(buffer));
        let catalog = Arc::new(RwLock::new(catalog));
        let unpersisted_delete = Arc::new(Mutex::new(None));
        let space = Arc::new((Mutex::new(()), Condvar::new()));
        let (sink_catalog, sink_buffer) = (catalog.clone(), buffer.clone());
        let sink_unpersisted = unpersisted_delete.clone();
        let observer: Arc<RwLock<Option<WriteObserver>>> = Arc::default();
        let sink_observer = observer.clone();
        let sink: wal::Sink = Box::new(move |seq, entry| match entry {
            WalEntry::Write { db, tables } => {
                if let Some(observe) = sink_observer.read().expect("observer lock").as_ref() {
                    observe(seq, &db, &tables);
                }
                // A table dropped between this write's validation and now: the write
                // makes it anew, as it would on replay.
                let missing = {
                    let catalog = sink_catalog.read().expect("catalog lock");
                    tables
                        .iter()
                        .any(|t| catalog.table(&db, &t.table).is_none())
                };
                if missing {
                    let mut catalog = sink_catalog.write().expect("catalog lock");
                    for t in &tables {
                        merge_schema(&mut catalog, &db, t);
                    }
                }
                sink_buffer
                    .write()
                    .expect("buffer lock")
                    .apply(seq, &db, tables);
            }
            WalEntry::DropTable { db, table } => {
                let mut catalog = sink_catalog.write().expect("catalog lock");
                let mut buffer = sink_buffer.write().expect("buffer lock");
                // The segments are retired by `Engine::drop_table`, which listed them.
                apply_drop(&mut catalog, &mut buffer, &db, &table);
                // Until the catalog file lacks the table, the WAL must keep the drop.
                let mut pending = sink_unpersisted.lock().expect("delete lock");
                let range = pending.get_or_insert(PendingDeletes {
                    oldest: seq,
                    newest: seq,
                });
                range.newest = seq;
            }
            WalEntry::Delete {
                db,
                table,
                predicate,
            } => {
                let mut catalog = sink_catalog.write().expect("catalog lock");
                let mut buffer = sink_buffer.write().expect("buffer lock");
                apply_delete(&mut catalog, &mut buffer, seq, &db, &table, predicate);
                let mut pending = sink_unpersisted.lock().expect("delete lock");
                let range = pending.get_or_insert(PendingDeletes {
                    oldest: seq,
                    newest: seq,
                });
                range.newest = seq;
            }
        });
        let wal = Wal::open(&dir, last_seq + 1, config.wal.clone(), sink)?;
        let engine = Arc::new(Engine {
            config,
            catalog,
            buffer,
            unpersisted_delete,
            wal,
            persist_lock: Mutex::new(()),
            pins: Pins::default(),
            catalog_file_lock: Mutex::new(()),
            space,
            flusher: Mutex::new(None),
            closed: AtomicBool::new(false),
            catalog_stale: AtomicBool::new(false),
            observer,
            scored: Mutex::new(load_scored(&dir)?),
            _lock: lock,
        });
        engine.persist_catalog()?;
        for path in dropped_segments {
            let path = engine.config.data_dir.join(path);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a dropped table's segment");
            }
        }
        engine.remove_persisted_wal()?;
        if quarantined > 0 {
            tracing::error!(
                segments = quarantined,
                "opened without damaged segments; their rows are not readable"
            );
        }
        if engine.config.background_flush {
            engine.start_flusher();
        }
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Writes a body of line protocol to database `db`. Returns once the accepted lines are
    /// durable (in the fsynced WAL) and visible to readers. Rejected lines are reported in
    /// the outcome; they do not stop the others.
    pub fn write_lp(&self, db: &str, body: &[u8], precision: Precision) -> Result<WriteOutcome> {
        self.write_lp_with(db, body, precision, true)
    }

    /// [`Engine::write_lp`], choosing what a rejected line does to the rest of the body:
    /// with `accept_partial` the good lines are written; without it nothing is written when
    /// any line is rejected (the outcome then reports zero rows and every rejected line).
    pub fn write_lp_with(
        &self,
        db: &str,
        body: &[u8],
        precision: Precision,
        accept_partial: bool,
    ) -> Result<WriteOutcome> {
        let (mut outcome, entry) = self.prepare(db, body, precision, accept_partial)?;
        if let Some(entry) = entry {
            outcome.seq = Some(self.wal.append(entry).wait()?);
        }
        Ok(outcome)
    }

    /// The asynchronous form of [`Engine::write_lp`]; parsing runs on the calling task.
    pub async fn write_lp_async(
        &self,
        db: &str,
        body: &[u8],
        precision: Precision,
    ) -> Result<WriteOutcome> {
        let (mut outcome, entry) = self.prepare(db, body, precision, true)?;
        if let Some(entry) = entry {
            outcome.seq = Some(self.wal.append(entry).wait_async().await?);
        }
        Ok(outcome)
    }

    /// Parses and validates a body: the outcome so far and the WAL entry to append, if any.
    fn prepare(
        &self,
        db: &str,
        body: &[u8],
        precision: Precision,
        accept_partial: bool,
    ) -> Result<(WriteOutcome, Option<WalEntry>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.wait_for_space()?;
        let write = validate(
            &self.catalog,
            db,
            body,
            precision,
            now_nanos(),
            &self.config.limits,
        )?;
        let rejected = !write.errors.is_empty() && !accept_partial;
        if write.tables.is_empty() || rejected {
            let outcome = WriteOutcome {
                rows: 0,
                errors: write.errors,
                seq: None,
            };
            return Ok((outcome, None));
        }
        let outcome = WriteOutcome {
            rows: write.rows,
            errors: write.errors,
            seq: None,
        };
        let entry = WalEntry::Write {
            db: write.db,
            tables: write.tables,
        };
        Ok((outcome, Some(entry)))
    }

    /// Back-pressure: while the buffer is at its memory limit, wait for the flusher, for
    /// at most `max_write_wait`.
    fn wait_for_space(&self) -> Result<()> {
        let limit = self.config.memory_limit;
        if self.buffer.read().expect("buffer lock").bytes() < limit {
            return Ok(());
        }
        self.kick_flusher();
        let started = Instant::now();
        let (lock, cvar) = &*self.space;
        let mut guard = lock.lock().expect("space lock");
        while self.buffer.read().expect("buffer lock").bytes() >= limit
            && !self.closed.load(Ordering::Acquire)
        {
            if let Some(max) = self.config.max_write_wait
                && started.elapsed() >= max
            {
                return Err(Error::BufferFull { limit, waited: max });
            }
            if !self.config.background_flush {
                drop(guard);
                if let Err(e) = self.flush_over_memory() {
                    tracing::error!(error = %e, "flush under memory pressure failed");
                }
                guard = lock.lock().expect("space lock");
                continue;
            }
            guard = cvar
                .wait_timeout(guard, Duration::from_millis(100))
                .expect("space lock")
                .0;
        }
        Ok(())
    }

    /// A consistent snapshot of a table, or `None` if it does not exist.
    pub fn snapshot(&self, db: &str, table: &str) -> Option<TableSnapshot> {
        let catalog = self.catalog.read().expect("catalog lock");
        let def = catalog.table(db, table)?;
        let buffer = self.buffer.read().expect("buffer lock");
        let mut segments = def.segments.clone();
        segments.sort_by_key(|s| (s.max_seq, s.id));
        let pins = segments
            .iter()
            .map(|s| self.pins.pin(self.config.data_dir.join(&s.path)))
            .collect();
        Some(TableSnapshot {
            db: db.to_owned(),
            table: table.to_owned(),
            schema: def.schema(),
            segments,
            buffer: buffer.table_batches(db, table),
            window: self.config.window.as_nanos() as i64,
            tombstones: def.tombstones.clone(),
            data_dir: self.config.data_dir.clone(),
            _pins: pins,
        })
    }

    /// The oldest and newest times a table holds, from its segments' and buffered writes'
    /// bounds, without reading data: `None` if it does not exist or holds nothing. Deletes
    /// not yet compacted away may have removed the rows at either end.
    pub fn time_span(&self, db: &str, table: &str) -> Option<(i64, i64)> {
        let catalog = self.catalog.read().expect("catalog lock");
        let segments = catalog
            .table(db, table)?
            .segments
            .iter()
            .map(|s| (s.min_time, s.max_time))
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
        let buffered = self
            .buffer
            .read()
            .expect("buffer lock")
            .table_time_span(db, table);
        match (segments, buffered) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, other) => one.or(other),
        }
    }

    /// A copy of the catalog as it is now.
    pub fn catalog(&self) -> Catalog {
        self.catalog.read().expect("catalog lock").clone()
    }

    pub fn buffer_stats(&self) -> BufferStats {
        let buffer = self.buffer.read().expect("buffer lock");
        BufferStats {
            rows: buffer.rows(),
            bytes: buffer.bytes(),
            wal_files: self.wal.file_count(),
        }
    }

    pub fn wal_stats(&self) -> wal::WalStats {
        self.wal.stats()
    }

    /// Persists everything buffered and removes the WAL files it came from.
    pub fn flush(&self) -> Result<()> {
        let keys: Vec<ChunkKey> = self
            .buffer
            .read()
            .expect("buffer lock")
            .chunks()
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.persist_chunk(&key)?;
        }
        self.remove_persisted_wal()
    }

    /// Deletes the rows of `db.table` that `predicate` matches. Returns once the delete is
    /// durable (in the WAL) and the rows are hidden from readers. Compaction removes them
    /// from segments for good.
    pub fn delete(&self, db: &str, table: &str, predicate: DeletePredicate) -> Result<u64> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self
            .catalog
            .read()
            .expect("catalog lock")
            .table(db, table)
            .is_none()
        {
            return Err(Error::NoSuchTable {
                db: db.to_owned(),
                table: table.to_owned(),
            });
        }
        let entry = WalEntry::Delete {
            db: db.to_owned(),
            table: table.to_owned(),
            predicate,
        };
        let seq = self.wal.append(entry).wait()?;
        self.persist_catalog()?;
        Ok(seq)
    }

    /// Drops table `db.table`: its columns, buffered rows and segments. Returns once the
    /// drop is durable (in the WAL); readers that started before keep their snapshot (its
    /// files are removed when they finish). A later write to the name makes a new table.
    /// Refused while a scoring rule scores the table.
    pub fn drop_table(&self, db: &str, table: &str) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // No flush or compaction is under way (they hold this lock), so the segments
        // listed here are all the table has, and none is about to be added.
        let _guard = self.persist_lock.lock().expect("persist lock");
        let segments: Vec<String> = {
            let catalog = self.catalog.read().expect("catalog lock");
            let no_such_table = || Error::NoSuchTable {
                db: db.to_owned(),
                table: table.to_owned(),
            };
            let def = catalog.table(db, table).ok_or_else(no_such_table)?;
            let database = catalog.database(db).ok_or_else(no_such_table)?;
            if let Some(rule) = database.scoring_rules.values().find(|r| r.table == table) {
                return Err(Error::TableInUse {
                    table: table.to_owned(),
                    rule: rule.name.clone(),
                });
            }
            def.segments.iter().map(|s| s.path.clone()).collect()
        };
        let entry = WalEntry::DropTable {
            db: db.to_owned(),
            table: table.to_owned(),
        };
        self.wal.append(entry).wait()?;
        self.persist_catalog()?;
        for path in &segments {
            self.pins.retire(&self.config.data_dir.join(path));
        }
        self.space.1.notify_all();
        tracing::info!(db, table, segments = segments.len(), "dropped a table");
        Ok(())
    }

    /// Creates an empty database; returns false if it already existed.
    pub fn create_database(&self, name: &str) -> Result<bool> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let created = self
            .catalog
            .write()
            .expect("catalog lock")
            .create_database(name)?;
        if created {
            self.persist_catalog()?;
        }
        Ok(created)
    }

    /// Sets (or clears) a database's retention period: data older than it is dropped by the
    /// flusher, and writes older than it are rejected. Creates the database if needed.
    pub fn set_retention(&self, db: &str, retention: Option<Duration>) -> Result<()> {
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            catalog.create_database(db)?;
            let def = catalog.databases.get_mut(db).expect("created above");
            def.retention_ns = retention.map(|r| i64::try_from(r.as_nanos()).unwrap_or(i64::MAX));
        }
        self.persist_catalog()
    }

    /// Drops the segments and buffered windows that are entirely older than their
    /// database's retention period. Returns how many segments it dropped.
    pub fn enforce_retention(&self) -> Result<usize> {
        let _guard = self.persist_lock.lock().expect("persist lock");
        let now = now_nanos();
        let mut dropped = Vec::new();
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let mut buffer = self.buffer.write().expect("buffer lock");
            for db in catalog.databases.values_mut() {
                let Some(retention) = db.retention_ns else {
                    continue;
                };
                let cutoff = now.saturating_sub(retention);
                for table in db.tables.values_mut() {
                    let (expired, kept): (Vec<_>, Vec<_>) =
                        table.segments.drain(..).partition(|s| s.max_time < cutoff);
                    table.segments = kept;
                    dropped.extend(expired.into_iter().map(|s| s.path));
                }
                buffer.drop_windows_before(&db.name, cutoff);
            }
        }
        if dropped.is_empty() {
            return Ok(0);
        }
        self.persist_catalog()?;
        for path in &dropped {
            self.pins.retire(&self.config.data_dir.join(path));
        }
        tracing::info!(
            segments = dropped.len(),
            "dropped segments past their retention period"
        );
        Ok(dropped.len())
    }

    /// Persists the windows that are big enough or old enough, and the largest ones while
    /// the buffer is over half its memory budget.
    pub fn flush_due(&self) -> Result<()> {
        let due: Vec<ChunkKey> = self
            .buffer
            .read()
            .expect("buffer lock")
            .chunks()
            .filter(|(_, c)| {
                c.rows >= self.config.flush_rows || c.since.elapsed() >= self.config.flush_age
            })
            .map(|(k, _)| k)
            .collect();
        for key in &due {
            self.persist_chunk(key)?;
        }
        self.flush_over_memory()?;
        self.remove_persisted_wal()
    }

    fn flush_over_memory(&self) -> Result<()> {
        let target = self.config.memory_limit / 2;
        loop {
            let largest = {
                let buffer = self.buffer.read().expect("buffer lock");
                if buffer.bytes() <= target {
                    return Ok(());
                }
                buffer.chunks().max_by_key(|(_, c)| c.bytes).map(|(k, _)| k)
            };
            match largest {
                Some(key) => self.persist_chunk(&key)?,
                None => return Ok(()),
            }
        }
    }

    /// Writes one window's buffered rows to a new segment and drops them from the buffer.
    fn persist_chunk(&self, key: &ChunkKey) -> Result<()> {
        let _guard = self.persist_lock.lock().expect("persist lock");
        let (batches, max_seq) = {
            let buffer = self.buffer.read().expect("buffer lock");
            let Some(chunk) = buffer.chunk(key) else {
                return Ok(());
            };
            let Some(max_seq) = chunk.batches.last().map(|b| b.seq) else {
                return Ok(());
            };
            (
                chunk
                    .batches
                    .iter()
                    .map(|b| b.batch.clone())
                    .collect::<Vec<_>>(),
                max_seq,
            )
        };
        // Tags the table has no sort position for yet get one, from this window's rows.
        let unsorted = self
            .catalog
            .read()
            .expect("catalog lock")
            .table(&key.db, &key.table)
            .map(|t| t.unsorted_tags())
            .unwrap_or_default();
        let newly_sorted = match unsorted.is_empty() {
            true => Vec::new(),
            false => by_distinct_values(&batches, &unsorted),
        };
        let (schema, sort_key, rel_path, segment_id) = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let segment_id = catalog.next_segment_id();
            let (db_name, db_id) = {
                let db = catalog
                    .database(&key.db)
                    .expect("buffered tables are in the catalog");
                (db.name.clone(), db.id)
            };
            let table = catalog
                .table_mut(&key.db, &key.table)
                .expect("buffered tables are in the catalog");
            for tag in newly_sorted {
                if !table.sort_tags.contains(&tag) {
                    table.sort_tags.push(tag);
                }
            }
            let path = paths::segment_path(
                &db_name,
                db_id,
                &table.name,
                table.id,
                key.window_start,
                segment_id.0,
            );
            (table.schema(), table.sort_key(), path, segment_id)
        };
        let widened: Vec<RecordBatch> = batches.iter().map(|b| widen(b, &schema)).collect();
        let sorted = dedup_sort_by(&schema, &sort_key, &widened)?;
        let info = segment::write(&self.config.data_dir.join(&rel_path), &sorted, &sort_key)?;
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            let mut buffer = self.buffer.write().expect("buffer lock");
            if let Some(table) = catalog.table_mut(&key.db, &key.table) {
                let meta =
                    SegmentMeta::written(segment_id, key.window_start, rel_path, info, max_seq, 0);
                table.segments.push(meta);
            }
            buffer.remove_persisted(key, max_seq);
        }
        self.persist_catalog()?;
        self.space.1.notify_all();
        tracing::debug!(db = %key.db, table = %key.table, rows = info.rows, bytes = info.bytes, "persisted a segment");
        Ok(())
    }

    pub(crate) fn persist_catalog(&self) -> Result<()> {
        let _guard = self.catalog_file_lock.lock().expect("catalog file lock");
        let (snapshot, covers_delete) = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            catalog.version += 1;
            let applied = self.buffer.read().expect("buffer lock").last_seq();
            catalog.last_seq = catalog.last_seq.max(applied);
            // Deletes are applied under the catalog lock: this copy holds every tombstone.
            let pending = *self.unpersisted_delete.lock().expect("delete lock");
            (catalog.clone(), pending)
        };
        let result = snapshot.persist(&self.config.data_dir);
        if let (Ok(()), Some(covered)) = (&result, covers_delete) {
            let mut pending = self.unpersisted_delete.lock().expect("delete lock");
            match pending.as_mut() {
                Some(range) if range.newest == covered.newest => *pending = None,
                // Deletes applied since the copy was taken are not on disk yet.
                Some(range) => range.oldest = covered.newest + 1,
                None => {}
            }
        }
        // Until a catalog write succeeds, segments it would list are unknown on disk: the
        // WAL must keep their rows.
        self.catalog_stale.store(result.is_err(), Ordering::Release);
        Ok(result?)
    }

    fn remove_persisted_wal(&self) -> Result<()> {
        // A persist between dropping its rows from the buffer and writing the catalog has
        // moved `min_unpersisted_seq` past rows the catalog file does not list yet.
        let _guard = self.persist_lock.lock().expect("persist lock");
        if self.catalog_stale.load(Ordering::Acquire) {
            return Ok(());
        }
        // Read the buffer first: a delete applied after this is above `below` anyway.
        let below = self
            .buffer
            .read()
            .expect("buffer lock")
            .min_unpersisted_seq();
        let pending_delete = self
            .unpersisted_delete
            .lock()
            .expect("delete lock")
            .map_or(u64::MAX, |range| range.oldest);
        let hold = self.wal_hold();
        self.wal
            .remove_persisted(below.min(pending_delete).min(hold))?;
        Ok(())
    }

    /// The oldest WAL sequence number some scoring rule has yet to score (`u64::MAX` if none).
    fn wal_hold(&self) -> u64 {
        let catalog = self.catalog.read().expect("catalog lock");
        let scored = self.scored.lock().expect("scored lock");
        catalog
            .databases
            .iter()
            .flat_map(|(db, d)| d.scoring_rules.values().map(move |r| (db, r)))
            .map(|(db, rule)| {
                let key = (db.clone(), rule.name.clone());
                scored
                    .get(&key)
                    .copied()
                    .unwrap_or(rule.from_seq)
                    .max(rule.from_seq)
                    + 1
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Has `observer` called with every write from now on (or no one, with `None`).
    pub fn set_write_observer(&self, observer: Option<WriteObserver>) {
        *self.observer.write().expect("observer lock") = observer;
    }

    /// The sequence number of the last write or delete applied.
    pub fn last_seq(&self) -> u64 {
        self.buffer.read().expect("buffer lock").last_seq()
    }

    /// Every scoring rule, with its database (a copy of just the rules, not the catalog).
    pub fn scoring_rules(&self) -> Vec<(String, ScoringRule)> {
        let catalog = self.catalog.read().expect("catalog lock");
        catalog
            .databases
            .iter()
            .flat_map(|(db, d)| d.scoring_rules.values().map(|r| (db.clone(), r.clone())))
            .collect()
    }

    /// Adds a scoring rule to database `db` (creating the database if needed): writes
    /// acknowledged from now on will be scored. Returns false, changing nothing, if the
    /// database has a rule of that name.
    pub fn create_scoring_rule(&self, db: &str, mut rule: ScoringRule) -> Result<bool> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        {
            let mut catalog = self.catalog.write().expect("catalog lock");
            catalog.create_database(db)?;
            let rules = &mut catalog
                .databases
                .get_mut(db)
                .expect("just created")
                .scoring_rules;
            if rules.contains_key(&rule.name) {
                return Ok(false);
            }
            // Every write not applied yet gets a higher sequence number than this: it is
            // scored, as are all writes acknowledged after the rule exists.
            rule.from_seq = self.last_seq();
            rules.insert(rule.name.clone(), rule);
        }
        self.persist_catalog()?;
        Ok(true)
    }

    /// Removes a scoring rule; returns whether there was one.
    pub fn drop_scoring_rule(&self, db: &str, name: &str) -> Result<bool> {
        let removed = {
            let mut catalog = self.catalog.write().expect("catalog lock");
            catalog
                .databases
                .get_mut(db)
                .and_then(|d| d.scoring_rules.remove(name))
                .is_some()
        };
        if removed {
            self.persist_catalog()?;
            let mut scored = self.scored.lock().expect("scored lock");
            scored.remove(&(db.to_owned(), name.to_owned()));
            persist_scored(&self.config.data_dir, &scored)?;
        }
        Ok(removed)
    }

    /// The sequence number up to which rule `name` of `db` has scored every write (`None` if
    /// there is no such rule).
    pub fn scored(&self, db: &str, name: &str) -> Option<u64> {
        let from = self
            .catalog
            .read()
            .expect("catalog lock")
            .databases
            .get(db)?
            .scoring_rules
            .get(name)?
            .from_seq;
        let scored = self.scored.lock().expect("scored lock");
        Some(
            scored
                .get(&(db.to_owned(), name.to_owned()))
                .map_or(from, |s| (*s).max(from)),
        )
    }

    /// Records, durably, that each rule `(db, name, seq)` has scored every write up to
    /// `seq`: WAL files below the oldest may go, and scoring resumes there on restart.
    pub fn set_scored(&self, updates: &[(&str, &str, u64)]) -> Result<()> {
        let mut scored = self.scored.lock().expect("scored lock");
        for (db, name, seq) in updates {
            scored.insert(((*db).to_owned(), (*name).to_owned()), *seq);
        }
        persist_scored(&self.config.data_dir, &scored)
    }

    /// Reads back the WAL's writes with a sequence number above `after`, in order (those
    /// still in it: see [`Engine::set_scored`]), handing each to `f`.
    pub fn read_wal_since(
        &self,
        after: u64,
        mut f: impl FnMut(u64, &str, Vec<TableBatch>),
    ) -> Result<()> {
        wal::read_since(&self.config.data_dir, after, |seq, entry| {
            if let WalEntry::Write { db, tables } = entry {
                f(seq, &db, tables);
            }
        })?;
        Ok(())
    }

    fn kick_flusher(&self) {
        if let Some((tx, _)) = self.flusher.lock().expect("flusher lock").as_ref() {
            let _ = tx.try_send(());
        }
    }

    fn start_flusher(self: &Arc<Self>) {
        let (tx, rx) = crossbeam::channel::bounded::<()>(1);
        let weak: Weak<Engine> = Arc::downgrade(self);
        let interval = self.config.flush_interval;
        let handle = std::thread::Builder::new()
            .name("gannet-flush".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(interval) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(engine) = weak.upgrade() else { return };
                    if let Err(e) = engine.flush_due() {
                        tracing::error!(error = %e, "background flush failed; will retry");
                    }
                    if let Err(e) = engine.enforce_retention() {
                        tracing::error!(error = %e, "enforcing retention failed; will retry");
                    }
                    if let Err(e) = engine.compact() {
                        tracing::error!(error = %e, "background compaction failed; will retry");
                    }
                }
            })
            .expect("spawning the flusher thread");
        *self.flusher.lock().expect("flusher lock") = Some((tx, handle));
    }

    /// Stops the background flusher and waits for it, without flushing. The data stays safe
    /// in the WAL; a handle that is dropped without [`Engine::close`] calls this so that the
    /// directory is released promptly.
    pub fn stop_background(&self) {
        let flusher = self.flusher.lock().expect("flusher lock").take();
        if let Some((tx, handle)) = flusher {
            drop(tx);
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Stops the flusher and the WAL, persists everything buffered, and writes the catalog.
    /// Writes after this fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_background();
        self.wal.close();
        self.flush()?;
        self.persist_catalog()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Without close(), acknowledged writes are still safe in the WAL.
        self.wal.close();
    }
}

/// Deletes applied but whose tombstones may not be in the catalog file yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingDeletes {
    oldest: u64,
    newest: u64,
}

/// Applies a durable delete: drops matching buffered rows and records a tombstone for the
/// table's segments. Idempotent (replay may apply a delete the catalog already has).
fn apply_delete(
    catalog: &mut Catalog,
    buffer: &mut Buffer,
    seq: u64,
    db: &str,
    table: &str,
    predicate: DeletePredicate,
) {
    buffer.apply_delete(db, table, &predicate);
    let Some(def) = catalog.table_mut(db, table) else {
        return;
    };
    // Recorded even when the table has no segment yet: a persist in flight may be about to
    // add one with rows from before the delete. Compaction drops tombstones that apply to
    // no segment.
    if !def.tombstones.iter().any(|t| t.seq == seq) {
        def.tombstones.push(Tombstone { seq, predicate });
    }
}

/// Applies a durable drop: the table leaves the catalog and the buffer. Returns the paths of
/// the segments it had. Idempotent (replay may apply a drop the catalog file already has).
fn apply_drop(catalog: &mut Catalog, buffer: &mut Buffer, db: &str, table: &str) -> Vec<String> {
    buffer.drop_table(db, table);
    catalog
        .drop_table(db, table)
        .map(|def| def.segments.into_iter().map(|s| s.path).collect())
        .unwrap_or_default()
}

/// The highest sequence number already persisted for a chunk's table and window: of the
/// segments whose windows (`window_of` a time) include the chunk's. A segment compacted from
/// several windows covers them all; it was written when the buffer held none of their rows.
fn persisted_seq(catalog: &Catalog, key: &ChunkKey, window_of: impl Fn(i64) -> i64) -> Option<u64> {
    catalog
        .table(&key.db, &key.table)?
        .segments
        .iter()
        .filter(|s| (window_of(s.min_time)..=window_of(s.max_time)).contains(&key.window_start))
        .map(|s| s.max_seq)
        .max()
}

/// Adds the columns of a replayed batch to the catalog (they may not have been persisted).
fn merge_schema(catalog: &mut Catalog, db: &str, batch: &TableBatch) {
    let table = match catalog.table_or_create(db, &batch.table) {
        Ok(table) => table,
        Err(e) => {
            tracing::error!(error = %e, "WAL names a table that cannot exist");
            return;
        }
    };
    for field in batch.batch.schema().fields() {
        if table.column_type(field.name()).is_some() {
            continue;
        }
        let column_type = match (
            field.metadata().get(COLUMN_KIND_KEY).map(String::as_str),
            field.data_type(),
        ) {
            (Some("tag"), _) => ColumnType::Tag,
            (_, arrow::datatypes::DataType::Float64) => ColumnType::Float,
            (_, arrow::datatypes::DataType::Int64) => ColumnType::Integer,
            (_, arrow::datatypes::DataType::UInt64) => ColumnType::UInteger,
            (_, arrow::datatypes::DataType::Utf8) => ColumnType::String,
            (_, arrow::datatypes::DataType::Boolean) => ColumnType::Boolean,
            (kind, other) => {
                tracing::error!(column = %field.name(), ?kind, data_type = %other, "WAL batch has a column of unknown type");
                continue;
            }
        };
        table.add_column(field.name(), column_type);
    }
}

/// Sets aside segments that are missing or whose Parquet footer does not decode, so that
/// the rest of the data stays readable. Each is logged with its path; a damaged file moves
/// to `quarantine/` for inspection. Any other I/O error fails the open: a passing problem
/// (permissions, too many open files) must not drop data. Returns how many were set aside.
fn quarantine_damaged_segments(dir: &Path, catalog: &mut Catalog) -> Result<usize> {
    let mut set_aside = Vec::new();
    for db in catalog.databases.values() {
        for table in db.tables.values() {
            for s in &table.segments {
                let path = dir.join(&s.path);
                match segment::check(&path) {
                    Ok(()) => {}
                    Err(SegmentError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        tracing::error!(file = %path.display(), rows = s.rows, "segment is missing; dropped from the catalog");
                        set_aside.push(s.id);
                    }
                    Err(error @ SegmentError::Parquet { .. }) => {
                        let target = dir.join(paths::QUARANTINE_DIR).join(&s.path);
                        if let Some(parent) = target.parent() {
                            paths::create_dir_all_durable(parent).map_err(io_error(parent))?;
                        }
                        std::fs::rename(&path, &target).map_err(io_error(&path))?;
                        tracing::error!(%error, moved_to = %target.display(), rows = s.rows, "segment is damaged; set aside");
                        set_aside.push(s.id);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    for db in catalog.databases.values_mut() {
        for table in db.tables.values_mut() {
            table.segments.retain(|s| !set_aside.contains(&s.id));
        }
    }
    Ok(set_aside.len())
}

/// Takes the data directory's OS lock, recording this process's id in it.
fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = paths::lock_file(dir);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(Error::Locked {
                dir: dir.display().to_string(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
    }
    file.set_len(0).map_err(io_error(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_error(&path))?;
    Ok(file)
}

/// Removes segment files the catalog does not list (written before a crash, never
/// recorded) and temporary files.
fn remove_orphans(dir: &Path, catalog: &Catalog) {
    let listed: std::collections::HashSet<PathBuf> = catalog
        .databases
        .values()
        .flat_map(|d| d.tables.values())
        .flat_map(|t| t.segments.iter())
        .map(|s| dir.join(&s.path))
        .collect();
    let mut stack = vec![dir.join(paths::SEGMENTS_DIR)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !listed.contains(&path) {
                tracing::info!(file = %path.display(), "removing a segment file the catalog does not list");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_file(paths::catalog_file(dir).with_extension("tmp"));
}
