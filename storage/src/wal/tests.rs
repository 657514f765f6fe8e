use super::*;
use crate::catalog::Catalog;
use crate::precision::Precision;
use std::sync::RwLock;

fn entry(body: &str) -> WalEntry {
    let catalog = RwLock::new(Catalog::default());
    let w = crate::validate::test_write(&catalog, body, Precision::Second);
    WalEntry::Write {
        db: w.db,
        tables: w.tables,
    }
}

fn rows(entry: &WalEntry) -> usize {
    match entry {
        WalEntry::Write { tables, .. } => tables.iter().map(|t| t.batch.num_rows()).sum(),
        WalEntry::Delete { .. } | WalEntry::DropTable { .. } => 0,
    }
}

fn collect(dir: &Path) -> (ReplayStats, Vec<(u64, usize)>) {
    let mut seen = Vec::new();
    let stats = replay(dir, |seq, e| seen.push((seq, rows(&e)))).unwrap();
    (stats, seen)
}

fn open(dir: &Path, next_seq: u64, config: WalConfig) -> (Wal, Arc<Mutex<Vec<u64>>>) {
    let applied = Arc::new(Mutex::new(Vec::new()));
    let sink_applied = applied.clone();
    let wal = Wal::open(
        dir,
        next_seq,
        config,
        Box::new(move |seq, _| sink_applied.lock().unwrap().push(seq)),
    )
    .unwrap();
    (wal, applied)
}

#[test]
fn appends_are_durable_ordered_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, applied) = open(dir.path(), 1, WalConfig::default());
    let seqs: Vec<u64> = (0..5)
        .map(|i| wal.append(entry(&format!("m v={i} {i}"))).wait().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(*applied.lock().unwrap(), [1, 2, 3, 4, 5]);
    wal.close();
    let (stats, seen) = collect(dir.path());
    assert_eq!(stats.last_seq, 5);
    assert_eq!(seen, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
}

#[test]
fn concurrent_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, applied) = open(dir.path(), 1, WalConfig::default());
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    wal.append(entry(&format!("m,t={t} v={i} {i}")))
                        .wait()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 400);
    assert!(
        stats.fsyncs < 400,
        "no group commit: {} fsyncs for 400 records",
        stats.fsyncs
    );
    let applied = applied.lock().unwrap().clone();
    assert_eq!(
        applied,
        (1..=400).collect::<Vec<u64>>(),
        "applied in sequence order"
    );
}

#[test]
fn rotates_and_removes_persisted_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        max_file_bytes: 1,
        ..WalConfig::default()
    };
    let (wal, _) = open(dir.path(), 1, config);
    for i in 0..4 {
        wal.append(entry(&format!("m v={i} {i}"))).wait().unwrap();
    }
    wal.close();
    // Every append rotates: files start at 1, 2, 3, 4 and the active one at 5.
    assert_eq!(wal.file_count(), 5);
    assert_eq!(wal.remove_persisted(3).unwrap(), 2);
    assert_eq!(wal.file_count(), 3);
    let (_, seen) = collect(dir.path());
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 4]);
}

fn only_file(dir: &Path) -> PathBuf {
    let files = list_files(dir).unwrap();
    assert_eq!(files.len(), 1);
    files[0].1.clone()
}

#[test]
fn a_torn_tail_is_cut_off_at_every_possible_length() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1, WalConfig::default());
    wal.append(entry("m v=1 1")).wait().unwrap();
    wal.append(entry("m v=2 2\nm v=3 3")).wait().unwrap();
    wal.close();
    let path = only_file(dir.path());
    let whole = fs::read(&path).unwrap();
    let first_end = {
        let format::Frame::Record { len, .. } = format::decode_frame(&whole[format::HEADER_LEN..])
        else {
            panic!()
        };
        format::HEADER_LEN + len
    };
    for cut in first_end + 1..whole.len() {
        fs::write(&path, &whole[..cut]).unwrap();
        let (stats, seen) = collect(dir.path());
        assert_eq!(seen, [(1, 1)], "cut at {cut}");
        assert_eq!(stats.truncated, [(path.clone(), first_end as u64)]);
        assert_eq!(fs::metadata(&path).unwrap().len(), first_end as u64);
    }
}

#[test]
fn a_corrupt_record_in_an_older_file_sets_the_file_aside() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        max_file_bytes: 1,
        ..WalConfig::default()
    };
    let (wal, _) = open(dir.path(), 1, config);
    for i in 0..3 {
        wal.append(entry(&format!("m v={i} {i}"))).wait().unwrap();
    }
    wal.close();
    let files = list_files(dir.path()).unwrap();
    let victim = &files[1].1;
    let mut bytes = fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(victim, &bytes).unwrap();

    let (stats, seen) = collect(dir.path());
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(stats.quarantined.len(), 1);
    assert!(
        stats.quarantined[0]
            .to_string_lossy()
            .ends_with(".wal.corrupt")
    );
    assert!(!victim.exists());
}

#[test]
fn an_empty_file_from_an_interrupted_start_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(paths::wal_dir(dir.path())).unwrap();
    let path = paths::wal_file(dir.path(), 1);
    fs::write(&path, b"GANN").unwrap();
    let (stats, seen) = collect(dir.path());
    assert!(seen.is_empty());
    assert_eq!(stats.records, 0);
    assert!(!path.exists());
}

#[test]
fn appending_after_close_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1, WalConfig::default());
    wal.close();
    let err = wal.append(entry("m v=1 1")).wait().unwrap_err();
    assert!(matches!(*err, WalError::Closed));
}

#[tokio::test]
async fn waiting_inside_an_async_runtime_does_not_panic() {
    // Embedding programs call the blocking write API from async code.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1, WalConfig::default());
    assert_eq!(wal.append(entry("m v=1 1")).wait().unwrap(), 1);
    assert_eq!(wal.append(entry("m v=2 2")).wait_async().await.unwrap(), 2);
}

#[test]
fn payloads_decode_and_damaged_ones_fail_without_trusting_their_lengths() {
    let written = entry("cpu,host=a u=1 1\ncpu,host=b u=2 2\nmem,host=a free=3i 1");
    let payload = format::encode_entry(&written);
    let read = format::decode_entry(&payload).unwrap();
    assert_eq!(rows(&read), 3);
    // Found by the wal_decode fuzz target: a 9-byte Arrow stream whose first message claims
    // 1.3 GB. It must fail as damaged, not allocate what it claims.
    let fuzzed = [
        0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x4e,
        0x14, 0x4e, 0x41, 0x47, 0x00, 0x00, 0x00,
    ];
    assert!(format::decode_entry(&fuzzed).is_err());
    for cut in 0..payload.len() {
        assert!(
            format::decode_entry(&payload[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_record_whose_arrow_data_makes_arrow_panic_is_an_error() {
    // Found by fuzz/wal_decode: arrow-ipc unwraps a missing field list in a schema message.
    let crash = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/wal_decode-arrow-schema-panic"
    ))
    .unwrap();
    assert!(format::decode_entry(&crash).is_err());
}

#[test]
fn an_entry_encoded_into_a_reused_pooled_buffer_has_the_bytes_of_a_fresh_one() {
    let pool = crate::pool::BufferPool::new(1 << 20);
    let entries = [
        entry("cpu,host=a u=1 1\ncpu,host=b u=2 2\nmem,host=a free=3i 1"),
        WalEntry::Delete {
            db: "db".into(),
            table: "cpu".into(),
            predicate: crate::DeletePredicate {
                min_time: 1,
                max_time: 2,
                tags: vec![("host".into(), "a".into())],
            },
        },
        WalEntry::DropTable {
            db: "db".into(),
            table: "mem".into(),
        },
        entry("cpu,host=c u=3 3"),
    ];
    let mut used = Vec::new();
    for e in &entries {
        let mut payload = pool.take(format::encoded_len_hint(e));
        used.push(payload.as_ptr());
        format::encode_entry_into(e, &mut payload);
        assert_eq!(*payload, format::encode_entry(e));
        assert!(format::decode_entry(&payload).is_ok());
    }
    assert!(
        used.windows(2).all(|w| w[0] == w[1]),
        "one buffer, handed out again each time"
    );
}
