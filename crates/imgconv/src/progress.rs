//! Progress reporting and cancellation, as the library offers them to its callers.
//!
//! The library never prints: a caller implements [`Progress`] (the CLI with a progress bar or
//! JSON lines, an export job with its own counters) and passes a [`CancelToken`] that it may
//! trip from another thread or a signal handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives progress of a long operation: first, for writers that plan, the planning read
/// ([`Progress::planning`], from the reading threads), then the conversion ([`Progress::start`]
/// and [`Progress::advance`], from the committing thread, in order).
pub trait Progress: Send + Sync {
    /// The planning read (finding which units hold data) has covered `done` of `total` bytes
    /// of virtual disk. Called from any reading thread, at most once per chunk.
    fn planning(&self, done: u64, total: u64) {
        let _ = (done, total);
    }

    /// The operation starts; `total` bytes of virtual disk will be processed.
    fn start(&self, total: u64) {
        let _ = total;
    }

    /// `bytes` more of the virtual disk are done.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }

    /// The operation ended (successfully or not).
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A shared flag that asks a running operation to stop at the next chunk boundary.
#[derive(Debug, Default, Clone)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Ask the operation to stop. Safe to call from any thread or a signal handler thread.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` if cancellation was asked for.
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::cancelled())
        } else {
            Ok(())
        }
    }
}
