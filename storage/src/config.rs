//! Engine configuration, with defaults for an embedded database on one machine.

use std::path::PathBuf;
use std::time::Duration;

use crate::wal::WalConfig;

/// How the engine buffers, flushes and logs. [`EngineConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Width of the time windows rows are grouped by, in the buffer and in segments.
    pub window: Duration,
    /// A window's buffered rows become a segment once there are this many of them...
    pub flush_rows: usize,
    /// ...or once its oldest buffered row is this old.
    pub flush_age: Duration,
    /// The write buffer's memory budget in bytes. Above half of it the largest windows are
    /// flushed early; at the limit, writers wait for the flusher (back-pressure).
    pub memory_limit: usize,
    /// How often the background flusher looks at the buffer.
    pub flush_interval: Duration,
    /// A window is compacted once it has this many segments, even while still written to
    /// (a window that is no longer written to is compacted from two segments on).
    pub compact_segments: usize,
    /// Windows whose segments add up to more than this many bytes are not compacted.
    pub compact_max_bytes: u64,
    /// Once the buffer holds none of a stretch of time this long (aligned to the epoch, a
    /// multiple of `window`), its windows' segments are compacted into one.
    pub compact_span: Duration,
    /// Run the background flusher. Tests turn it off to flush by hand.
    pub background_flush: bool,
    pub wal: WalConfig,
    pub limits: WriteLimits,
    /// How long a write waits for room in a full buffer before it fails with
    /// [`crate::Error::BufferFull`]; `None` waits as long as it takes (the library's default).
    pub max_write_wait: Option<Duration>,
}

/// What one write may add. A line beyond a limit is rejected with a message naming the
/// limit; the other lines of its request are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// The longest line of line protocol, in bytes.
    pub max_line_bytes: usize,
    /// The longest string field value, in bytes (InfluxDB's limit is 64 KiB too).
    pub max_string_bytes: usize,
    /// Columns of one table, `time`, tags and fields together.
    pub max_columns_per_table: usize,
    /// Tables of one database.
    pub max_tables_per_database: usize,
}

impl Default for WriteLimits {
    fn default() -> Self {
        WriteLimits {
            max_line_bytes: 256 << 10,
            max_string_bytes: 64 << 10,
            max_columns_per_table: 1000,
            max_tables_per_database: 10_000,
        }
    }
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            window: Duration::from_secs(10 * 60),
            flush_rows: 1_000_000,
            flush_age: Duration::from_secs(5 * 60),
            memory_limit: default_memory_limit(),
            flush_interval: Duration::from_millis(500),
            compact_segments: 4,
            compact_max_bytes: 512 << 20,
            compact_span: Duration::from_secs(60 * 60),
            background_flush: true,
            wal: WalConfig::default(),
            limits: WriteLimits::default(),
            max_write_wait: None,
        }
    }

    /// A configuration for tests: no background flushing, small WAL files.
    pub fn test_config(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            background_flush: false,
            wal: WalConfig {
                max_file_bytes: 1 << 20,
                ..WalConfig::default()
            },
            ..EngineConfig::new(data_dir)
        }
    }
}

/// A quarter of the machine's memory, at most 8 GiB (1 GiB if it cannot be read).
fn default_memory_limit() -> usize {
    const CAP: usize = 8 << 30;
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    total.map(|t| (t / 4).min(CAP)).unwrap_or(1 << 30)
}
