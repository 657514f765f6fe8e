//! The WAL's byte format, as pure functions: no I/O here. Drawn in `docs/file-formats.md`.
//!
//! ```text
//! file   := header record*
//! header := "GANNETWL" version:u32le reserved:u32le                      (16 bytes)
//! record := len:u32le crc:u32le seq:u64le payload[len]
//!           crc = CRC32 (Castagnoli not required; IEEE via crc32fast) of seq bytes + payload
//! payload := kind:u8 ...
//!   kind 1 (write): db_len:u16le db  n_tables:u32le (name_len:u16le name ipc_len:u32le ipc)*
//!                   ipc = one Arrow IPC stream holding the table's batch
//!   kind 2 (delete): db_len:u16le db  table_len:u16le table  json_len:u32le json
//!   kind 3 (drop table): db_len:u16le db  table_len:u16le table
//! ```

use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::delete::DeletePredicate;
use crate::validate::TableBatch;

pub const MAGIC: &[u8; 8] = b"GANNETWL";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
/// Bytes before a record's payload: length, CRC, sequence number.
pub const FRAME_HEADER_LEN: usize = 16;
/// Refuse to believe a record longer than this: a corrupt length, not a real record.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

const KIND_WRITE: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_DROP_TABLE: u8 = 3;

/// What one WAL record says happened.
#[derive(Debug, Clone)]
pub enum WalEntry {
    Write {
        db: String,
        tables: Vec<TableBatch>,
    },
    Delete {
        db: String,
        table: String,
        predicate: DeletePredicate,
    },
    /// The table and all its rows are gone; a later write makes a new table of that name.
    DropTable {
        db: String,
        table: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a WAL file: bad magic")]
    BadMagic,
    #[error("WAL format version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    #[error("record payload is malformed: {0}")]
    Payload(String),
}

pub fn encode_header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a file header. A file shorter than a header is reported as `Ok(false)`: a file
/// whose creation was cut short holds no records.
pub fn decode_header(bytes: &[u8]) -> Result<bool, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Ok(false);
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    Ok(true)
}

/// Appends one framed record to `out`.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The outcome of reading one frame at the start of `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record: its sequence number, payload, and the bytes it took.
    Record {
        seq: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// Nothing left.
    End,
    /// The bytes stop before the record does: an append cut short.
    Torn,
    /// The record is all there but does not check out.
    Corrupt(String),
}

pub fn decode_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.is_empty() {
        return Frame::End;
    }
    if bytes.len() < FRAME_HEADER_LEN {
        return Frame::Torn;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let seq_bytes = &bytes[8..16];
    if len > MAX_PAYLOAD_LEN {
        return Frame::Corrupt(format!("record length {len} is larger than any record"));
    }
    if bytes.len() < FRAME_HEADER_LEN + len {
        return Frame::Torn;
    }
    let payload = &bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(seq_bytes);
    hasher.update(payload);
    let actual = hasher.finalize();
    if actual != crc {
        return Frame::Corrupt(format!(
            "checksum mismatch: stored {crc:#010x}, computed {actual:#010x}"
        ));
    }
    let seq = u64::from_le_bytes(seq_bytes.try_into().expect("8 bytes"));
    Frame::Record {
        seq,
        payload,
        len: FRAME_HEADER_LEN + len,
    }
}

/// Encodes a write's payload, appending to `out`.
fn encode_write_into(out: &mut Vec<u8>, db: &str, tables: &[TableBatch]) {
    out.push(KIND_WRITE);
    put_str16(out, db);
    out.extend_from_slice(&(tables.len() as u32).to_le_bytes());
    for t in tables {
        put_str16(out, &t.table);
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        {
            let mut writer = StreamWriter::try_new(&mut *out, &t.batch.schema())
                .expect("writing IPC to memory cannot fail");
            writer
                .write(&t.batch)
                .expect("writing IPC to memory cannot fail");
            writer.finish().expect("writing IPC to memory cannot fail");
        }
        let ipc_len = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&ipc_len.to_le_bytes());
    }
}

/// Encodes a delete's payload: kind 2, db, table, then the predicate as JSON.
pub fn encode_delete(db: &str, table: &str, predicate: &DeletePredicate) -> Vec<u8> {
    let mut out = vec![KIND_DELETE];
    put_str16(&mut out, db);
    put_str16(&mut out, table);
    let json = serde_json::to_vec(predicate).expect("predicates serialise");
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Encodes any entry's payload.
pub fn encode_entry(entry: &WalEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_hint(entry));
    encode_entry_into(entry, &mut out);
    out
}

/// [`encode_entry`], appending to `out`.
pub fn encode_entry_into(entry: &WalEntry, out: &mut Vec<u8>) {
    match entry {
        WalEntry::Write { db, tables } => encode_write_into(out, db, tables),
        WalEntry::Delete {
            db,
            table,
            predicate,
        } => out.extend_from_slice(&encode_delete(db, table, predicate)),
        WalEntry::DropTable { db, table } => {
            out.push(KIND_DROP_TABLE);
            put_str16(out, db);
            put_str16(out, table);
        }
    }
}

/// About the length [`encode_entry`] gives `entry`: a write's IPC is its arrays' buffers
/// and a little metadata per column.
pub fn encoded_len_hint(entry: &WalEntry) -> usize {
    match entry {
        WalEntry::Write { tables, .. } => tables
            .iter()
            .map(|t| t.batch.get_array_memory_size() + 256 * t.batch.num_columns() + 1024)
            .sum(),
        _ => 256,
    }
}

/// Decodes a payload written by [`encode_entry`].
/// The one record batch of an Arrow IPC stream. The push decoder grows its buffers with the
/// bytes actually there; a reader would first allocate whatever length a damaged message
/// claims (a 9-byte payload can claim 1.3 GB).
fn decode_batch(ipc: &[u8]) -> Result<RecordBatch, String> {
    // arrow-ipc panics on some malformed schema messages (an unwrap in `fb_to_schema`,
    // found by fuzz/wal_decode): a damaged record is an error to report, not a crash while
    // the WAL is replayed at start-up.
    std::panic::catch_unwind(|| {
        let mut buffer = arrow::buffer::Buffer::from(ipc.to_vec());
        let mut decoder = arrow::ipc::reader::StreamDecoder::new();
        let batch = decoder.decode(&mut buffer).map_err(|e| e.to_string())?;
        batch.ok_or_else(|| "no record batch".to_owned())
    })
    .unwrap_or_else(|_| Err("malformed Arrow IPC data".to_owned()))
}

pub fn decode_entry(payload: &[u8]) -> Result<WalEntry, FormatError> {
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    match r.u8()? {
        KIND_WRITE => {
            let db = r.str16()?;
            let n = r.u32()? as usize;
            let mut tables = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let table = r.str16()?;
                let len = r.u32()? as usize;
                let ipc = r.take(len)?;
                let batch = decode_batch(ipc)
                    .map_err(|e| FormatError::Payload(format!("table {table}: {e}")))?;
                tables.push(TableBatch { table, batch });
            }
            if r.pos != payload.len() {
                return Err(FormatError::Payload("trailing bytes".into()));
            }
            Ok(WalEntry::Write { db, tables })
        }
        KIND_DELETE => {
            let db = r.str16()?;
            let table = r.str16()?;
            let len = r.u32()? as usize;
            let predicate = serde_json::from_slice(r.take(len)?)
                .map_err(|e| FormatError::Payload(format!("delete predicate: {e}")))?;
            if r.pos != payload.len() {
                return Err(FormatError::Payload("trailing bytes".into()));
            }
            Ok(WalEntry::Delete {
                db,
                table,
                predicate,
            })
        }
        KIND_DROP_TABLE => {
            let db = r.str16()?;
            let table = r.str16()?;
            if r.pos != payload.len() {
                return Err(FormatError::Payload("trailing bytes".into()));
            }
            Ok(WalEntry::DropTable { db, table })
        }
        kind => Err(FormatError::Payload(format!("unknown record kind {kind}"))),
    }
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("names are at most 255 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| FormatError::Payload("truncated".into()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn str16(&mut self) -> Result<String, FormatError> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| FormatError::Payload("name is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Float64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    fn entry() -> (String, Vec<TableBatch>) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![1.5, 2.5]))])
                .unwrap();
        (
            "db".into(),
            vec![TableBatch {
                table: "cpu".into(),
                batch,
            }],
        )
    }

    #[test]
    fn write_roundtrips() {
        let (db, tables) = entry();
        let payload = encode_entry(&WalEntry::Write {
            db: db.clone(),
            tables: tables.clone(),
        });
        let WalEntry::Write {
            db: got_db,
            tables: got,
        } = decode_entry(&payload).unwrap()
        else {
            panic!("a write decodes as a write");
        };
        assert_eq!(got_db, "db");
        assert_eq!(got[0].table, "cpu");
        assert_eq!(got[0].batch, tables[0].batch);
    }

    #[test]
    fn delete_roundtrips() {
        let predicate = DeletePredicate {
            min_time: -5,
            max_time: 9,
            tags: vec![("host".into(), "a,b".into())],
        };
        let payload = encode_delete("db", "cpu", &predicate);
        let WalEntry::Delete {
            db,
            table,
            predicate: got,
        } = decode_entry(&payload).unwrap()
        else {
            panic!("a delete decodes as a delete");
        };
        assert_eq!((db.as_str(), table.as_str(), got), ("db", "cpu", predicate));
    }

    #[test]
    fn drop_table_roundtrips() {
        let entry = WalEntry::DropTable {
            db: "db".into(),
            table: "cpu".into(),
        };
        let payload = encode_entry(&entry);
        let WalEntry::DropTable { db, table } = decode_entry(&payload).unwrap() else {
            panic!("a drop decodes as a drop");
        };
        assert_eq!((db.as_str(), table.as_str()), ("db", "cpu"));
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode_entry(&longer).is_err());
        assert!(decode_entry(&payload[..payload.len() - 1]).is_err());
    }

    #[test]
    fn frames_roundtrip_and_detect_damage() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"hello");
        encode_frame(&mut buf, 8, b"world!");
        let Frame::Record { seq, payload, len } = decode_frame(&buf) else {
            panic!()
        };
        assert_eq!((seq, payload), (7, &b"hello"[..]));
        let Frame::Record { seq, payload, .. } = decode_frame(&buf[len..]) else {
            panic!()
        };
        assert_eq!((seq, payload), (8, &b"world!"[..]));

        // Every cut inside the second record is a torn tail, never a record.
        for cut in len + 1..buf.len() {
            assert_eq!(decode_frame(&buf[len..cut]), Frame::Torn, "cut at {cut}");
        }
        // Every flipped bit is caught.
        for byte in 4..len {
            let mut damaged = buf[..len].to_vec();
            damaged[byte] ^= 0x10;
            assert!(
                matches!(decode_frame(&damaged), Frame::Corrupt(_)),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn absurd_lengths_are_corrupt_not_torn() {
        let mut buf = vec![0xff; 16];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_frame(&buf), Frame::Corrupt(_)));
    }

    #[test]
    fn headers() {
        assert_eq!(decode_header(&encode_header()), Ok(true));
        assert_eq!(decode_header(&encode_header()[..10]), Ok(false));
        assert_eq!(
            decode_header(b"NOTAWALFILE00000"),
            Err(FormatError::BadMagic)
        );
    }

    #[test]
    fn garbage_payloads_are_errors() {
        for bytes in [
            &b""[..],
            b"\x01",
            b"\x09abc",
            b"\x01\x02\x00db\x01\x00\x00\x00",
        ] {
            assert!(decode_entry(bytes).is_err());
        }
    }
}
