//! Every on-disk path of a data directory, in one place.
//!
//! ```text
//! <data-dir>/
//!   LOCK                                   held by the process that owns the directory
//!   catalog.json                           the catalog, replaced atomically
//!   wal/00000000000000000001.wal           WAL files, named by their first sequence number
//!   segments/<db>-<id>/<table>-<id>/<window>/00000000000000000042.parquet
//!   quarantine/...                         damaged files set aside, same relative paths
//! ```
//! Sequence numbers are zero-padded to 20 digits so that files sort in order.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "LOCK";
pub const CATALOG_FILE: &str = "catalog.json";
pub const WAL_DIR: &str = "wal";
pub const SEGMENTS_DIR: &str = "segments";
/// Damaged files set aside for inspection; nothing reads or removes them.
pub const QUARANTINE_DIR: &str = "quarantine";
const WAL_EXTENSION: &str = "wal";

pub fn lock_file(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCK_FILE)
}

pub fn catalog_file(data_dir: &Path) -> PathBuf {
    data_dir.join(CATALOG_FILE)
}

/// How far each scoring rule has scored (see [`crate::engine::Engine::set_scored`]).
pub fn scoring_file(data_dir: &Path) -> PathBuf {
    data_dir.join("scoring.json")
}

pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(WAL_DIR)
}

/// The WAL file whose first record has sequence number `first_seq`.
pub fn wal_file(data_dir: &Path, first_seq: u64) -> PathBuf {
    wal_dir(data_dir).join(format!("{first_seq:020}.{WAL_EXTENSION}"))
}

/// The first sequence number encoded in a WAL file's name, if it is one.
pub fn parse_wal_file_name(path: &Path) -> Option<u64> {
    if path.extension()? != WAL_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// A segment's path relative to the data directory.
pub fn segment_path(
    db: &str,
    db_id: u32,
    table: &str,
    table_id: u32,
    window_start: i64,
    segment_id: u64,
) -> String {
    let window = chrono::DateTime::from_timestamp_nanos(window_start).format("%Y%m%dT%H%M%SZ");
    format!(
        "{SEGMENTS_DIR}/{}-{db_id}/{}-{table_id}/{window}/{segment_id:020}.parquet",
        sanitize(db),
        sanitize(table)
    )
}

/// Keeps names readable in paths without letting them escape: anything but ASCII
/// alphanumerics, `-` and `_` becomes `_` (the id after the name keeps paths unique).
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("paths have a parent");
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its parents, making each new entry durable.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names_sort_and_parse() {
        let dir = Path::new("/d");
        let a = wal_file(dir, 9);
        let b = wal_file(dir, 10);
        assert!(a.file_name() < b.file_name());
        assert_eq!(parse_wal_file_name(&b), Some(10));
        assert_eq!(parse_wal_file_name(Path::new("/d/wal/x.wal")), None);
    }

    #[test]
    fn segment_paths_cannot_escape() {
        let p = segment_path("../etc", 1, "cpu load/x", 2, 1_700_000_000_000_000_000, 42);
        assert_eq!(
            p,
            "segments/___etc-1/cpu_load_x-2/20231114T221320Z/00000000000000000042.parquet"
        );
    }
}
