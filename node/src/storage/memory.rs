//! The in-memory engine: two `BTreeMap`s and nothing else, so the simulator can run thousands of
//! nodes in one process and every run is deterministic.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{FlushHandle, Storage, id_spans};
use crate::Result;
use crate::id::Id;

/// A [`Storage`] engine held entirely in memory. Nothing survives the process; [`Storage::flush`]
/// and its [handle](Storage::flush_handle) are no-ops.
///
/// Entries are keyed by `(Id::hash(key), key)`, so the map's own order is ring order and
/// [`Storage::scan_range`] is a range query, as in the sled engine.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    data: BTreeMap<(Id, Vec<u8>), Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }
}

impl Storage for MemoryStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(&(Id::hash(key), key.to_vec())).cloned())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .data
            .insert((Id::hash(key), key.to_vec()), value.to_vec()))
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.remove(&(Id::hash(key), key.to_vec())))
    }

    fn visit_range(
        &self,
        from: Id,
        to: Id,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for span in id_spans(from, to).into_iter().flatten() {
            // `(id, [])` is the smallest composite key with that id, so `[start, end)` over
            // composite keys is exactly "every key whose id is in [start, end)".
            let lo = Bound::Included((span.start, Vec::new()));
            let hi = match span.end {
                Some(end) => Bound::Excluded((end, Vec::new())),
                None => Bound::Unbounded,
            };
            for ((_, k), v) in self.data.range((lo, hi)) {
                if !visit(k, v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn flush_handle(&self) -> FlushHandle {
        Box::new(|| Ok(()))
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(name).cloned())
    }

    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(name.to_string(), value.to_vec());
        Ok(())
    }
}
