//! Checks parsed lines against the catalog and turns the good ones into Arrow batches.
//!
//! A tag or field whose column exists with another type rejects its line, with a message
//! naming the table, the column and both types; new tags and fields become columns. The
//! common case (no new column) runs under the catalog's read lock; only a write that adds
//! columns takes the write lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{Int32Type, Schema};
use arrow::record_batch::RecordBatch;

use crate::catalog::{Catalog, CatalogError, ColumnType, TIME_COLUMN, TableDef};
use crate::lineproto::{FieldValue, LineError, ParsedLine};
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

/// Validates `lines` (the output of the parser, errors included) for database `db`.
/// Timestamps are converted from `precision` to nanoseconds; lines without one get `now_ns`.
pub fn validate<'a>(
    catalog: &RwLock<Catalog>,
    db: &str,
    lines: impl IntoIterator<Item = Result<ParsedLine<'a>, LineError>>,
    precision: Precision,
    now_ns: i64,
) -> Result<ValidatedWrite, CatalogError> {
    crate::catalog::validate_name(db)?;
    let mut errors = Vec::new();
    let mut by_table: Vec<(String, Vec<ParsedLine<'a>>)> = Vec::new();
    let mut table_index: HashMap<String, usize> = HashMap::new();
    for line in lines {
        match line {
            Ok(line) => {
                let i = match table_index.get(line.measurement.as_ref()) {
                    Some(&i) => i,
                    None => {
                        by_table.push((line.measurement.to_string(), Vec::new()));
                        table_index.insert(line.measurement.to_string(), by_table.len() - 1);
                        by_table.len() - 1
                    }
                };
                by_table[i].1.push(line);
            }
            Err(e) => errors.push(e),
        }
    }

    // Fast path: every column exists already.
    let needs_write = {
        let cat = catalog.read().expect("catalog lock");
        by_table
            .iter()
            .any(|(name, lines)| match cat.table(db, name) {
                None => true,
                Some(table) => {
                    let mut columns = Resolver::new(table);
                    lines.iter().any(|l| has_new_columns(&mut columns, l))
                }
            })
    };
    if needs_write {
        let mut cat = catalog.write().expect("catalog lock");
        for (name, lines) in &by_table {
            let table = match cat.table_or_create(db, name) {
                Ok(table) => table,
                Err(e) => {
                    let message = e.to_string();
                    errors.extend(lines.iter().map(|l| line_error(l, message.clone())));
                    continue;
                }
            };
            for line in lines {
                if check_line(&mut Resolver::new(table), line, precision).is_ok() {
                    add_new_columns(table, line);
                }
            }
        }
    }

    let cat = catalog.read().expect("catalog lock");
    let cutoff = cat
        .database(db)
        .and_then(|d| d.retention_ns)
        .map(|r| now_ns.saturating_sub(r));
    let mut tables = Vec::with_capacity(by_table.len());
    let mut rows = 0;
    for (name, lines) in by_table {
        let Some(table) = cat.table(db, &name) else {
            continue;
        };
        let mut builder = BatchBuilder::new(table, lines.len());
        let mut columns = Resolver::new(table);
        for line in &lines {
            match check_line(&mut columns, line, precision) {
                Ok(ts) => {
                    let ts = ts.unwrap_or(now_ns);
                    if cutoff.is_some_and(|c| ts < c) {
                        let message = format!(
                            "timestamp {ts} is older than the retention period of database '{db}'"
                        );
                        errors.push(line_error(line, message));
                        continue;
                    }
                    builder.append(line, ts, &columns)
                }
                Err(message) => errors.push(line_error(line, message)),
            }
        }
        if builder.rows > 0 {
            rows += builder.rows;
            tables.push(TableBatch {
                table: name,
                batch: builder.finish(),
            });
        }
    }
    errors.sort_by_key(|e| e.line_number);
    Ok(ValidatedWrite {
        db: db.to_owned(),
        tables,
        rows,
        errors,
    })
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
            && column.name == key
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

fn has_new_columns(columns: &mut Resolver<'_>, line: &ParsedLine<'_>) -> bool {
    let tags = line.tags.iter().enumerate();
    let fields = line.fields.iter().enumerate();
    tags.map(|(i, (k, _))| (i, k, true))
        .chain(fields.map(|(i, (k, _))| (i, k, false)))
        .any(|(i, k, is_tag)| columns.column_type(k, is_tag, i).is_none())
}

fn add_new_columns(table: &mut TableDef, line: &ParsedLine<'_>) {
    for (key, _) in &line.tags {
        if table.column_type(key).is_none() {
            table.add_column(key, ColumnType::Tag);
        }
    }
    for (key, value) in &line.fields {
        if table.column_type(key).is_none() {
            table.add_column(key, ColumnType::of_field(value));
        }
    }
}

/// Checks a line against its table; returns its timestamp in nanoseconds.
/// Columns the table does not have yet are accepted (the caller adds them).
fn check_line(
    columns: &mut Resolver<'_>,
    line: &ParsedLine<'_>,
    precision: Precision,
) -> Result<Option<i64>, String> {
    let table = columns.table;
    // Every table has a `time` column, so a key named `time` resolves to it.
    for (position, (key, _)) in line.tags.iter().enumerate() {
        match columns.column_type(key, true, position) {
            None | Some(ColumnType::Tag) => {}
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
            None => {}
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
    match line.timestamp {
        None => Ok(None),
        Some(ts) => match precision.to_nanos(ts) {
            Some(ns) => Ok(Some(ns)),
            None => Err(format!(
                "timestamp {ts} in precision {precision} is outside the range of nanosecond timestamps"
            )),
        },
    }
}

enum ColumnBuilder {
    Tag(StringDictionaryBuilder<Int32Type>),
    Float(Float64Builder),
    Integer(Int64Builder),
    UInteger(UInt64Builder),
    String(StringBuilder),
    Boolean(BooleanBuilder),
}

impl ColumnBuilder {
    /// A builder sized for `rows` rows, so that small writes do not carry large buffers.
    fn new(column_type: ColumnType, rows: usize) -> ColumnBuilder {
        match column_type {
            ColumnType::Tag => ColumnBuilder::Tag(StringDictionaryBuilder::with_capacity(
                rows,
                rows.min(64),
                rows.min(64) * 16,
            )),
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
            ColumnBuilder::Tag(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Integer(b) => Arc::new(b.finish()),
            ColumnBuilder::UInteger(b) => Arc::new(b.finish()),
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds one table's batch row by row, finding each key's column through the [`Resolver`]
/// that has just checked the line.
struct BatchBuilder<'t> {
    table: &'t TableDef,
    /// Column slots, created on first use, in order of first use.
    slots: Vec<(&'t str, ColumnBuilder)>,
    /// Slot of each table column (by index in `table.columns`), `usize::MAX` if unused.
    slot_of_column: Vec<usize>,
    time: TimestampNanosecondBuilder,
    rows: usize,
    /// Rows this batch will have at most.
    capacity: usize,
}

impl<'t> BatchBuilder<'t> {
    fn new(table: &'t TableDef, capacity: usize) -> Self {
        BatchBuilder {
            capacity,
            table,
            slots: Vec::new(),
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

    /// Appends a line that `columns` has just checked (so it knows every key's column).
    fn append(&mut self, line: &ParsedLine<'_>, ts: i64, columns: &Resolver<'_>) {
        for (position, (_, value)) in line.tags.iter().enumerate() {
            let slot = self.slot(columns.tags[position]);
            match &mut self.slots[slot].1 {
                ColumnBuilder::Tag(b) => {
                    b.append_value(value);
                }
                _ => unreachable!("types were checked against the catalog"),
            }
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
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("builders produce arrays of the schema's types and equal lengths")
    }
}

fn builder_len(builder: &ColumnBuilder) -> usize {
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
