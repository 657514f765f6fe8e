//! Writes a few points of line protocol into ./gannet-data (or the directory given as the
//! first argument) and reads the table back.
//!
//!     cargo run --example quickstart [DATA_DIR]

use gannet::{Gannet, Precision};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./gannet-data".to_owned());
    let db = Gannet::open(&dir)?;
    let body = "\
cpu,host=server01,region=eu-west usage_user=12.5,usage_system=3.1 1700000000
cpu,host=server02,region=us-east usage_user=55.0,usage_system=9.8 1700000000
cpu,host=server01,region=eu-west usage_user=14.0,usage_system=2.9 1700000010
cpu,host=server01,region=eu-west usage_user=oops 1700000020
";
    let outcome = db.write_lp("metrics", body, Precision::Second)?;
    println!("wrote {} rows to {dir}", outcome.rows);
    for error in &outcome.errors {
        println!("rejected {error}");
    }
    db.flush()?;
    let cpu = db
        .read_table("metrics", "cpu")?
        .expect("the write created the table");
    println!(
        "{}",
        gannet::arrow::util::pretty::pretty_format_batches(&[cpu])?
    );
    db.close()?;
    Ok(())
}
