use super::*;
use arrow::array::{Array, Float64Array};

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(EngineConfig::test_config(dir)).unwrap()
}

fn values(engine: &Engine, table: &str, column: &str) -> Vec<Option<f64>> {
    let batch = engine.snapshot("db", table).unwrap().read_all().unwrap();
    let col = batch.column_by_name(column).unwrap();
    let col = col.as_any().downcast_ref::<Float64Array>().unwrap();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

#[test]
fn writes_are_visible_once_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let out = engine
        .write_lp(
            "db",
            b"cpu,host=a v=1 1\ncpu,host=b v=2 1\nbad line",
            Precision::Second,
        )
        .unwrap();
    assert_eq!(out.rows, 2);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].line_number, 3);
    assert_eq!(values(&engine, "cpu", "v"), [Some(1.0), Some(2.0)]);
}

#[test]
fn a_body_of_only_bad_lines_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let out = engine
        .write_lp("db", b"nope\nstill nope", Precision::Second)
        .unwrap();
    assert_eq!((out.rows, out.errors.len(), out.seq), (0, 2, None));
    assert!(engine.snapshot("db", "nope").is_none());
    // Lines that parse but are refused (a timestamp out of range) make no table either.
    let out = engine
        .write_lp("db", b"cpu v=1 1700000000000000000", Precision::Second)
        .unwrap();
    assert_eq!((out.rows, out.errors.len()), (0, 1));
    assert!(engine.catalog().table("db", "cpu").is_none());
}

#[test]
fn last_write_wins_across_buffer_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp(
            "db",
            b"cpu,host=a u=1,s=1 10\ncpu,host=b u=5 10",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp("db", b"cpu,host=a u=2 10", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp("db", b"cpu,host=a s=3 10", Precision::Second)
        .unwrap();
    let snap = engine.snapshot("db", "cpu").unwrap();
    assert_eq!(snap.segments.len(), 2);
    assert_eq!(snap.buffer.len(), 1);
    assert_eq!(values(&engine, "cpu", "u"), [Some(2.0), Some(5.0)]);
    assert_eq!(values(&engine, "cpu", "s"), [Some(3.0), None]);
}

#[test]
fn reopening_replays_the_wal_and_keeps_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(dir.path());
        engine
            .write_lp("db", b"cpu v=1 1", Precision::Second)
            .unwrap();
        engine.flush().unwrap();
        engine
            .write_lp("db", b"cpu v=2 2\ncpu,new=tag v=3 3", Precision::Second)
            .unwrap();
        // Dropped without close: as after a crash, only the WAL has the last write.
    }
    let engine = open(dir.path());
    assert_eq!(
        values(&engine, "cpu", "v"),
        [Some(1.0), Some(2.0), Some(3.0)]
    );
    let snap = engine.snapshot("db", "cpu").unwrap();
    assert!(
        snap.schema.field_with_name("new").is_ok(),
        "replay restores new columns"
    );
    let next = engine
        .write_lp("db", b"cpu v=4 4", Precision::Second)
        .unwrap();
    assert!(
        next.seq.unwrap() > 2,
        "sequence numbers continue after replay"
    );
}

#[test]
fn flushing_removes_wal_files_and_close_persists_everything() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    for i in 0..20 {
        let body = format!("cpu,host=h{} v={i} {i}", i % 3);
        engine
            .write_lp("db", body.as_bytes(), Precision::Second)
            .unwrap();
    }
    engine.flush().unwrap();
    let stats = engine.buffer_stats();
    assert_eq!((stats.rows, stats.bytes, stats.wal_files), (0, 0, 1));
    engine
        .write_lp("db", b"cpu,host=h0 v=100 100", Precision::Second)
        .unwrap();
    engine.close().unwrap();
    assert!(matches!(
        engine.write_lp("db", b"cpu v=1", Precision::Second),
        Err(Error::Closed)
    ));
    drop(engine);
    let wal_files = std::fs::read_dir(paths::wal_dir(dir.path()))
        .unwrap()
        .count();
    assert_eq!(wal_files, 0, "a clean close leaves no WAL to replay");

    let engine = open(dir.path());
    assert_eq!(
        engine.buffer_stats().rows,
        0,
        "nothing left to replay after a clean close"
    );
    assert_eq!(values(&engine, "cpu", "v").len(), 21);
}

#[test]
fn windows_become_separate_segments() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    // 0 s and 3600 s fall in different 10-minute windows.
    engine
        .write_lp(
            "db",
            b"cpu v=1 0\ncpu v=2 3600\ncpu v=3 1",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let catalog = engine.catalog();
    let segments = &catalog.table("db", "cpu").unwrap().segments;
    assert_eq!(segments.len(), 2);
    let mut rows: Vec<u64> = segments.iter().map(|s| s.rows).collect();
    rows.sort();
    assert_eq!(rows, [1, 2]);
    for s in segments {
        assert!(dir.path().join(&s.path).exists());
        assert!(s.min_time <= s.max_time);
    }
}

#[test]
fn a_second_opener_is_refused_with_the_owners_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = open(dir.path());
    let err = Engine::open(EngineConfig::test_config(dir.path())).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("in use by another Gannet process"),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
}

#[test]
fn writers_wait_when_the_buffer_is_full_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        memory_limit: 64 << 10,
        ..EngineConfig::test_config(dir.path())
    };
    let engine = Engine::open(config).unwrap();
    for i in 0..200 {
        let body: String = (0..50)
            .map(|j| format!("cpu,host=h{j} v={i} {}\n", i * 50 + j))
            .collect();
        engine
            .write_lp("db", body.as_bytes(), Precision::Second)
            .unwrap();
        assert!(
            engine.buffer_stats().bytes < 256 << 10,
            "buffer grew past its limit"
        );
    }
    assert_eq!(values(&engine, "cpu", "v").len(), 10_000);
}

#[test]
fn a_write_gives_up_with_buffer_full_when_flushing_cannot_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        memory_limit: 16 << 10,
        max_write_wait: Some(Duration::from_millis(300)),
        ..EngineConfig::test_config(dir.path())
    };
    let engine = Engine::open(config).unwrap();
    engine
        .write_lp("db", b"cpu,host=a v=1 1", Precision::Second)
        .unwrap();
    // Segments of db.cpu cannot be written: a file stands where their directory goes.
    let db_id = engine.catalog().database("db").unwrap().id;
    let blocked = dir.path().join(format!("segments/db-{db_id}"));
    std::fs::create_dir_all(dir.path().join("segments")).unwrap();
    std::fs::write(&blocked, b"not a directory").unwrap();
    let body: String = (0..2000)
        .map(|i| format!("cpu,host=h{i} v={i} {i}\n"))
        .collect();
    let mut full = None;
    for _ in 0..20 {
        match engine.write_lp("db", body.as_bytes(), Precision::Second) {
            Ok(_) => continue,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("a write failed once the buffer was full");
    assert!(matches!(err, Error::BufferFull { .. }), "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");

    // Room again: the writes succeed once segments can be written.
    std::fs::remove_file(&blocked).unwrap();
    engine
        .write_lp("db", body.as_bytes(), Precision::Second)
        .unwrap();
}

#[test]
fn orphan_segments_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let orphan = dir
        .path()
        .join("segments/db-1/cpu-2/x/00000000000000000009.parquet");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"half a file").unwrap();
    drop(open(dir.path()));
    assert!(!orphan.exists());
}

#[test]
fn retention_drops_old_data_and_rejects_old_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let now = now_nanos() / 1_000_000_000;
    let old = now - 3 * 86_400;
    let body = format!("cpu,host=a v=1 {old}\ncpu,host=a v=2 {now}\n");
    engine
        .write_lp("db", body.as_bytes(), Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp(
            "db",
            format!("cpu,host=b v=3 {old}").as_bytes(),
            Precision::Second,
        )
        .unwrap();
    let old_segment = engine
        .snapshot("db", "cpu")
        .unwrap()
        .segments
        .iter()
        .find(|s| s.max_time < now_nanos() - 86_400_000_000_000)
        .map(|s| dir.path().join(&s.path))
        .unwrap();

    engine
        .set_retention("db", Some(Duration::from_secs(86_400)))
        .unwrap();
    assert_eq!(engine.enforce_retention().unwrap(), 1);
    assert!(!old_segment.exists());
    assert_eq!(
        values(&engine, "cpu", "v"),
        [Some(2.0)],
        "old rows are gone from segments and buffer"
    );

    let out = engine
        .write_lp(
            "db",
            format!("cpu v=4 {old}\ncpu v=5 {now}").as_bytes(),
            Precision::Second,
        )
        .unwrap();
    assert_eq!(out.rows, 1);
    assert!(
        out.errors[0]
            .message
            .contains("older than the retention period of database 'db'"),
        "{:?}",
        out.errors
    );
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.catalog().database("db").unwrap().retention_ns,
        Some(86_400_000_000_000)
    );
    assert_eq!(
        values(&engine, "cpu", "v"),
        [Some(5.0), Some(2.0)],
        "replay does not bring expired rows back"
    );
}

#[test]
fn a_damaged_segment_is_set_aside_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let victim = {
        let engine = open(dir.path());
        engine
            .write_lp("db", b"cpu v=1 0", Precision::Second)
            .unwrap();
        engine
            .write_lp("db", b"cpu v=2 7200", Precision::Second)
            .unwrap();
        engine
            .write_lp("db", b"mem v=3 0", Precision::Second)
            .unwrap();
        engine.close().unwrap();
        let snap = engine.snapshot("db", "cpu").unwrap();
        let seg = snap.segments.iter().find(|s| s.min_time == 0).unwrap();
        snap.segment_path(seg)
    };
    let len = std::fs::metadata(&victim).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let engine = open(dir.path());
    assert_eq!(values(&engine, "cpu", "v"), [Some(2.0)]);
    assert_eq!(values(&engine, "mem", "v"), [Some(3.0)]);
    assert!(!victim.exists());
    let relative = victim.strip_prefix(dir.path()).unwrap();
    let quarantined = dir.path().join(paths::QUARANTINE_DIR).join(relative);
    assert!(
        quarantined.exists(),
        "the damaged file is kept for inspection"
    );
    drop(engine);
    drop(open(dir.path()));
    assert!(quarantined.exists(), "and stays there across opens");
}

#[test]
fn reading_a_segment_damaged_after_open_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"cpu v=1 0", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    let snap = engine.snapshot("db", "cpu").unwrap();
    let path = snap.segment_path(&snap.segments[0]);
    std::fs::write(&path, b"not parquet").unwrap();
    let message = snap.read_all().unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn sequence_numbers_never_repeat_after_a_clean_close() {
    // Reused sequence numbers let an old tombstone hide a new write.
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"cpu,host=b v=1 1", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    let only = |host: &str| crate::DeletePredicate {
        tags: vec![("host".into(), host.into())],
        ..crate::DeletePredicate::all()
    };
    engine.delete("db", "cpu", only("a")).unwrap();
    let last = engine.delete("db", "cpu", only("b")).unwrap();
    engine.close().unwrap();
    drop(engine);

    let engine = open(dir.path());
    let out = engine
        .write_lp("db", b"cpu,host=b v=2 1", Precision::Second)
        .unwrap();
    assert!(out.seq.unwrap() > last, "{:?} <= {last}", out.seq);
    engine.flush().unwrap();
    assert_eq!(values(&engine, "cpu", "v"), [Some(2.0)]);
    engine.compact().unwrap();
    assert_eq!(values(&engine, "cpu", "v"), [Some(2.0)]);
}

#[test]
fn a_partial_delete_is_compacted_once_and_its_tombstone_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp(
            "db",
            b"cpu,host=a v=1 1\ncpu,host=b v=2 1",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let predicate = crate::DeletePredicate {
        tags: vec![("host".into(), "a".into())],
        ..crate::DeletePredicate::all()
    };
    engine.delete("db", "cpu", predicate).unwrap();
    assert_eq!(engine.compact().unwrap(), 1);
    assert_eq!(
        engine.compact().unwrap(),
        0,
        "the carried-out delete no longer applies"
    );
    assert!(
        engine
            .catalog()
            .table("db", "cpu")
            .unwrap()
            .tombstones
            .is_empty()
    );
    assert_eq!(values(&engine, "cpu", "v"), [Some(2.0)]);
}

#[test]
fn a_delete_before_the_first_segment_still_records_its_tombstone() {
    // A persist may be writing rows from before the delete while it is applied.
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"cpu,host=a v=1 1", Precision::Second)
        .unwrap();
    engine
        .delete("db", "cpu", crate::DeletePredicate::all())
        .unwrap();
    assert_eq!(
        engine
            .catalog()
            .table("db", "cpu")
            .unwrap()
            .tombstones
            .len(),
        1
    );
    engine.compact().unwrap();
    assert!(
        engine
            .catalog()
            .table("db", "cpu")
            .unwrap()
            .tombstones
            .is_empty()
    );
}

#[test]
fn timestamps_at_the_edges_of_the_range_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let body = format!("cpu v=1 {}\ncpu v=2 {}", i64::MIN + 1, i64::MAX);
    let out = engine
        .write_lp("db", body.as_bytes(), Precision::Nanosecond)
        .unwrap();
    assert_eq!(out.rows, 2);
    engine.flush().unwrap();
    assert_eq!(values(&engine, "cpu", "v"), [Some(1.0), Some(2.0)]);
}

#[test]
fn a_dropped_table_is_gone_with_its_files_and_its_name_is_free_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"cpu,host=a v=1 1\nmem free=1i 1", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp("db", b"cpu,host=a v=2 2", Precision::Second)
        .unwrap();
    let segment = dir
        .path()
        .join(&engine.snapshot("db", "cpu").unwrap().segments[0].path);
    assert!(segment.exists());

    engine.drop_table("db", "cpu").unwrap();
    assert!(engine.snapshot("db", "cpu").is_none());
    assert!(!segment.exists(), "no reader holds it: removed at once");
    assert_eq!(engine.buffer_stats().rows, 0);
    assert!(matches!(
        engine.drop_table("db", "cpu"),
        Err(Error::NoSuchTable { .. })
    ));
    assert_eq!(
        engine
            .snapshot("db", "mem")
            .unwrap()
            .read_all()
            .unwrap()
            .num_rows(),
        1
    );

    // A new table of the same name: its own columns (v was a float, now it is text).
    engine
        .write_lp("db", b"cpu,dc=x v=\"up\" 3", Precision::Second)
        .unwrap();
    let snap = engine.snapshot("db", "cpu").unwrap();
    assert!(snap.schema.field_with_name("host").is_err());
    assert_eq!(snap.read_all().unwrap().num_rows(), 1);
    drop(snap);

    // After a crash the WAL replays the drop between the writes: the same table again.
    drop(engine);
    let engine = open(dir.path());
    let batch = engine.snapshot("db", "cpu").unwrap().read_all().unwrap();
    assert_eq!(batch.num_rows(), 1);
    assert_eq!(
        batch.column_by_name("v").unwrap().data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    assert_eq!(
        engine
            .snapshot("db", "mem")
            .unwrap()
            .read_all()
            .unwrap()
            .num_rows(),
        1
    );
}

#[test]
fn replayed_writes_count_for_their_values_in_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let engine = open(dir.path());
        // 20 writes of 500 rows with five tags and ten fields, as TSBS writes them.
        for step in 0..20 {
            let mut body = String::new();
            for host in 0..500 {
                body.push_str(&format!(
                    "cpu,host=h{host},region=r{},dc=d{},rack={},os=o{} ",
                    host % 3,
                    host % 9,
                    host % 100,
                    host % 3
                ));
                let fields: Vec<String> = (0..10).map(|f| format!("f{f}={}.5", step + f)).collect();
                body.push_str(&fields.join(","));
                body.push_str(&format!(" {}\n", step * 10));
            }
            engine
                .write_lp("db", body.as_bytes(), Precision::Second)
                .unwrap();
        }
        engine.buffer_stats()
        // Dropped without close: the reopened engine replays all 20 writes.
    };
    let replayed = open(dir.path()).buffer_stats();
    assert_eq!(replayed.rows, written.rows);
    // Counted by their buffers, each replayed column would count the whole record it was
    // decoded from: about 30 times as much.
    assert!(
        replayed.bytes <= written.bytes * 2 && replayed.bytes * 3 >= written.bytes,
        "written {} bytes, replayed {}",
        written.bytes,
        replayed.bytes
    );
}

#[test]
fn a_drop_is_replayed_when_the_catalog_file_still_lists_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"cpu v=1 1", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    engine
        .write_lp("db", b"cpu v=2 2", Precision::Second)
        .unwrap();
    let catalog_file = paths::catalog_file(dir.path());
    let before = std::fs::read(&catalog_file).unwrap();
    engine.drop_table("db", "cpu").unwrap();
    drop(engine);
    // As if the process died after the drop was in the WAL but before the catalog file
    // was rewritten.
    std::fs::write(&catalog_file, before).unwrap();
    let engine = open(dir.path());
    assert!(engine.snapshot("db", "cpu").is_none());
    engine
        .write_lp("db", b"cpu v=3 3", Precision::Second)
        .unwrap();
    assert_eq!(values(&engine, "cpu", "v"), [Some(3.0)]);
}

#[test]
fn a_table_a_scoring_rule_scores_cannot_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp("db", b"pay amount=1 1", Precision::Second)
        .unwrap();
    let rule = ScoringRule {
        name: "fraud".into(),
        table: "pay".into(),
        expression: "amount".into(),
        condition: None,
        webhook: None,
        from_seq: 0,
        created_at: 0,
    };
    assert!(engine.create_scoring_rule("db", rule).unwrap());
    let err = engine.drop_table("db", "pay").unwrap_err();
    assert!(err.to_string().contains("DROP SCORING RULE fraud"), "{err}");
    assert!(engine.snapshot("db", "pay").is_some());
    engine.drop_scoring_rule("db", "fraud").unwrap();
    engine.drop_table("db", "pay").unwrap();
}

#[test]
fn segments_sort_by_the_tag_with_most_values_first_and_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    engine
        .write_lp(
            "db",
            b"cpu,a=x,z=3 v=1 1\ncpu,a=x,z=1 v=2 1\ncpu,a=y,z=2 v=3 1",
            Precision::Second,
        )
        .unwrap();
    engine.flush().unwrap();
    let table = engine.catalog().table("db", "cpu").unwrap().clone();
    assert_eq!(table.sort_tags, ["z", "a"]);
    // The rows are in that order, and the file says so.
    let path = dir.path().join(&table.segments[0].path);
    let rows =
        arrow::compute::concat_batches(&table.schema(), &segment::read(&path).unwrap()).unwrap();
    let v = rows.column_by_name("v").unwrap();
    let v = v.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(v.values().to_vec(), [2.0, 3.0, 1.0]);
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    let sorting = reader
        .metadata()
        .row_group(0)
        .sorting_columns()
        .unwrap()
        .clone();
    let schema = table.schema();
    let names: Vec<&str> = sorting
        .iter()
        .map(|c| schema.field(c.column_idx as usize).name().as_str())
        .collect();
    assert_eq!(names, ["z", "a", "time"]);

    // A tag that appears later goes after them; the order already chosen stays.
    engine
        .write_lp("db", b"cpu,a=x,z=9,b=q v=4 2", Precision::Second)
        .unwrap();
    engine.flush().unwrap();
    let table = engine.catalog().table("db", "cpu").unwrap().clone();
    assert_eq!(table.sort_tags, ["z", "a", "b"]);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.catalog().table("db", "cpu").unwrap().sort_tags,
        ["z", "a", "b"]
    );
}
