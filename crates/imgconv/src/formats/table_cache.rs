//! The metadata-table cache the readers share (QCOW2 L2 tables, VMDK grain tables): tables
//! decoded once and handed out as `Arc`s to every reading thread, bounded in bytes. When a new
//! table would pass the bound the cache is emptied: conversions read tables in disk order, so
//! what was evicted is rarely wanted again, and the bound holds with no bookkeeping per read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::error::Result;

/// Decoded tables of `T` entries by key (the table's position in the file).
#[derive(Debug)]
pub(crate) struct TableCache<K, T> {
    max_bytes: usize,
    tables: Mutex<HashMap<K, Arc<[T]>>>,
}

impl<K: Hash + Eq + Copy, T> TableCache<K, T> {
    /// A cache that holds at most `max_bytes` of entries.
    pub(crate) fn new(max_bytes: usize) -> Self {
        TableCache {
            max_bytes,
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The table at `key`: from the cache, or `load`ed and kept.
    pub(crate) fn get_or_load(
        &self,
        key: K,
        load: impl FnOnce() -> Result<Arc<[T]>>,
    ) -> Result<Arc<[T]>> {
        if let Some(t) = self.tables.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(t);
        }
        let table = load()?;
        let bytes = std::mem::size_of_val(&*table);
        if let Ok(mut c) = self.tables.lock() {
            let held: usize = c.values().map(|t| std::mem::size_of_val(&**t)).sum();
            if held + bytes > self.max_bytes {
                c.clear();
            }
            c.insert(key, Arc::clone(&table));
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_loaded_once_and_the_bound_empties_the_cache() -> Result<()> {
        let cache: TableCache<u64, u64> = TableCache::new(3 * 8 * 4);
        let loads = std::cell::Cell::new(0);
        let load = |v: u64| {
            loads.set(loads.get() + 1);
            Ok(Arc::from(vec![v; 4]))
        };
        assert_eq!(cache.get_or_load(1, || load(1))?[0], 1);
        assert_eq!(cache.get_or_load(1, || load(9))?[0], 1);
        assert_eq!(loads.get(), 1);
        cache.get_or_load(2, || load(2))?;
        cache.get_or_load(3, || load(3))?;
        // A fourth table passes the bound: the cache starts again.
        cache.get_or_load(4, || load(4))?;
        assert_eq!(cache.get_or_load(1, || load(5))?[0], 5);
        assert_eq!(loads.get(), 5);
        Ok(())
    }
}
