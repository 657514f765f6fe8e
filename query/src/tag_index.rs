//! Tag indexes over buffered windows: a query for a few series (`host = 'a'`,
//! `host IN ('a', 'b')`) takes their rows of a window by a bitmap instead of filtering every
//! row. Segments need none: they are sorted by their most selective tag, and the Parquet page
//! index finds the pages (see `gannet_storage::catalog::TableDef::sort_tags`).
//!
//! A window's index is built from its rows the first time a query selects on that tag, and
//! kept with the window's merge in [`crate::table::MergedWindows`] for as long as the merge
//! is; a window the cache does not keep is scanned once for the values asked for (no index
//! is built for it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use gannet_storage::catalog::COLUMN_KIND_KEY;
use roaring::RoaringBitmap;

/// Rows must have one of `values` in tag `column`, for every entry.
pub(crate) type Selection = Vec<(String, Vec<String>)>;

/// The tag equalities of a scan's filters: `tag = 'v'`, `tag IN ('v', 'w')`, and ORs of
/// equalities on one tag. Anything else is left to the filters above the scan.
pub(crate) fn selection(filters: &[Expr], schema: &SchemaRef) -> Selection {
    let is_tag = |name: &str| {
        schema
            .field_with_name(name)
            .is_ok_and(|f| f.metadata().get(COLUMN_KIND_KEY).map(String::as_str) == Some("tag"))
    };
    let mut out: Selection = Vec::new();
    for filter in filters {
        for conjunct in split_conjunction(filter) {
            let mut column: Option<String> = None;
            let mut values = Vec::new();
            let mut all = true;
            for alternative in disjuncts(conjunct) {
                match equality(alternative) {
                    Some((c, v)) if column.as_ref().is_none_or(|known| *known == c) => {
                        column = Some(c);
                        values.extend(v);
                    }
                    _ => {
                        all = false;
                        break;
                    }
                }
            }
            if let (true, Some(column)) = (all, column)
                && is_tag(&column)
            {
                out.push((column, values));
            }
        }
    }
    out
}

/// The alternatives of an OR (the expression itself if it is none).
fn disjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut all = disjuncts(left);
            all.extend(disjuncts(right));
            all
        }
        other => vec![other],
    }
}

/// `column = 'v'` (either way round) or `column IN ('v', ...)`: the column and the values.
fn equality(expr: &Expr) -> Option<(String, Vec<String>)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (column_name(left), column_name(right)) {
            (Some(c), None) => Some((c, vec![text(right)?])),
            (None, Some(c)) => Some((c, vec![text(left)?])),
            _ => None,
        },
        Expr::InList(list) if !list.negated => {
            let c = column_name(&list.expr)?;
            let values = list.list.iter().map(text).collect::<Option<Vec<_>>>()?;
            Some((c, values))
        }
        _ => None,
    }
}

fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn text(expr: &Expr) -> Option<String> {
    fn scalar(value: &ScalarValue) -> Option<String> {
        match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
            ScalarValue::Dictionary(_, inner) => scalar(inner),
            _ => None,
        }
    }
    match expr {
        Expr::Literal(value, _) => scalar(value),
        Expr::Cast(c) => text(&c.expr),
        _ => None,
    }
}

/// Rows by tag value, for one tag column of one window's rows.
#[derive(Debug, Default)]
pub(crate) struct TagIndex {
    rows: HashMap<String, RoaringBitmap>,
}

impl TagIndex {
    fn build(column: &ArrayRef) -> Result<TagIndex> {
        let mut rows: HashMap<String, RoaringBitmap> = HashMap::new();
        if let Some(dictionary) = column.as_any_dictionary_opt() {
            // No values: every row is NULL (a tag the window's writes did not have).
            if dictionary.values().is_empty() {
                return Ok(TagIndex { rows });
            }
            // Rows per key first: a window's keys are few, its rows many.
            let values = cast(dictionary.values(), &DataType::Utf8)?;
            let values = values.as_string::<i32>();
            let mut by_key: Vec<RoaringBitmap> = vec![RoaringBitmap::new(); values.len()];
            let keys = dictionary.normalized_keys();
            for (row, &key) in keys.iter().enumerate() {
                if column.is_valid(row) {
                    by_key[key].insert(row as u32);
                }
            }
            for (key, bitmap) in by_key.into_iter().enumerate() {
                if !bitmap.is_empty() && values.is_valid(key) {
                    *rows.entry(values.value(key).to_owned()).or_default() |= bitmap;
                }
            }
        } else {
            let strings = cast(column, &DataType::Utf8)?;
            for (row, value) in strings.as_string::<i32>().iter().enumerate() {
                if let Some(value) = value {
                    rows.entry(value.to_owned()).or_default().insert(row as u32);
                }
            }
        }
        Ok(TagIndex { rows })
    }

    /// The rows of `column` holding one of `values`, found by one pass, without an index.
    fn scan(column: &ArrayRef, values: &[String]) -> Result<RoaringBitmap> {
        let mut rows = RoaringBitmap::new();
        if let Some(dictionary) = column.as_any_dictionary_opt() {
            if dictionary.values().is_empty() {
                return Ok(rows);
            }
            let dictionary_values = cast(dictionary.values(), &DataType::Utf8)?;
            let dictionary_values = dictionary_values.as_string::<i32>();
            let wanted: Vec<bool> = (0..dictionary_values.len())
                .map(|k| {
                    dictionary_values.is_valid(k)
                        && values.iter().any(|v| v == dictionary_values.value(k))
                })
                .collect();
            for (row, &key) in dictionary.normalized_keys().iter().enumerate() {
                if wanted[key] && column.is_valid(row) {
                    rows.insert(row as u32);
                }
            }
        } else {
            let strings = cast(column, &DataType::Utf8)?;
            for (row, value) in strings.as_string::<i32>().iter().enumerate() {
                if value.is_some_and(|v| values.iter().any(|w| w == v)) {
                    rows.insert(row as u32);
                }
            }
        }
        Ok(rows)
    }

    fn rows_of(&self, values: &[String]) -> RoaringBitmap {
        values
            .iter()
            .filter_map(|v| self.rows.get(v))
            .fold(RoaringBitmap::new(), |all, rows| all | rows)
    }
}

/// The indexes built so far for one kept window merge, by tag column.
#[derive(Debug, Default)]
pub(crate) struct Indexes(Mutex<HashMap<String, Arc<TagIndex>>>);

impl Indexes {
    fn get_or_build(&self, name: &str, column: &ArrayRef) -> Result<Arc<TagIndex>> {
        if let Some(index) = self.0.lock().expect("tag index lock").get(name) {
            return Ok(index.clone());
        }
        // Built outside the lock; two queries may both build it, the last one is kept.
        let index = Arc::new(TagIndex::build(column)?);
        self.0
            .lock()
            .expect("tag index lock")
            .insert(name.to_owned(), index.clone());
        Ok(index)
    }
}

/// The rows of `batch` that `selection` allows, by the kept `indexes` if there are any,
/// with the columns of `projection` (all if `None`): only those are taken.
pub(crate) fn select(
    batch: &RecordBatch,
    selection: &Selection,
    indexes: Option<&Indexes>,
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let mut chosen: Option<RoaringBitmap> = None;
    for (name, values) in selection {
        let Ok(position) = batch.schema().index_of(name) else {
            continue;
        };
        let column = batch.column(position);
        let rows = match indexes {
            Some(indexes) => indexes.get_or_build(name, column)?.rows_of(values),
            None => TagIndex::scan(column, values)?,
        };
        chosen = Some(match chosen {
            Some(before) => before & rows,
            None => rows,
        });
    }
    let projected = match projection {
        Some(p) => batch.project(p)?,
        None => batch.clone(),
    };
    match chosen {
        Some(rows) if rows.len() < batch.num_rows() as u64 => {
            let indices = UInt32Array::from_iter_values(rows);
            Ok(take_record_batch(&projected, &indices)?)
        }
        _ => Ok(projected),
    }
}
