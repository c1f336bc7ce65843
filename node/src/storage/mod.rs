//! STORAGE
//!
//! A node keeps its share of the keys in a [`Storage`] engine. The protocol and the server depend
//! only on this trait; [`SledStorage`] is the engine a real node runs on, [`MemoryStorage`] the one
//! the simulator runs thousands of nodes on. One shared test suite checks both.
//!
//! Keys are arbitrary bytes placed on the ring by their SHA-1 ([`Id::hash`]). Engines keep entries
//! ordered by that id so that a node can hand a whole arc of the ring to a neighbour
//! ([`Storage::scan_range`]) without reading every key.

use crate::Result;
use crate::id::Id;

mod memory;
mod sled_engine;

pub use memory::MemoryStorage;
pub use sled_engine::{DEFAULT_CACHE_BYTES, SledStorage};

/// A [`Storage::flush`] callable from any thread, independent of the engine's borrow.
pub type FlushHandle = Box<dyn Fn() -> Result<()> + Send + 'static>;

/// A node's local key-value store, ordered by the ring id of each key.
///
/// Writes are visible to reads at once; they are durable only after [`Storage::flush`] returns.
pub trait Storage: Send {
    /// The value stored under `key`, if any.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Store `value` under `key`, replacing any previous value; returns the value replaced.
    /// (Engines get it for free: the data layer's hash tree needs it to update incrementally.)
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Remove `key`; returns the value it held, if it was present.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries whose key id lies in the ring interval `(from, to]`, in clockwise
    /// order starting just after `from` (so it wraps past zero when `to <= from`; when
    /// `from == to` the interval is the whole ring).
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn scan_range(&self, from: Id, to: Id, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit > 0 {
            self.visit_range(from, to, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// Call `visit(key, value)` for the entries whose key id lies in `(from, to]`, in the order
    /// of [`Storage::scan_range`], until it returns `false`: a cursor that copies nothing, for
    /// callers that bound their own slice by keys and bytes.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn visit_range(
        &self,
        from: Id,
        to: Id,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// Make every write so far survive a crash of this process.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn flush(&self) -> Result<()>;

    /// A handle that does what [`Storage::flush`] does from another thread: each call makes
    /// every write that happened before it began survive a crash of this process, and fails
    /// when `flush` would. The server flushes through one on its own thread, off its core loop.
    fn flush_handle(&self) -> FlushHandle;

    /// A small named value kept beside the data (the node id, for one), not on the ring.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Store a named value beside the data, durably (flushed before returning).
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()>;
}

/// A run `[start, end)` of ids in numeric order; `end == None` runs through [`Id::MAX`].
///
/// Engines key entries by `(id, key bytes)`. Giving both ends as ids with the smallest key bytes
/// (none) makes the span select whole ids: every entry with `start <= id < end`, whatever its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdSpan {
    start: Id,
    end: Option<Id>,
}

/// The ring interval `(from, to]` as at most two numeric spans, in clockwise order from `from`.
///
/// `(from, to]` over ids is `[from + 1, to + 1)`; it splits in two at zero when it wraps, which is
/// also the case `from == to` (the whole ring, starting just after `from`). An end of
/// [`Id::MAX`] + 1 becomes `None` rather than wrapping to zero.
fn id_spans(from: Id, to: Id) -> [Option<IdSpan>; 2] {
    let end = (to != Id::MAX).then(|| to.succ());
    if from < to {
        [
            Some(IdSpan {
                start: from.succ(),
                end,
            }),
            None,
        ]
    } else {
        [
            (from != Id::MAX).then(|| IdSpan {
                start: from.succ(),
                end: None,
            }),
            Some(IdSpan {
                start: Id::ZERO,
                end,
            }),
        ]
    }
}

/// One suite of checks, run against every engine; see [`Storage`] for the contract they check.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::id::{distance, in_half_open};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use tempfile::TempDir;

    const ZERO: Id = Id::ZERO;

    fn memory() -> (MemoryStorage, ()) {
        (MemoryStorage::new(), ())
    }

    /// A sled engine in a fresh directory; the directory must outlive the engine.
    fn sled() -> (SledStorage, TempDir) {
        let dir = TempDir::new().expect("create temp dir");
        let storage = SledStorage::open(dir.path()).expect("open sled in a fresh dir");
        (storage, dir)
    }

    /// Generates one `#[test]` per engine and check, so a failure names both.
    macro_rules! suite {
        ($($check:ident),* $(,)?) => {
            mod memory_engine {
                $(
                    #[test]
                    fn $check() -> crate::Result<()> {
                        let (mut storage, ()) = super::memory();
                        super::$check(&mut storage)
                    }
                )*
            }
            mod sled_engine {
                $(
                    #[test]
                    fn $check() -> crate::Result<()> {
                        let (mut storage, dir) = super::sled();
                        let result = super::$check(&mut storage);
                        drop(storage);
                        drop(dir);
                        result
                    }
                )*
            }
        };
    }

    suite!(
        get_put_overwrite_delete,
        empty_keys_and_values_are_stored,
        put_returns_what_it_replaced,
        scan_range_selects_the_half_open_arc_clockwise,
        meta_is_kept_apart_from_data,
    );

    fn get_put_overwrite_delete(s: &mut impl Storage) -> Result<()> {
        assert_eq!(s.get(b"a")?, None);
        s.put(b"a", b"1")?;
        assert_eq!(s.get(b"a")?, Some(b"1".to_vec()));
        s.put(b"a", b"2")?;
        assert_eq!(s.get(b"a")?, Some(b"2".to_vec()), "put overwrites");
        s.put(b"b", b"3")?;
        assert_eq!(
            s.delete(b"a")?,
            Some(b"2".to_vec()),
            "delete returns what it removed"
        );
        assert_eq!(s.get(b"a")?, None);
        assert_eq!(
            s.delete(b"a")?,
            None,
            "delete of a deleted key finds nothing"
        );
        assert_eq!(
            s.delete(b"never")?,
            None,
            "delete of an absent key finds nothing"
        );
        assert_eq!(s.get(b"b")?, Some(b"3".to_vec()), "other keys untouched");
        Ok(())
    }

    /// Size limits are the server's business; storage takes any bytes.
    fn empty_keys_and_values_are_stored(s: &mut impl Storage) -> Result<()> {
        s.put(b"", b"")?;
        assert_eq!(
            s.get(b"")?,
            Some(Vec::new()),
            "an empty value is not an absent one"
        );
        s.put(b"k", b"")?;
        assert_eq!(s.get(b"k")?, Some(Vec::new()));
        let all = s.scan_range(Id::ZERO, Id::ZERO, usize::MAX)?;
        assert!(all.contains(&(Vec::new(), Vec::new())), "{all:?}");
        assert_eq!(s.delete(b"")?, Some(Vec::new()));
        assert_eq!(s.get(b"")?, None);
        Ok(())
    }

    fn put_returns_what_it_replaced(s: &mut impl Storage) -> Result<()> {
        assert_eq!(s.put(b"x", b"1")?, None, "a new key replaces nothing");
        assert_eq!(s.put(b"x", b"2")?, Some(b"1".to_vec()));
        s.set_meta("x", b"meta")?;
        assert_eq!(s.put(b"x", b"3")?, Some(b"2".to_vec()), "meta is not data");
        assert_eq!(s.delete(b"x")?, Some(b"3".to_vec()));
        assert_eq!(
            s.put(b"x", b"4")?,
            None,
            "after a delete the key is new again"
        );
        Ok(())
    }

    /// Keys `""`, `"k1"` .. `"k11"` sorted by ring id, so cases can name arcs by position.
    fn ring_of_keys(s: &mut impl Storage) -> Result<Vec<(Id, Vec<u8>)>> {
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        keys.extend((1..12).map(|i| format!("k{i}").into_bytes()));
        let mut ring: Vec<(Id, Vec<u8>)> = keys.into_iter().map(|k| (Id::hash(&k), k)).collect();
        ring.sort();
        for (_, k) in &ring {
            s.put(k, &value_of(k))?;
        }
        Ok(ring)
    }

    fn value_of(key: &[u8]) -> Vec<u8> {
        [b"v:", key].concat()
    }

    fn scan_range_selects_the_half_open_arc_clockwise(s: &mut impl Storage) -> Result<()> {
        let ring = ring_of_keys(s)?;
        let at = |i: usize| ring[i].0;
        let all: Vec<usize> = (0..12).collect();
        let max = usize::MAX;
        // (from, to, limit, positions expected, in order)
        let cases: Vec<(Id, Id, usize, Vec<usize>)> = vec![
            // id == from excluded, id == to included, whatever the key bytes
            (at(2), at(5), max, vec![3, 4, 5]),
            (at(3), at(4), max, vec![4]),
            (at(4), at(4).succ(), max, vec![]),
            (ZERO, at(0), max, vec![0]),
            (at(11), Id::MAX, max, vec![]),
            // wrapping past zero: (from, MAX] then [ZERO, to]
            (at(5), at(2), max, vec![6, 7, 8, 9, 10, 11, 0, 1, 2]),
            (at(11), at(0), max, vec![0]),
            (at(10), ZERO, max, vec![11]),
            (Id::MAX, at(1), max, vec![0, 1]),
            (Id::MAX, ZERO, max, vec![]),
            // from == to: the whole ring, starting just after from, from itself last
            (
                at(3),
                at(3),
                max,
                vec![4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3],
            ),
            (ZERO, ZERO, max, all.clone()),
            (Id::MAX, Id::MAX, max, all.clone()),
            (ZERO, Id::MAX, max, all.clone()),
            // limit: the first `limit` entries clockwise, also across the wrap
            (at(2), at(5), 1, vec![3]),
            (at(5), at(2), 3, vec![6, 7, 8]),
            (at(5), at(2), 7, vec![6, 7, 8, 9, 10, 11, 0]),
            (at(5), at(2), 0, vec![]),
            (
                at(3),
                at(3),
                100,
                vec![4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3],
            ),
        ];
        for (from, to, limit, expected) in cases {
            let want: Vec<(Vec<u8>, Vec<u8>)> = expected
                .iter()
                .map(|&i| (ring[i].1.clone(), value_of(&ring[i].1)))
                .collect();
            let got = s.scan_range(from, to, limit)?;
            assert_eq!(got, want, "scan_range({from:?}, {to:?}, {limit})");
        }
        Ok(())
    }

    fn meta_is_kept_apart_from_data(s: &mut impl Storage) -> Result<()> {
        assert_eq!(s.get_meta("node_id")?, None);
        s.set_meta("node_id", b"abc")?;
        assert_eq!(s.get_meta("node_id")?, Some(b"abc".to_vec()));
        s.set_meta("node_id", b"def")?;
        assert_eq!(
            s.get_meta("node_id")?,
            Some(b"def".to_vec()),
            "set_meta overwrites"
        );
        assert_eq!(s.get_meta("other")?, None);
        assert_eq!(s.get(b"node_id")?, None, "meta is not on the ring");
        assert_eq!(s.scan_range(ZERO, ZERO, usize::MAX)?, Vec::new());
        s.put(b"node_id", b"data")?;
        assert_eq!(
            s.get_meta("node_id")?,
            Some(b"def".to_vec()),
            "data is not meta"
        );
        Ok(())
    }

    #[test]
    fn id_spans_split_at_zero() {
        let n = |v: u8| {
            let mut b = [0u8; 20];
            b[19] = v;
            Id(b)
        };
        let span = |start: Id, end: Option<Id>| Some(IdSpan { start, end });
        // (from, to, spans)
        let cases = [
            (n(10), n(20), [span(n(11), Some(n(21))), None]),
            (n(10), Id::MAX, [span(n(11), None), None]),
            (n(20), n(10), [span(n(21), None), span(ZERO, Some(n(11)))]),
            (n(7), n(7), [span(n(8), None), span(ZERO, Some(n(8)))]),
            (Id::MAX, n(3), [None, span(ZERO, Some(n(4)))]),
            (Id::MAX, Id::MAX, [None, span(ZERO, None)]),
            (ZERO, ZERO, [span(n(1), None), span(ZERO, Some(n(1)))]),
        ];
        for (from, to, want) in cases {
            assert_eq!(id_spans(from, to), want, "({from:?}, {to:?}]");
        }
    }

    #[test]
    fn sled_data_and_meta_survive_reopen() -> Result<()> {
        let dir = TempDir::new()?;
        let before = {
            let mut s = SledStorage::open(dir.path())?;
            let ring = ring_of_keys(&mut s)?;
            assert!(s.delete(&ring[4].1)?.is_some());
            s.put(&ring[0].1, b"changed")?;
            s.set_meta("node_id", b"me")?;
            s.flush()?;
            s.scan_range(ZERO, ZERO, usize::MAX)?
        };
        let s = SledStorage::open(dir.path())?;
        assert_eq!(s.path(), dir.path());
        assert_eq!(before.len(), 11);
        assert_eq!(s.scan_range(ZERO, ZERO, usize::MAX)?, before);
        assert_eq!(before[0].1, b"changed".to_vec());
        assert_eq!(s.get_meta("node_id")?, Some(b"me".to_vec()));
        Ok(())
    }

    #[test]
    fn sled_reopens_at_once_after_a_drop() -> Result<()> {
        // sled's background writers can keep the lock for a moment after a drop (CI once failed
        // on it, rarely reproducible alone); open waits it out.
        let dir = TempDir::new()?;
        for round in 0..50u8 {
            let mut s = SledStorage::open(dir.path())?;
            let all = s.scan_range(ZERO, ZERO, usize::MAX)?;
            assert_eq!(all.len(), usize::from(round));
            s.put(&[round], b"v")?;
        }
        Ok(())
    }

    #[test]
    fn sled_refuses_a_locked_dir_and_names_it() -> Result<()> {
        let (held, dir) = sled();
        let err = SledStorage::open(dir.path()).expect_err("the dir is locked by `held`");
        let Error::Io(msg) = &err else {
            panic!("expected Error::Io, got {err:?}");
        };
        let path = dir.path().display().to_string();
        assert!(msg.contains(&path), "{msg}");
        assert!(msg.contains("lock"), "{msg}");
        drop(held);
        Ok(())
    }

    /// A write in the model-checking test.
    #[derive(Debug, Clone)]
    enum Op {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
    }

    /// Few distinct keys (13, including the empty one), so writes often hit existing keys.
    fn small_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 0..3)
    }

    /// Every value `small_key` can take.
    fn every_small_key() -> Vec<Vec<u8>> {
        let mut keys = vec![Vec::new()];
        for a in 0u8..3 {
            keys.push(vec![a]);
            keys.extend((0u8..3).map(|b| vec![a, b]));
        }
        keys
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (small_key(), proptest::collection::vec(any::<u8>(), 0..4))
                .prop_map(|(k, v)| Op::Put(k, v)),
            small_key().prop_map(Op::Delete),
        ]
    }

    /// Scan bounds: random points, the ends of the ring, and the ids of keys themselves (the
    /// boundary cases).
    fn bound() -> impl Strategy<Value = Id> {
        prop_oneof![
            any::<[u8; 20]>().prop_map(Id),
            Just(Id::ZERO),
            Just(Id::MAX),
            small_key().prop_map(|k| Id::hash(&k)),
        ]
    }

    /// `scan_range` written from its definition over a plain map: filter by `in_half_open`, sort
    /// by clockwise distance from just after `from`.
    fn model_scan(
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        from: Id,
        to: Id,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut hits: Vec<(Id, &Vec<u8>, &Vec<u8>)> = model
            .iter()
            .map(|(k, v)| (Id::hash(k), k, v))
            .filter(|(id, _, _)| in_half_open(from, to, *id))
            .collect();
        hits.sort_by_key(|(id, k, _)| (distance(from.succ(), *id), *k));
        hits.into_iter()
            .take(limit)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect()
    }

    proptest! {
        #[test]
        fn engines_agree_with_a_model(
            ops in proptest::collection::vec(op(), 0..40),
            scans in proptest::collection::vec((bound(), bound(), 0usize..16), 1..8),
        ) {
            let (mut mem, ()) = memory();
            let (mut sled, dir) = sled();
            let mut model = BTreeMap::new();
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        let want = model.insert(k.clone(), v.clone());
                        prop_assert_eq!(mem.put(k, v)?, want.clone(), "memory put {:?}", k);
                        prop_assert_eq!(sled.put(k, v)?, want, "sled put {:?}", k);
                    }
                    Op::Delete(k) => {
                        let want = model.remove(k);
                        prop_assert_eq!(mem.delete(k)?, want.clone(), "memory delete {:?}", k);
                        prop_assert_eq!(sled.delete(k)?, want, "sled delete {:?}", k);
                    }
                }
            }
            let engines: [&dyn Storage; 2] = [&mem, &sled];
            for (name, s) in ["memory", "sled"].into_iter().zip(engines) {
                for k in every_small_key() {
                    prop_assert_eq!(s.get(&k)?, model.get(&k).cloned(), "{} get {:?}", name, k);
                }
                for &(from, to, limit) in &scans {
                    prop_assert_eq!(
                        s.scan_range(from, to, limit)?,
                        model_scan(&model, from, to, limit),
                        "{} scan_range({:?}, {:?}, {})", name, from, to, limit
                    );
                    let mut visited = Vec::new();
                    s.visit_range(from, to, &mut |k, v| {
                        visited.push((k.to_vec(), v.to_vec()));
                        visited.len() < limit.max(1)
                    })?;
                    prop_assert_eq!(
                        visited,
                        model_scan(&model, from, to, limit.max(1)),
                        "{} visit_range({:?}, {:?}) stopped after {}", name, from, to, limit.max(1)
                    );
                }
            }
            drop(sled);
            drop(dir);
        }
    }
}
