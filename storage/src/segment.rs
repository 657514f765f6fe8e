//! Parquet segments: one sorted, deduplicated run of a table's rows for one time window.
//!
//! Files are sorted by (tags, time), with column and page statistics and the Arrow schema
//! embedded, so any Parquet reader can read them and Gannet's reader can prune by time and
//! tags. Tags, time and strings are zstd-compressed; numeric fields LZ4 (see
//! [`field_compression`]).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, TimestampNanosecondArray};
use arrow::compute::kernels::aggregate::{max, min};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::catalog::TIME_COLUMN;
use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("segment {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("segment {path}: {source}")]
    Arrow {
        path: String,
        source: arrow::error::ArrowError,
    },
}

/// What a written segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub rows: u64,
    pub bytes: u64,
    pub min_time: i64,
    pub max_time: i64,
}

/// Rows per row group: small enough to prune inside a segment, large enough to compress.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows per data page, at most: the page index's statistics then narrow a query for one
/// series (rows next to each other, see `TableDef::sort_tags`) to a page or two per column.
const PAGE_ROWS: usize = 1024;

/// The codec of each numeric field column, where it differs from the file's zstd.
///
/// Numeric fields are dictionary-encoded (their values repeat), and zstd finds little
/// left to take from the bit-packed indices: on TSBS cpu rows it keeps 83 % of a column's
/// bytes, LZ4 88 %. But a zstd column costs each reader a decompression context (malloc'd
/// and freed per column chunk) and decompresses at a fraction of LZ4's speed. A query for
/// one series reads a page or two of each row group, yet decompresses each column's whole
/// dictionary page: zstd was a fifth of such a query's time (docs/benchmarks.md).
fn field_compression(schema: &Schema) -> impl Iterator<Item = (ColumnPath, Compression)> + '_ {
    schema
        .fields()
        .iter()
        .filter(|f| {
            f.name() != TIME_COLUMN
                && matches!(
                    f.data_type(),
                    DataType::Float64 | DataType::Int64 | DataType::UInt64
                )
        })
        .map(|f| (ColumnPath::from(f.name().as_str()), Compression::LZ4_RAW))
}

/// Writes `batch` (deduplicated and sorted by the columns `sort_key`, see
/// [`crate::dedup::dedup_sort_by`]) to `path` durably: a temporary file, fsynced, renamed
/// into place, the directory fsynced. The file records the sort order.
pub fn write(
    path: &Path,
    batch: &RecordBatch,
    sort_key: &[usize],
) -> Result<SegmentInfo, SegmentError> {
    let shown = path.display().to_string();
    let io = |source| SegmentError::Io {
        path: shown.clone(),
        source,
    };
    let dir = path.parent().expect("segment paths have a directory");
    paths::create_dir_all_durable(dir).map_err(io)?;

    let times = batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .expect("segments have a nanosecond time column");
    let (min_time, max_time) = (min(times).unwrap_or(0), max(times).unwrap_or(0));

    let schema = batch.schema();
    let sorting: Vec<SortingColumn> = sort_key
        .iter()
        .map(|&i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: true,
        })
        .collect();
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_sorting_columns(Some(sorting));
    for (column, compression) in field_compression(&schema) {
        props = props.set_column_compression(column, compression);
    }
    let props = props.build();

    let tmp = path.with_extension("parquet.tmp");
    let parquet = |source| SegmentError::Parquet {
        path: shown.clone(),
        source,
    };
    let written = (|| {
        let file = File::create(&tmp).map_err(io)?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet)?;
        writer.write(batch).map_err(parquet)?;
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(bytes)
    })();
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            // A half-written file would only hold on to space (a full disk is the usual
            // reason to get here); the rows are still in the buffer and the WAL.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    paths::sync_dir(dir).map_err(io)?;
    Ok(SegmentInfo {
        rows: batch.num_rows() as u64,
        bytes,
        min_time,
        max_time,
    })
}

/// Checks that a segment file is there and its Parquet footer is readable.
pub fn check(path: &Path) -> Result<(), SegmentError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| SegmentError::Io {
        path: shown.clone(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map(|_| ())
        .map_err(|source| SegmentError::Parquet {
            path: shown,
            source,
        })
}

/// Reads a whole segment.
pub fn read(path: &Path) -> Result<Vec<RecordBatch>, SegmentError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| SegmentError::Io {
        path: shown.clone(),
        source,
    })?;
    let parquet = |source| SegmentError::Parquet {
        path: shown.clone(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet)?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SegmentError::Arrow {
            path: shown,
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int32Type, TimeUnit};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn numeric_fields_are_lz4_and_tags_time_and_strings_zstd_and_all_read_back() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("usage", DataType::Float64, true),
            Field::new("count", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let rows = 5_000;
        let names: Vec<String> = (0..rows).map(|i| format!("host_{}", i / 500)).collect();
        let host: DictionaryArray<Int32Type> = names.iter().map(String::as_str).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(host),
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| (i % 977) as f64 / 100.0),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows).map(|i| i as i64 % 61),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("n{}", i % 7)),
                )),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    (0..rows).map(|i| (i % 500) as i64 * 10_000_000_000),
                )),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        write(&path, &batch, &[0, 4]).unwrap();

        let file = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        // The footer records the codec, not zstd's level.
        let codec = |c: Compression| match c {
            Compression::ZSTD(_) => "zstd",
            Compression::LZ4_RAW => "lz4",
            _ => "other",
        };
        let codecs: Vec<(String, &str)> = file
            .metadata()
            .row_group(0)
            .columns()
            .iter()
            .map(|c| (c.column_path().string(), codec(c.compression())))
            .collect();
        assert_eq!(
            codecs,
            vec![
                ("host".to_owned(), "zstd"),
                ("usage".to_owned(), "lz4"),
                ("count".to_owned(), "lz4"),
                ("note".to_owned(), "zstd"),
                (TIME_COLUMN.to_owned(), "zstd"),
            ]
        );
        let back = arrow::compute::concat_batches(&schema, &read(&path).unwrap()).unwrap();
        assert_eq!(back, batch);
    }
}
