//! The hash tree every node keeps over what it stores, for anti-entropy that costs what differs.
//!
//! HASH TREES
//!
//! Comparing two replicas' copies of a range by reading every key costs the size of the range,
//! every sync interval, whether anything differs or not. Dynamo (SOSP 2007 §4.7) and Riak's
//! hashtrees compare Merkle trees instead: equal roots end the exchange; otherwise the two sides
//! descend only into the subtrees that differ, and exchange only the keys of the leaves that do.
//!
//! Ranges move on every join and leave, so the tree does not follow ranges: it covers the whole
//! id space in fixed segments. A leaf is one of the [`LEAVES`] (2^16) segments named by the top
//! 16 bits of the key id; each inner node has [`FANOUT`] (16) children, so the tree has
//! [`DEPTH`] levels below its root. A node's [`Summary`] is the XOR of the entry hashes
//! ([`entry_hash`], SHA-1 of the key and its stored bytes) of every key below it, and their
//! count. XOR makes every update O(depth) with no read of the neighbours: a write XORs out the
//! old entry's hash and XORs in the new one along the leaf's path. (A set hash built this way is
//! as good as its entry hash against accidents; it is not meant to resist a peer that crafts
//! collisions, which authenticated peers keep out.)
//!
//! One tree serves every range the node holds copies of: a range `(from, to]` covers whole
//! leaves between its ends, whose summaries are the tree's, and at most two partial leaves at
//! its ends, summed by reading just those leaves' keys ([`Indexed::summary`]). Both replicas
//! compute the same restriction, so a node that stores other ranges too compares equal on the
//! range in question. Counts come for free: how many keys a node stores, or holds in its own
//! range, is a sum of summaries, not a scan.
//!
//! [`Indexed`] wraps the storage and keeps the tree true through every write that goes through
//! it (the data layer holds its storage only this way). The tree lives in memory (about 1.1 MB,
//! allocated with the first key) and is rebuilt after a restart in bounded slices between
//! inputs ([`Indexed::rebuild_step`]); a write behind the rebuild's cursor updates the tree, one
//! ahead of it is counted when the cursor gets there. Until the rebuild is done the node takes
//! part in no comparison and its counts are lower bounds.
//!
//! Entry hashes are of the stored bytes, so two copies compare equal when their encodings are;
//! states are encoded canonically ([`crate::version::Versioned::encode`]), so that is when they
//! are equal.

use crate::error::Result;
use crate::id::{Id, in_half_open};
use crate::storage::Storage;
use sha1::{Digest, Sha1};
use std::collections::BTreeSet;

/// Levels below the root; leaves are at level `DEPTH`.
pub const DEPTH: u8 = 4;
/// Bits of the key id each level down resolves.
const FANOUT_BITS: u32 = 4;
/// Children of an inner node.
pub const FANOUT: usize = 1 << FANOUT_BITS;
/// Bits of the key id that name a leaf.
const LEAF_BITS: u32 = FANOUT_BITS * DEPTH as u32;
/// Leaves, the fixed segments of the id space.
pub const LEAVES: usize = 1 << LEAF_BITS;

// A leaf is named by the first two bytes of the id (see `leaf_of` and `leaf_bounds`).
const _: () = assert!(LEAF_BITS == 16);

/// The XOR of the entry hashes of some keys, and how many there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// XOR of [`entry_hash`] over the keys.
    pub hash: u64,
    /// How many keys.
    pub keys: u64,
}

impl Summary {
    fn join(&mut self, other: Summary) {
        self.hash ^= other.hash;
        self.keys += other.keys;
    }

    fn add(&mut self, hash: u64) {
        self.hash ^= hash;
        self.keys += 1;
    }

    fn remove(&mut self, hash: u64) {
        self.hash ^= hash;
        self.keys = self.keys.saturating_sub(1);
    }
}

/// The hash of one stored entry: SHA-1 over the key's length, the key and the stored bytes,
/// cut to 64 bits.
pub fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h = Sha1::new();
    h.update(b"chordkv tree v1\0");
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    let d = h.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&d[..8]);
    u64::from_be_bytes(top)
}

/// The leaf a key id falls in.
pub fn leaf_of(id: Id) -> usize {
    (usize::from(id.0[0]) << 8) | usize::from(id.0[1])
}

/// The ids of leaf `leaf` as the ring interval `(before, last]`.
fn leaf_bounds(leaf: usize) -> (Id, Id) {
    let mut last = Id::MAX;
    last.0[0] = (leaf >> 8) as u8;
    last.0[1] = leaf as u8;
    let before = match leaf {
        0 => Id::MAX,
        _ => {
            let mut b = Id::MAX;
            b.0[0] = ((leaf - 1) >> 8) as u8;
            b.0[1] = (leaf - 1) as u8;
            b
        }
    };
    (before, last)
}

/// The last id of leaf `leaf`.
pub fn leaf_last_id(leaf: usize) -> Id {
    leaf_bounds(leaf).1
}

/// How many nodes level `level` has.
pub fn level_width(level: u8) -> usize {
    1 << (FANOUT_BITS * u32::from(level))
}

/// How many leaves one node of level `level` spans.
fn span_of(level: u8) -> usize {
    1 << (FANOUT_BITS * u32::from(DEPTH - level))
}

/// Where a ring interval `(from, to]` lies over the leaves: the leaves of its ends may be
/// partly in it, those strictly between them (clockwise) are wholly in it, the rest not at all.
#[derive(Clone, Copy, Debug)]
pub struct Cover {
    from: Id,
    to: Id,
    first: usize,
    last: usize,
    /// Clockwise leaves from `first` to `last`: 0 when both ends share a leaf and the interval
    /// stays inside it; `LEAVES` when it wraps the whole circle back into its first leaf.
    reach: usize,
}

/// How a node's leaves meet an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meets {
    /// Every leaf below it is wholly inside.
    Whole,
    /// It holds an end leaf: look closer.
    Part,
    /// Nothing below it is inside.
    Not,
}

impl Cover {
    /// The cover of `(from, to]` (the whole circle when `from == to`).
    pub fn new(from: Id, to: Id) -> Cover {
        let (first, last) = (leaf_of(from), leaf_of(to));
        let reach = if first != last {
            (last + LEAVES - first) % LEAVES
        } else if from < to {
            0
        } else {
            LEAVES
        };
        Cover {
            from,
            to,
            first,
            last,
            reach,
        }
    }

    /// Clockwise leaves from the first end's leaf to `leaf`.
    fn dist(&self, leaf: usize) -> usize {
        (leaf + LEAVES - self.first) % LEAVES
    }

    /// How the `span` leaves from `start` (aligned, not wrapping) meet the interval.
    fn meets(&self, start: usize, span: usize) -> Meets {
        let holds = |leaf: usize| start <= leaf && leaf < start + span;
        if holds(self.first) || holds(self.last) {
            // Without an end leaf the run lies wholly on one side of the ends.
            Meets::Part
        } else if self.dist(start) < self.reach {
            Meets::Whole
        } else {
            Meets::Not
        }
    }

    /// How node `index` of level `level` meets the interval.
    fn meets_node(&self, level: u8, index: usize) -> Meets {
        let span = span_of(level);
        self.meets(index * span, span)
    }

    /// Whether node `index` of level `level` has any leaf in or partly in the interval.
    pub fn touches(&self, level: u8, index: usize) -> bool {
        self.meets_node(level, index) != Meets::Not
    }

    /// The clockwise order of node `index` of level `level` from the interval's start, for
    /// walking nodes in ring order (the node holding the first end comes first).
    pub fn order(&self, level: u8, index: usize) -> usize {
        let span = span_of(level);
        let first_node = self.first / span;
        (index + level_width(level) - first_node) % level_width(level)
    }

    /// The parts of `leaf` inside the interval, as ring intervals `(a, b]` in the order a
    /// clockwise walk from `from` meets them: none, one, or two when the interval wraps the
    /// circle back into its first leaf (its start, then its end, which a walk meets last).
    pub fn leaf_arcs(&self, leaf: usize) -> Vec<(Id, Id)> {
        let (before, last) = leaf_bounds(leaf);
        let mut arcs = Vec::new();
        match self.meets(leaf, 1) {
            Meets::Not => {}
            Meets::Whole => arcs.push((before, last)),
            Meets::Part if leaf == self.first && leaf == self.last && self.reach == 0 => {
                arcs.push((self.from, self.to));
            }
            Meets::Part if leaf == self.first && leaf == self.last => {
                arcs.push((self.from, last));
                arcs.push((before, self.to));
            }
            Meets::Part if leaf == self.first => arcs.push((self.from, last)),
            Meets::Part => arcs.push((before, self.to)),
        }
        // `(a, a]` would be the whole circle; here it is an empty part (`from` is its leaf's
        // last id).
        arcs.retain(|(a, b)| a != b);
        arcs
    }

    /// The parts of `leaves` inside the interval as ring intervals, in the order a clockwise
    /// walk from `from` meets them: the leaves in ring order, except that the head of the first
    /// leaf comes last when the interval wraps the circle back into it.
    pub fn walk(&self, leaves: &[usize]) -> Vec<(Id, Id)> {
        let mut leaves = leaves.to_vec();
        leaves.sort_by_key(|&l| self.order(DEPTH, l));
        leaves.dedup();
        let mut arcs = Vec::new();
        let mut head = None;
        for leaf in leaves {
            let mut parts = self.leaf_arcs(leaf);
            if parts.len() == 2 {
                head = parts.pop();
            }
            arcs.extend(parts);
        }
        arcs.extend(head);
        arcs
    }

    /// Whether `id` lies in the interval.
    pub fn contains(&self, id: Id) -> bool {
        in_half_open(self.from, self.to, id)
    }
}

/// The summaries of every node, by level; empty until the first key arrives (most nodes of a
/// large simulated ring store nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashTree {
    levels: Vec<Vec<Summary>>,
}

impl HashTree {
    /// The summary of node `index` of level `level` (0 is the root).
    ///
    /// # Panics
    /// If the level or index is out of range (callers check what peers send).
    pub fn node(&self, level: u8, index: usize) -> Summary {
        assert!(
            level <= DEPTH && index < level_width(level),
            "no tree node {level}/{index}"
        );
        self.levels
            .get(usize::from(level))
            .map_or(Summary::default(), |l| l[index])
    }

    /// The summary of everything.
    pub fn root(&self) -> Summary {
        self.node(0, 0)
    }

    /// Account for the entry of key id `id` changing from hash `old` to hash `new` (`None`: no
    /// entry).
    fn replace(&mut self, id: Id, old: Option<u64>, new: Option<u64>) {
        if old.is_none() && new.is_none() {
            return;
        }
        if self.levels.is_empty() {
            self.levels = (0..=DEPTH)
                .map(|l| vec![Summary::default(); level_width(l)])
                .collect();
        }
        let leaf = leaf_of(id);
        for (level, nodes) in self.levels.iter_mut().enumerate() {
            let node = &mut nodes[leaf >> (FANOUT_BITS * (u32::from(DEPTH) - level as u32))];
            if let Some(h) = old {
                node.remove(h);
            }
            if let Some(h) = new {
                node.add(h);
            }
        }
    }
}

/// Where a rebuild of the tree stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Built {
    /// The tree accounts for every entry.
    Done,
    /// Only the entries with ids up to this one (none yet: `None`) are in the tree.
    Through(Option<Id>),
}

/// Most keys a [`Watch`] remembers; past that it only says it overflowed.
pub const MAX_WATCHED: usize = 65_536;

/// The keys written in a ring interval since they were last taken: how a hand-over that sweeps
/// its range in slices learns what changed behind its cursor.
#[derive(Debug, Default)]
struct Watch {
    /// The interval watched, `(from, to]`; `None` watches nothing but the keys added by hand.
    arc: Option<(Id, Id)>,
    keys: BTreeSet<Vec<u8>>,
    /// More keys were written than [`MAX_WATCHED`]: some were not remembered.
    overflowed: bool,
}

impl Watch {
    fn note(&mut self, key: &[u8]) {
        if self.keys.len() < MAX_WATCHED {
            self.keys.insert(key.to_vec());
        } else if !self.keys.contains(key) {
            self.overflowed = true;
        }
    }
}

/// A storage engine with the hash tree of its entries, kept true through every write.
#[derive(Debug)]
pub struct Indexed<S> {
    inner: S,
    tree: HashTree,
    built: Built,
    watch: Option<Watch>,
}

impl<S: Storage> Indexed<S> {
    /// Index `inner`. An empty store is indexed at once; one with data is rebuilt in slices by
    /// [`Indexed::rebuild_step`].
    pub fn new(inner: S) -> Indexed<S> {
        let empty = inner
            .scan_range(Id::MAX, Id::MAX, 1)
            .is_ok_and(|e| e.is_empty());
        Indexed {
            inner,
            tree: HashTree::default(),
            built: if empty {
                Built::Done
            } else {
                Built::Through(None)
            },
            watch: None,
        }
    }

    /// Remember the keys written in `(from, to]` (none if `arc` is `None`) from now on, on top
    /// of `keys`, until [`Indexed::unwatch`]; replaces an earlier watch but keeps its keys.
    pub fn watch(&mut self, arc: Option<(Id, Id)>, keys: impl IntoIterator<Item = Vec<u8>>) {
        let w = self.watch.get_or_insert_with(Watch::default);
        w.arc = arc;
        for k in keys {
            w.note(&k);
        }
    }

    /// Stop watching and forget the keys noted.
    pub fn unwatch(&mut self) {
        self.watch = None;
    }

    /// Whether a watch is set.
    pub fn is_watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Take up to `max` of the keys noted, and whether the watch overflowed since the last time
    /// (then some writes were not noted, and the caller must look at the whole interval again).
    pub fn take_watched(&mut self, max: usize) -> (Vec<Vec<u8>>, bool) {
        let Some(w) = self.watch.as_mut() else {
            return (Vec::new(), false);
        };
        let mut taken = Vec::new();
        while taken.len() < max {
            match w.keys.pop_first() {
                Some(k) => taken.push(k),
                None => break,
            }
        }
        (taken, std::mem::take(&mut w.overflowed))
    }

    /// Whether no key is noted (and nothing overflowed).
    pub fn watched_is_empty(&self) -> bool {
        self.watch
            .as_ref()
            .is_none_or(|w| w.keys.is_empty() && !w.overflowed)
    }

    /// Note a write of `id`'s key for the watch, if it covers it.
    fn noted(&mut self, id: Id, key: &[u8]) {
        if let Some(w) = self.watch.as_mut() {
            if w.arc.is_some_and(|(from, to)| in_half_open(from, to, id)) {
                w.note(key);
            }
        }
    }

    /// The engine underneath. Writing through it would leave the tree behind; it is for the
    /// driver's own bookkeeping (its flush).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The engine underneath, mutably: see [`Indexed::inner`].
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The engine, as a crash or shutdown takes it back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The tree.
    pub fn tree(&self) -> &HashTree {
        &self.tree
    }

    /// Whether the tree accounts for every entry (no rebuild pending).
    pub fn is_built(&self) -> bool {
        self.built == Built::Done
    }

    /// Add the next slice of entries to a rebuilding tree: at most `max_keys` entries or
    /// `max_bytes` of keys and values (one entry at least). Returns whether the tree is built.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails; the rebuild stays where it was.
    pub fn rebuild_step(&mut self, max_keys: usize, max_bytes: usize) -> Result<bool> {
        let Built::Through(through) = self.built else {
            return Ok(true);
        };
        if through == Some(Id::MAX) {
            self.built = Built::Done;
            return Ok(true);
        }
        let Indexed { inner, tree, .. } = self;
        let (mut keys, mut bytes, mut last, mut cut) = (0, 0, through, false);
        // `(MAX, MAX]` is the whole circle from zero; `(c, MAX]` what follows `c`.
        inner.visit_range(through.unwrap_or(Id::MAX), Id::MAX, &mut |k, v| {
            if keys > 0 && (keys >= max_keys || bytes + k.len() + v.len() > max_bytes) {
                cut = true;
                return false;
            }
            let id = Id::hash(k);
            tree.replace(id, None, Some(entry_hash(k, v)));
            keys += 1;
            bytes += k.len() + v.len();
            last = Some(id);
            true
        })?;
        self.built = if cut {
            Built::Through(last)
        } else {
            Built::Done
        };
        Ok(!cut)
    }

    /// Whether a write to key id `id` must update the tree now (a rebuild counts it later
    /// otherwise).
    fn tracked(&self, id: Id) -> bool {
        match self.built {
            Built::Done => true,
            Built::Through(through) => through.is_some_and(|t| id <= t),
        }
    }

    /// The summary of the keys in `(from, to]` below node `index` of level `level`: the tree's
    /// where the node lies wholly inside, the sum of its children's where it holds an end, the
    /// keys read from storage in an end leaf.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    pub fn summary(&self, cover: &Cover, level: u8, index: usize) -> Result<Summary> {
        match cover.meets_node(level, index) {
            Meets::Not => Ok(Summary::default()),
            Meets::Whole => Ok(self.tree.node(level, index)),
            Meets::Part if level == DEPTH => {
                let mut sum = Summary::default();
                if self.tree.node(level, index).keys == 0 && self.is_built() {
                    return Ok(sum);
                }
                for (a, b) in cover.leaf_arcs(index) {
                    self.inner.visit_range(a, b, &mut |k, v| {
                        sum.add(entry_hash(k, v));
                        true
                    })?;
                }
                Ok(sum)
            }
            Meets::Part => {
                let mut sum = Summary::default();
                for child in 0..FANOUT {
                    sum.join(self.summary(cover, level + 1, index * FANOUT + child)?);
                }
                Ok(sum)
            }
        }
    }

    /// Visit the entries of `leaves` inside the cover's interval in clockwise order from its
    /// start, until `visit` returns `false`. Returns whether it went through them all.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the engine fails.
    pub fn visit_leaves(
        &self,
        cover: &Cover,
        leaves: &[usize],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool> {
        let mut all = true;
        for (a, b) in cover.walk(leaves) {
            self.inner.visit_range(a, b, &mut |k, v| {
                all = visit(k, v);
                all
            })?;
            if !all {
                break;
            }
        }
        Ok(all)
    }
}

impl<S: Storage> Storage for Indexed<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        let old = self.inner.put(key, value)?;
        let id = Id::hash(key);
        self.noted(id, key);
        if self.tracked(id) {
            let old_hash = old.as_deref().map(|o| entry_hash(key, o));
            self.tree
                .replace(id, old_hash, Some(entry_hash(key, value)));
        }
        Ok(old)
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let old = self.inner.delete(key)?;
        let id = Id::hash(key);
        self.noted(id, key);
        if self.tracked(id) {
            let old_hash = old.as_deref().map(|o| entry_hash(key, o));
            self.tree.replace(id, old_hash, None);
        }
        Ok(old)
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
        self.inner.flush()
    }

    fn flush_handle(&self) -> crate::storage::FlushHandle {
        self.inner.flush_handle()
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }

    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.inner.set_meta(name, value)
    }
}

#[cfg(test)]
mod tests;
