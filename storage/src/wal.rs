//! The write-ahead log: a write is acknowledged only once its record is fsynced.
//!
//! One thread owns the active WAL file. Writers hand it records through a channel; it takes
//! every record that is waiting, writes them with one `write`, makes them durable with one
//! `fdatasync` (group commit), hands each to the sink in sequence order (the engine applies
//! them to the write buffer there), and then answers the writers.
//!
//! Files are named by their first sequence number and rotated by size. A file is removed
//! once every record in it has reached a Parquet segment ([`Wal::remove_persisted`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::paths;
use crate::pool::{BufferPool, PooledBuf};

pub mod format;

#[cfg(test)]
mod tests;

pub use format::WalEntry;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("WAL file {path} is not readable: {source}")]
    Format {
        path: String,
        source: format::FormatError,
    },
    #[error("a write of {0} bytes is larger than a WAL record can be ({max} bytes); split it", max = format::MAX_PAYLOAD_LEN)]
    TooLarge(usize),
    #[error("the WAL is closed")]
    Closed,
}

/// Called with every record once it is durable, in sequence order, on the WAL thread.
pub type Sink = Box<dyn FnMut(u64, WalEntry) + Send>;

#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Start a new file once the active one is this large.
    pub max_file_bytes: u64,
    /// At most this many payload bytes go into one group commit.
    pub max_group_bytes: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            max_file_bytes: 64 << 20,
            max_group_bytes: 16 << 20,
        }
    }
}

struct Request {
    payload: PooledBuf,
    entry: WalEntry,
    reply: oneshot::Sender<Result<u64, Arc<WalError>>>,
}

/// Statistics of the WAL writer, for metrics and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct WalStats {
    pub records: u64,
    pub bytes: u64,
    pub fsyncs: u64,
    pub fsync_nanos_total: u64,
    pub fsync_nanos_max: u64,
}

/// A durable record's receipt: wait on it to learn its sequence number.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<u64, Arc<WalError>>>);

impl Pending {
    /// Blocks the calling thread until the record is durable. Safe to call anywhere,
    /// including on a tokio worker thread (it blocks that thread for one group commit);
    /// async code should prefer [`Pending::wait_async`].
    pub fn wait(self) -> Result<u64, Arc<WalError>> {
        futures::executor::block_on(self.0).unwrap_or(Err(Arc::new(WalError::Closed)))
    }

    /// Waits asynchronously until the record is durable.
    pub async fn wait_async(self) -> Result<u64, Arc<WalError>> {
        self.0.await.unwrap_or(Err(Arc::new(WalError::Closed)))
    }
}

#[derive(Debug)]
pub struct Wal {
    tx: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    files: Arc<Mutex<FileList>>,
    stats: Arc<Mutex<WalStats>>,
    /// Records are encoded into these; the writer gives them back once they are written.
    payloads: Arc<BufferPool>,
}

/// What replay found.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    pub files: usize,
    pub records: u64,
    pub last_seq: u64,
    /// Files cut back at a torn or corrupt tail, with the offset they were cut at.
    pub truncated: Vec<(PathBuf, u64)>,
    /// Files set aside because they could not be read.
    pub quarantined: Vec<PathBuf>,
}

/// Reads every WAL file in `data_dir` in order and hands each record to `apply`.
///
/// A torn or corrupt tail of the newest file (a crash in the middle of an append) is cut
/// off and logged; records are never applied half-way. Damage in an older file cannot be a
/// torn append: the records before it are applied, and the file is renamed `*.corrupt`.
pub fn replay(
    data_dir: &Path,
    mut apply: impl FnMut(u64, WalEntry),
) -> Result<ReplayStats, WalError> {
    let mut stats = ReplayStats::default();
    let files = list_files(data_dir)?;
    let count = files.len();
    if count > 0 {
        tracing::info!(files = count, "replaying the write-ahead log");
    }
    let mut last_report = std::time::Instant::now();
    for (i, (_, path)) in files.into_iter().enumerate() {
        // Long replays say how far they got, every few seconds.
        if last_report.elapsed() >= std::time::Duration::from_secs(3) {
            tracing::info!(
                done = i,
                files = count,
                records = stats.records,
                "replaying the write-ahead log"
            );
            last_report = std::time::Instant::now();
        }
        let is_newest = i + 1 == count;
        stats.files += 1;
        let shown = path.display().to_string();
        let io = |source| WalError::Io {
            path: shown.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY-free: memmap2's map is unsafe only because another process could
            // truncate the file underneath; the data directory's lock rules that out.
            Some(map_file(&file).map_err(io)?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let damage = match format::decode_header(bytes) {
            Err(source) => Some((0, format!("{source}"))),
            Ok(false) => Some((0, "file header is incomplete".to_owned())),
            Ok(true) => {
                let mut pos = format::HEADER_LEN;
                let mut damage = None;
                loop {
                    match format::decode_frame(&bytes[pos..]) {
                        format::Frame::End => break,
                        format::Frame::Torn => {
                            damage = Some((pos, "record is cut short".to_owned()));
                            break;
                        }
                        format::Frame::Corrupt(why) => {
                            damage = Some((pos, why));
                            break;
                        }
                        format::Frame::Record { seq, payload, len } => {
                            match format::decode_entry(payload) {
                                Ok(entry) => {
                                    apply(seq, entry);
                                    stats.records += 1;
                                    stats.last_seq = stats.last_seq.max(seq);
                                    pos += len;
                                }
                                Err(e) => {
                                    damage = Some((pos, e.to_string()));
                                    break;
                                }
                            }
                        }
                    }
                }
                damage
            }
        };
        drop(map);
        let Some((offset, why)) = damage else {
            continue;
        };
        if len == 0 || (offset == 0 && len < format::HEADER_LEN as u64) {
            // A file created just before a crash: nothing in it was acknowledged.
            tracing::warn!(file = %shown, "removing empty WAL file left by an interrupted start");
            drop(file);
            fs::remove_file(&path).map_err(io)?;
            continue;
        }
        if is_newest && offset >= format::HEADER_LEN {
            tracing::warn!(
                file = %shown, offset, reason = %why,
                "WAL ends in a torn or corrupt record; cutting it off (it was never acknowledged)"
            );
            file.set_len(offset as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            stats.truncated.push((path, offset as u64));
        } else {
            let target = path.with_extension("wal.corrupt");
            tracing::error!(
                file = %shown, offset, reason = %why, moved_to = %target.display(),
                "WAL file is damaged; records before the damage were replayed, the file is set aside"
            );
            drop(file);
            fs::rename(&path, &target).map_err(io)?;
            stats.quarantined.push(target);
        }
    }
    Ok(stats)
}

/// Reads back, without changing anything, every WAL record with a sequence number above
/// `after` and hands it to `f`, in order. Records still being appended are not read (a file
/// that ends part-way through a record ends there), and neither is anything past damage.
/// Files wholly below `after` are skipped unread.
pub fn read_since(
    data_dir: &Path,
    after: u64,
    mut f: impl FnMut(u64, WalEntry),
) -> Result<(), WalError> {
    let files = list_files(data_dir)?;
    for (i, (_, path)) in files.iter().enumerate() {
        // A file's records all come before the next file's first one.
        if files.get(i + 1).is_some_and(|(next, _)| *next <= after + 1) {
            continue;
        }
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            // Removed since listed: its records were all below what is kept.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(WalError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        if !matches!(format::decode_header(&bytes), Ok(true)) {
            continue;
        }
        let mut pos = format::HEADER_LEN;
        while let format::Frame::Record { seq, payload, len } = format::decode_frame(&bytes[pos..])
        {
            pos += len;
            if seq <= after {
                continue;
            }
            match format::decode_entry(payload) {
                Ok(entry) => f(seq, entry),
                Err(_) => break,
            }
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the data directory is locked by this process; nothing else modifies the file
    // while it is mapped, and the map is dropped before the file is truncated or renamed.
    unsafe { memmap2::Mmap::map(file) }
}

fn list_files(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let dir = paths::wal_dir(data_dir);
    let io = |source| WalError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry.map_err(io)?.path();
                if let Some(seq) = paths::parse_wal_file_name(&path) {
                    files.push((seq, path));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    files.sort();
    Ok(files)
}

impl Wal {
    /// Opens the WAL for appending. Call [`replay`] first: the WAL starts a new file at
    /// `next_seq`, and earlier files stay until [`Wal::remove_persisted`] removes them.
    pub fn open(
        data_dir: &Path,
        next_seq: u64,
        config: WalConfig,
        sink: Sink,
    ) -> Result<Wal, WalError> {
        let dir = paths::wal_dir(data_dir);
        paths::create_dir_all_durable(&dir).map_err(|source| WalError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut closed = list_files(data_dir)?;
        // A file named for `next_seq` holds no records (replay would have seen them): it is
        // an empty file from the last start. Reuse its name.
        if let Some(i) = closed.iter().position(|(first, _)| *first >= next_seq) {
            for (_, path) in closed.drain(i..) {
                fs::remove_file(&path).map_err(|source| WalError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            }
        }
        let files = Arc::new(Mutex::new(FileList {
            closed,
            active_first: next_seq,
            writing: true,
        }));
        let active = ActiveFile::create(data_dir, next_seq)?;
        let (tx, rx) = crossbeam::channel::unbounded();
        let stats = Arc::new(Mutex::new(WalStats::default()));
        let mut writer = Writer {
            data_dir: data_dir.to_path_buf(),
            config,
            active,
            next_seq,
            sink,
            files: files.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("gannet-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| WalError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(Wal {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            files,
            stats,
            // Room for the records of a few group commits.
            payloads: BufferPool::new(32 << 20),
        })
    }

    /// Queues a record; the returned [`Pending`] resolves once it is durable and applied.
    pub fn append(&self, entry: WalEntry) -> Pending {
        let mut payload = self.payloads.take(format::encoded_len_hint(&entry));
        format::encode_entry_into(&entry, &mut payload);
        let (reply, rx) = oneshot::channel();
        if payload.len() > format::MAX_PAYLOAD_LEN {
            let _ = reply.send(Err(Arc::new(WalError::TooLarge(payload.len()))));
            return Pending(rx);
        }
        let sent = match self.tx.lock().expect("wal lock").as_ref() {
            Some(tx) => tx
                .send(Request {
                    payload,
                    entry,
                    reply,
                })
                .map_err(|e| e.0.reply),
            None => Err(reply),
        };
        if let Err(reply) = sent {
            let _ = reply.send(Err(Arc::new(WalError::Closed)));
        }
        Pending(rx)
    }

    /// Removes the closed WAL files whose every record has a sequence number below
    /// `persisted_below` (all of them are in Parquet segments). Returns how many it removed.
    pub fn remove_persisted(&self, persisted_below: u64) -> Result<usize, WalError> {
        let mut files = self.files.lock().expect("wal lock");
        let mut removed = 0;
        while let Some((_, path)) = files.closed.first().cloned() {
            // A file ends where the next one (closed or active) starts.
            let next_first = files
                .closed
                .get(1)
                .map(|(s, _)| *s)
                .unwrap_or(files.active_first);
            if next_first > persisted_below {
                break;
            }
            fs::remove_file(&path).map_err(|source| WalError::Io {
                path: path.display().to_string(),
                source,
            })?;
            files.closed.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// How many WAL files exist, the active one included.
    pub fn file_count(&self) -> usize {
        let files = self.files.lock().expect("wal lock");
        files.closed.len() + usize::from(files.writing)
    }

    pub fn stats(&self) -> WalStats {
        self.stats.lock().expect("wal lock").clone()
    }

    /// Stops accepting records, lets the writer finish what it has, and joins it.
    pub fn close(&self) {
        drop(self.tx.lock().expect("wal lock").take());
        if let Some(thread) = self.thread.lock().expect("wal lock").take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct FileList {
    /// Files no longer written to: (first sequence number, path), oldest first.
    closed: Vec<(u64, PathBuf)>,
    /// First sequence number of the active file (after close: of the next file).
    active_first: u64,
    /// The writer is running and owns the active file.
    writing: bool,
}

struct ActiveFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl ActiveFile {
    fn create(data_dir: &Path, first_seq: u64) -> Result<ActiveFile, WalError> {
        let path = paths::wal_file(data_dir, first_seq);
        let io = |source| WalError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.write_all(&format::encode_header()).map_err(io)?;
        file.sync_all().map_err(io)?;
        paths::sync_dir(&paths::wal_dir(data_dir)).map_err(io)?;
        Ok(ActiveFile {
            file,
            path,
            len: format::HEADER_LEN as u64,
        })
    }
}

struct Writer {
    data_dir: PathBuf,
    config: WalConfig,
    active: ActiveFile,
    next_seq: u64,
    sink: Sink,
    files: Arc<Mutex<FileList>>,
    stats: Arc<Mutex<WalStats>>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Request>) {
        let mut group: Vec<Request> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        while let Ok(first) = rx.recv() {
            let mut bytes = first.payload.len();
            group.push(first);
            while bytes < self.config.max_group_bytes {
                match rx.try_recv() {
                    Ok(req) => {
                        bytes += req.payload.len();
                        group.push(req);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut group, &mut buf);
            if self.active.len >= self.config.max_file_bytes
                && let Err(e) = self.rotate()
            {
                tracing::error!(error = %e, "cannot start a new WAL file; appending to the current one");
            }
        }
        let _ = self.active.file.sync_all();
        // Closed: the active file is an ordinary closed file now, removable once persisted.
        let mut files = self.files.lock().expect("wal lock");
        let first = files.active_first;
        files.closed.push((first, self.active.path.clone()));
        files.active_first = self.next_seq;
        files.writing = false;
    }

    fn commit(&mut self, group: &mut Vec<Request>, buf: &mut Vec<u8>) {
        buf.clear();
        let first_seq = self.next_seq;
        for (i, req) in group.iter().enumerate() {
            format::encode_frame(buf, first_seq + i as u64, &req.payload);
        }
        let started = Instant::now();
        let result = self
            .active
            .file
            .write_all(buf)
            .and_then(|()| self.active.file.sync_data());
        let fsync = started.elapsed();
        match result {
            Ok(()) => {
                self.active.len += buf.len() as u64;
                self.next_seq += group.len() as u64;
                self.record_stats(group.len(), buf.len(), fsync);
                for (i, req) in group.drain(..).enumerate() {
                    let seq = first_seq + i as u64;
                    (self.sink)(seq, req.entry);
                    let _ = req.reply.send(Ok(seq));
                }
            }
            Err(source) => {
                // Part of the group may have reached the file: cut it back so that the next
                // append does not follow a torn record. Nothing in the group is acknowledged.
                let _ = self.active.file.set_len(self.active.len);
                let _ = self.active.file.seek(SeekFrom::Start(self.active.len));
                let error = Arc::new(WalError::Io {
                    path: self.active.path.display().to_string(),
                    source,
                });
                tracing::error!(error = %error, "WAL append failed; the writes are rejected");
                for req in group.drain(..) {
                    let _ = req.reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn record_stats(&self, records: usize, bytes: usize, fsync: Duration) {
        let mut stats = self.stats.lock().expect("wal lock");
        stats.records += records as u64;
        stats.bytes += bytes as u64;
        stats.fsyncs += 1;
        let nanos = fsync.as_nanos() as u64;
        stats.fsync_nanos_total += nanos;
        stats.fsync_nanos_max = stats.fsync_nanos_max.max(nanos);
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let next = ActiveFile::create(&self.data_dir, self.next_seq)?;
        let old = std::mem::replace(&mut self.active, next);
        let mut files = self.files.lock().expect("wal lock");
        let old_first = files.active_first;
        files.closed.push((old_first, old.path));
        files.active_first = self.next_seq;
        Ok(())
    }
}
