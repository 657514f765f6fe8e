//! `gannet import`: bulk-load line-protocol files through the same write path as HTTP writes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use gannet::{EngineConfig, Gannet, LineError, Precision};
use indicatif::{ProgressBar, ProgressStyle};

/// Bytes per write (cut at a line end): large enough to amortise the WAL's fsync, small
/// enough to stream.
const BLOCK_BYTES: usize = 1 << 20;
/// How many rejected lines are printed in full.
const SHOWN_ERRORS: usize = 20;

#[derive(Debug, Parser)]
pub struct ImportArgs {
    /// Data directory to write into.
    #[arg(long, env = "GANNET_DATA_DIR", default_value = "./gannet-data")]
    pub data_dir: PathBuf,
    /// Database to write into (created if it does not exist).
    #[arg(long)]
    pub db: String,
    /// Unit of the timestamps in the files: ns, us, ms, s (also n, u, m, h, auto).
    #[arg(long, default_value = "ns")]
    pub precision: Precision,
    /// Line-protocol files; `.gz` files (or any gzip content) are decompressed.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Don't show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

struct Chunk {
    file: usize,
    first_line: usize,
    body: Vec<u8>,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    for file in &args.files {
        if !file.is_file() {
            bail!("{}: no such file", file.display());
        }
    }
    let total: u64 = args
        .files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let db = Gannet::open_with(EngineConfig::new(&args.data_dir))
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    let rows = AtomicU64::new(0);
    let errors: Mutex<(usize, Vec<(usize, LineError)>)> = Mutex::new((0, Vec::new()));
    let started = Instant::now();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let (tx, rx) = crossbeam::channel::bounded::<Chunk>(workers * 2);

    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let rx = rx.clone();
            let (db, rows, errors, bar) = (&db, &rows, &errors, &bar);
            let precision = args.precision;
            let name = args.db.as_str();
            handles.push(s.spawn(move || -> anyhow::Result<()> {
                for chunk in rx {
                    let out = db.write_lp(name, &chunk.body, precision)?;
                    let written =
                        rows.fetch_add(out.rows as u64, Ordering::Relaxed) + out.rows as u64;
                    bar.set_message(format!("{written} rows"));
                    if !out.errors.is_empty() {
                        let mut errors = errors.lock().expect("errors lock");
                        errors.0 += out.errors.len();
                        for mut e in out.errors {
                            if errors.1.len() < SHOWN_ERRORS {
                                e.line_number += chunk.first_line - 1;
                                errors.1.push((chunk.file, e));
                            }
                        }
                    }
                }
                Ok(())
            }));
        }
        drop(rx);
        let mut read = Ok(());
        for (index, path) in args.files.iter().enumerate() {
            read = read_file(index, path, &bar, &tx)
                .with_context(|| format!("reading {}", path.display()));
            if read.is_err() {
                break;
            }
        }
        drop(tx);
        // A writer's error explains a reader's "writers stopped": report it first.
        for handle in handles {
            handle.join().expect("import writer panicked")?;
        }
        read
    });
    bar.finish_and_clear();
    result?;
    db.close()
        .context("flushing and closing the data directory")?;

    let rows = rows.into_inner();
    let secs = started.elapsed().as_secs_f64();
    let (rejected, shown) = errors.into_inner().expect("errors lock");
    println!(
        "imported {rows} rows into database '{}' in {secs:.1} s ({:.0} rows/s, {:.1} MB/s)",
        args.db,
        rows as f64 / secs,
        total as f64 / secs / 1e6
    );
    if rejected > 0 {
        println!("rejected {rejected} lines:");
        for (file, e) in &shown {
            println!(
                "  {}:{}: {}",
                args.files[*file].display(),
                e.line_number,
                e.message
            );
        }
        if rejected > shown.len() {
            println!("  ... and {} more", rejected - shown.len());
        }
        std::process::exit(1);
    }
    Ok(())
}

fn read_file(
    index: usize,
    path: &PathBuf,
    bar: &ProgressBar,
    tx: &crossbeam::channel::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = File::open(path)?;
    let counted = bar.wrap_read(file);
    let reader: Box<dyn Read> = if gzip {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(counted)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, counted))
    };
    let mut reader = reader;
    let mut line_number = 1;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        // Read a block, send it up to its last newline, carry the rest to the next one.
        let mut body = std::mem::take(&mut carry);
        let start = body.len();
        body.resize(start + BLOCK_BYTES, 0);
        let mut filled = start;
        while filled < body.len() {
            match reader.read(&mut body[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        body.truncate(filled);
        let at_end = filled < start + BLOCK_BYTES;
        if !at_end {
            match body.iter().rposition(|&b| b == b'\n') {
                Some(cut) => carry = body.split_off(cut + 1),
                None => {
                    carry = body;
                    continue;
                }
            }
        }
        if body.is_empty() {
            return Ok(());
        }
        let first_line = line_number;
        line_number += body.iter().filter(|&&b| b == b'\n').count();
        if tx
            .send(Chunk {
                file: index,
                first_line,
                body,
            })
            .is_err()
        {
            bail!("the writers stopped early");
        }
        if at_end {
            return Ok(());
        }
    }
}
