//! VERSIONS
//!
//! Every key is stored on several replicas, and any of them may coordinate a write while the
//! others are unreachable. So a replica cannot keep "the" value of a key: it keeps every version
//! that no later write has replaced, and enough causal history to tell later from concurrent
//! (Dynamo, SOSP 2007, §4.4 "Data Versioning"). The history is a [`VersionVector`]: one counter per
//! actor, where the actors are NODE ids (the coordinator that accepted a write), never client ids,
//! so the vector grows with the number of coordinators rather than the number of clients. A vector
//! `v` covers the event `(a, n)` when `n <= v[a]`.
//!
//! A client gets an opaque [`Context`] with every read: the vector of the state it was shown. It
//! sends the context back with its next write, and that write replaces exactly the versions the
//! context covers: the ones the client has seen. Anything the context does not cover was written
//! concurrently, and stays.
//!
//! DOTS
//!
//! Plain version vectors with node actors are wrong in one of two ways (Preguiça, Baquero,
//! Almeida, Fonte and Gonçalves, "Dotted Version Vectors: Logical Clocks for Optimistic
//! Replication", 2010, §2-§3): if each version carries the coordinator's whole vector, two clients
//! writing through the same node look causally ordered and one write is silently lost; if clients
//! are the actors instead (Riak before 2.0), vectors grow without bound and siblings multiply.
//! Dotted version vectors tag each version with the single event that created it, its [`Dot`]
//! `(coordinator, counter)`, and keep one vector, the context, for the whole key. A write through
//! coordinator `a` gets the dot `(a, max(state[a], ctx[a]) + 1)`: a fresh event that no context
//! anywhere covers yet. Riak 2.0 ships this design.
//!
//! SIBLINGS
//!
//! [`Versioned`] is the whole stored state of one key on one replica: the context and the
//! surviving versions, [`Sibling`]s, each with its dot. Every sibling's dot is covered by the
//! context, and siblings are kept sorted so that equal states are equal values (and have equal
//! [`Versioned::digest`]s). Two operations change it:
//!
//! - [`Versioned::write`], a coordinator event: drop the siblings the client's context covers,
//!   add the new one, join the context with the client's and the new dot.
//! - [`Versioned::merge`], replica synchronization: a sibling survives if both sides hold it, or
//!   if one side holds it and the other side's context does not cover it (the other side never
//!   saw it, rather than saw it and replaced it). Contexts join pointwise. This is the join of
//!   the causal-context lattice, so merge is commutative, associative and idempotent: replicas
//!   converge whatever order synchronization happens in.
//!
//! Concurrent writes thus become siblings instead of one overwriting the other; a client that
//! reads several values reconciles them and writes the result back with the context it read,
//! which replaces them all. Siblings are bounded ([`VersionLimits`], Riak's defaults: warn above
//! 25, refuse a write that would leave more than 100): a refused write says how to resolve them.
//!
//! TOMBSTONES
//!
//! A delete is a write whose sibling has no value (a tombstone). It must be a version and not the
//! absence of one: otherwise a replica that missed the delete would hand the old value back in
//! the next merge. A tombstone's dot is covered by the context like any other, so a stale sibling
//! covered by it is dropped on merge. A key is deleted when it has no live sibling
//! ([`Versioned::is_deleted`]); a tombstone concurrent with a value is a sibling like any other,
//! and the value is what a read shows.
//!
//! PRUNING
//!
//! With node actors a context has one entry per node that ever coordinated a write to the key,
//! which churn can make large. Dynamo truncates its clocks by dropping the oldest entry beyond a
//! threshold (§4.4); this module has no clocks, so [`Versioned::prune`] drops the entries with the
//! smallest counters beyond [`VersionLimits::max_clock_entries`] (ties: smallest actor id), and
//! never the entry of an actor that owns a sibling (that would break the invariant that the
//! context covers every sibling). Dropping entries makes the context cover less, which can only
//! make versions look concurrent: a merge may keep a sibling that a later write had replaced (a
//! spurious sibling, including a value reappearing beside its tombstone), a write supersedes
//! nothing it did not cover before. No value is ever dropped because of pruning.
//!
//! One hazard has to be closed for that to hold: an actor whose entry was pruned must not number
//! its next dot from zero again, or the new dot would collide with an old one that other
//! replicas' contexts still cover, and they would drop the new write as already replaced. So a
//! state remembers the largest counter it ever pruned, and new dots are numbered above it too.
//!
//! CAVEATS
//!
//! - Dots are unique only if a coordinator never numbers a key's events from a lower counter
//!   than it used before. Its state for a key can go backwards (the copy moved away, or was
//!   collected as a stray or a tombstone), so the node numbers every dot above a node-wide
//!   floor ([`Versioned::raise_dot_floor`]), the largest counter it ever issued, kept across
//!   restarts by a lease in the storage meta. A node that loses its disk and comes back under
//!   the same id (ids are derived from addresses) loses the lease too, and can reissue a dot
//!   that other replicas' contexts cover: a blind write through it may then be dropped. Riak
//!   gives each vnode a new id after data loss; here the way out is a new address. Should two
//!   siblings still meet with one dot and different values, merge keeps both (it compares
//!   whole siblings, not just dots), so such a collision shows up as a sibling rather than
//!   disappearing.
//! - A plain version vector cannot say "everything up to `a:3`, and `a:7`". So a write reply must
//!   carry either the whole state written (values and context, like Riak's `return_body`) or no
//!   context at all; handing back the client's context joined with the new dot would let its next
//!   write replace siblings it has never seen.
//! - Bounds are enforced on writes only: a merge never refuses (refusing would keep replicas
//!   apart), so a merge may leave more siblings or clock entries than the limits, until the next
//!   write resolves or prunes them.
//! - Tombstones are never removed here. Collecting a deleted key needs every replica to hold
//!   the same tombstone first, which is the replication layer's business
//!   (COLLECTION in `kv/collect.rs`).

use crate::id::Id;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One write event: the `counter`-th event coordinated by node `actor` for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that coordinated the write.
    pub actor: Id,
    /// The actor's event number for this key, from 1.
    pub counter: u64,
}

impl Dot {
    /// The dot `(actor, counter)`.
    pub fn new(actor: Id, counter: u64) -> Dot {
        Dot { actor, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor.short(), self.counter)
    }
}

/// How two version vectors are ordered causally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Causality {
    /// The same history.
    Equal,
    /// `self` happened before `other`: `other` covers everything `self` does, and more.
    Before,
    /// `self` happened after `other`: `self` covers everything `other` does, and more.
    After,
    /// Each has seen an event the other has not.
    Concurrent,
}

/// A version vector: for each actor, the highest event counter seen. Absent actors are at 0,
/// and zero entries are never stored, so equal histories are equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeMap<Id, u64>", into = "BTreeMap<Id, u64>")]
pub struct VersionVector(BTreeMap<Id, u64>);

impl VersionVector {
    /// The empty vector: has seen nothing.
    pub fn new() -> VersionVector {
        VersionVector(BTreeMap::new())
    }

    /// The counter for `actor`, 0 if absent.
    pub fn get(&self, actor: &Id) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Whether this history includes the event `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.actor)
    }

    /// Raise `dot.actor`'s entry to at least `dot.counter`.
    pub fn add(&mut self, dot: &Dot) {
        if dot.counter > 0 {
            let entry = self.0.entry(dot.actor).or_insert(0);
            *entry = (*entry).max(dot.counter);
        }
    }

    /// Join with `other`: the pointwise maximum, the history that includes both.
    pub fn merge(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.0 {
            self.add(&Dot::new(*actor, counter));
        }
    }

    /// Whether this history includes all of `other`'s (pointwise `>=`; true when equal).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, &n)| n <= self.get(a))
    }

    /// How `self` and `other` are ordered.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The number of actors with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries `(actor, counter)` in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, u64)> + '_ {
        self.0.iter().map(|(a, n)| (*a, *n))
    }

    /// Drop entries until at most `max_entries` are left, smallest counters first (ties: smallest
    /// actor id), never an actor for which `keep` is true; if the kept actors alone number more
    /// than `max_entries`, more are left. Returns the largest counter dropped, 0 if none.
    ///
    /// A pruned vector covers less, so versions compared against it can only look concurrent
    /// where they were ordered, never the reverse. The caller must make sure the dropped counters
    /// are not issued again; [`Versioned::prune`] does.
    pub fn prune(&mut self, max_entries: usize, keep: impl Fn(&Id) -> bool) -> u64 {
        if self.0.len() <= max_entries {
            return 0;
        }
        let mut candidates: Vec<(u64, Id)> = self
            .0
            .iter()
            .filter(|(a, _)| !keep(a))
            .map(|(a, n)| (*n, *a))
            .collect();
        candidates.sort();
        let excess = self.0.len() - max_entries;
        let mut dropped = 0;
        for (n, a) in candidates.into_iter().take(excess) {
            self.0.remove(&a);
            dropped = dropped.max(n);
        }
        dropped
    }
}

impl From<BTreeMap<Id, u64>> for VersionVector {
    /// Drops zero entries, which mean the same as absent ones.
    fn from(mut map: BTreeMap<Id, u64>) -> VersionVector {
        map.retain(|_, n| *n > 0);
        VersionVector(map)
    }
}

impl From<VersionVector> for BTreeMap<Id, u64> {
    fn from(vv: VersionVector) -> BTreeMap<Id, u64> {
        vv.0
    }
}

impl FromIterator<(Id, u64)> for VersionVector {
    /// The join of the given entries (the largest counter per actor wins).
    fn from_iter<I: IntoIterator<Item = (Id, u64)>>(entries: I) -> VersionVector {
        let mut vv = VersionVector::new();
        for (actor, counter) in entries {
            vv.add(&Dot::new(actor, counter));
        }
        vv
    }
}

/// One surviving version of a key: the event that wrote it and the value, `None` for a delete (a
/// tombstone).
///
/// Ordered by dot, then value, which is the order a [`Versioned`] keeps its siblings in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sibling {
    /// The write event that created this version.
    pub dot: Dot,
    /// The value written, `None` if the write was a delete.
    pub value: Option<Vec<u8>>,
}

impl Sibling {
    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Bounds on one key's versions. The defaults are Riak's sibling limits; the clock bound is
/// generous for rings where a key has a handful of coordinators over its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionLimits {
    /// A write that leaves more siblings than this succeeds but reports [`WriteOutcome::warn`].
    pub warn_siblings: usize,
    /// A write that would leave more siblings than this is refused.
    pub max_siblings: usize,
    /// After a write, the context is pruned to this many entries (see [`Versioned::prune`]).
    pub max_clock_entries: usize,
}

impl Default for VersionLimits {
    fn default() -> VersionLimits {
        VersionLimits {
            warn_siblings: 25,
            max_siblings: 100,
            max_clock_entries: 64,
        }
    }
}

/// What a [`Versioned::write_checked`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The dot of the new version.
    pub dot: Dot,
    /// How many siblings (tombstones included) the key has now.
    pub siblings: usize,
    /// More siblings than [`VersionLimits::warn_siblings`]: clients should resolve them.
    pub warn: bool,
    /// How many context entries were pruned.
    pub pruned: usize,
}

/// The whole stored state of one key on one replica: the causal context and the siblings that
/// survive in it. See the module docs for the rules.
///
/// Invariants, checked on decode and on deserialize: every sibling's dot has a counter of at
/// least 1 and is covered by the context; siblings are sorted and distinct.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VersionedRepr")]
pub struct Versioned {
    /// Everything this replica has seen happen to the key.
    context: VersionVector,
    /// The versions no seen write has replaced, sorted.
    siblings: Vec<Sibling>,
    /// The floor new dots are numbered above: the largest counter ever pruned from `context`,
    /// or the coordinator's node-wide floor ([`Versioned::raise_dot_floor`]).
    pruned: u64,
    /// Recent client writes applied to the key and the dots they got, so that a coordinator's
    /// retry is not applied twice even when it reaches another owner (which holds this state as
    /// a replica). At most [`APPLIED_PER_ACTOR`] per actor, the highest counters.
    applied: BTreeMap<WriteId, Dot>,
}

/// How many applied write ids a key remembers per actor (see [`Versioned::applied_dot`]).
pub const APPLIED_PER_ACTOR: usize = 4;

/// Identifies one client write across its coordinator's retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId {
    /// The coordinating node.
    pub coordinator: Id,
    /// Which run of that node: a restarted node counts its writes from zero again, and must
    /// not be taken for a retry of its previous life's writes.
    pub incarnation: u64,
    /// Its sequence number for the write.
    pub seq: u64,
}

/// The unchecked shape of a [`Versioned`], for deserializing before validation.
#[derive(Deserialize)]
struct VersionedRepr {
    context: VersionVector,
    siblings: Vec<Sibling>,
    pruned: u64,
    applied: BTreeMap<WriteId, Dot>,
}

impl TryFrom<VersionedRepr> for Versioned {
    type Error = String;

    fn try_from(repr: VersionedRepr) -> std::result::Result<Versioned, String> {
        let v = Versioned {
            context: repr.context,
            siblings: repr.siblings,
            pruned: repr.pruned,
            applied: repr.applied,
        };
        v.validate()?;
        Ok(v)
    }
}

impl Versioned {
    /// A key nobody has written: no siblings, empty context.
    pub fn empty() -> Versioned {
        Versioned::default()
    }

    /// Everything this replica has seen happen to the key; what a read hands the client (as a
    /// [`Context`]) together with [`Versioned::values`].
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// All surviving versions, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The dots of all siblings, in order.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.siblings.iter().map(|s| s.dot)
    }

    /// The live values (tombstones left out), in dot order.
    pub fn values(&self) -> Vec<&[u8]> {
        self.siblings
            .iter()
            .filter_map(|s| s.value.as_deref())
            .collect()
    }

    /// Whether no live value survives: never written, or every surviving version is a delete.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// The counter a write through `actor` with client context `ctx` would get; `None` on
    /// overflow.
    fn next_counter(&self, actor: &Id, ctx: &VersionVector) -> Option<u64> {
        let seen = self.context.get(actor).max(ctx.get(actor)).max(self.pruned);
        seen.checked_add(1)
    }

    /// Apply a write coordinated by `actor` with the client's context `ctx`: the siblings `ctx`
    /// covers are replaced, the others stay as concurrent siblings, and the new version is added
    /// with a fresh dot, which is returned. `value: None` writes a tombstone.
    ///
    /// No bounds are checked: the server should call [`Versioned::write_checked`]. A counter at
    /// `u64::MAX` (possible only from a forged context) saturates.
    pub fn write(&mut self, actor: Id, ctx: &VersionVector, value: Option<Vec<u8>>) -> Dot {
        let dot = Dot::new(actor, self.next_counter(&actor, ctx).unwrap_or(u64::MAX));
        self.siblings.retain(|s| !ctx.covers(&s.dot));
        let new = Sibling { dot, value };
        if let Err(at) = self.siblings.binary_search(&new) {
            self.siblings.insert(at, new);
        }
        self.context.merge(ctx);
        self.context.add(&dot);
        dot
    }

    /// [`Versioned::write`] within `limits`: refuse a write that would leave more than
    /// `max_siblings` siblings, report `warn` above `warn_siblings`, and prune the context to
    /// `max_clock_entries` afterwards. Siblings count tombstones. A write whose context covers
    /// the current siblings is never refused for their number (given `max_siblings >= 1`): it
    /// is how they are resolved.
    ///
    /// # Errors
    /// [`Error::InvalidInput`], with the state unchanged, if the write would exceed
    /// `max_siblings` or if the context's counter for `actor` is at `u64::MAX`.
    pub fn write_checked(
        &mut self,
        actor: Id,
        ctx: &VersionVector,
        value: Option<Vec<u8>>,
        limits: &VersionLimits,
    ) -> Result<WriteOutcome> {
        let kept = self.dots().filter(|d| !ctx.covers(d)).count();
        if kept + 1 > limits.max_siblings {
            return Err(Error::InvalidInput(format!(
                "key has {} siblings, the limit is {}: read it and write back with its context \
                 to resolve them",
                self.siblings.len(),
                limits.max_siblings
            )));
        }
        if self.next_counter(&actor, ctx).is_none() {
            return Err(Error::InvalidInput(format!(
                "version counter for {} overflows; the context is forged",
                actor.short()
            )));
        }
        let dot = self.write(actor, ctx, value);
        let pruned = self.prune(limits.max_clock_entries);
        Ok(WriteOutcome {
            dot,
            siblings: self.siblings.len(),
            warn: self.siblings.len() > limits.warn_siblings,
            pruned,
        })
    }

    /// Synchronize with another replica's state of the same key: keep the siblings both hold,
    /// and those one holds that the other's context does not cover; join the contexts.
    /// Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &Versioned) {
        let mine: BTreeSet<Dot> = self.dots().collect();
        let theirs: BTreeSet<Dot> = other.dots().collect();
        let mut siblings = std::mem::take(&mut self.siblings);
        siblings.retain(|s| theirs.contains(&s.dot) || !other.context.covers(&s.dot));
        let kept_mine = siblings.len();
        for s in &other.siblings {
            let survives = mine.contains(&s.dot) || !self.context.covers(&s.dot);
            if survives && siblings[..kept_mine].binary_search(s).is_err() {
                siblings.push(s.clone());
            }
        }
        siblings.sort();
        self.siblings = siblings;
        self.context.merge(&other.context);
        self.pruned = self.pruned.max(other.pruned);
        // One client write applied twice (its first owner failed before answering, and the retry
        // reached another owner) has two dots: keep the smaller, in both maps and siblings, so
        // the write stays one version whichever way replicas merge.
        let mut twice: BTreeSet<Dot> = BTreeSet::new();
        for (id, dot) in &other.applied {
            match self.applied.get(id).copied() {
                Some(mine) if mine != *dot => {
                    twice.insert(mine.max(*dot));
                    self.applied.insert(*id, mine.min(*dot));
                }
                Some(_) => {}
                None => {
                    self.applied.insert(*id, *dot);
                }
            }
        }
        if !twice.is_empty() {
            self.siblings.retain(|s| !twice.contains(&s.dot));
        }
        self.trim_applied();
    }

    /// The dot a client write got when it was applied here (or on a replica this state merged),
    /// if the key still remembers it: a retry of that write must not be applied again.
    pub fn applied_dot(&self, id: &WriteId) -> Option<Dot> {
        self.applied.get(id).copied()
    }

    /// Remember that client write `id` was applied as `dot`.
    pub fn record_applied(&mut self, id: WriteId, dot: Dot) {
        self.applied.insert(id, dot);
        self.trim_applied();
    }

    /// Keep the [`APPLIED_PER_ACTOR`] highest dots of each actor. Per actor, so that a busy
    /// coordinator cannot push out another's recent writes; by a total order on dots, so that
    /// trimming commutes with merging.
    fn trim_applied(&mut self) {
        let mut per_actor: BTreeMap<Id, Vec<u64>> = BTreeMap::new();
        for dot in self.applied.values() {
            per_actor.entry(dot.actor).or_default().push(dot.counter);
        }
        let mut floor: BTreeMap<Id, u64> = BTreeMap::new();
        for (actor, mut counters) in per_actor {
            if counters.len() > APPLIED_PER_ACTOR {
                counters.sort_unstable_by(|a, b| b.cmp(a));
                floor.insert(actor, counters[APPLIED_PER_ACTOR - 1]);
            }
        }
        self.applied
            .retain(|_, dot| floor.get(&dot.actor).is_none_or(|&f| dot.counter >= f));
    }

    /// Number every later dot above `floor` (for all actors), as if counters up to it had been
    /// pruned. A coordinator passes the largest counter it ever issued for any key, so that it
    /// never issues a dot twice even for a key whose state it lost or collected.
    pub fn raise_dot_floor(&mut self, floor: u64) {
        self.pruned = self.pruned.max(floor);
    }

    /// Prune the context to `max_entries` by [`VersionVector::prune`], never dropping the entry
    /// of an actor that owns a sibling, and remember the largest counter dropped so that no dot
    /// at or below it is issued again. Returns how many entries were dropped.
    pub fn prune(&mut self, max_entries: usize) -> usize {
        let owners: BTreeSet<Id> = self.dots().map(|d| d.actor).collect();
        let before = self.context.len();
        let dropped = self.context.prune(max_entries, |a| owners.contains(a));
        self.pruned = self.pruned.max(dropped);
        before - self.context.len()
    }

    /// A stable 64-bit digest of the state (context, siblings with their values, pruning floor)
    /// for anti-entropy: equal states give equal digests on every node and every run. The first
    /// 8 bytes, big-endian, of a SHA-1 over a domain tag and [`Versioned::encode`].
    pub fn digest(&self) -> u64 {
        let mut hasher = Sha1::new();
        hasher.update(b"chordkv versioned v1\0");
        hasher.update(self.encode());
        let hash = hasher.finalize();
        let mut top = [0u8; 8];
        top.copy_from_slice(&hash[..8]);
        u64::from_be_bytes(top)
    }

    /// The state as bytes (bincode, standard configuration), for storage and the wire.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding a Versioned into a Vec cannot fail")
    }

    /// Parse bytes written by [`Versioned::encode`], checking the invariants.
    ///
    /// # Errors
    /// [`Error::InvalidData`] if the bytes do not decode, have trailing bytes, or break an
    /// invariant.
    pub fn decode(bytes: &[u8]) -> Result<Versioned> {
        let (v, used): (Versioned, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| Error::InvalidData(format!("versioned value: {e}")))?;
        if used != bytes.len() {
            return Err(Error::InvalidData(format!(
                "versioned value: {} trailing bytes",
                bytes.len() - used
            )));
        }
        Ok(v)
    }

    /// Check the invariants; the message says which one broke.
    fn validate(&self) -> std::result::Result<(), String> {
        for pair in self.siblings.windows(2) {
            if pair[0] >= pair[1] {
                return Err(format!("siblings out of order at {}", pair[1].dot));
            }
        }
        for s in &self.siblings {
            if s.dot.counter == 0 {
                return Err(format!("sibling dot {} has counter 0", s.dot));
            }
            if !self.context.covers(&s.dot) {
                return Err(format!("sibling dot {} not covered by the context", s.dot));
            }
        }
        Ok(())
    }
}

/// The opaque causal context a client gets with a read and sends back with its next write.
/// Clients must treat the token as opaque; only its round trip matters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(pub VersionVector);

impl Context {
    /// The longest token [`Context::from_token`] accepts, in characters. A context has about 30
    /// bytes per entry, so this allows about a thousand entries, far beyond
    /// [`VersionLimits::max_clock_entries`] plus [`VersionLimits::max_siblings`].
    pub const MAX_TOKEN_LEN: usize = 64 * 1024;

    /// The empty context, for a write that has read nothing (a blind write).
    pub fn empty() -> Context {
        Context::default()
    }

    /// The version vector inside.
    pub fn vector(&self) -> &VersionVector {
        &self.0
    }

    /// The token: lowercase hex of the bincode encoding, safe in URLs and shell arguments.
    pub fn to_token(&self) -> String {
        let bytes = bincode::serde::encode_to_vec(&self.0, bincode::config::standard())
            .expect("encoding a VersionVector into a Vec cannot fail");
        hex::encode(bytes)
    }

    /// Parse a token made by [`Context::to_token`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the token is longer than [`Context::MAX_TOKEN_LEN`], is not
    /// hex, or does not decode to exactly one version vector.
    pub fn from_token(token: &str) -> Result<Context> {
        let bad = |why: String| Error::InvalidInput(format!("bad context token: {why}"));
        if token.len() > Self::MAX_TOKEN_LEN {
            return Err(bad(format!(
                "{} characters, the limit is {}",
                token.len(),
                Self::MAX_TOKEN_LEN
            )));
        }
        let bytes = hex::decode(token).map_err(|e| bad(e.to_string()))?;
        let (vv, used): (VersionVector, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| bad(e.to_string()))?;
        if used != bytes.len() {
            return Err(bad(format!("{} trailing bytes", bytes.len() - used)));
        }
        Ok(Context(vv))
    }
}

impl From<VersionVector> for Context {
    fn from(vv: VersionVector) -> Context {
        Context(vv)
    }
}

impl From<Context> for VersionVector {
    fn from(ctx: Context) -> VersionVector {
        ctx.0
    }
}

/// Small constructors for readable version tables, shared by this module's tests and the
/// history checker's.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Dot, VersionVector};
    use crate::id::Id;

    /// An id whose last byte is `v`: small numbers make readable tables.
    pub(crate) fn n(v: u8) -> Id {
        let mut b = [0u8; 20];
        b[19] = v;
        Id(b)
    }

    /// A vector from `(actor byte, counter)` pairs.
    pub(crate) fn vv(entries: &[(u8, u64)]) -> VersionVector {
        entries.iter().map(|&(a, c)| (n(a), c)).collect()
    }

    /// The dot `(actor byte, counter)`.
    pub(crate) fn dot(a: u8, c: u64) -> Dot {
        Dot::new(n(a), c)
    }

    /// A value written as a string.
    pub(crate) fn val(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::test_support::{dot, n, val, vv};
    use super::*;
    use crate::testing::history::{self, History};
    use proptest::prelude::*;

    fn values(v: &Versioned) -> Vec<&str> {
        v.values()
            .into_iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect()
    }

    fn merged(a: &Versioned, b: &Versioned) -> Versioned {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    /// Entries `(actor byte, counter)` of a vector in a table.
    type Entries = &'static [(u8, u64)];

    #[test]
    fn compare_table() {
        use Causality::*;
        let cases: &[(Entries, Entries, Causality)] = &[
            (&[], &[], Equal),
            (&[(1, 1)], &[(1, 1)], Equal),
            (&[(1, 0)], &[], Equal), // zero entries are absent entries
            (&[], &[(1, 1)], Before),
            (&[(1, 1)], &[(1, 2)], Before),
            (&[(1, 1)], &[(1, 1), (2, 1)], Before),
            (&[(1, 2), (2, 1)], &[(1, 1)], After),
            (&[(1, 1)], &[(2, 1)], Concurrent),
            (&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Concurrent),
        ];
        for (a, b, want) in cases {
            let (a, b) = (vv(a), vv(b));
            assert_eq!(a.compare(&b), *want, "{a:?} vs {b:?}");
            let back = match want {
                Before => After,
                After => Before,
                other => *other,
            };
            assert_eq!(b.compare(&a), back, "{b:?} vs {a:?}");
            assert_eq!(
                a.dominates(&b),
                matches!(want, Equal | After),
                "{a:?} >= {b:?}"
            );
        }
    }

    #[test]
    fn covers_table() {
        let v = vv(&[(1, 3), (2, 1)]);
        let cases = [
            (dot(1, 1), true),
            (dot(1, 3), true),
            (dot(1, 4), false),
            (dot(2, 1), true),
            (dot(2, 2), false),
            (dot(3, 1), false),
        ];
        for (d, want) in cases {
            assert_eq!(v.covers(&d), want, "{d}");
        }
        assert!(!VersionVector::new().covers(&dot(1, 1)));
    }

    #[test]
    fn add_and_merge_take_the_maximum() {
        let mut v = vv(&[(1, 3)]);
        v.add(&dot(1, 2));
        assert_eq!(v.get(&n(1)), 3);
        v.add(&dot(2, 5));
        v.merge(&vv(&[(1, 4), (3, 1)]));
        assert_eq!(v, vv(&[(1, 4), (2, 5), (3, 1)]));
        assert_eq!(v.len(), 3);
        assert!(!v.is_empty());
    }

    #[test]
    fn prune_drops_smallest_counters_and_spares_kept_actors() {
        let mut v = vv(&[(1, 5), (2, 1), (3, 1), (4, 9)]);
        // Ties on counter 1 go to the smaller actor id first.
        assert_eq!(v.prune(3, |_| false), 1);
        assert_eq!(v, vv(&[(1, 5), (3, 1), (4, 9)]));
        // Actor 3 is kept, so actor 1 goes instead.
        assert_eq!(v.prune(2, |a| *a == n(3)), 5);
        assert_eq!(v, vv(&[(3, 1), (4, 9)]));
        // More kept actors than the bound: they all stay.
        assert_eq!(v.prune(0, |_| true), 0);
        assert_eq!(v.len(), 2);
        assert_eq!(v.prune(5, |_| false), 0);
    }

    // Scenario 1.
    #[test]
    fn concurrent_blind_writes_become_siblings() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("x"));
        let mut b = Versioned::empty();
        b.write(n(2), &VersionVector::new(), val("y"));
        let m = merged(&a, &b);
        assert_eq!(values(&m), ["x", "y"]);
        assert_eq!(m.context(), &vv(&[(1, 1), (2, 1)]));
        assert_eq!(m, merged(&b, &a));

        // Through the same coordinator as well: no write is lost to another at the same node.
        let mut one = Versioned::empty();
        one.write(n(1), &VersionVector::new(), val("x"));
        one.write(n(1), &VersionVector::new(), val("y"));
        assert_eq!(values(&one), ["x", "y"]);
    }

    // Scenario 2.
    #[test]
    fn a_write_with_the_read_context_replaces_what_was_read() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("x"));
        let mut b = Versioned::empty();
        b.write(n(2), &VersionVector::new(), val("y"));
        let read = merged(&a, &b);
        let ctx = read.context().clone();
        let d = b.write(n(2), &ctx, val("xy"));
        assert_eq!(d, dot(2, 2));
        assert_eq!(values(&b), ["xy"]);
        // Replica a still holds "x"; syncing either way drops it, since b's context covers it.
        assert_eq!(values(&merged(&a, &b)), ["xy"]);
        assert_eq!(values(&merged(&b, &a)), ["xy"]);
    }

    // Scenario 3.
    #[test]
    fn a_stale_replica_cannot_resurrect_a_deleted_key() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("v1"));
        let mut b = a.clone(); // replicated to b
        let ctx = a.context().clone();
        a.write(n(1), &ctx, None);
        assert!(a.is_deleted());
        assert_eq!(a.siblings().len(), 1, "the tombstone stays");
        let (mut a2, mut b2) = (a.clone(), b.clone());
        b2.merge(&a);
        a2.merge(&b);
        assert!(a2.is_deleted() && b2.is_deleted());
        assert_eq!(a2, b2);
        // And a write concurrent with the delete is kept beside the tombstone.
        b.write(n(2), &ctx, val("v2"));
        a2.merge(&b);
        assert!(!a2.is_deleted());
        assert_eq!(values(&a2), ["v2"]);
        assert_eq!(a2.siblings().len(), 2);
    }

    // Scenario 4. What we see: a client that writes back the context of its last reply keeps one
    // sibling forever; two such clients interleaving keep at most two (each write replaces what
    // its writer was shown, and only the other's latest write is concurrent). A client that
    // writes blind (empty context) adds one sibling per write, n writes n siblings: a blind write
    // has seen nothing, so it may replace nothing. That growth is real concurrency, and the
    // sibling bound is what stops it. What dots prevent is the false kind: with per-client
    // vectors (Riak before 2.0) the interleaving pair also grew without bound.
    #[test]
    fn dots_stop_sibling_explosion_but_blind_writes_add_one_each() {
        let mut s = Versioned::empty();
        let mut ctx = VersionVector::new();
        for i in 0..10 {
            s.write(n(1), &ctx, Some(vec![i]));
            ctx = s.context().clone(); // the reply carries the written state
            assert_eq!(s.siblings().len(), 1);
        }

        let mut s = Versioned::empty();
        let (mut cx, mut cy) = (VersionVector::new(), VersionVector::new());
        for i in 0..10 {
            s.write(n(1), &cx, Some(vec![0, i]));
            cx = s.context().clone();
            s.write(n(1), &cy, Some(vec![1, i]));
            cy = s.context().clone();
            assert!(s.siblings().len() <= 2, "{i}: {:?}", s.siblings());
        }

        let mut s = Versioned::empty();
        for i in 0..10u8 {
            let d = s.write(n(1), &VersionVector::new(), Some(vec![i]));
            assert_eq!(d, dot(1, u64::from(i) + 1));
            assert_eq!(s.siblings().len(), usize::from(i) + 1);
        }
    }

    // Scenario 5.
    #[test]
    fn a_write_applied_by_two_owners_merges_into_one_version() {
        let id = WriteId {
            coordinator: n(9),
            incarnation: 1,
            seq: 1,
        };
        // The first owner applied it and failed before answering; the retry went elsewhere.
        let (mut a, mut b) = (Versioned::empty(), Versioned::empty());
        let da = a.write(n(1), &VersionVector::new(), Some(b"x".to_vec()));
        a.record_applied(id, da);
        let db = b.write(n(2), &VersionVector::new(), Some(b"x".to_vec()));
        b.record_applied(id, db);
        let (ab, ba) = (merged(&a, &b), merged(&b, &a));
        assert_eq!(ab, ba, "merging commutes");
        assert_eq!(ab.values(), vec![b"x".as_slice()], "one version, not two");
        assert_eq!(ab.applied_dot(&id), Some(da.min(db)));
        assert!(ab.context().covers(&da) && ab.context().covers(&db));
    }

    #[test]
    fn applied_write_ids_survive_merges_and_are_bounded_per_actor() {
        let id = |c: u8, seq: u64| WriteId {
            coordinator: n(c),
            incarnation: 7,
            seq,
        };
        let mut a = Versioned::empty();
        let d = a.write(n(1), &VersionVector::new(), Some(b"x".to_vec()));
        a.record_applied(id(9, 1), d);
        // A replica that merged the state knows the write was applied, and as which dot.
        let mut b = Versioned::empty();
        b.merge(&a);
        assert_eq!(b.applied_dot(&id(9, 1)), Some(d));
        // Even once a later write replaced the value.
        let ctx = b.context().clone();
        b.write(n(2), &ctx, Some(b"y".to_vec()));
        assert_eq!(b.applied_dot(&id(9, 1)), Some(d));
        // A busy actor keeps only its newest ids, and cannot push out another actor's.
        for seq in 2..20 {
            let ctx = b.context().clone();
            let d = b.write(n(2), &ctx, Some(vec![seq as u8]));
            b.record_applied(id(8, seq), d);
        }
        let of_actor_2 = (2..20)
            .filter(|&s| b.applied_dot(&id(8, s)).is_some())
            .count();
        assert_eq!(of_actor_2, APPLIED_PER_ACTOR);
        assert!(b.applied_dot(&id(8, 19)).is_some(), "the newest is kept");
        assert_eq!(b.applied_dot(&id(9, 1)), Some(d), "actor 1's id survives");
        // Trimming commutes with merging.
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
    }

    #[test]
    fn merging_identical_states_is_a_no_op() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("x"));
        a.write(n(2), &VersionVector::new(), None);
        let before = a.clone();
        a.merge(&before);
        assert_eq!(a, before);
        assert_eq!(a.digest(), before.digest());
        let mut e = Versioned::empty();
        e.merge(&Versioned::empty());
        assert_eq!(e, Versioned::empty());
    }

    #[test]
    fn write_checked_warns_refuses_and_resolves() {
        let limits = VersionLimits {
            warn_siblings: 2,
            max_siblings: 3,
            max_clock_entries: 64,
        };
        let mut s = Versioned::empty();
        let blind = VersionVector::new();
        let w1 = s.write_checked(n(1), &blind, val("a"), &limits).unwrap();
        assert!(!w1.warn);
        s.write_checked(n(1), &blind, val("b"), &limits).unwrap();
        let w3 = s.write_checked(n(1), &blind, val("c"), &limits).unwrap();
        assert!(w3.warn);
        assert_eq!(w3.siblings, 3);
        let before = s.clone();
        let err = s
            .write_checked(n(1), &blind, val("d"), &limits)
            .unwrap_err();
        assert_eq!(
            err,
            Error::InvalidInput(
                "key has 3 siblings, the limit is 3: read it and write back with its context to \
                 resolve them"
                    .into()
            )
        );
        assert_eq!(s, before, "a refused write changes nothing");
        // Writing back with the context resolves them, however many there are.
        let ctx = s.context().clone();
        let w = s.write_checked(n(1), &ctx, val("abc"), &limits).unwrap();
        assert_eq!((w.siblings, w.warn), (1, false));
        assert_eq!(values(&s), ["abc"]);
    }

    #[test]
    fn write_checked_refuses_a_forged_counter() {
        let mut s = Versioned::empty();
        let forged = vv(&[(1, u64::MAX)]);
        let err = s.write_checked(n(1), &forged, val("x"), &VersionLimits::default());
        assert!(matches!(err, Err(Error::InvalidInput(_))), "{err:?}");
        assert_eq!(s, Versioned::empty());
    }

    #[test]
    fn write_checked_prunes_the_context() {
        let limits = VersionLimits {
            max_clock_entries: 2,
            ..VersionLimits::default()
        };
        let mut s = Versioned::empty();
        // Four coordinators in turn, each resolving what came before.
        for a in 1..=4 {
            let ctx = s.context().clone();
            let out = s.write_checked(n(a), &ctx, val("x"), &limits).unwrap();
            assert!(s.context().len() <= 2);
            assert_eq!(out.siblings, 1);
        }
        assert_eq!(s.context().len(), 2);
        s.validate().unwrap();
    }

    /// The claim in PRUNING, on the smallest example: pruning turns a replaced version into a
    /// spurious sibling, and loses nothing.
    #[test]
    fn pruning_makes_spurious_siblings_not_lost_writes() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("old"));
        let mut b = a.clone();
        let ctx = b.context().clone();
        b.write(n(2), &ctx, val("new"));
        let mut unpruned = b.clone();
        assert_eq!(
            b.prune(1),
            1,
            "actor 1 owns no sibling at b, so its entry goes"
        );
        assert_eq!(b.context(), &vv(&[(2, 1)]));
        b.merge(&a);
        unpruned.merge(&a);
        assert_eq!(values(&unpruned), ["new"]);
        assert_eq!(
            values(&b),
            ["old", "new"],
            "spurious sibling: 'old' is back"
        );
        b.validate().unwrap();
    }

    /// Without the pruning floor, actor 1 would number its next write 1 again, a dot replica `c`
    /// already covers, and `c` would drop that write on merge.
    #[test]
    fn a_pruned_actor_never_reuses_a_counter() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("old"));
        let ctx = a.context().clone();
        a.write(n(2), &ctx, val("new")); // replaces "old"; a's entry for actor 1 is now idle
        let c = a.clone();
        a.prune(1);
        assert_eq!(a.context().get(&n(1)), 0);
        let d = a.write(n(1), &VersionVector::new(), val("blind"));
        assert!(!c.context().covers(&d), "fresh dot {d}");
        assert_eq!(values(&merged(&c, &a)), ["blind", "new"]);
        assert_eq!(values(&merged(&a, &c)), ["blind", "new"]);
    }

    /// Two siblings that share a dot (a coordinator that lost its disk) are both kept.
    #[test]
    fn colliding_dots_are_kept_not_dropped() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("first"));
        let mut b = Versioned::empty(); // n(1) after losing its state
        b.write(n(1), &VersionVector::new(), val("second"));
        let m = merged(&a, &b);
        assert_eq!(values(&m), ["first", "second"]);
        assert_eq!(m, merged(&b, &a));
        m.validate().unwrap();
    }

    #[test]
    fn encode_decode_round_trip_and_validation() {
        let mut s = Versioned::empty();
        s.write(n(1), &VersionVector::new(), val("x"));
        s.write(n(2), &VersionVector::new(), None);
        s.prune(1);
        assert_eq!(Versioned::decode(&s.encode()).unwrap(), s);
        assert_eq!(
            Versioned::decode(&Versioned::empty().encode()).unwrap(),
            Versioned::empty()
        );

        let mut trailing = s.encode();
        trailing.push(0);
        assert!(matches!(
            Versioned::decode(&trailing),
            Err(Error::InvalidData(_))
        ));
        assert!(matches!(
            Versioned::decode(&[0xff, 0xff]),
            Err(Error::InvalidData(_))
        ));

        // Hand-built states that break an invariant are refused.
        let bad = [
            Versioned {
                context: VersionVector::new(),
                siblings: vec![Sibling {
                    dot: dot(1, 1),
                    value: None,
                }],
                pruned: 0,
                applied: BTreeMap::new(),
            },
            Versioned {
                context: vv(&[(1, 2)]),
                siblings: vec![
                    Sibling {
                        dot: dot(1, 2),
                        value: None,
                    },
                    Sibling {
                        dot: dot(1, 1),
                        value: None,
                    },
                ],
                pruned: 0,
                applied: BTreeMap::new(),
            },
            Versioned {
                context: vv(&[(1, 2)]),
                siblings: vec![Sibling {
                    dot: dot(1, 0),
                    value: None,
                }],
                pruned: 0,
                applied: BTreeMap::new(),
            },
        ];
        for b in bad {
            let err = Versioned::decode(&b.encode());
            assert!(matches!(err, Err(Error::InvalidData(_))), "{b:?}: {err:?}");
        }
    }

    /// Anti-entropy compares digests across nodes and releases, so the digest of a fixed state
    /// is pinned here: a change to the encoding must change this test on purpose.
    #[test]
    fn digest_is_stable_and_follows_equality() {
        let mut a = Versioned::empty();
        a.write(n(1), &VersionVector::new(), val("x"));
        let mut b = Versioned::empty();
        b.write(n(2), &VersionVector::new(), val("y"));
        assert_eq!(merged(&a, &b).digest(), merged(&b, &a).digest());
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), Versioned::empty().digest());
        assert_eq!(merged(&a, &b).digest(), 0xcd32_9b43_639a_89c6);
    }

    #[test]
    fn context_tokens_round_trip_and_refuse_garbage() {
        for c in [VersionVector::new(), vv(&[(1, 3), (200, u64::MAX)])] {
            let ctx = Context::from(c.clone());
            let token = ctx.to_token();
            assert!(token.chars().all(|ch| ch.is_ascii_hexdigit()), "{token}");
            assert_eq!(Context::from_token(&token).unwrap().vector(), &c);
        }
        let good = Context::from(vv(&[(1, 3)])).to_token();
        let too_long = "0".repeat(Context::MAX_TOKEN_LEN + 2);
        for garbage in [
            "",
            "zz",
            "abc",
            &good[..good.len() - 2],
            &format!("{good}00"),
            &too_long,
        ] {
            let err = Context::from_token(garbage);
            assert!(
                matches!(err, Err(Error::InvalidInput(_))),
                "{garbage:.20}: {err:?}"
            );
        }
    }

    // ---- Property tests on random histories across three replicas. ----

    const REPLICAS: usize = 3;
    const CLIENTS: usize = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// A client reads a replica and keeps its context.
        Read { replica: usize, client: usize },
        /// A client writes through a replica with the context it holds; `keep_reply` means it
        /// then holds the written state's context (the reply carried the state).
        Write {
            replica: usize,
            client: usize,
            delete: bool,
            keep_reply: bool,
        },
        /// A client forgets its context: its next write is blind.
        Forget { client: usize },
        /// Replica `to` merges replica `from`'s state.
        Sync { from: usize, to: usize },
        /// In a pruning run, a replica prunes its context between writes (as a compaction
        /// might), which can drop the replica's own actor's entry.
        Prune { replica: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..REPLICAS, 0..CLIENTS).prop_map(|(replica, client)| Op::Read { replica, client }),
            (
                0..REPLICAS,
                0..CLIENTS,
                prop::bool::weighted(0.2),
                any::<bool>()
            )
                .prop_map(|(replica, client, delete, keep_reply)| Op::Write {
                    replica,
                    client,
                    delete,
                    keep_reply
                }),
            (0..CLIENTS).prop_map(|client| Op::Forget { client }),
            (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
            (0..REPLICAS).prop_map(|replica| Op::Prune { replica }),
        ]
    }

    /// One write as issued: its dot, its context and its value.
    #[derive(Debug, Clone)]
    struct Issued {
        dot: Dot,
        ctx: VersionVector,
        value: Option<Vec<u8>>,
    }

    /// How a run prunes: to `bound` entries, at explicit `Op::Prune`s and, if `on_write`, after
    /// every write too.
    #[derive(Debug, Clone, Copy)]
    struct Pruning {
        bound: usize,
        on_write: bool,
    }

    /// A run of `ops`: the replicas after each op, and the writes issued. Without `pruning`,
    /// nothing is pruned.
    struct Run {
        states: Vec<[Versioned; REPLICAS]>,
        writes: Vec<Issued>,
    }

    fn run(ops: &[Op], pruning: Option<Pruning>) -> Run {
        let limits = VersionLimits {
            warn_siblings: usize::MAX,
            max_siblings: usize::MAX,
            max_clock_entries: match pruning {
                Some(p) if p.on_write => p.bound,
                _ => usize::MAX,
            },
        };
        let mut replicas: [Versioned; REPLICAS] = Default::default();
        let mut clients: [VersionVector; CLIENTS] = Default::default();
        let mut states = Vec::new();
        let mut writes = Vec::new();
        for op in ops {
            match *op {
                Op::Read { replica, client } => {
                    clients[client] = replicas[replica].context().clone();
                }
                Op::Write {
                    replica,
                    client,
                    delete,
                    keep_reply,
                } => {
                    let ctx = clients[client].clone();
                    // Each value names its write, so values are unique.
                    let value = (!delete).then(|| (writes.len() as u64).to_be_bytes().to_vec());
                    let out = replicas[replica]
                        .write_checked(n(replica as u8 + 1), &ctx, value.clone(), &limits)
                        .unwrap();
                    writes.push(Issued {
                        dot: out.dot,
                        ctx,
                        value,
                    });
                    if keep_reply {
                        clients[client] = replicas[replica].context().clone();
                    }
                }
                Op::Forget { client } => clients[client] = VersionVector::new(),
                Op::Sync { from, to } => {
                    let other = replicas[from].clone();
                    replicas[to].merge(&other);
                }
                Op::Prune { replica } => {
                    if let Some(p) = pruning {
                        replicas[replica].prune(p.bound);
                    }
                }
            }
            states.push(replicas.clone());
        }
        Run { states, writes }
    }

    /// Every replica merged into one.
    fn converge(replicas: &[Versioned]) -> Versioned {
        let mut all = Versioned::empty();
        for r in replicas {
            all.merge(r);
        }
        all
    }

    /// The writes that are siblings in `state`, by index.
    fn surviving(state: &Versioned, writes: &[Issued]) -> BTreeSet<usize> {
        writes
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                state
                    .siblings()
                    .iter()
                    .any(|s| s.dot == w.dot && s.value == w.value)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// No write is lost: each is a surviving sibling of the converged state, or a later write
    /// was issued with a context covering its dot (and so replaced it knowingly). Also asks the
    /// history checker, which must agree, with the replies of the writes `lost_reply` picks
    /// recorded as lost (the writes took effect, unacknowledged), under `rule`.
    fn check_no_write_lost(
        r: &Run,
        lost_reply: &[bool],
        rule: history::Supersession,
    ) -> std::result::Result<(), TestCaseError> {
        let Some(last) = r.states.last() else {
            return Ok(());
        };
        let all = converge(last);
        let survivors = surviving(&all, &r.writes);
        let mut history = History::new();
        for (i, w) in r.writes.iter().enumerate() {
            let replaced = r.writes[i + 1..].iter().any(|l| l.ctx.covers(&w.dot));
            prop_assert!(
                survivors.contains(&i) || replaced,
                "write {} ({}) lost: {:?}",
                i,
                w.dot,
                all
            );
            let id = history.record_write(b"k", w.value.clone(), w.ctx.clone());
            if !lost_reply.get(i).copied().unwrap_or(false) {
                history.record_ack(id, w.dot);
            }
        }
        history.record_final_state(b"k", &all);
        let violations = history::check_with(&history, rule);
        prop_assert!(violations.is_empty(), "{:?}", violations);
        Ok(())
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let r = run(&ops, None);
            let mid = r.states.get(ops.len() / 2).cloned().unwrap_or_default();
            let last = r.states.last().cloned().unwrap_or_default();
            let pool: Vec<&Versioned> = mid.iter().chain(last.iter()).collect();
            for a in &pool {
                prop_assert_eq!(merged(a, a), (*a).clone());
                for b in &pool {
                    let ab = merged(a, b);
                    prop_assert_eq!(&ab, &merged(b, a));
                    prop_assert_eq!(ab.digest(), merged(b, a).digest());
                    ab.validate().map_err(TestCaseError::fail)?;
                    for c in &pool {
                        prop_assert_eq!(merged(&ab, c), merged(a, &merged(b, c)));
                    }
                }
            }
        }

        #[test]
        fn no_write_is_lost_and_replicas_converge(
            ops in proptest::collection::vec(op(), 0..60),
            lost_reply in proptest::collection::vec(prop::bool::weighted(0.3), 60),
        ) {
            let r = run(&ops, None);
            for states in &r.states {
                for s in states {
                    s.validate().map_err(TestCaseError::fail)?;
                    prop_assert_eq!(&Versioned::decode(&s.encode()).unwrap(), s);
                }
            }
            check_no_write_lost(&r, &lost_reply, history::Supersession::Observed)?;
            if let Some(last) = r.states.last() {
                // Sync in two different orders: the same state either way.
                let forward = converge(last);
                let mut backward = Versioned::empty();
                for s in last.iter().rev() {
                    backward.merge(s);
                }
                prop_assert_eq!(forward.digest(), backward.digest());
                prop_assert_eq!(forward, backward);
            }
        }

        /// PRUNING's claim, on random histories: with contexts pruned to one or two entries, no
        /// write is lost, and every replica holds at least the writes it would hold unpruned,
        /// after every step (pruning only adds spurious siblings).
        #[test]
        fn pruning_only_adds_siblings(
            ops in proptest::collection::vec(op(), 0..60),
            bound in 1usize..=2,
            on_write in any::<bool>(),
            lost_reply in proptest::collection::vec(prop::bool::weighted(0.3), 60),
        ) {
            let plain = run(&ops, None);
            let pruned = run(&ops, Some(Pruning { bound, on_write }));
            for (step, (p, q)) in plain.states.iter().zip(&pruned.states).enumerate() {
                for (i, (p, q)) in p.iter().zip(q).enumerate() {
                    q.validate().map_err(TestCaseError::fail)?;
                    let want = surviving(p, &plain.writes);
                    let got = surviving(q, &pruned.writes);
                    prop_assert!(
                        got.is_superset(&want),
                        "step {} replica {}: unpruned {:?}, pruned {:?}",
                        step, i, want, got
                    );
                }
            }
            // Pruned contexts are not transitive, and pruning may bring a replaced value back as a
            // spurious sibling, so only the rule that trusts every unacknowledged write and does
            // not judge resurrection is sound here (see the history module's ASSUMPTIONS).
            check_no_write_lost(&pruned, &lost_reply, history::Supersession::Any)?;
            check_no_write_lost(&pruned, &[], history::Supersession::Any)?;
        }
    }
}
