//! Reusable chunk buffers and cheaply shared byte slices.
//!
//! A chunk's buffer is read on a worker, handed to the writer, then to the sink and to every
//! digest thread at once. [`Bytes`] shares it by reference count; when the last holder drops
//! it, the buffer goes back to its [`BufferPool`]. Reusing buffers keeps the allocator and the
//! kernel's page-fault path out of the hot loop, and bounds memory to the pool's in-flight
//! window.

use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex};

/// A pool of equally sized byte buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    size: usize,
    free: Mutex<Vec<(Vec<u8>, usize)>>,
    /// How many free buffers are kept; more are released to the allocator.
    keep: usize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that keeps at most `keep` idle ones.
    pub(crate) fn new(size: usize, keep: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            size,
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer of the pool's size. Its content is unspecified (a previous chunk's).
    pub(crate) fn get(self: &Arc<Self>) -> PooledBuf {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let (vec, start) = reused.unwrap_or_else(|| page_aligned(self.size));
        PooledBuf {
            vec,
            start,
            len: self.size,
            pool: Some(Arc::clone(self)),
        }
    }
}

/// Page size the pool's buffers are aligned to.
const PAGE: usize = 4096;

/// A zeroed buffer of `size` bytes starting on a page boundary: the vector and where in it
/// the buffer starts. The kernel copies between the page cache and a page-aligned buffer
/// several times faster than into one a few bytes off (as the allocator places a large
/// vector: just past its own header), on reads and writes alike.
fn page_aligned(size: usize) -> (Vec<u8>, usize) {
    let vec = vec![0u8; size + PAGE];
    let start = vec.as_ptr().align_offset(PAGE).min(PAGE);
    (vec, start)
}

/// A buffer that returns to its pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    /// The allocation (it does not move when the vector does).
    vec: Vec<u8>,
    /// Where the buffer starts in `vec`, and its length.
    start: usize,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

impl PooledBuf {
    /// A buffer that belongs to no pool.
    pub(crate) fn detached(vec: Vec<u8>) -> PooledBuf {
        let len = vec.len();
        PooledBuf {
            vec,
            start: 0,
            len,
            pool: None,
        }
    }

    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }

    /// Share the first `len` bytes.
    pub(crate) fn freeze(self, len: usize) -> Bytes {
        let len = len.min(self.len);
        Bytes {
            buf: Arc::new(self),
            range: 0..len,
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            if let Ok(mut free) = pool.free.lock() {
                if free.len() < pool.keep && self.len == pool.size {
                    free.push((std::mem::take(&mut self.vec), self.start));
                }
            }
        }
    }
}

/// An immutable, cheaply cloned slice of a shared buffer.
#[derive(Debug, Clone)]
pub struct Bytes {
    buf: Arc<PooledBuf>,
    range: Range<usize>,
}

impl Bytes {
    /// Bytes owning `vec`.
    pub fn from_vec(vec: Vec<u8>) -> Bytes {
        let len = vec.len();
        PooledBuf::detached(vec).freeze(len)
    }

    /// A sub-slice, relative to this one. Panics if out of range (a programming error).
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        assert!(range.start <= range.end && range.end <= self.range.len());
        Bytes {
            buf: Arc::clone(&self.buf),
            range: self.range.start + range.start..self.range.start + range.end,
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_returns_to_the_pool_after_its_last_share() {
        let pool = BufferPool::new(8, 4);
        let bytes = pool.get().freeze(8);
        let part = bytes.slice(2..4);
        drop(bytes);
        assert_eq!(pool.free.lock().map(|f| f.len()).unwrap_or(99), 0);
        drop(part);
        assert_eq!(pool.free.lock().map(|f| f.len()).unwrap_or(99), 1);
    }

    #[test]
    fn pooled_buffers_start_on_a_page() {
        let pool = BufferPool::new(10_000, 2);
        for _ in 0..3 {
            let mut b = pool.get();
            assert_eq!(b.as_mut_slice().as_ptr() as usize % PAGE, 0);
            assert_eq!(b.len(), 10_000);
        }
    }

    #[test]
    fn slices_are_relative() {
        let b = Bytes::from_vec((0u8..10).collect());
        let s = b.slice(2..8).slice(1..3);
        assert_eq!(&*s, &[3, 4]);
    }
}
