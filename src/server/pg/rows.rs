//! Result rows as Postgres `DataRow` messages, column type by column type.
//!
//! arrow-pg encodes a batch value by value: for each one it looks at the field's metadata
//! (a hash lookup), downcasts the array, matches its type and clones the column's type
//! and format options. That was most of the server's time for wide results (TSBS's
//! high-cpu-all: 39k rows of 21 columns, 2 ms to run and 135-160 ms to send). Here the
//! work per column (downcasts, time zone, dictionary keys) is done once per batch, and each
//! value is written with pgwire's own `ToSqlText` / `ToSql`, as arrow-pg writes it: the bytes
//! are the same (a property test compares them). Batches with a column of another type, or
//! with the field metadata of arrow-pg's special cases (`"char"`, `oid`, vectors, Arrow
//! extension types), go to arrow-pg.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use bytes::{BufMut, BytesMut};
use chrono::NaiveDateTime;
use datafusion::execution::SendableRecordBatchStream;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use futures::{StreamExt, stream};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use pgwire::types::format::date_style::DateStyle;
use postgres_types::{IsNull, ToSql};

/// The rows of `stream` as Postgres data rows, encoded batch by batch as they come.
pub(super) fn encode_stream(
    stream: SendableRecordBatchStream,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(arrow_schema_to_pg_fields(
        stream.schema().as_ref(),
        format,
        options,
    )?);
    let encoding = fields.clone();
    let rows = stream
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match batch {
                Ok(batch) => match encode_batch(&batch, &encoding) {
                    Some(Ok(rows)) => Box::new(rows.into_iter().map(Ok)),
                    Some(Err(e)) => Box::new(std::iter::once(Err(e))),
                    None => encode_recordbatch(encoding.clone(), batch),
                },
                Err(e) => Box::new(std::iter::once(Err(PgWireError::ApiError(Box::new(e))))),
            };
            stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

/// The rows of `frame`'s result (see [`encode_stream`]).
pub(super) async fn encode_frame(
    frame: datafusion::dataframe::DataFrame,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<QueryResponse> {
    let stream = frame
        .execute_stream()
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    encode_stream(stream, format, options)
}

/// `batch`'s rows, or `None` if a column is not of a type encoded here.
pub(super) fn encode_batch(
    batch: &RecordBatch,
    fields: &[FieldInfo],
) -> Option<PgWireResult<Vec<DataRow>>> {
    if batch.num_columns() != fields.len() {
        return None;
    }
    let schema = batch.schema();
    let columns: Vec<Column<'_>> = batch
        .columns()
        .iter()
        .zip(fields)
        .zip(schema.fields())
        .map(|((array, field), arrow_field)| {
            // arrow-pg's special cases are marked by metadata under these prefixes
            // (`pg.char`, `pg.oid_alias`, `pg.vector`, Arrow extension types).
            if arrow_field
                .metadata()
                .keys()
                .any(|k| k.starts_with("pg.") || k.starts_with("ARROW:"))
            {
                return None;
            }
            let text = field.format() == FieldFormat::Text;
            let options = field.format_options();
            let iso_timestamps = text
                && *field.datatype() == Type::TIMESTAMP
                && DateStyle::new(&options.date_style).full_format_str() == ISO_TIMESTAMP;
            Some(Column {
                values: Values::of(array)?,
                ty: field.datatype(),
                text,
                options,
                iso_timestamps,
            })
        })
        .collect::<Option<_>>()?;
    Some(encode_rows(&columns, batch.num_rows()))
}

fn encode_rows(columns: &[Column<'_>], rows: usize) -> PgWireResult<Vec<DataRow>> {
    let count = columns.len() as i16;
    let mut out = Vec::with_capacity(rows);
    // One buffer for the batch; each row is split off it.
    let mut buffer = BytesMut::with_capacity(rows * columns.len() * 12);
    for row in 0..rows {
        for column in columns {
            column.put(&mut buffer, row)?;
        }
        out.push(DataRow::new(buffer.split(), count));
    }
    Ok(out)
}

/// A column's values, downcast once, with how they go on the wire.
struct Column<'a> {
    values: Values<'a>,
    ty: &'a Type,
    text: bool,
    options: &'a FormatOptions,
    /// Zone-less timestamps in text as DateStyle ISO has them: written here, digit by
    /// digit, rather than by chrono's strftime (pgwire parses the DateStyle and the format
    /// string again for every value).
    iso_timestamps: bool,
}

/// pgwire's strftime format for `timestamp` in DateStyle ISO.
const ISO_TIMESTAMP: &str = "%Y-%m-%d %H:%M:%S%.6f";

enum Values<'a> {
    Bool(&'a BooleanArray),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    StrView(&'a StringViewArray),
    Date(&'a Date32Array),
    Time(Times<'a>, Option<Tz>),
    /// Keys as indexes into the values (a NULL key's index is any).
    Dictionary(&'a dyn Array, Vec<usize>, Box<Values<'a>>),
}

enum Times<'a> {
    Seconds(&'a TimestampSecondArray),
    Millis(&'a TimestampMillisecondArray),
    Micros(&'a TimestampMicrosecondArray),
    Nanos(&'a TimestampNanosecondArray),
}

impl<'a> Values<'a> {
    fn of(array: &'a ArrayRef) -> Option<Values<'a>> {
        Values::of_dyn(array.as_ref())
    }

    fn of_dyn(array: &'a dyn Array) -> Option<Values<'a>> {
        Some(match array.data_type() {
            DataType::Boolean => Values::Bool(array.as_boolean()),
            DataType::Int16 => Values::I16(array.as_primitive()),
            DataType::Int32 => Values::I32(array.as_primitive()),
            DataType::Int64 => Values::I64(array.as_primitive()),
            DataType::Float32 => Values::F32(array.as_primitive()),
            DataType::Float64 => Values::F64(array.as_primitive()),
            DataType::Utf8 => Values::Str(array.as_string()),
            DataType::LargeUtf8 => Values::LargeStr(array.as_string()),
            DataType::Utf8View => Values::StrView(array.as_string_view()),
            DataType::Date32 => Values::Date(array.as_primitive()),
            DataType::Timestamp(unit, tz) => {
                let tz = match tz {
                    Some(tz) => Some(tz.parse::<Tz>().ok()?),
                    None => None,
                };
                let times = match unit {
                    TimeUnit::Second => Times::Seconds(array.as_primitive()),
                    TimeUnit::Millisecond => Times::Millis(array.as_primitive()),
                    TimeUnit::Microsecond => Times::Micros(array.as_primitive()),
                    TimeUnit::Nanosecond => Times::Nanos(array.as_primitive()),
                };
                Values::Time(times, tz)
            }
            DataType::Dictionary(_, value_type)
                if matches!(
                    value_type.as_ref(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                let dictionary = array.as_any_dictionary_opt()?;
                // A dictionary of no values (every key NULL, as a tag column missing from a
                // write is filled) has no keys to normalize: arrow-pg encodes it.
                if dictionary.values().is_empty() {
                    return None;
                }
                let values = Values::of(dictionary.values())?;
                Values::Dictionary(array, dictionary.normalized_keys(), Box::new(values))
            }
            _ => return None,
        })
    }
}

impl Column<'_> {
    fn put(&self, buffer: &mut BytesMut, row: usize) -> PgWireResult<()> {
        self.put_value(&self.values, buffer, row)
    }

    fn put_value(
        &self,
        values: &Values<'_>,
        buffer: &mut BytesMut,
        row: usize,
    ) -> PgWireResult<()> {
        /// `Some` of the value, `None` if it is NULL.
        fn at<T: Array, V>(array: &T, row: usize, value: impl Fn(&T, usize) -> V) -> Option<V> {
            (!array.is_null(row)).then(|| value(array, row))
        }
        match values {
            Values::Bool(a) => self.write(buffer, &at(*a, row, BooleanArray::value)),
            Values::I16(a) => self.write(buffer, &at(*a, row, Int16Array::value)),
            Values::I32(a) => self.write(buffer, &at(*a, row, Int32Array::value)),
            Values::I64(a) => self.write(buffer, &at(*a, row, Int64Array::value)),
            Values::F32(a) => self.write(buffer, &at(*a, row, Float32Array::value)),
            Values::F64(a) => self.write(buffer, &at(*a, row, Float64Array::value)),
            Values::Str(a) => self.write(buffer, &(!a.is_null(row)).then(|| a.value(row))),
            Values::LargeStr(a) => self.write(buffer, &(!a.is_null(row)).then(|| a.value(row))),
            Values::StrView(a) => self.write(buffer, &(!a.is_null(row)).then(|| a.value(row))),
            Values::Date(a) => {
                self.write(buffer, &at(*a, row, Date32Array::value_as_date).flatten())
            }
            Values::Time(times, tz) => {
                let naive = match times {
                    Times::Seconds(a) => at(*a, row, TimestampSecondArray::value_as_datetime),
                    Times::Millis(a) => at(*a, row, TimestampMillisecondArray::value_as_datetime),
                    Times::Micros(a) => at(*a, row, TimestampMicrosecondArray::value_as_datetime),
                    Times::Nanos(a) => at(*a, row, TimestampNanosecondArray::value_as_datetime),
                }
                .flatten();
                match tz {
                    None if self.iso_timestamps => match naive {
                        Some(t) if put_iso_timestamp(buffer, &t) => Ok(()),
                        _ => self.write(buffer, &naive),
                    },
                    None => self.write(buffer, &naive),
                    Some(tz) => self.write(buffer, &naive.map(|t| in_zone(t, tz))),
                }
            }
            Values::Dictionary(keys, indexes, inner) => {
                if keys.is_null(row) {
                    self.write(buffer, &None::<i8>)
                } else {
                    self.put_value(inner, buffer, indexes[row])
                }
            }
        }
    }

    /// One field as pgwire's `DataRowEncoder` writes it: its length (-1 for NULL), then its
    /// bytes in the column's format.
    fn write<T: ToSql + ToSqlText>(&self, buffer: &mut BytesMut, value: &T) -> PgWireResult<()> {
        let at = buffer.len();
        buffer.put_i32(-1);
        let is_null = if self.text {
            value.to_sql_text(self.ty, buffer, self.options)?
        } else {
            value.to_sql(self.ty, buffer)?
        };
        if let IsNull::No = is_null {
            let length = (buffer.len() - at - 4) as i32;
            buffer[at..at + 4].copy_from_slice(&length.to_be_bytes());
        }
        Ok(())
    }
}

/// Writes `t` as a field, with its length, as `YYYY-MM-DD HH:MM:SS.ffffff` (chrono's
/// `%Y-%m-%d %H:%M:%S%.6f`: microseconds, truncated). Returns false, having written
/// nothing, for what that format would write otherwise: years outside 0-9999 and leap
/// seconds.
fn put_iso_timestamp(buffer: &mut BytesMut, t: &NaiveDateTime) -> bool {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return false;
    }
    let mut text = *b"0000-00-00 00:00:00.000000";
    let mut digits = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, 4, year as u32);
    digits(5, 2, t.month());
    digits(8, 2, t.day());
    digits(11, 2, t.hour());
    digits(14, 2, t.minute());
    digits(17, 2, t.second());
    digits(20, 6, nanos / 1_000);
    buffer.put_i32(text.len() as i32);
    buffer.put_slice(&text);
    true
}

/// A UTC time as a time in `tz`, with its offset there (as arrow-pg sends zoned times).
fn in_zone(utc: NaiveDateTime, tz: &Tz) -> chrono::DateTime<chrono::FixedOffset> {
    use chrono::TimeZone;
    tz.from_utc_datetime(&utc).fixed_offset()
}

#[cfg(test)]
mod tests;
