//! Checks parsed lines against the catalog and turns the good ones into Arrow batches.
//!
//! A tag or field whose column exists with another type rejects its line, with a message
//! naming the table, the column and both types; new tags and fields become columns. The
//! common case (no new column) runs under the catalog's read lock; only a write that adds
//! columns takes the write lock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{Int32Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::catalog::{Catalog, CatalogError, ColumnType, TIME_COLUMN, TableDef};
use crate::config::WriteLimits;
use crate::lineproto::{FieldValue, LineError, ParsedLine, parse_lines};
use crate::precision::Precision;

#[cfg(test)]
mod tests;

/// The rows of one table in one write, as an Arrow batch holding only the columns written.
#[derive(Debug, Clone)]
pub struct TableBatch {
    pub table: String,
    pub batch: RecordBatch,
}

/// A write whose lines have been checked against the catalog.
#[derive(Debug)]
pub struct ValidatedWrite {
    pub db: String,
    pub tables: Vec<TableBatch>,
    /// Lines accepted (each is one row).
    pub rows: usize,
    pub errors: Vec<LineError>,
}

/// Validates line-protocol `body` for database `db`. Timestamps are converted from
/// `precision` to nanoseconds; lines without one get `now_ns`.
///
/// A write whose tables and columns all exist, the common one, is checked and appended to
/// its batches line by line as it is parsed, under the catalog's read lock, and holds no
/// more than one parsed line at a time. A write that brings a table or a column starts
/// over on [`validate_lines`], which adds them.
pub fn validate(
    catalog: &RwLock<Catalog>,
    db: &str,
    body: &[u8],
    precision: Precision,
    now_ns: i64,
    limits: &WriteLimits,
) -> Result<ValidatedWrite, CatalogError> {
    crate::catalog::validate_name(db)?;
    {
        let cat = catalog.read().expect("catalog lock");
        if let Some(write) = stream(&cat, db, body, precision, now_ns, limits) {
            return Ok(write);
        }
    }
    validate_lines(catalog, db, parse_lines(body), precision, now_ns, limits)
}

/// A table's batch being built by [`stream`].
struct OpenTable<'t, 'a> {
    name: String,
    builder: BatchBuilder<'t, 'a>,
    columns: Resolver<'t>,
}

/// [`validate`]'s one pass; `None` as soon as a line names a table or column that `cat`
/// does not have.
fn stream<'a>(
    cat: &Catalog,
    db: &str,
    body: &'a [u8],
    precision: Precision,
    now_ns: i64,
    limits: &WriteLimits,
) -> Option<ValidatedWrite> {
    let at = Intake {
        precision,
        now_ns,
        cutoff: retention_cutoff(cat, db, now_ns),
        db,
    };
    // Room for every line in the first table's columns (most bodies have one table); the
    // others start small and grow as they need to: a body of one line per table for
    // thousands of tables must not reserve thousands of rows for each. `finish` gives
    // back what a batch did not use.
    let mut room = memchr::memchr_iter(b'\n', body).count()
        + usize::from(body.last().is_some_and(|&b| b != b'\n'));
    let mut tables: Vec<OpenTable<'_, 'a>> = Vec::new();
    let mut table_index: HashMap<String, usize> = HashMap::new();
    let mut previous: Option<usize> = None;
    let mut errors = Vec::new();
    let mut lines = parse_lines(body);
    while let Some(line) = lines.next() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Err(message) = check_sizes(&line, limits) {
            errors.push(line_error(&line, message));
            lines.recycle(line);
            continue;
        }
        let same = previous.filter(|&i: &usize| *tables[i].name == *line.measurement);
        let i = match same.or_else(|| table_index.get(line.measurement.as_ref()).copied()) {
            Some(i) => i,
            None => {
                let table = cat.table(db, &line.measurement)?;
                tables.push(OpenTable {
                    name: line.measurement.to_string(),
                    builder: BatchBuilder::new(table, room),
                    columns: Resolver::new(table),
                });
                room = room.min(64);
                table_index.insert(line.measurement.to_string(), tables.len() - 1);
                tables.len() - 1
            }
        };
        previous = Some(i);
        let OpenTable {
            builder, columns, ..
        } = &mut tables[i];
        match at.take(builder, columns, &line) {
            Taken::Appended => {}
            Taken::Incomplete => return None,
            Taken::Refused(message) => errors.push(line_error(&line, message)),
        }
        lines.recycle(line);
    }
    let mut rows = 0;
    let tables = tables
        .into_iter()
        .filter(|t| t.builder.rows > 0)
        .map(|t| {
            rows += t.builder.rows;
            TableBatch {
                table: t.name,
                batch: t.builder.finish(),
            }
        })
        .collect();
    Some(ValidatedWrite {
        db: db.to_owned(),
        tables,
        rows,
        errors,
    })
}

/// Validates `lines` (the output of the parser, errors included) for database `db`, adding
/// the tables and columns they bring. See [`validate`].
pub fn validate_lines<'a>(
    catalog: &RwLock<Catalog>,
    db: &str,
    lines: impl IntoIterator<Item = Result<ParsedLine<'a>, LineError>>,
    precision: Precision,
    now_ns: i64,
    limits: &WriteLimits,
) -> Result<ValidatedWrite, CatalogError> {
    crate::catalog::validate_name(db)?;
    let mut errors = Vec::new();
    let mut by_table: Vec<(String, Vec<ParsedLine<'a>>)> = Vec::new();
    let mut table_index: HashMap<String, usize> = HashMap::new();
    let mut previous: Option<usize> = None;
    for line in lines {
        match line {
            Ok(line) => {
                if let Err(message) = check_sizes(&line, limits) {
                    errors.push(line_error(&line, message));
                    continue;
                }
                // Lines of one table usually come together: try the previous line's first.
                let same = previous.filter(|&i: &usize| *by_table[i].0 == *line.measurement);
                let i = match same.or_else(|| table_index.get(line.measurement.as_ref()).copied()) {
                    Some(i) => i,
                    None => {
                        by_table.push((line.measurement.to_string(), Vec::new()));
                        table_index.insert(line.measurement.to_string(), by_table.len() - 1);
                        by_table.len() - 1
                    }
                };
                previous = Some(i);
                by_table[i].1.push(line);
            }
            Err(e) => errors.push(e),
        }
    }

    // Lines refused while adding their columns (a limit, a type conflict), by line number.
    let mut refused: HashMap<usize, String> = HashMap::new();
    // Usually every column exists already: build the batches under the read lock. A line
    // that brings a new column stops that, and its columns are added under the write lock
    // first. (Only a table dropped and made again in between needs a third look.)
    for attempt in 0.. {
        {
            let cat = catalog.read().expect("catalog lock");
            let last = attempt >= 2;
            if let Some(built) = build(&cat, db, &by_table, precision, now_ns, &refused, last) {
                errors.extend(built.errors);
                errors.sort_by_key(|e| e.line_number);
                return Ok(ValidatedWrite {
                    db: db.to_owned(),
                    tables: built.tables,
                    rows: built.rows,
                    errors,
                });
            }
        }
        let mut cat = catalog.write().expect("catalog lock");
        add_columns(
            &mut cat,
            db,
            &by_table,
            precision,
            now_ns,
            limits,
            &mut refused,
        );
    }
    unreachable!("the third build accepts missing columns")
}

/// Batches built from a write's lines, and the lines refused while building them.
struct Built {
    tables: Vec<TableBatch>,
    rows: usize,
    errors: Vec<LineError>,
}

/// Builds every table's batch; `None` if some line has a column the catalog does not have
/// (unless `last`, when such lines are refused instead).
fn build<'l>(
    cat: &Catalog,
    db: &str,
    by_table: &'l [(String, Vec<ParsedLine<'l>>)],
    precision: Precision,
    now_ns: i64,
    refused: &HashMap<usize, String>,
    last: bool,
) -> Option<Built> {
    let at = Intake {
        precision,
        now_ns,
        cutoff: retention_cutoff(cat, db, now_ns),
        db,
    };
    let mut built = Built {
        tables: Vec::with_capacity(by_table.len()),
        rows: 0,
        errors: Vec::new(),
    };
    for (name, lines) in by_table {
        let Some(table) = cat.table(db, name) else {
            if !last && lines.iter().any(|l| !refused.contains_key(&l.line_number)) {
                return None;
            }
            // Every line refused while adding columns (or the table dropped meanwhile).
            let dropped = format!("table '{name}' was dropped while this write was checked");
            built.errors.extend(
                lines.iter().map(|l| {
                    line_error(l, refused.get(&l.line_number).unwrap_or(&dropped).clone())
                }),
            );
            continue;
        };
        let mut builder = BatchBuilder::new(table, lines.len());
        let mut columns = Resolver::new(table);
        for line in lines {
            if let Some(message) = (!refused.is_empty())
                .then(|| refused.get(&line.line_number))
                .flatten()
            {
                built.errors.push(line_error(line, message.clone()));
                continue;
            }
            match at.take(&mut builder, &mut columns, line) {
                Taken::Appended => {}
                Taken::Incomplete if !last => return None,
                Taken::Incomplete => {
                    let message = format!("a column of table '{name}' was dropped meanwhile");
                    built.errors.push(line_error(line, message));
                }
                Taken::Refused(message) => built.errors.push(line_error(line, message)),
            }
        }
        if builder.rows > 0 {
            built.rows += builder.rows;
            built.tables.push(TableBatch {
                table: name.clone(),
                batch: builder.finish(),
            });
        }
    }
    Some(built)
}

/// What a line is checked against besides its table: the write's precision, the time
/// given to lines without one, and the database's retention cutoff.
struct Intake<'w> {
    precision: Precision,
    now_ns: i64,
    cutoff: Option<i64>,
    db: &'w str,
}

/// What became of a line given to [`Intake::take`].
enum Taken {
    Appended,
    /// It writes a column its table does not have (yet).
    Incomplete,
    Refused(String),
}

impl Intake<'_> {
    /// Checks `line` against its table (through `columns`) and appends it to `builder` if
    /// it agrees and is within retention.
    fn take<'l>(
        &self,
        builder: &mut BatchBuilder<'_, 'l>,
        columns: &mut Resolver<'_>,
        line: &ParsedLine<'l>,
    ) -> Taken {
        let known = builder.find_series(line.series);
        match check_line(columns, line, self.precision, known.is_none()) {
            Ok(Checked {
                complete: false, ..
            }) => Taken::Incomplete,
            Ok(Checked { timestamp, .. }) => {
                let ts = timestamp.unwrap_or(self.now_ns);
                if self.cutoff.is_some_and(|c| ts < c) {
                    return Taken::Refused(too_old(ts, self.db));
                }
                builder.append(line, known, ts, columns);
                Taken::Appended
            }
            Err(message) => Taken::Refused(message),
        }
    }
}

/// The oldest time database `db` accepts, if it has a retention period.
fn retention_cutoff(cat: &Catalog, db: &str, now_ns: i64) -> Option<i64> {
    cat.database(db)
        .and_then(|d| d.retention_ns)
        .map(|r| now_ns.saturating_sub(r))
}

fn too_old(ts: i64, db: &str) -> String {
    format!("timestamp {ts} is older than the retention period of database '{db}'")
}

/// Makes the tables and columns a write's lines bring, under the catalog's write lock.
/// Lines refused (a limit, a type conflict, a time past retention) are put in `refused` with
/// their message; a table none of whose lines is good is not made: a bad line leaves no trace.
fn add_columns(
    cat: &mut Catalog,
    db: &str,
    by_table: &[(String, Vec<ParsedLine<'_>>)],
    precision: Precision,
    now_ns: i64,
    limits: &WriteLimits,
    refused: &mut HashMap<usize, String>,
) {
    let cutoff = retention_cutoff(cat, db, now_ns);
    for (name, lines) in by_table {
        let new_table = cat.table(db, name).is_none();
        let tables = cat.database(db).map_or(0, |d| d.tables.len());
        let table = if new_table && tables >= limits.max_tables_per_database {
            Err(format!(
                "table '{name}' would be the {}th of database '{db}'; the limit is {} \
                 tables per database",
                tables + 1,
                limits.max_tables_per_database
            ))
        } else {
            cat.table_or_create(db, name).map_err(|e| e.to_string())
        };
        let table = match table {
            Ok(table) => table,
            Err(message) => {
                for line in lines {
                    // A line refused earlier keeps its own reason.
                    refused
                        .entry(line.line_number)
                        .or_insert_with(|| message.clone());
                }
                continue;
            }
        };
        let mut any_good = false;
        for line in lines {
            if refused.contains_key(&line.line_number) {
                continue;
            }
            let added = check_line(&mut Resolver::new(table), line, precision, true)
                .and_then(|checked| {
                    let ts = checked.timestamp.unwrap_or(now_ns);
                    match cutoff {
                        Some(c) if ts < c => Err(too_old(ts, db)),
                        _ => Ok(()),
                    }
                })
                .and_then(|()| add_new_columns(table, line, limits));
            match added {
                Ok(()) => any_good = true,
                Err(message) => {
                    refused.insert(line.line_number, message);
                }
            }
        }
        if new_table && !any_good {
            cat.drop_table(db, name);
        }
    }
}

/// Validates `body` into database `db` with timestamps in `precision`, for tests that need
/// batches as a write makes them. Panics on any rejected line.
#[cfg(test)]
pub(crate) fn test_write(
    catalog: &RwLock<Catalog>,
    body: &str,
    precision: Precision,
) -> ValidatedWrite {
    let limits = WriteLimits::default();
    let write =
        validate(catalog, "db", body.as_bytes(), precision, 0, &limits).expect("valid names");
    assert!(write.errors.is_empty(), "{:?}", write.errors);
    write
}

fn line_error(line: &ParsedLine<'_>, message: String) -> LineError {
    LineError {
        line_number: line.line_number,
        original_line: line.raw.to_owned(),
        message,
    }
}

/// Looks up a table's columns by name, remembering the column found at each key position
/// of the previous line: lines of one table usually repeat their keys in the same order, so
/// most look-ups are one comparison.
struct Resolver<'t> {
    table: &'t TableDef,
    tags: Vec<usize>,
    fields: Vec<usize>,
}

impl<'t> Resolver<'t> {
    fn new(table: &'t TableDef) -> Self {
        Resolver {
            table,
            tags: Vec::new(),
            fields: Vec::new(),
        }
    }

    fn column_type(&mut self, key: &str, is_tag: bool, position: usize) -> Option<ColumnType> {
        let cache = if is_tag {
            &mut self.tags
        } else {
            &mut self.fields
        };
        if let Some(&i) = cache.get(position)
            && let Some(column) = self.table.columns.get(i)
            && same_key(&column.name, key)
        {
            return Some(column.column_type);
        }
        let i = self.table.columns.iter().position(|c| c.name == key)?;
        if cache.len() <= position {
            cache.resize(position + 1, usize::MAX);
        }
        cache[position] = i;
        Some(self.table.columns[i].column_type)
    }
}

/// `a == b`, inline for the short keys lines repeat: two overlapping 8-byte loads per side
/// for 8 to 16 bytes, instead of a call to `memcmp`.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
}

/// Adds the columns a line brings, unless they would take its table past its column limit
/// or one key is both a tag and a field of the line.
fn add_new_columns(
    table: &mut TableDef,
    line: &ParsedLine<'_>,
    limits: &WriteLimits,
) -> Result<(), String> {
    if let Some((key, _)) = line
        .tags
        .iter()
        .find(|(tag, _)| line.fields.iter().any(|(field, _)| field == tag))
    {
        return Err(format!(
            "'{key}' is both a tag and a field of this line; a column is one or the other"
        ));
    }
    let tags = line.tags.iter().map(|(key, _)| key.as_ref());
    let fields = line.fields.iter().map(|(key, _)| key.as_ref());
    let mut new: Vec<&str> = tags
        .chain(fields)
        .filter(|key| table.column_type(key).is_none())
        .collect();
    new.sort_unstable();
    new.dedup();
    if table.columns.len() + new.len() > limits.max_columns_per_table {
        return Err(format!(
            "this line would give table '{}' {} columns; the limit is {} columns per table",
            table.name,
            table.columns.len() + new.len(),
            limits.max_columns_per_table
        ));
    }
    for (key, _) in line.tags.iter() {
        if table.column_type(key).is_none() {
            table.add_column(key, ColumnType::Tag);
        }
    }
    for (key, value) in &line.fields {
        if table.column_type(key).is_none() {
            table.add_column(key, ColumnType::of_field(value));
        }
    }
    Ok(())
}

/// Checks a line's length and its string fields' against the limits.
fn check_sizes(line: &ParsedLine<'_>, limits: &WriteLimits) -> Result<(), String> {
    if line.raw.len() > limits.max_line_bytes {
        return Err(format!(
            "the line is {} bytes long; the limit is {} bytes per line",
            line.raw.len(),
            limits.max_line_bytes
        ));
    }
    for (key, value) in &line.fields {
        if let FieldValue::String(s) = value
            && s.len() > limits.max_string_bytes
        {
            return Err(format!(
                "string field '{key}' is {} bytes long; the limit is {} bytes per string",
                s.len(),
                limits.max_string_bytes
            ));
        }
    }
    Ok(())
}

/// A line that agrees with its table.
struct Checked {
    /// In nanoseconds; `None` takes the server's time.
    timestamp: Option<i64>,
    /// Whether the table has every column the line writes.
    complete: bool,
}

/// Checks a line against its table. Columns the table does not have yet are accepted
/// (`complete` is false: the caller adds them).
/// `check_tags` is false for a series already checked in this batch: same text, same tags.
fn check_line(
    columns: &mut Resolver<'_>,
    line: &ParsedLine<'_>,
    precision: Precision,
    check_tags: bool,
) -> Result<Checked, String> {
    let table = columns.table;
    let tags = if check_tags { &line.tags[..] } else { &[] };
    // Every table has a `time` column, so a key named `time` resolves to it.
    let mut complete = true;
    for (position, (key, _)) in tags.iter().enumerate() {
        match columns.column_type(key, true, position) {
            None => complete = false,
            Some(ColumnType::Tag) => {}
            Some(ColumnType::Time) => {
                return Err(format!(
                    "tag key '{TIME_COLUMN}' is reserved for the timestamp"
                ));
            }
            Some(existing) => {
                return Err(format!(
                    "column '{key}' of table '{}' is a {existing} field; this line writes it as a tag",
                    table.name
                ));
            }
        }
    }
    for (position, (key, value)) in line.fields.iter().enumerate() {
        let new = ColumnType::of_field(value);
        match columns.column_type(key, false, position) {
            None => complete = false,
            Some(existing) if existing == new => {}
            Some(ColumnType::Time) => {
                return Err(format!(
                    "field key '{TIME_COLUMN}' is reserved for the timestamp"
                ));
            }
            Some(ColumnType::Tag) => {
                return Err(format!(
                    "column '{key}' of table '{}' is a tag; this line writes it as a {new} field",
                    table.name
                ));
            }
            Some(existing) => {
                return Err(format!(
                    "field '{key}' of table '{}' has type {existing}; this line writes {new}",
                    table.name
                ));
            }
        }
    }
    let timestamp = match line.timestamp {
        None => None,
        Some(ts) => match precision.to_nanos(ts) {
            Some(ns) => Some(ns),
            None => Err(format!(
                "timestamp {ts} in precision {precision} is outside the range of nanosecond timestamps"
            ))?,
        },
    };
    Ok(Checked {
        timestamp,
        complete,
    })
}

enum ColumnBuilder<'l> {
    Tag(TagBuilder<'l>),
    Float(Float64Builder),
    Integer(Int64Builder),
    UInteger(UInt64Builder),
    String(StringBuilder),
    Boolean(BooleanBuilder),
}

impl<'l> ColumnBuilder<'l> {
    /// A builder sized for `rows` rows, so that small writes do not carry large buffers.
    fn new(column_type: ColumnType, rows: usize) -> ColumnBuilder<'l> {
        match column_type {
            ColumnType::Tag => ColumnBuilder::Tag(TagBuilder::with_capacity(rows)),
            ColumnType::Float => ColumnBuilder::Float(Float64Builder::with_capacity(rows)),
            ColumnType::Integer => ColumnBuilder::Integer(Int64Builder::with_capacity(rows)),
            ColumnType::UInteger => ColumnBuilder::UInteger(UInt64Builder::with_capacity(rows)),
            ColumnType::String => {
                ColumnBuilder::String(StringBuilder::with_capacity(rows, rows * 8))
            }
            ColumnType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(rows)),
            ColumnType::Time => unreachable!("time has its own builder"),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Tag(b) => b.append_null(),
            ColumnBuilder::Float(b) => b.append_null(),
            ColumnBuilder::Integer(b) => b.append_null(),
            ColumnBuilder::UInteger(b) => b.append_null(),
            ColumnBuilder::String(b) => b.append_null(),
            ColumnBuilder::Boolean(b) => b.append_null(),
        }
    }

    fn append_field(&mut self, value: &FieldValue<'_>) {
        match (self, value) {
            (ColumnBuilder::Float(b), FieldValue::Float(v)) => b.append_value(*v),
            (ColumnBuilder::Integer(b), FieldValue::Integer(v)) => b.append_value(*v),
            (ColumnBuilder::UInteger(b), FieldValue::UInteger(v)) => b.append_value(*v),
            (ColumnBuilder::String(b), FieldValue::String(v)) => b.append_value(v),
            (ColumnBuilder::Boolean(b), FieldValue::Boolean(v)) => b.append_value(*v),
            _ => unreachable!("types were checked against the catalog"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Tag(b) => b.finish(),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Integer(b) => Arc::new(b.finish()),
            ColumnBuilder::UInteger(b) => Arc::new(b.finish()),
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

/// A dictionary-encoded tag column that can take a key it handed out before, so that a
/// series seen earlier in the batch costs no hashing per tag (arrow's dictionary builder
/// hashes every value it is given).
struct TagBuilder<'l> {
    keys: Int32Builder,
    values: StringBuilder,
    index: HashMap<Cow<'l, str>, i32, ahash::RandomState>,
}

impl<'l> TagBuilder<'l> {
    fn with_capacity(rows: usize) -> Self {
        TagBuilder {
            keys: Int32Builder::with_capacity(rows),
            values: StringBuilder::new(),
            index: HashMap::default(),
        }
    }

    /// Appends `value`, returning its key.
    #[allow(clippy::ptr_arg)] // the index keeps a clone: a value borrowed from the body stays so
    fn append(&mut self, value: &Cow<'l, str>) -> i32 {
        let key = match self.index.get(value.as_ref()) {
            Some(&key) => key,
            None => {
                let key = self.index.len() as i32;
                self.values.append_value(value);
                self.index.insert(value.clone(), key);
                key
            }
        };
        self.keys.append_value(key);
        key
    }

    fn append_key(&mut self, key: i32) {
        self.keys.append_value(key);
    }

    fn append_null(&mut self) {
        self.keys.append_null();
    }

    fn len(&self) -> usize {
        arrow::array::ArrayBuilder::len(&self.keys)
    }

    fn finish(&mut self) -> ArrayRef {
        let keys = self.keys.finish();
        let values = Arc::new(self.values.finish());
        Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values).expect("keys index values"))
    }
}

/// The tags of one series in [`BatchBuilder::series_tags`].
#[derive(Debug, Clone, Copy)]
struct SeriesTags {
    start: usize,
    len: usize,
}

/// Builds one table's batch row by row, finding each key's column through the [`Resolver`]
/// that has just checked the line.
struct BatchBuilder<'t, 'l> {
    table: &'t TableDef,
    /// Column slots, created on first use, in order of first use.
    slots: Vec<(&'t str, ColumnBuilder<'l>)>,
    /// Series seen in this batch: where in `series_tags` their tags are.
    series: HashMap<&'l str, SeriesTags, ahash::RandomState>,
    /// The (slot, dictionary key) of each tag of each series seen.
    series_tags: Vec<(usize, i32)>,
    /// Slot of each table column (by index in `table.columns`), `usize::MAX` if unused.
    slot_of_column: Vec<usize>,
    time: TimestampNanosecondBuilder,
    rows: usize,
    /// Rows this batch will have at most.
    capacity: usize,
}

impl<'t, 'l> BatchBuilder<'t, 'l> {
    fn new(table: &'t TableDef, capacity: usize) -> Self {
        // (Series are keyed by their text, borrowed from the body like every tag value.)
        BatchBuilder {
            capacity,
            table,
            slots: Vec::new(),
            series: HashMap::default(),
            series_tags: Vec::new(),
            slot_of_column: vec![usize::MAX; table.columns.len()],
            time: TimestampNanosecondBuilder::with_capacity(capacity),
            rows: 0,
        }
    }

    /// The builder slot of table column `column`, created on first use.
    fn slot(&mut self, column: usize) -> usize {
        let slot = self.slot_of_column[column];
        if slot != usize::MAX {
            return slot;
        }
        let def = &self.table.columns[column];
        let mut builder = ColumnBuilder::new(def.column_type, self.capacity);
        for _ in 0..self.rows {
            builder.append_null();
        }
        self.slots.push((def.name.as_str(), builder));
        self.slot_of_column[column] = self.slots.len() - 1;
        self.slots.len() - 1
    }

    /// Where the tags of a series appended before are (its tags need no checking).
    fn find_series(&self, series: &str) -> Option<SeriesTags> {
        self.series.get(series).copied()
    }

    /// Appends a line that `columns` has just checked (so it knows every key's column);
    /// for a series seen before (`known`, from [`Self::find_series`]), only its fields.
    fn append(
        &mut self,
        line: &ParsedLine<'l>,
        known: Option<SeriesTags>,
        ts: i64,
        columns: &Resolver<'_>,
    ) {
        if let Some(SeriesTags { start, len }) = known {
            for &(slot, key) in &self.series_tags[start..start + len] {
                match &mut self.slots[slot].1 {
                    ColumnBuilder::Tag(b) => b.append_key(key),
                    _ => unreachable!("series tags are tag slots"),
                }
            }
        } else {
            let start = self.series_tags.len();
            for (position, (_, value)) in line.tags.iter().enumerate() {
                let slot = self.slot(columns.tags[position]);
                match &mut self.slots[slot].1 {
                    ColumnBuilder::Tag(b) => self.series_tags.push((slot, b.append(value))),
                    _ => unreachable!("types were checked against the catalog"),
                }
            }
            let len = line.tags.len();
            self.series.insert(line.series, SeriesTags { start, len });
        }
        for (position, (_, value)) in line.fields.iter().enumerate() {
            let slot = self.slot(columns.fields[position]);
            self.slots[slot].1.append_field(value);
        }
        self.time.append_value(ts);
        self.rows += 1;
        let written = line.tags.len() + line.fields.len();
        if written < self.slots.len() {
            for (_, builder) in &mut self.slots {
                if builder_len(builder) < self.rows {
                    builder.append_null();
                }
            }
        }
    }

    fn finish(mut self) -> RecordBatch {
        let schema = self.table.schema();
        let mut fields = Vec::with_capacity(self.slots.len() + 1);
        let mut arrays = Vec::with_capacity(self.slots.len() + 1);
        for field in schema.fields() {
            if field.name() == TIME_COLUMN {
                fields.push(field.clone());
                arrays.push(Arc::new(self.time.finish()) as ArrayRef);
            } else if let Some(slot) = self.slots.iter().position(|(name, _)| name == field.name())
            {
                fields.push(field.clone());
                arrays.push(self.slots[slot].1.finish());
            }
        }
        // Built for many more rows than came (blank lines, other tables' lines), or grown
        // past them: the buffer counts and keeps what the batch holds, not what it had
        // room for. Shrinking copies (arrow's buffers are 128-byte aligned, which realloc
        // cannot keep in place), so a little slack stays.
        if self.capacity.abs_diff(self.rows) > self.rows / 8 {
            for array in &mut arrays {
                if let Some(array) = Arc::get_mut(array) {
                    array.shrink_to_fit();
                }
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("builders produce arrays of the schema's types and equal lengths")
    }
}

fn builder_len(builder: &ColumnBuilder<'_>) -> usize {
    use arrow::array::ArrayBuilder;
    match builder {
        ColumnBuilder::Tag(b) => b.len(),
        ColumnBuilder::Float(b) => b.len(),
        ColumnBuilder::Integer(b) => b.len(),
        ColumnBuilder::UInteger(b) => b.len(),
        ColumnBuilder::String(b) => b.len(),
        ColumnBuilder::Boolean(b) => b.len(),
    }
}
