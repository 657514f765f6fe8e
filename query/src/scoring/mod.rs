//! Real-time scoring: a rule binds a model to a table, and every write to the table is scored
//! right after it is acknowledged, off the write path.
//!
//! ```text
//! WAL thread: write applied ──► observer: a write to a watched table? ──► bounded queue
//!                               (never blocks; when full the scorer is marked behind)
//! scorer thread: queue (or, after a restart or falling behind, the WAL read back from the
//!   oldest rule's checkpoint) ──► per rule: SELECT *, <expression> AS score, <condition>
//!   over the written rows ──► `<rule>_scores` rows and `alerts` rows, written as any write
//!   ──► alert listeners (NOTIFY) ──► checkpoint (Engine::set_scored), so WAL files are
//!   kept until scored and scoring resumes there after a crash
//! ```
//!
//! Scoring a write twice (after a crash between writing results and the checkpoint) writes
//! the same points again: a point's identity is its table, tags and time, so the tables hold
//! each once. Listeners may hear such an alert twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimestampNanosecondType};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use gannet_storage::catalog::{COLUMN_KIND_KEY, ScoringRule};
use gannet_storage::lineproto::{Element, escape_into};
use gannet_storage::validate::TableBatch;
use gannet_storage::{Engine, Precision};

use crate::QueryEngine;

pub mod statement;
pub mod webhook;

/// The table alerts are written to, in the rule's database.
pub const ALERTS_TABLE: &str = "alerts";

/// The table a rule's scores are written to.
pub fn scores_table(rule: &str) -> String {
    format!("{rule}_scores")
}

/// An alert: a scored row for which its rule's condition held.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub database: String,
    pub rule: String,
    pub table: String,
    /// The row's time, nanoseconds since the epoch.
    pub time: i64,
    /// The row's tags.
    pub tags: Vec<(String, String)>,
    pub score: f64,
}

impl Alert {
    /// The alert as JSON, as NOTIFY and webhooks carry it.
    pub fn to_json(&self) -> String {
        let tags: serde_json::Map<String, serde_json::Value> = self
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let time = chrono::DateTime::from_timestamp_nanos(self.time)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        serde_json::json!({
            "database": self.database,
            "rule": self.rule,
            "table": self.table,
            "time": time,
            "tags": tags,
            "score": self.score,
        })
        .to_string()
    }
}

/// What a rule has done since the process started.
#[derive(Debug, Default)]
pub struct RuleStats {
    pub rows: AtomicU64,
    pub alerts: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// Scoring's state that queries see: per-rule counts, and the alert feed.
#[derive(Debug)]
pub struct ScoringState {
    stats: Mutex<HashMap<(String, String), Arc<RuleStats>>>,
    alerts: tokio::sync::broadcast::Sender<Arc<Alert>>,
}

impl Default for ScoringState {
    fn default() -> Self {
        ScoringState {
            stats: Mutex::default(),
            alerts: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl ScoringState {
    /// The counts of rule `rule` of `db`.
    pub fn stats(&self, db: &str, rule: &str) -> Arc<RuleStats> {
        self.stats
            .lock()
            .expect("scoring stats lock")
            .entry((db.to_owned(), rule.to_owned()))
            .or_default()
            .clone()
    }

    /// Every alert from now on. A listener that falls more than 4,096 alerts behind misses
    /// the oldest (and is told how many).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Alert>> {
        self.alerts.subscribe()
    }
}

/// A write to a table some rule watches, as the observer queues it.
type Queued = (u64, String, Vec<TableBatch>);

/// The scoring thread. Stops when dropped.
#[derive(Debug)]
pub struct Scorer {
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How many writes may wait for the scorer before it is marked behind (and reads them back
/// from the WAL instead).
const QUEUE: usize = 4096;

/// How often checkpoints are written, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

impl Scorer {
    /// Starts scoring `query`'s engine's writes by its rules.
    pub fn start(query: &QueryEngine) -> Scorer {
        let engine = query.engine().clone();
        let (tx, rx) = crossbeam::channel::bounded::<Queued>(QUEUE);
        let shared = Arc::new(Shared {
            observed: AtomicU64::new(engine.last_seq()),
            behind: AtomicBool::new(false),
            watched: RwLock::default(),
        });
        let observer_shared = shared.clone();
        engine.set_write_observer(Some(Box::new(move |seq, db, tables| {
            let watched = observer_shared.watched.read().expect("watched lock");
            if let Some(tables_of_db) = watched.get(db) {
                let wanted: Vec<TableBatch> = tables
                    .iter()
                    .filter(|t| tables_of_db.contains(&t.table))
                    .cloned()
                    .collect();
                if !wanted.is_empty() && tx.try_send((seq, db.to_owned(), wanted)).is_err() {
                    observer_shared.behind.store(true, Ordering::Release);
                }
            }
            // After queueing: whatever was queued up to `observed` is in the queue.
            observer_shared.observed.store(seq, Ordering::Release);
        })));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            webhooks: webhook::Webhooks::start(),
            query: query.clone(),
            shared,
            queue: rx,
            stop: stop.clone(),
            rules: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("gannet-scorer".to_owned())
            .spawn(move || worker.run())
            .expect("spawning the scoring thread");
        Scorer {
            engine,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops scoring, once what is queued is scored and checkpointed.
    pub fn stop(&mut self) {
        self.engine.set_write_observer(None);
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the scoring thread panicked");
        }
    }
}

impl Drop for Scorer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the observer (on the WAL thread) and the scorer share.
#[derive(Debug)]
struct Shared {
    /// The last write the observer saw: everything watched up to it is queued.
    observed: AtomicU64,
    /// The queue was full: writes were dropped from it and must be read back from the WAL.
    behind: AtomicBool,
    /// Database -> tables some rule watches.
    watched: RwLock<HashMap<String, HashSet<String>>>,
}

/// A rule being run.
#[derive(Debug)]
struct Active {
    db: String,
    rule: ScoringRule,
    /// Every write up to this sequence number is scored.
    scored: u64,
    stats: Arc<RuleStats>,
}

struct Worker {
    webhooks: webhook::Webhooks,
    query: QueryEngine,
    shared: Arc<Shared>,
    queue: Receiver<Queued>,
    stop: Arc<AtomicBool>,
    rules: Vec<Active>,
}

impl Worker {
    fn run(mut self) {
        // Scoring runs the rows of a round in one partition per core, on threads of its own.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(crate::onnx::default_threads())
            .thread_name("gannet-scoring")
            .enable_all()
            .build()
            .expect("the scorer's runtime");
        let engine = self.query.engine().clone();
        let mut catch_up = true;
        let mut last_checkpoint = Instant::now();
        let mut unsaved = false;
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            // A new rule's writes before it was watched are read back from the WAL.
            catch_up |= self.refresh_rules();
            if catch_up || self.shared.behind.swap(false, Ordering::AcqRel) {
                catch_up = false;
                self.catch_up(&runtime);
                unsaved = true;
            }
            // Everything watched up to `upto` is queued: take it all.
            let upto = self.shared.observed.load(Ordering::Acquire);
            let mut writes = Vec::new();
            if !stopping {
                match self.queue.recv_timeout(Duration::from_millis(50)) {
                    Ok(write) => writes.push(write),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {}
                }
            }
            writes.extend(self.queue.try_iter());
            if !writes.is_empty() {
                self.score(&runtime, &writes);
                unsaved = true;
            }
            if !self.shared.behind.load(Ordering::Acquire) {
                for active in &mut self.rules {
                    if upto > active.scored {
                        active.scored = upto;
                        unsaved = true;
                    }
                }
            }
            if unsaved && (stopping || last_checkpoint.elapsed() >= CHECKPOINT_EVERY) {
                let updates: Vec<(&str, &str, u64)> = self
                    .rules
                    .iter()
                    .map(|a| (a.db.as_str(), a.rule.name.as_str(), a.scored))
                    .collect();
                match engine.set_scored(&updates) {
                    Ok(()) => unsaved = false,
                    Err(e) => tracing::error!(error = %e, "saving scoring checkpoints failed"),
                }
                last_checkpoint = Instant::now();
            }
            if stopping {
                return;
            }
        }
    }

    /// Takes up the catalog's rules: new ones start where the engine says they stand.
    /// Returns whether there is a new one.
    fn refresh_rules(&mut self) -> bool {
        let mut added = false;
        let engine = self.query.engine();
        // Runs every round: copies the rules only, not the whole catalog.
        let mut watched: HashMap<String, HashSet<String>> = HashMap::new();
        let mut rules = Vec::new();
        for (db, rule) in engine.scoring_rules() {
            let (db, rule) = (&db, &rule);
            {
                watched
                    .entry(db.clone())
                    .or_default()
                    .insert(rule.table.clone());
                let existing = self
                    .rules
                    .iter()
                    .position(|a| a.db == *db && a.rule == *rule);
                rules.push(match existing {
                    Some(i) => self.rules.swap_remove(i),
                    None => {
                        added = true;
                        Active {
                            db: db.clone(),
                            rule: rule.clone(),
                            scored: engine.scored(db, &rule.name).unwrap_or(rule.from_seq),
                            stats: self.query.scoring().stats(db, &rule.name),
                        }
                    }
                });
            }
        }
        self.rules = rules;
        *self.shared.watched.write().expect("watched lock") = watched;
        added
    }

    /// Scores what the WAL holds beyond the rules' checkpoints: after a restart, or when
    /// the queue overflowed.
    fn catch_up(&mut self, runtime: &tokio::runtime::Runtime) {
        let Some(from) = self.rules.iter().map(|a| a.scored).min() else {
            return;
        };
        // The queue's writes are all in the WAL too.
        while self.queue.try_recv().is_ok() {}
        let engine = self.query.engine().clone();
        let mut pending: Vec<Queued> = Vec::new();
        let mut pending_rows = 0;
        let mut last = from;
        let result = engine.read_wal_since(from, |seq, db, tables| {
            last = seq;
            pending_rows += tables.iter().map(|t| t.batch.num_rows()).sum::<usize>();
            pending.push((seq, db.to_owned(), tables));
            if pending_rows >= 100_000 {
                self.score(runtime, &std::mem::take(&mut pending));
                pending_rows = 0;
            }
        });
        self.score(runtime, &pending);
        if let Err(e) = result {
            tracing::error!(error = %e, "reading the WAL back for scoring failed");
            return;
        }
        for active in &mut self.rules {
            active.scored = active.scored.max(last);
        }
        if last > from {
            tracing::info!(from, to = last, "scored writes read back from the WAL");
        }
    }

    /// Scores `writes` by every rule they concern, for the writes past its checkpoint.
    fn score(&self, runtime: &tokio::runtime::Runtime, writes: &[Queued]) {
        for active in &self.rules {
            // A rule dropped since the rules were read scores nothing more.
            if self
                .query
                .engine()
                .scored(&active.db, &active.rule.name)
                .is_none()
            {
                continue;
            }
            let batches: Vec<&RecordBatch> = writes
                .iter()
                .filter(|(seq, db, _)| *db == active.db && *seq > active.scored)
                .flat_map(|(_, _, tables)| tables.iter())
                .filter(|t| t.table == active.rule.table)
                .map(|t| &t.batch)
                .collect();
            // Batches of one schema are scored together.
            let mut start = 0;
            while start < batches.len() {
                let schema = batches[start].schema();
                let end = start
                    + batches[start..]
                        .iter()
                        .take_while(|b| b.schema() == schema)
                        .count();
                let result =
                    arrow::compute::concat_batches(&schema, batches[start..end].iter().copied())
                        .map_err(|e| e.to_string())
                        .and_then(|rows| runtime.block_on(self.score_rows(active, rows)));
                if let Err(e) = result {
                    let mut last = active.stats.last_error.lock().expect("stats lock");
                    if last.as_deref() != Some(e.as_str()) {
                        tracing::error!(
                            rule = %active.rule.name, database = %active.db,
                            "scoring failed; these rows stay unscored: {e}"
                        );
                    }
                    *last = Some(e);
                }
                start = end;
            }
        }
    }

    /// Scores `rows` of the rule's table, and writes the scores and alerts.
    async fn score_rows(&self, active: &Active, rows: RecordBatch) -> Result<(), String> {
        let rule = &active.rule;
        let ctx = self.query.scratch_session();
        let input = rows.schema();
        // One partition per core, so that the model scores them in parallel.
        let parts = crate::onnx::default_threads().max(1);
        let chunk = rows.num_rows().div_ceil(parts).max(1);
        let partitions: Vec<Vec<RecordBatch>> = (0..rows.num_rows())
            .step_by(chunk)
            .map(|start| vec![rows.slice(start, chunk.min(rows.num_rows() - start))])
            .collect();
        let table = datafusion::datasource::MemTable::try_new(input.clone(), partitions)
            .map_err(|e| e.to_string())?;
        ctx.register_table("rows", Arc::new(table))
            .map_err(|e| e.to_string())?;
        let sql = match &rule.condition {
            Some(condition) => format!(
                "SELECT *, ({condition}) AS __alert FROM \
                 (SELECT *, CAST(({}) AS DOUBLE) AS score FROM rows)",
                rule.expression
            ),
            None => format!(
                "SELECT *, CAST(({}) AS DOUBLE) AS score, false AS __alert FROM rows",
                rule.expression
            ),
        };
        let scored = ctx
            .sql(&sql)
            .await
            .map_err(|e| crate::error::message(&e))?
            .collect()
            .await
            .map_err(|e| crate::error::message(&e))?;
        let tags: Vec<&str> = input
            .fields()
            .iter()
            .filter(|f| {
                f.metadata()
                    .get(COLUMN_KIND_KEY)
                    .is_some_and(|k| k == "tag")
            })
            .map(|f| f.name().as_str())
            .collect();
        let scores_table = scores_table(&rule.name);
        let mut lines = String::new();
        let mut alerts = Vec::new();
        let mut scored_rows = 0;
        for batch in &scored {
            let column = |name: &str| -> Result<&ArrayRef, String> {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| format!("the scored rows have no column {name}"))
            };
            let time = cast(
                column("time")?,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            )
            .map_err(|e| e.to_string())?;
            let time = time.as_primitive::<TimestampNanosecondType>();
            let score = column("score")?.as_primitive::<Float64Type>();
            let alert = cast(column("__alert")?, &DataType::Boolean).map_err(|e| e.to_string())?;
            let alert = alert.as_boolean();
            let tag_values: Vec<ArrayRef> = tags
                .iter()
                .map(|t| cast(column(t)?, &DataType::Utf8).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                if score.is_null(row) || !score.value(row).is_finite() || time.is_null(row) {
                    continue;
                }
                scored_rows += 1;
                let row_tags: Vec<(String, String)> = tags
                    .iter()
                    .zip(&tag_values)
                    .filter_map(|(name, values)| {
                        let values = values.as_string::<i32>();
                        (values.is_valid(row) && !values.value(row).is_empty())
                            .then(|| ((*name).to_owned(), values.value(row).to_owned()))
                    })
                    .collect();
                let (t, s) = (time.value(row), score.value(row));
                push_line(&mut lines, &scores_table, &[], &row_tags, s, t);
                if alert.is_valid(row) && alert.value(row) {
                    let fixed = [("rule", rule.name.as_str()), ("table", rule.table.as_str())];
                    push_line(&mut lines, ALERTS_TABLE, &fixed, &row_tags, s, t);
                    alerts.push(Alert {
                        database: active.db.clone(),
                        rule: rule.name.clone(),
                        table: rule.table.clone(),
                        time: t,
                        tags: row_tags,
                        score: s,
                    });
                }
            }
        }
        if !lines.is_empty() {
            let outcome = self
                .query
                .engine()
                .write_lp(&active.db, lines.as_bytes(), Precision::Nanosecond)
                .map_err(|e| format!("writing scores: {e}"))?;
            if let Some(error) = outcome.errors.first() {
                return Err(format!("writing scores: {}", error.message));
            }
        }
        active.stats.rows.fetch_add(scored_rows, Ordering::Relaxed);
        active
            .stats
            .alerts
            .fetch_add(alerts.len() as u64, Ordering::Relaxed);
        for alert in alerts {
            if let Some(url) = &rule.webhook {
                self.webhooks.send(url, alert.to_json());
            }
            // No listener is fine.
            let _ = self.query.scoring().alerts.send(Arc::new(alert));
        }
        Ok(())
    }
}

/// Appends a line-protocol line: `table,<fixed tags>,<row tags> score=<score> <time>`. A
/// row tag named as a fixed one is written as `row_<name>`.
fn push_line(
    out: &mut String,
    table: &str,
    fixed: &[(&str, &str)],
    tags: &[(String, String)],
    score: f64,
    time: i64,
) {
    use std::fmt::Write as _;
    escape_into(out, table, Element::Measurement);
    for (key, value) in fixed {
        out.push(',');
        escape_into(out, key, Element::Key);
        out.push('=');
        escape_into(out, value, Element::Key);
    }
    for (key, value) in tags {
        out.push(',');
        if fixed.iter().any(|(k, _)| k == key) {
            out.push_str("row_");
        }
        escape_into(out, key, Element::Key);
        out.push('=');
        escape_into(out, value, Element::Key);
    }
    let _ = writeln!(out, " score={score:?} {time}");
}
