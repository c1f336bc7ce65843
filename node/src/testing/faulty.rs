//! A storage engine whose flush fails on demand, for tests of what a node does when its disk
//! fails under it.
//!
//! [`FaultyStorage`] wraps any engine and passes every call through, except that
//! [`Storage::flush`], and every call of a [`Storage::flush_handle`], fails with [`Error::Io`]
//! while its [`Faults`] switch is on. The switch is
//! shared, so a test keeps it after handing the storage to a server that owns it from then on.
//! Only `flush` fails: reads and writes go on working, as they do in sled after a failed log write
//! (the writes are only in memory), and `set_meta` is left alone because a node writes meta at
//! start-up, before a test turns the switch on.

use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::{FlushHandle, Storage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The switch of a [`FaultyStorage`], and what it counted. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    fail_flush: AtomicBool,
    flushes: AtomicU64,
    failed: AtomicU64,
}

impl Faults {
    /// Make every flush from now on fail (`true`) or pass through again (`false`).
    pub fn fail_flushes(&self, on: bool) {
        self.inner.fail_flush.store(on, Ordering::SeqCst);
    }

    /// How many flushes were asked for, failed ones included.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::SeqCst)
    }

    /// How many flushes failed because the switch was on.
    pub fn failed_flushes(&self) -> u64 {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// Count a flush, and fail it if the switch is on.
    fn check_flush(&self) -> Result<()> {
        let counters = &self.inner;
        counters.flushes.fetch_add(1, Ordering::SeqCst);
        if counters.fail_flush.load(Ordering::SeqCst) {
            counters.failed.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Io("injected flush failure (FaultyStorage)".into()));
        }
        Ok(())
    }
}

/// An engine whose flush fails while its [`Faults`] switch is on; see the [module doc](self).
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    faults: Faults,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner`, with the switch off; keep the returned [`Faults`] to turn it on.
    pub fn new(inner: S) -> (FaultyStorage<S>, Faults) {
        let faults = Faults::default();
        let storage = FaultyStorage {
            inner,
            faults: faults.clone(),
        };
        (storage, faults)
    }

    /// The wrapped engine.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.delete(key)
    }
    fn visit_range(
        &self,
        from: Id,
        to: Id,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.inner.visit_range(from, to, visit)
    }
    fn flush(&self) -> Result<()> {
        self.faults.check_flush()?;
        self.inner.flush()
    }
    fn flush_handle(&self) -> FlushHandle {
        let (faults, inner) = (self.faults.clone(), self.inner.flush_handle());
        Box::new(move || {
            faults.check_flush()?;
            inner()
        })
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }
    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.set_meta(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn flush_fails_only_while_the_switch_is_on() -> Result<()> {
        let (mut s, faults) = FaultyStorage::new(MemoryStorage::new());
        s.put(b"k", b"v")?;
        s.flush()?;
        faults.fail_flushes(true);
        assert!(matches!(s.flush(), Err(Error::Io(_))));
        assert_eq!(s.get(b"k")?, Some(b"v".to_vec()), "reads still work");
        let handle = s.flush_handle();
        assert!(
            matches!(handle(), Err(Error::Io(_))),
            "the handle fails too"
        );
        s.put(b"k2", b"v2")?;
        faults.fail_flushes(false);
        s.flush()?;
        handle()?;
        assert_eq!((faults.flushes(), faults.failed_flushes()), (5, 2));
        assert_eq!(s.into_inner().scan_range(Id::ZERO, Id::ZERO, 9)?.len(), 2);
        Ok(())
    }
}
