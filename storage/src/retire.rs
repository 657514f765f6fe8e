//! Segment files leave the catalog (compaction, retention, dropped tables) while queries
//! may still be reading them. A snapshot pins the files it lists; a retired file is removed
//! when its last pin is dropped, or at once if nothing pins it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Keeps a segment file on disk while held.
#[derive(Debug)]
pub struct SegmentPin {
    path: PathBuf,
    retired: AtomicBool,
}

impl Drop for SegmentPin {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            remove(&self.path);
        }
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(file = %path.display(), "removed a retired segment"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a retired segment")
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Pins {
    live: Mutex<HashMap<PathBuf, Weak<SegmentPin>>>,
}

impl Pins {
    pub(crate) fn pin(&self, path: PathBuf) -> Arc<SegmentPin> {
        let mut live = self.live.lock().expect("pins lock");
        if let Some(pin) = live.get(&path).and_then(Weak::upgrade) {
            return pin;
        }
        if live.len() > 1024 {
            live.retain(|_, pin| pin.strong_count() > 0);
        }
        let pin = Arc::new(SegmentPin {
            path: path.clone(),
            retired: AtomicBool::new(false),
        });
        live.insert(path, Arc::downgrade(&pin));
        pin
    }

    /// The file has left the catalog: remove it now, or when its last pin goes.
    pub(crate) fn retire(&self, path: &Path) {
        let pin = self
            .live
            .lock()
            .expect("pins lock")
            .remove(path)
            .and_then(|w| w.upgrade());
        match pin {
            Some(pin) => pin.retired.store(true, Ordering::Release),
            None => remove(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_file_stays_until_its_last_pin_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let pins = Pins::default();
        let first = pins.pin(a.clone());
        let second = pins.pin(a.clone());
        pins.retire(&a);
        pins.retire(&b);
        assert!(a.exists(), "pinned files stay");
        assert!(!b.exists(), "unpinned files go at once");
        drop(first);
        assert!(a.exists());
        drop(second);
        assert!(!a.exists());
    }
}
