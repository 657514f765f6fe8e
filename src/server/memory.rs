//! The server's memory as the system sees it, and giving the allocator's free memory back.
//!
//! glibc's allocator keeps freed memory for reuse: in each of its arenas (one per thread
//! that allocated concurrently, up to eight per core), only free memory at the top of a
//! heap goes back to the system, and after the first large block is freed it serves blocks
//! of up to 32 MiB from the arenas instead of mapping them. Under the load test
//! (docs/reliability.md) the server held 875 MiB free in its heap at its peak resident
//! size, next to 1,144 MiB in use: scans, merges and write bodies free large buffers on
//! many threads, and the pages stayed resident where no limit counted them.
//!
//! Two measures, both glibc only (2.33 or later, for `mallinfo2`):
//! - [`configure_allocator`] fixes the size from which blocks are mapped on their own (and
//!   unmapped when freed) at 512 KiB, where glibc would raise it.
//! - [`release_free_memory`] checks the heap every second and, when the process is past
//!   half of its memory limits and has grown since it last did so, returns the
//!   heap's free pages to the system (`malloc_trim`, which also releases free pages inside
//!   the heaps, not only at their tops).

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often the heap is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Free heap memory below this stays with the allocator: reusing it is cheaper than
/// faulting fresh pages in.
const KEEP_FREE_BYTES: u64 = 64 << 20;

/// Blocks from this size on are mapped on their own and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: usize = 512 << 10;

/// Past half of the limits, the heap is trimmed at least this often while it holds free
/// memory, even if the process did not grow: what a burst left free goes back.
const IDLE_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Sets the allocator up for a long-running server (see the module's docs).
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning parameters.
        #[allow(unsafe_code)]
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if set != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Handed out and not yet freed.
    pub allocated: u64,
    /// Free for reuse, resident or not.
    pub free: u64,
}

/// The heap's figures (glibc only).
pub fn heap() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's counters.
        #[allow(unsafe_code)]
        let info = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            allocated: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// The process's resident set size, from /proc/self/status (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Gives free heap memory back to the system, every [`CHECK_INTERVAL`], until `stopped`,
/// once the process's resident size passes half of `budget` (the memory limits' sum).
pub async fn release_free_memory(budget: u64, mut stopped: watch::Receiver<bool>) {
    if heap().is_none() {
        return;
    }
    // Memory given back still counts as free: trim again once the resident size has grown
    // since the last trim, or after a while.
    let floor = budget / 2;
    let mut mark = floor;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        let (above, idle) = (mark, last.elapsed() >= IDLE_TRIM_INTERVAL);
        match tokio::task::spawn_blocking(move || trim(above, idle)).await {
            Ok(Trim::Trimmed(resident)) => {
                (mark, last) = (resident.max(floor), Instant::now());
            }
            Ok(Trim::Below(resident)) => mark = resident.max(floor),
            Ok(Trim::NotYet) => {}
            Err(e) => tracing::warn!("releasing free memory: {e}"),
        }
    }
}

/// What [`trim`] did.
#[derive(Debug, PartialEq)]
enum Trim {
    /// Trimmed the heap, leaving this resident size.
    Trimmed(u64),
    /// Nothing: the process is below the mark, at this resident size.
    Below(u64),
    NotYet,
}

/// Trims the heap if it holds more than [`KEEP_FREE_BYTES`] free and the process has grown
/// by as much above `mark` (or, if `idle`, is above it at all).
fn trim(mark: u64, idle: bool) -> Trim {
    let Some(resident) = resident_bytes() else {
        return Trim::NotYet;
    };
    if resident < mark {
        return Trim::Below(resident);
    }
    if !idle && resident < mark + KEEP_FREE_BYTES {
        return Trim::NotYet;
    }
    // (mallinfo2 walks every arena: read only when a trim may be due.)
    match heap() {
        Some(heap) if heap.free >= KEEP_FREE_BYTES => {
            let started = Instant::now();
            release();
            let after = resident_bytes().unwrap_or(resident);
            tracing::debug!(
                free_mib = heap.free >> 20,
                released_mib = resident.saturating_sub(after) >> 20,
                took = ?started.elapsed(),
                "returned free heap memory to the system"
            );
            Trim::Trimmed(after)
        }
        _ => Trim::NotYet,
    }
}

fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages to the system; it takes the
        // allocator's own locks.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Freed blocks in the middle of the heap stay resident until released.
    #[test]
    fn release_returns_free_heap_pages_to_the_system() {
        if heap().is_none() {
            eprintln!("SKIPPED: not glibc");
            return;
        }
        // 256 MiB in 4 KiB blocks, served from the heap; the last one, kept, holds the
        // heap's top so that freeing the others cannot shrink it from the top.
        let mut blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8 | 1; 4096]).collect();
        let keep = blocks.pop();
        let full = resident_bytes().unwrap();
        drop(blocks);
        let freed = resident_bytes().unwrap();
        assert!(
            freed + 64 * MIB > full,
            "glibc returned the blocks by itself: {} -> {} MiB",
            full / MIB,
            freed / MIB
        );
        assert!(heap().unwrap().free > 200 * MIB);
        // A mark above the process's size: nothing to do.
        assert!(matches!(trim(u64::MAX, true), Trim::Below(_)));
        // Grown by less than the free memory kept, and not idle: not yet.
        assert_eq!(trim(freed - 32 * MIB, false), Trim::NotYet);
        let Trim::Trimmed(after) = trim(0, false) else {
            panic!("not trimmed")
        };
        assert!(
            after + 128 * MIB < freed,
            "{} -> {} MiB",
            freed / MIB,
            after / MIB
        );
        drop(keep);
    }
}
