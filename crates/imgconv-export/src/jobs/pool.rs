//! Connections to a job store shared by many threads: each operation takes a free one, so no
//! request waits behind another's query, and none is held while an image is opened or storage
//! is contacted (the APIs take a connection around each store operation only).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use imgconv::Result;

use super::JobStore;

/// Something that lends a [`JobStore`] for one operation at a time.
pub trait Stores {
    /// Run `f` on a store connection, held for `f`'s duration only.
    fn with<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T;
}

impl Stores for Mutex<JobStore> {
    fn with<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T {
        let mut guard = self.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl Stores for std::cell::RefCell<JobStore> {
    fn with<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T {
        f(&mut self.borrow_mut())
    }
}

/// One store borrowed for a single thread's submissions (the command line's).
impl Stores for std::cell::RefCell<&mut JobStore> {
    fn with<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T {
        f(&mut self.borrow_mut())
    }
}

/// A fixed set of connections to one job store.
#[derive(Debug)]
pub struct StorePool {
    conns: Vec<Mutex<JobStore>>,
    next: AtomicUsize,
}

impl StorePool {
    /// `size` connections (at least one): `first` and `size - 1` more to the same database
    /// with the same options (opened without migrating or recovering again).
    pub fn new(first: JobStore, size: usize) -> Result<StorePool> {
        let mut conns = Vec::with_capacity(size.max(1));
        for _ in 1..size.max(1) {
            conns.push(Mutex::new(first.another()?));
        }
        conns.insert(0, Mutex::new(first));
        Ok(StorePool {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// How many connections the pool holds.
    pub fn size(&self) -> usize {
        self.conns.len()
    }
}

impl Stores for StorePool {
    fn with<T>(&self, f: impl FnOnce(&mut JobStore) -> T) -> T {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // A free connection, looking from a rotating start; when every one is busy, wait for
        // the one at the start (the waits spread over the connections).
        for i in 0..n {
            if let Ok(mut guard) = self.conns[(start + i) % n].try_lock() {
                return f(&mut guard);
            }
        }
        self.conns[start].with(f)
    }
}
