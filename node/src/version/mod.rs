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
//! 25, refuse a write that would leave more than 100), and so is the encoded size of the whole
//! state, so that it always fits one message ([`VersionLimits::max_state_bytes`]): a refused
//! write says how to resolve them.
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
//! FORGED VERSIONS
//!
//! Dots are unique only if a coordinator never numbers a key's events from a lower counter than
//! it used before. Its state for a key can go backwards (the copy moved away, or was collected
//! as a stray or a tombstone), so a node numbers every dot above a node-wide floor, the largest
//! counter it ever issued, kept across restarts by a lease in the storage meta
//! (`kv/coordinator.rs`): the node is the [`Issuer`] of its dots, and
//! [`Versioned::write_issued`] gives its next write `(actor, issued + 1)`.
//!
//! Counters also arrive from outside: a client sends a context back with its writes, and peers
//! send whole states (replication, read answers, anti-entropy, hand-overs, hints). Taken as
//! they came, one number near `u64::MAX` for a node's own actor became its next dot and its
//! persisted lease, and every later write it coordinated overflowed, also after a restart. So
//! no number from outside reaches a node's counter:
//!
//! - The next dot is `issued + 1`, never numbered from the pruning floor a state carries (a
//!   peer's number; [`Versioned::raise_dot_floor`] serves the pure model of tests). The floor
//!   the pruning hazard above asks for is the node-wide one: a pruned entry of ours held a
//!   counter we issued, so it is at most `issued`.
//! - A write whose context names the coordinator beyond `issued` is refused, and the error
//!   names the actor and both numbers ([`Issuer::forged_context`]).
//! - A write whose context names another actor above [`MAX_COUNTER`] (2^48) is refused too. A
//!   node cannot know what another issued. Bounding by what the key's copies have seen would
//!   be exact but refuses honest contexts: one read before the key's tombstone was collected
//!   (a key written again behaves like a new key, `tests/sim_collect.rs`), or while the owner's
//!   copy lags the replicas a read merged. A slack above what the node has seen fails the same
//!   way. The ceiling refuses no honest context: a node issuing a million dots a second
//!   reaches it after nine years, and each restart skips at most one lease (2^20), so 2^28
//!   restarts; a node refuses to issue past it rather than overflow. What it does not stop is a
//!   client planting a counter below it that the named node never issued: that moves no node's
//!   counter (each numbers from its own), and the named node disowns it (below) whenever the
//!   key's state reaches it.
//! - A state from a peer that names dots of our actor beyond `issued` is weighed by how far
//!   (`Kv::own_dots_ahead` in the data layer). Within a window of 2^32 past our counter they
//!   are ours from a life this data directory does not remember: it was restored from a
//!   backup, or the node crashed after its replication left and before its lease was flushed.
//!   They are kept, and our counter and lease move above them, since dropping them would lose
//!   those writes and reissuing their counters would mint two versions under one dot
//!   (`tests/anti_entropy.rs` restores a backup and needs exactly this). Beyond the window no
//!   life of ours could have issued them: the state is adopted without them
//!   ([`Versioned::disown_unissued`]: those siblings, applied-write records and the excess of
//!   the context's entry are dropped; the node counts and logs it). Like pruning, that makes
//!   the state cover less, so versions can only look concurrent. Refusing the whole state
//!   instead would stop every batch that carries it (a hand-over would never finish). Only
//!   authenticated peers send states (the cluster secret), so a forged one comes from a member;
//!   the window keeps even that from exhausting our counter in one message.
//!
//! CAVEATS
//!
//! - A node that loses its disk and comes back under the same id (ids are derived from
//!   addresses) loses its lease too: it can reissue a dot that other replicas' contexts cover,
//!   so a blind write through it may be dropped, and it disowns the versions of its earlier
//!   life that peers' states hold, and refuses contexts that name them. Riak gives each vnode a
//!   new id after data loss; here the way out is a new address. Should two siblings still meet
//!   with one dot and different values, merge keeps both (it compares whole siblings, not just
//!   dots), so such a collision shows up as a sibling rather than disappearing.
//! - A planted counter of node `b` below the ceiling (from a client, or from a peer, which is
//!   trusted with third nodes' counters) keeps `b`'s copy of that key apart from the others:
//!   `b` disowns it at every merge, and anti-entropy finds the key different every round.
//!   Authenticated clients and peers are the rest of issue 10.
//! - A plain version vector cannot say "everything up to `a:3`, and `a:7`". So a write reply must
//!   carry either the whole state written (values and context, like Riak's `return_body`) or no
//!   context at all; handing back the client's context joined with the new dot would let its next
//!   write replace siblings it has never seen.
//! - Bounds are enforced on writes only: a merge never refuses (refusing would keep replicas
//!   apart), so a merge may leave more siblings, clock entries or bytes than the limits, until
//!   the next write resolves or prunes them. A write that makes a state smaller is never
//!   refused for its size, so a state over the size bound can still be resolved.
//! - Tombstones are never removed here. Collecting a deleted key needs every replica to hold
//!   the same tombstone first, which is the replication layer's business
//!   (COLLECTION in `kv/collect.rs`).

use crate::id::Id;
use crate::session::Deps;
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
/// and zero entries are never stored, so equal histories are equal values. The derived order
/// (`Ord`) is lexicographic over the entries, for sorting; the causal order is
/// [`VersionVector::compare`].
///
/// Decoding refuses more than [`MAX_VECTOR_ENTRIES`] entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "BTreeMap<Id, u64>")]
pub struct VersionVector(BTreeMap<Id, u64>);

/// Most entries a decoded [`VersionVector`] may have: a bound on decoding memory, far above the
/// actors a key meets (a write prunes its context to [`VersionLimits::max_clock_entries`], 64 by
/// default, and a context token holds about a thousand).
pub const MAX_VECTOR_ENTRIES: usize = 4096;

/// Most siblings a decoded [`Versioned`] may have (and values a read may return): a bound on
/// decoding memory, far above [`VersionLimits::max_siblings`] (100 by default), which a merge of
/// replicas may exceed for a while.
pub const MAX_SIBLINGS: usize = 1 << 16;

/// Most applied write ids a decoded [`Versioned`] may remember:
/// [`APPLIED_PER_COORDINATOR`] for each of [`MAX_VECTOR_ENTRIES`] coordinators.
const MAX_APPLIED: usize = APPLIED_PER_COORDINATOR * MAX_VECTOR_ENTRIES;

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::bounded::btree_map::<_, _, _, MAX_VECTOR_ENTRIES>(d).map(VersionVector::from)
    }
}

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

    /// Lower `actor`'s entry to at most `max` (removing it at 0). The vector then covers less,
    /// like a pruned one.
    pub fn cap(&mut self, actor: &Id, max: u64) {
        if max == 0 {
            self.0.remove(actor);
        } else if let Some(n) = self.0.get_mut(actor) {
            *n = (*n).min(max);
        }
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
    /// What the write depended on, if a session wrote it ([`crate::session`]): readers that
    /// see this version inherit them. Kept encoded ([`Deps::encode`]): a node decodes them only
    /// to answer a session read, not every time it reads, merges or digests the state.
    #[serde(deserialize_with = "crate::bounded::opt_bytes")]
    pub deps: Option<serde_bytes::ByteBuf>,
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
    /// A write that would leave the encoded state ([`Versioned::encode`]) larger than this
    /// many bytes is refused, unless it makes the state smaller: the bound keeps every state
    /// within one frame with room for the message around it. The default is the default frame
    /// bound less [`STATE_HEADROOM`]; a node derives it from its frame bound.
    pub max_state_bytes: usize,
}

/// Room a state bound leaves in a frame for the message around one state (the key, ids, tags
/// and length prefixes), and for what a write adds beside its value (a dot, context entries,
/// a write id).
pub const STATE_HEADROOM: usize = 64 << 10;

impl VersionLimits {
    /// The refusal of a write that would leave a state of `size` encoded bytes with `siblings`
    /// siblings, over [`VersionLimits::max_state_bytes`].
    pub fn state_too_large(&self, size: usize, siblings: usize) -> Error {
        Error::TooLarge {
            what: format!(
                "the key's state after this write ({siblings} siblings, over the state bound: \
                 resolve them by writing with the context of a read, or delete the key)"
            ),
            size: size as u64,
            limit: self.max_state_bytes as u64,
        }
    }
}

impl Default for VersionLimits {
    fn default() -> VersionLimits {
        VersionLimits {
            warn_siblings: 25,
            max_siblings: 100,
            max_clock_entries: 64,
            // The default frame bound, `wire::Limits::default().max_frame`.
            max_state_bytes: (8 << 20) - STATE_HEADROOM,
        }
    }
}

/// A node as the issuer of its own dots: every counter it ever issued as `actor`, for any key
/// and in any run on its data directory, is at most `issued` (its node-wide dot floor, see
/// FORGED VERSIONS in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    /// The node's id, the actor of its dots.
    pub actor: Id,
    /// The largest counter it may have issued.
    pub issued: u64,
}

impl Issuer {
    /// The refusal of a write whose context names this actor at `claimed`, above what it
    /// issued.
    pub fn forged_context(&self, claimed: u64) -> Error {
        Error::InvalidInput(format!(
            "the context claims version {actor}:{claimed}, but {actor} has issued counters only up \
             to {issued}: the context is forged (or from a data directory this node lost); \
             write with the context of a fresh read, or without one",
            actor = self.actor.short(),
            issued = self.issued,
        ))
    }
}

/// The largest counter a client's context may name for a node other than the write's
/// coordinator, and the largest a node issues: 2^48 (see FORGED VERSIONS in the module docs).
pub const MAX_COUNTER: u64 = 1 << 48;

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
    /// a replica). At most [`APPLIED_PER_COORDINATOR`] per coordinator, the newest.
    applied: BTreeMap<WriteId, Applied>,
}

/// The dots one client write got: the one a state keeps, and the others it got where a retry
/// reached another owner, which merges recognised as the same write and dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    dot: Dot,
    /// Sorted, without `dot`; at most [`MAX_FORMS`] − 1.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_FORMS>")]
    also: Vec<Dot>,
}

/// Most dots one write id's [`Applied`] remembers (a write retried at that many owners).
const MAX_FORMS: usize = 4;

impl Applied {
    fn forms(&self) -> impl Iterator<Item = Dot> + '_ {
        std::iter::once(self.dot).chain(self.also.iter().copied())
    }
}

/// How many applied write ids a key remembers per coordinator (see [`Versioned::applied_dot`]).
pub const APPLIED_PER_COORDINATOR: usize = 4;

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
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_SIBLINGS>")]
    siblings: Vec<Sibling>,
    pruned: u64,
    #[serde(deserialize_with = "crate::bounded::btree_map::<_, _, _, MAX_APPLIED>")]
    applied: BTreeMap<WriteId, Applied>,
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

    /// The dependencies of every sibling, joined: what a reader of this state inherits. A
    /// sibling whose dependencies do not decode (never written by this build) adds none.
    pub fn deps(&self) -> Deps {
        let mut deps = Deps::new();
        for d in self.siblings.iter().filter_map(|s| s.deps.as_deref()) {
            if let Ok(d) = Deps::decode(d) {
                deps.merge(&d);
            }
        }
        deps
    }

    /// The siblings a write with context `ctx` replaces: those it covers or names in
    /// `replaces`, and every form of a write applied under several dots of which it replaces
    /// one.
    fn replaced_by(&self, ctx: &VersionVector, replaces: &[Dot]) -> BTreeSet<Dot> {
        let hit = |d: &Dot| ctx.covers(d) || replaces.contains(d);
        let mut replaced: BTreeSet<Dot> = self.dots().filter(hit).collect();
        for a in self.applied.values().filter(|a| !a.also.is_empty()) {
            if a.forms().any(|d| hit(&d)) {
                replaced.extend(a.forms());
            }
        }
        replaced
    }

    /// Apply a write coordinated by `actor` with the client's context `ctx`: the siblings `ctx`
    /// covers are replaced, the others stay as concurrent siblings, and the new version is added
    /// with a fresh dot, which is returned. `value: None` writes a tombstone.
    ///
    /// No bounds are checked: a node calls [`Versioned::write_issued`]. A counter at
    /// `u64::MAX` (possible only from a forged context) saturates.
    pub fn write(&mut self, actor: Id, ctx: &VersionVector, value: Option<Vec<u8>>) -> Dot {
        self.write_replacing(actor, ctx, &[], value, None)
    }

    /// [`Versioned::write`] that also replaces the siblings whose dots `replaces` names (a
    /// session's own earlier writes, [`crate::session`]), and stores `deps` with the new version.
    /// Naming a dot the state does not hold replaces nothing and adds nothing to the context.
    pub fn write_replacing(
        &mut self,
        actor: Id,
        ctx: &VersionVector,
        replaces: &[Dot],
        value: Option<Vec<u8>>,
        deps: Option<&Deps>,
    ) -> Dot {
        let dot = Dot::new(actor, self.next_counter(&actor, ctx).unwrap_or(u64::MAX));
        self.apply(dot, ctx, replaces, value, deps);
        dot
    }

    /// Add the version `dot` of a write with context `ctx` that also replaces the dots
    /// `replaces` names (the caller chose a fresh `dot`).
    fn apply(
        &mut self,
        dot: Dot,
        ctx: &VersionVector,
        replaces: &[Dot],
        value: Option<Vec<u8>>,
        deps: Option<&Deps>,
    ) {
        let replaced = self.replaced_by(ctx, replaces);
        self.siblings.retain(|s| !replaced.contains(&s.dot));
        let deps = deps
            .filter(|d| !d.is_empty())
            .map(|d| serde_bytes::ByteBuf::from(d.encode()));
        let new = Sibling { dot, value, deps };
        if let Err(at) = self.siblings.binary_search(&new) {
            self.siblings.insert(at, new);
        }
        self.context.merge(ctx);
        self.context.add(&dot);
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
        self.write_checked_replacing(actor, ctx, &[], value, None, limits)
    }

    /// [`Versioned::write_checked`] with [`Versioned::write_replacing`]'s named dots and
    /// dependencies.
    ///
    /// # Errors
    /// As [`Versioned::write_checked`].
    pub fn write_checked_replacing(
        &mut self,
        actor: Id,
        ctx: &VersionVector,
        replaces: &[Dot],
        value: Option<Vec<u8>>,
        deps: Option<&Deps>,
        limits: &VersionLimits,
    ) -> Result<WriteOutcome> {
        self.check_siblings(ctx, replaces, limits)?;
        if self.next_counter(&actor, ctx).is_none() {
            return Err(Error::InvalidInput(format!(
                "version counter for {} overflows; the context is forged",
                actor.short()
            )));
        }
        let dot = self.write_replacing(actor, ctx, replaces, value, deps);
        let pruned = self.prune(limits.max_clock_entries);
        Ok(WriteOutcome {
            dot,
            siblings: self.siblings.len(),
            warn: self.siblings.len() > limits.warn_siblings,
            pruned,
        })
    }

    /// Refuse a write with context `ctx` naming `replaces` that would leave more than
    /// `limits.max_siblings` siblings.
    fn check_siblings(
        &self,
        ctx: &VersionVector,
        replaces: &[Dot],
        limits: &VersionLimits,
    ) -> Result<()> {
        let replaced = self.replaced_by(ctx, replaces);
        let kept = self.dots().filter(|d| !replaced.contains(d)).count();
        if kept + 1 > limits.max_siblings {
            return Err(Error::InvalidInput(format!(
                "key has {} siblings, the limit is {}: read it and write back with its context \
                 to resolve them",
                self.siblings.len(),
                limits.max_siblings
            )));
        }
        Ok(())
    }

    /// [`Versioned::write_checked_replacing`] by a coordinator that numbers its dots node-wide,
    /// `issuer` (see FORGED VERSIONS in the module docs): the new dot is
    /// `(issuer.actor, max(issuer.issued, context[actor]) + 1)`, whatever the state's pruning
    /// floor or the client's context say, and a context that names versions nobody issued is
    /// refused. The caller must record the new counter as issued before it stores the state.
    ///
    /// # Errors
    /// [`Error::InvalidInput`], with the state unchanged, if `ctx` names `issuer.actor` beyond
    /// [`Issuer::issued`] ([`Issuer::forged_context`]) or another actor above [`MAX_COUNTER`],
    /// if the new counter would pass [`MAX_COUNTER`], or as [`Versioned::write_checked`] for
    /// siblings.
    pub fn write_issued(
        &mut self,
        issuer: &Issuer,
        ctx: &VersionVector,
        replaces: &[Dot],
        value: Option<Vec<u8>>,
        deps: Option<&Deps>,
        limits: &VersionLimits,
    ) -> Result<WriteOutcome> {
        let actor = issuer.actor;
        if ctx.get(&actor) > issuer.issued {
            return Err(issuer.forged_context(ctx.get(&actor)));
        }
        if let Some((other, n)) = ctx.iter().find(|&(a, n)| a != actor && n > MAX_COUNTER) {
            return Err(Error::InvalidInput(format!(
                "the context claims version {}:{n}, above the ceiling of {MAX_COUNTER} that no \
                 node's counter reaches: the context is forged; write with the context of a \
                 fresh read, or without one",
                other.short()
            )));
        }
        self.check_siblings(ctx, replaces, limits)?;
        // The state's own entry is at most what we issued, unless it was stored before that
        // was checked: then it is still never numbered below.
        let counter = issuer.issued.max(self.context.get(&actor)) + 1;
        if counter > MAX_COUNTER {
            return Err(Error::InvalidInput(format!(
                "the version counter of {} is exhausted (it reached {MAX_COUNTER}); run the \
                 node under a new address",
                actor.short()
            )));
        }
        let dot = Dot::new(actor, counter);
        self.apply(dot, ctx, replaces, value, deps);
        let pruned = self.prune(limits.max_clock_entries);
        Ok(WriteOutcome {
            dot,
            siblings: self.siblings.len(),
            warn: self.siblings.len() > limits.warn_siblings,
            pruned,
        })
    }

    /// The largest counter of `issuer.actor` that this state claims (in its context or among
    /// the dots of its applied writes) beyond [`Issuer::issued`], if any: versions of ours we
    /// never made.
    pub fn unissued(&self, issuer: &Issuer) -> Option<u64> {
        let actor = issuer.actor;
        let applied = self
            .applied
            .values()
            .flat_map(Applied::forms)
            .filter(|d| d.actor == actor)
            .map(|d| d.counter);
        std::iter::once(self.context.get(&actor))
            .chain(applied)
            .filter(|&n| n > issuer.issued)
            .max()
    }

    /// Drop what this state claims of `issuer.actor` beyond [`Issuer::issued`]: the siblings
    /// with such dots, the applied writes with such a form, and the context's entry above it.
    /// Returns the largest counter dropped ([`Versioned::unissued`]), `None` if there was none.
    /// The state then covers less, as after pruning: versions can only look concurrent.
    pub fn disown_unissued(&mut self, issuer: &Issuer) -> Option<u64> {
        let claimed = self.unissued(issuer)?;
        let beyond = |d: &Dot| d.actor == issuer.actor && d.counter > issuer.issued;
        self.siblings.retain(|s| !beyond(&s.dot));
        self.applied.retain(|_, a| !a.forms().any(|d| beyond(&d)));
        self.context.cap(&issuer.actor, issuer.issued);
        Some(claimed)
    }

    /// Synchronize with another replica's state of the same key: keep the siblings both hold,
    /// and those one holds that the other's context does not cover; join the contexts.
    /// Commutative, associative and idempotent.
    ///
    /// One client write applied twice (its first owner failed before answering, and the retry
    /// reached another owner) has two dots, its *forms*, which the applied maps name. A merge
    /// judges the write as one version. A side has replaced it if it holds none of the forms it
    /// knows of (its own write replaced them), or if its context covers a form it neither holds
    /// nor knows of: that coverage came from a client's context, so a write that saw the write
    /// under one dot replaced it under every dot. Otherwise the write survives if either side
    /// holds it, as its smallest held form, and the merged map remembers every form, so that a
    /// later merge can tell that dropped form from a replaced one. (A duplicate is recognised
    /// while either state remembers its write id: see [`APPLIED_PER_COORDINATOR`].)
    pub fn merge(&mut self, other: &Versioned) {
        let mine: BTreeSet<Dot> = self.dots().collect();
        let theirs: BTreeSet<Dot> = other.dots().collect();
        // Every form of each write either side knows under more than one dot.
        let mut forms: BTreeMap<WriteId, BTreeSet<Dot>> = BTreeMap::new();
        for (id, a) in self.applied.iter().chain(&other.applied) {
            forms.entry(*id).or_default().extend(a.forms());
        }
        forms.retain(|_, f| f.len() > 1);
        let mut multi: BTreeSet<Dot> = BTreeSet::new();
        for f in forms.values() {
            multi.extend(f.iter().copied());
        }
        // Plain siblings: kept unless the other side's context covers them and it lacks them.
        let mut siblings = std::mem::take(&mut self.siblings);
        siblings.retain(|s| {
            multi.contains(&s.dot) || theirs.contains(&s.dot) || !other.context.covers(&s.dot)
        });
        let kept_mine = siblings.len();
        for s in &other.siblings {
            let survives =
                multi.contains(&s.dot) || mine.contains(&s.dot) || !self.context.covers(&s.dot);
            if survives && siblings[..kept_mine].binary_search(s).is_err() {
                siblings.push(s.clone());
            }
        }
        // Writes with several forms: one verdict each, and at most one form kept.
        for (id, f) in &forms {
            let replaced_by = |state: &Versioned, held: &BTreeSet<Dot>| {
                let known: BTreeSet<Dot> = state
                    .applied
                    .get(id)
                    .map(|a| a.forms().collect())
                    .unwrap_or_default();
                let holds = f.iter().any(|d| held.contains(d));
                // Coverage of a form the state does not know of came from a client's context,
                // unless the state trimmed its entry for the write, or its list of forms is full
                // (then it may have come from a merge that knew more forms than fit).
                let trimmed =
                    (known.is_empty() && state.may_have_forgotten(id)) || known.len() >= MAX_FORMS;
                (!known.is_empty() && !holds)
                    || (!trimmed
                        && f.iter().any(|d| {
                            !known.contains(d) && !held.contains(d) && state.context.covers(d)
                        }))
            };
            let keep = if replaced_by(self, &mine) || replaced_by(other, &theirs) {
                None
            } else {
                f.iter()
                    .find(|d| mine.contains(d) || theirs.contains(d))
                    .copied()
            };
            siblings.retain(|s| !f.contains(&s.dot) || Some(s.dot) == keep);
            let dot = keep.unwrap_or_else(|| *f.first().expect("several forms"));
            let also = f
                .iter()
                .copied()
                .filter(|d| *d != dot)
                .take(MAX_FORMS - 1)
                .collect();
            self.applied.insert(*id, Applied { dot, also });
        }
        siblings.sort();
        self.siblings = siblings;
        self.context.merge(&other.context);
        self.pruned = self.pruned.max(other.pruned);
        for (id, a) in &other.applied {
            self.applied.entry(*id).or_insert_with(|| a.clone());
        }
        self.trim_applied();
    }

    /// The dot a client write got when it was applied here (or on a replica this state merged),
    /// if the key still remembers it: a retry of that write must not be applied again.
    pub fn applied_dot(&self, id: &WriteId) -> Option<Dot> {
        self.applied.get(id).map(|a| a.dot)
    }

    /// Remember that client write `id` was applied as `dot`.
    pub fn record_applied(&mut self, id: WriteId, dot: Dot) {
        self.applied.insert(
            id,
            Applied {
                dot,
                also: Vec::new(),
            },
        );
        self.trim_applied();
    }

    /// Whether this state may once have remembered write `id` and trimmed it: it remembers a
    /// full [`APPLIED_PER_COORDINATOR`] of `id`'s coordinator, all newer. A coordinator's
    /// retry of such a write cannot be told from a first attempt, so an owner refuses it
    /// rather than apply it a second time.
    pub fn may_have_forgotten(&self, id: &WriteId) -> bool {
        let newer = self
            .applied
            .keys()
            .filter(|k| {
                k.coordinator == id.coordinator && (k.incarnation, k.seq) > (id.incarnation, id.seq)
            })
            .count();
        newer >= APPLIED_PER_COORDINATOR
    }

    /// Keep the [`APPLIED_PER_COORDINATOR`] newest write ids of each coordinator, newest by
    /// `(incarnation, seq)`. Per coordinator, so that a busy coordinator cannot push out
    /// another's recent writes; by the ids alone (not the dots, which merges change), so that
    /// trimming commutes with merging.
    fn trim_applied(&mut self) {
        let mut per_coordinator: BTreeMap<Id, Vec<(u64, u64)>> = BTreeMap::new();
        for id in self.applied.keys() {
            per_coordinator
                .entry(id.coordinator)
                .or_default()
                .push((id.incarnation, id.seq));
        }
        let mut floor: BTreeMap<Id, (u64, u64)> = BTreeMap::new();
        for (coordinator, mut ids) in per_coordinator {
            if ids.len() > APPLIED_PER_COORDINATOR {
                ids.sort_unstable_by(|a, b| b.cmp(a));
                floor.insert(coordinator, ids[APPLIED_PER_COORDINATOR - 1]);
            }
        }
        self.applied.retain(|id, _| {
            floor
                .get(&id.coordinator)
                .is_none_or(|&f| (id.incarnation, id.seq) >= f)
        });
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
        decode_exact(bytes).map_err(|e| Error::InvalidData(format!("versioned value: {e}")))
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
        for a in self.applied.values() {
            if a.also.len() >= MAX_FORMS
                || a.also.windows(2).any(|p| p[0] >= p[1])
                || a.also.contains(&a.dot)
            {
                return Err(format!("applied write {} has malformed other dots", a.dot));
            }
        }
        Ok(())
    }
}

/// One `T` in bincode's standard configuration that takes all of `bytes`; the error says what
/// is wrong (for the caller to name what it was decoding).
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    // The limit bounds what length fields may claim, as on the wire: no state, dependencies or
    // token is larger than a frame.
    let config = bincode::config::standard().with_limit::<{ crate::wire::HARD_MAX_FRAME }>();
    let (v, used) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(v)
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
        decode_exact(&bytes).map(Context).map_err(bad)
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
mod tests;
