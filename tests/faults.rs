//! Faults: a full disk under the real server, on a small tmpfs mounted for the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::TestServer;

/// A tmpfs of `megabytes` MB, unmounted when dropped.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (and a message) where this machine cannot mount one (not root, no tmpfs).
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let mount = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(mount.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs here ({}); the disk-full test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallDisk { mount })
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

/// Fills the disk with a file until at most `leave` bytes are free; returns the file.
fn fill(disk: &Path, leave: u64) -> PathBuf {
    let ballast = disk.join("ballast");
    let free = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::fs::write(&ballast, vec![0u8; free.saturating_sub(leave) as usize]).unwrap_or(());
    ballast
}

fn count(server: &TestServer) -> usize {
    let (ok, out, err) = server.psql("m", &["-A", "-t", "-c", "SELECT count(*) FROM cpu"]);
    assert!(ok, "{err}");
    out.trim().parse().unwrap()
}

#[test]
fn a_full_disk_fails_writes_clearly_loses_nothing_and_recovers() {
    let Some(disk) = SmallDisk::mount(16) else {
        return;
    };
    let data = tempfile::TempDir::new_in(disk.path()).unwrap();
    let server = TestServer::start_in(data, &[]);
    let ballast = fill(disk.path(), 256 << 10);

    // Write until the disk is full: every 204 is a row that must survive.
    let mut acknowledged = 0;
    let mut refusal = None;
    let mut last_body = String::new();
    for batch in 0..2000 {
        let body: String = (0..200)
            .map(|i| {
                format!(
                    "cpu,host=h{i} v={batch},pad=\"{}\" {}\n",
                    "p".repeat(64),
                    batch * 1000 + i
                )
            })
            .collect();
        let (status, out) = server.write("m", body.as_bytes());
        last_body = body;
        match status {
            204 => acknowledged += 200,
            _ => {
                refusal = Some((status, String::from_utf8_lossy(&out).into_owned()));
                break;
            }
        }
    }
    let (status, message) = refusal.expect("the disk filled up");
    assert_eq!(status, 507, "{message}");
    assert!(message.contains("No space left on device"), "{message}");
    assert!(acknowledged > 0);

    // Still serving: queries see every acknowledged row, and another write of that size
    // fails the same way (the refused one left nothing behind to free).
    assert_eq!(count(&server), acknowledged);
    assert_eq!(server.write("m", last_body.as_bytes()).0, 507);

    // Space again: writes succeed without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.write("m", b"cpu,host=after v=1 1").0 {
            204 => break,
            status if Instant::now() > deadline => panic!("still {status} with space back"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    acknowledged += 1;
    assert_eq!(count(&server), acknowledged);

    // And a restart finds all of it.
    let (status, data, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("No space left on device"),
        "the log says why writes failed"
    );
    let server = TestServer::start_in(data, &[]);
    assert_eq!(count(&server), acknowledged);
    drop(server);
}
