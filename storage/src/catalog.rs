//! The catalog: databases, tables, their columns and types, and the segments that hold their
//! data. Persisted as one JSON document, replaced atomically (see [`crate::paths`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::delete::Tombstone;
use crate::lineproto::FieldValue;
use crate::paths;

#[cfg(test)]
mod tests;

/// The name of every table's timestamp column.
pub const TIME_COLUMN: &str = "time";

/// Arrow field metadata key saying whether a column is a `tag`, a `field` or the `time`.
pub const COLUMN_KIND_KEY: &str = "gannet.kind";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog file {path} is not a valid catalog: {source}")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error("catalog file {path} has format version {found}; this build reads version {expected}")]
    Version {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
}

/// The type of a column, in InfluxDB's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Tag,
    Time,
    Float,
    Integer,
    #[serde(rename = "unsigned")]
    UInteger,
    String,
    Boolean,
}

impl ColumnType {
    pub fn of_field(value: &FieldValue<'_>) -> ColumnType {
        match value {
            FieldValue::Float(_) => ColumnType::Float,
            FieldValue::Integer(_) => ColumnType::Integer,
            FieldValue::UInteger(_) => ColumnType::UInteger,
            FieldValue::String(_) => ColumnType::String,
            FieldValue::Boolean(_) => ColumnType::Boolean,
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Tag => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            ColumnType::Time => DataType::Timestamp(TimeUnit::Nanosecond, None),
            ColumnType::Float => DataType::Float64,
            ColumnType::Integer => DataType::Int64,
            ColumnType::UInteger => DataType::UInt64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            ColumnType::Tag => "tag",
            ColumnType::Time => "time",
            _ => "field",
        }
    }

    /// The Arrow field of a column of this type.
    pub fn arrow_field(self, name: &str) -> Field {
        Field::new(name, self.arrow_type(), self != ColumnType::Time)
            .with_metadata([(COLUMN_KIND_KEY.to_owned(), self.kind().to_owned())].into())
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Tag => "tag",
            ColumnType::Time => "time",
            ColumnType::Float => "float",
            ColumnType::Integer => "integer",
            ColumnType::UInteger => "unsigned",
            ColumnType::String => "string",
            ColumnType::Boolean => "boolean",
        })
    }
}

/// Identifies a segment file; also its order: a larger id holds newer writes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct SegmentId(pub u64);

/// A Parquet segment of a table, as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: SegmentId,
    /// Start of the time window the segment belongs to (nanoseconds since the epoch).
    pub window_start: i64,
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Path relative to the data directory.
    pub path: String,
    /// The highest WAL sequence number whose rows this segment holds.
    pub max_seq: u64,
    /// Deletes up to this sequence number have been carried out on this segment's rows.
    #[serde(default)]
    pub deletes_applied: u64,
}

impl SegmentMeta {
    /// The catalog entry of a segment file just written.
    pub fn written(
        id: SegmentId,
        window_start: i64,
        path: String,
        info: crate::segment::SegmentInfo,
        max_seq: u64,
        deletes_applied: u64,
    ) -> SegmentMeta {
        SegmentMeta {
            id,
            window_start,
            min_time: info.min_time,
            max_time: info.max_time,
            rows: info.rows,
            bytes: info.bytes,
            path,
            max_seq,
            deletes_applied,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableDef {
    pub id: u32,
    pub name: String,
    /// Columns in the order they were created; `time` is always there.
    pub columns: Vec<ColumnDef>,
    #[serde(default)]
    pub segments: Vec<SegmentMeta>,
    /// Deletes that still hide rows of some segments (see [`crate::delete`]).
    #[serde(default)]
    pub tombstones: Vec<Tombstone>,
    /// The tags segments are sorted by first, in this order: chosen at the table's first
    /// flush, the tag with the most distinct values first, so that a query for one series
    /// (`host = 'a'`) reads a few pages of each segment (the Parquet page index says which).
    /// Tags that appear later are appended at the flush that first sees them.
    #[serde(default)]
    pub sort_tags: Vec<String>,
    #[serde(skip)]
    schema: Option<SchemaRef>,
}

impl TableDef {
    fn new(id: u32, name: &str) -> TableDef {
        let mut table = TableDef {
            id,
            name: name.to_owned(),
            columns: vec![ColumnDef {
                name: TIME_COLUMN.to_owned(),
                column_type: ColumnType::Time,
            }],
            segments: Vec::new(),
            tombstones: Vec::new(),
            sort_tags: Vec::new(),
            schema: None,
        };
        table.refresh_schema();
        table
    }

    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.column_type)
    }

    /// Adds a column; the caller has checked that no column of that name exists.
    pub fn add_column(&mut self, name: &str, column_type: ColumnType) {
        debug_assert!(self.column_type(name).is_none());
        self.columns.push(ColumnDef {
            name: name.to_owned(),
            column_type,
        });
        self.refresh_schema();
    }

    /// The table's Arrow schema: tags by name, then fields by name, then `time`.
    pub fn schema(&self) -> SchemaRef {
        self.schema
            .clone()
            .expect("schema is built on every change")
    }

    /// Tag column names in sort-key order.
    pub fn tag_columns(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self
            .columns
            .iter()
            .filter(|c| c.column_type == ColumnType::Tag)
            .map(|c| c.name.as_str())
            .collect();
        tags.sort_unstable();
        tags
    }

    /// The columns segments are sorted by (see [`TableDef::sort_tags`]).
    pub fn sort_key(&self) -> Vec<usize> {
        crate::dedup::sort_key(&self.schema(), &self.sort_tags)
    }

    /// Tags not in [`TableDef::sort_tags`] yet.
    pub fn unsorted_tags(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.column_type == ColumnType::Tag && !self.sort_tags.contains(&c.name))
            .map(|c| c.name.clone())
            .collect()
    }

    fn refresh_schema(&mut self) {
        let mut columns: Vec<&ColumnDef> = self.columns.iter().collect();
        let rank = |t: ColumnType| match t {
            ColumnType::Tag => 0,
            ColumnType::Time => 2,
            _ => 1,
        };
        columns.sort_by(|a, b| (rank(a.column_type), &a.name).cmp(&(rank(b.column_type), &b.name)));
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| c.column_type.arrow_field(&c.name))
            .collect();
        self.schema = Some(Arc::new(Schema::new(fields)));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseDef {
    pub id: u32,
    pub name: String,
    /// Segments whose newest row is older than this many nanoseconds are dropped.
    #[serde(default)]
    pub retention_ns: Option<i64>,
    pub tables: BTreeMap<String, TableDef>,
    /// Models bound to tables, by rule name (see [`ScoringRule`]).
    #[serde(default)]
    pub scoring_rules: BTreeMap<String, ScoringRule>,
}

/// A scoring rule: every write to `table` acknowledged after the rule was made is scored by
/// `expression`, and the rows for which `condition` holds are alerts. The storage engine keeps
/// rules and how far their scoring got; the query engine parses and runs the SQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringRule {
    pub name: String,
    pub table: String,
    /// SQL over the table's columns giving the score: `onnx_predict('fraud', amount, ...)`.
    pub expression: String,
    /// SQL over `score` and the table's columns: which scores are alerts.
    #[serde(default)]
    pub condition: Option<String>,
    /// Where alerts are also POSTed.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Writes with a higher WAL sequence number are scored.
    pub from_seq: u64,
    /// When the rule was made (nanoseconds since the epoch).
    pub created_at: i64,
}

/// The whole catalog. Cloned to persist it; changed only under the engine's lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    /// Version of the file format.
    pub format_version: u32,
    /// Incremented on every persisted change.
    pub version: u64,
    pub next_id: u32,
    pub next_segment_id: u64,
    /// The highest WAL sequence number applied when this catalog was written: sequence
    /// numbers continue above it even after every WAL file is gone.
    #[serde(default)]
    pub last_seq: u64,
    pub databases: BTreeMap<String, DatabaseDef>,
}

const FORMAT_VERSION: u32 = 1;

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            format_version: FORMAT_VERSION,
            version: 0,
            next_id: 1,
            next_segment_id: 1,
            last_seq: 0,
            databases: BTreeMap::new(),
        }
    }
}

/// Checks a database or table name: non-empty, at most 255 bytes, no control characters.
pub fn validate_name(name: &str) -> Result<(), CatalogError> {
    let reason = if name.is_empty() {
        "names cannot be empty"
    } else if name.len() > 255 {
        "names are at most 255 bytes"
    } else if name.chars().any(char::is_control) {
        "names cannot contain control characters"
    } else {
        return Ok(());
    };
    Err(CatalogError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

impl Catalog {
    /// Loads the catalog of a data directory, or an empty one if it has none yet.
    pub fn load(data_dir: &Path) -> Result<Catalog, CatalogError> {
        let path = paths::catalog_file(data_dir);
        let shown = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Catalog::default()),
            Err(source) => {
                return Err(CatalogError::Io {
                    path: shown,
                    source,
                });
            }
        };
        let mut catalog: Catalog =
            serde_json::from_slice(&bytes).map_err(|source| CatalogError::Corrupt {
                path: shown.clone(),
                source,
            })?;
        if catalog.format_version != FORMAT_VERSION {
            return Err(CatalogError::Version {
                path: shown,
                found: catalog.format_version,
                expected: FORMAT_VERSION,
            });
        }
        for db in catalog.databases.values_mut() {
            for table in db.tables.values_mut() {
                table.refresh_schema();
            }
        }
        Ok(catalog)
    }

    /// Writes the catalog atomically: a crash leaves either the old or the new file.
    pub fn persist(&self, data_dir: &Path) -> Result<(), CatalogError> {
        let path = paths::catalog_file(data_dir);
        let json = serde_json::to_vec_pretty(self).expect("catalog serialises");
        paths::write_atomic(&path, &json).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseDef> {
        self.databases.get(name)
    }

    pub fn table(&self, db: &str, table: &str) -> Option<&TableDef> {
        self.databases.get(db)?.tables.get(table)
    }

    pub fn table_mut(&mut self, db: &str, table: &str) -> Option<&mut TableDef> {
        self.databases.get_mut(db)?.tables.get_mut(table)
    }

    /// Removes a table; returns its definition (and so its segments) if it existed.
    pub fn drop_table(&mut self, db: &str, table: &str) -> Option<TableDef> {
        self.databases.get_mut(db)?.tables.remove(table)
    }

    /// Creates a database if it does not exist. Returns whether it was created.
    pub fn create_database(&mut self, name: &str) -> Result<bool, CatalogError> {
        validate_name(name)?;
        if self.databases.contains_key(name) {
            return Ok(false);
        }
        let id = self.take_id();
        self.databases.insert(
            name.to_owned(),
            DatabaseDef {
                id,
                name: name.to_owned(),
                retention_ns: None,
                tables: BTreeMap::new(),
                scoring_rules: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    /// Returns the table, creating it (and its database) if needed.
    pub fn table_or_create(
        &mut self,
        db: &str,
        table: &str,
    ) -> Result<&mut TableDef, CatalogError> {
        validate_name(table)?;
        self.create_database(db)?;
        if !self.databases[db].tables.contains_key(table) {
            let id = self.take_id();
            let def = TableDef::new(id, table);
            self.databases
                .get_mut(db)
                .expect("created above")
                .tables
                .insert(table.to_owned(), def);
        }
        Ok(self.table_mut(db, table).expect("created above"))
    }

    pub fn next_segment_id(&mut self) -> SegmentId {
        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        id
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}
