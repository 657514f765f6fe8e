//! Large byte buffers, kept for reuse.
//!
//! The server maps every allocation of 512 KiB or more afresh and unmaps it when it is
//! freed (`src/server/memory.rs`: that bounds the memory the allocator holds on to). A
//! write's request body and its WAL record are usually that large (a batch of 5,000 TSBS
//! lines is 1.8 MB of line protocol and 0.7 MB of Arrow IPC), and a buffer allocated for
//! each would fault in and zero every page it uses. A [`BufferPool`] keeps buffers that are
//! done with, up to a bound on the bytes it keeps, and hands them out again.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Byte buffers kept between uses; see the module documentation.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Capacity kept at most, across buffers.
    kept_bytes: usize,
}

impl BufferPool {
    /// A pool that keeps buffers of at most `kept_bytes` capacity in all.
    pub fn new(kept_bytes: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            kept_bytes,
        })
    }

    /// An empty buffer with room for `capacity` bytes: a kept one if there is one.
    pub fn take(self: &Arc<Self>, capacity: usize) -> PooledBuf {
        let kept = {
            let mut free = self.free.lock().expect("buffer pool lock");
            // The smallest that is large enough, else the largest (it grows least); the
            // largest for a length not known beforehand.
            let fits = free
                .iter()
                .enumerate()
                .filter(|(_, b)| capacity > 0 && b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
                .map(|(i, _)| i);
            fits.map(|i| free.swap_remove(i))
        };
        let mut buf = kept.unwrap_or_default();
        buf.reserve_exact(capacity);
        PooledBuf {
            buf,
            home: self.clone(),
        }
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().expect("buffer pool lock");
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= self.kept_bytes {
            free.push(buf);
        }
    }

    /// Bytes of capacity kept now.
    pub fn kept(&self) -> usize {
        let free = self.free.lock().expect("buffer pool lock");
        free.iter().map(Vec::capacity).sum()
    }
}

/// A buffer from a [`BufferPool`], given back to it when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    home: Arc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_up_to_the_kept_bytes() {
        let pool = BufferPool::new(8 << 20);
        let mut a = pool.take(1 << 20);
        a.extend_from_slice(b"line");
        let at = a.as_ptr();
        drop(a);
        assert!(pool.kept() >= 1 << 20);
        let b = pool.take(1000);
        assert_eq!(b.as_ptr(), at, "the kept buffer is handed out again");
        assert!(b.is_empty(), "and handed out empty");
        drop(b);
        // More than the kept bytes at once: the excess is freed when given back.
        let many: Vec<PooledBuf> = (0..20).map(|_| pool.take(1 << 20)).collect();
        drop(many);
        assert!(pool.kept() <= 8 << 20);
        assert!(pool.kept() >= 7 << 20, "{}", pool.kept());
    }
}
