//! The key-value layer as a pure state machine: what is stored, and how the copies agree.
//!
//! It owns the node's [`Storage`] and everything about values; the ring ([`crate::ring`]) below
//! it decides who owns what. It asks the ring for routes ([`Ring::lookup`]) and for the node's
//! range and successors, reacts to the ring's [`Notice`]s, and tells the ring when a hand-over
//! it asked for is done. It holds no finger or stabilization state.
//!
//! REPLICATION
//!
//! A key lives on its owner and the owner's next `N − 1` successors (Dynamo's preference list,
//! SOSP 2007 §4.3, with Chord's successor list as the list). Any node accepts a client request:
//! it looks the owner up and forwards a `StoreGet`/`StoreWrite`; an owner that no longer owns
//! the key answers `WrongOwner` and the request is retried (with the same write id) until its
//! deadline. The owner coordinates every request for its keys (`kv/coordinator.rs`):
//! - *write*: it makes the new version (its own dot, [`crate::version`]), stores it, sends it to
//!   its `N − 1` replicas ([`Request::Replicate`]) and answers once `W` copies, its own included,
//!   are stored and flushed. Fewer than `W` answers is an error for the client, though the
//!   version may survive where it was stored: an unacknowledged write is "maybe".
//! - *read*: it asks `R − 1` of its replicas ([`Request::ReplicaRead`]; another for each that
//!   fails), merges their answers with its own copy and answers; any copy found stale is
//!   repaired with the merge (read repair). The copies not asked are anti-entropy's to keep
//!   (Cassandra reads the same way), so a read costs `R` copies' work, not `N`. A session read
//!   asks them all (SESSIONS below).
//!
//! Every copy merges by version vectors, never by time, so the order in which copies meet does
//! not matter. Each key's state remembers the write ids recently applied to it, so a retried
//! write is applied once even if it reaches a different owner; dots are numbered above a
//! node-wide floor leased in the storage meta, so none is issued twice.
//!
//! KEYS ON JOIN AND LEAVE
//!
//! When the ring reports a newcomer `m` between our predecessor `p` and us
//! ([`Notice::Newcomer`]), we hand over the keys of `(p, m]`, the part of our range it takes,
//! in rounds (`kv/transfer.rs`), and tell the ring to adopt `m` only when nothing is left to
//! send. Until then we keep serving those keys, so reads never see a gap. The rounds first sweep
//! the range in slices (each reads a few thousand entries at most, so no round costs the size of
//! the range), then send what was written in it since the sweep passed (the storage notes every
//! key written in the range while the hand-over runs), including deletes; the hand-over ends
//! when the sweep is done and no written key is left. We remove our copies only after `m`
//! acknowledged storing them: an interrupted move loses nothing. A
//! round whose answer was lost leaves its keys marked "maybe held", so a retry to the same node
//! resends or deletes them and nothing stale stays visible. We keep our copies after a join
//! hand-over, being one of `m`'s replicas. Nothing else goes to `m`: the copies it should hold as
//! a replica of its predecessors' keys come from their owners (writes, then anti-entropy), and
//! the strays we may hold of older rings stay ours to hand to their owners. Handing those over
//! too would multiply strays, and every stray must reach its owner before a tombstone may go.
//!
//! A graceful leave hands all keys to the successor the same way, then the ring tells both
//! neighbours. If the successor has meanwhile adopted a newer predecessor it answers
//! `Redirect`, and the leaver hands everything to that node instead. Hand-overs merge versions,
//! so they never replace a newer version with an older one. Writes that arrive during a leave
//! are carried in its later rounds; once the last round is done the leaver refuses copies
//! (`Replicate`, `Handoff`), which would leave with it. A leave begun during a join hand-over
//! abandons that hand-over; every round names its receiver and number, so a late answer of the
//! abandoned one is not taken for the leave's.
//!
//! SESSIONS
//!
//! A client request may carry its session's floor for the key ([`crate::session`]). The owner
//! answers a session read only from a merge of copies whose context meets the floor: its own
//! copy if that meets it (no extra round trip: the common case, since every write goes through
//! the owner), else it waits for more of the replicas' answers than `R` asks for, up to all of
//! them, and read-repairs the laggards, itself included, with the merge. A session write is
//! applied only on a state that meets the floor: if the owner's does not, it first fetches the
//! replicas' states and merges them into its own. When every replica answered and the merge
//! still falls short, the owner refuses with [`Error::SessionUnmet`] naming the guarantee, and
//! the coordinating node retries with exponential backoff (up to 16 times the retry delay) until
//! the request's deadline, so a copy that comes back or catches up in time is found; an older
//! state is never answered. The coordinator gives an owner two RPC timeouts for a floored
//! request, since the owner may itself wait one for a replica. A session read's answer says
//! whether all `N` copies hold the merged state (they all answered with it, or the owner
//! remembers that all of them acknowledged a state that dominates it: it keeps the last fully
//! acknowledged state of up to 4,096 recently written keys, all forgotten whenever its replicas
//! change, as seen at every tick and at every read), and a write's whether all `N` stored it before the answer, so that a session at its
//! bounds can leave out first what every copy holds. A session write also names the session's
//! own earlier dots of the key, which it replaces exactly, and its dependencies, which are stored
//! with the version and returned with reads of it. [`Options::enforce_sessions`] off (tests
//! only) answers floored requests as unfloored ones.
//!
//! ANTI-ENTROPY, HINTS AND COLLECTION
//!
//! Replicas that missed writes are repaired by hinted handoff and by anti-entropy (`kv/sync.rs`);
//! copies left where they do not belong, and tombstones that have done their work, are
//! collected (`kv/collect.rs`). Each module's essay says how.
//!
//! PLAUSIBILITY
//!
//! The data requests that delete copies are checked against this node's view of the ring before
//! anything is applied; one no correct node could send in that view is refused with an error
//! saying why, counted by kind ([`Kv::refusals`]), state untouched. (Authentication is the
//! server's; this stops a member that is stale, confused or buggy.)
//! - *Transfer*, a join hand-over: only from one of our successors, only while our successor
//!   has not named us its predecessor (once it has, its hand-over is over; an installed node is
//!   handed a range only after a partition, by a successor with another predecessor), and only
//!   keys in `(sender, us]`, deletes included. A leave's hand-over: from a node that is (or lies
//!   where) our predecessor, as before (one with a newer node between is redirected); its
//!   deletes, which nothing in a leave produces, only from our predecessor itself. A round is
//!   refused whole.
//! - *Reap* with `commit`: only for keys outside our own range, only tombstones, and only as the
//!   end of a check (`commit` false) we answered "held with this digest" within the last ten RPC
//!   timeouts. The request does not name its sender (the owner), so "from the key's owner, or
//!   one we recently replicated for" cannot be checked; the check-before-commit is what stands
//!   in for it. A commit we refuse leaves a tombstone, which a later round collects.
//! - *Handoff* is taken as before: the owner merges only the copies of its own range, merging
//!   never loses a version, and nothing it is sent deletes anything here; only the sender
//!   deletes, and only what the owner confirms.
//!
//! CAVEATS
//!
//! W and R are floors. A key's copies are its owner and the owner's first `N − 1` live
//! successors (a suspected successor is skipped and the next one stands in, Dynamo's sloppy
//! quorum in ring form), and a request whose quorum exceeds the copies it can reach is refused
//! before anything is applied, never acknowledged with fewer: a ring smaller than W, a partition
//! that leaves a side too small, or a node that suspects all its successors makes writes
//! unavailable there rather than less durable. A ring with fewer than `N` nodes (but at least W)
//! keeps fewer copies and says so ([`crate::message::NodeStatus::replicas`]). Each side of a
//! partition that is large enough forms a ring of its own and keeps accepting writes, which
//! merge as siblings after the heal; a node cut off alone reaches one copy and refuses writes
//! (with W > 1). A client may pass `w` (and `r`) for one request; it is kept the same way. Values
//! are compared across transfer rounds by a 64-bit hash.
//!
//! A key's encoded state is bounded so that it fits one message
//! ([`VersionLimits::max_state_bytes`], the frame bound less 64 KiB): the owner refuses a write
//! that would leave it larger, unless the write makes it smaller, as one with a read's context
//! covering the siblings does. Merges are never refused (replicas must converge), so writes
//! that two owners accepted during a partition or a ring change can merge into a state over
//! the bound, up to the sum of both sides. Such a state is stored and travels alone in its
//! messages; while it fits a frame it is read and resolved as usual. One beyond the frame
//! cannot be sent: its replication and repairs fail (reported as [`Event::RepairFailed`]) and
//! a read of it cannot be answered, so it cannot be resolved through a read's context: a known gap.
//!
//! # Call contract
//!
//! [`Kv`] owns no sockets, clocks or threads; its driver is the node ([`crate::node::Node`]),
//! which implements [`KvIo`] for it and hands it the [`Ring`] with every input:
//! [`Kv::handle_request`] for data and client requests, `Kv::on_answer` for the answers to its
//! requests (after the ring has [observed](Ring::observe) them), [`Kv::on_notice`] for each of
//! the ring's notices, [`Kv::tick`] after the ring's tick, and [`Kv::leave`] after
//! [`Ring::leave`]. A response that acknowledges a write must not reach the network before the
//! driver has made the write durable ([`Storage::flush`]).

use crate::error::{Error, Result};
use crate::id::{Id, in_half_open};
use crate::message::{NodeRef, Request, RequestId, Response, WriteId};
use crate::ring::{Notice, Ring, RingIo};
use crate::rpc::{Calls, ConnId, Pending, Refusals, timer_phase};
use crate::storage::Storage;
use crate::version::{VersionLimits, Versioned};
use coordinator::{ClientOp, FloorOp, ReadOp, Responder, Settles, StoreWrite, WriteOp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

/// How far past our own counter a peer's state may name dots of ours and still be taken for
/// ours ([`Kv::own_dots_ahead`]): more than a node issues between a backup of its data
/// directory and its restore (2^32 writes), far less than the counter's ceiling (2^48).
pub const OWN_DOTS_WINDOW: u64 = 1 << 32;
use tree::{Cover, Indexed};

mod collect;
mod coordinator;
mod sync;
mod transfer;
pub mod tree;

/// The storage meta name of the count of runs that issued write ids (see
/// [`Kv::settle_incarnation`]).
pub const INCARNATION_META: &str = "incarnation";

/// The data layer's tunables. Tests pin them; the node binary exposes the main ones as flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// Copies of every key, N: the owner and its next N − 1 successors.
    pub replicas: usize,
    /// Copies that must be stored before a write is acknowledged, W (1..=N). A floor: a write
    /// that cannot reach W copies is refused, never acknowledged with fewer.
    pub write_quorum: usize,
    /// Copies a read merges before it answers, R (1..=N). A floor, like W.
    pub read_quorum: usize,
    /// How long a client request may take in all, retries included, in ms.
    pub request_timeout: u64,
    /// Pause before retrying a request that met a changing ring, in ms.
    pub retry_delay: u64,
    /// Most key/value pairs in one transfer message (and most deletes), at most
    /// [`crate::message::MAX_ITEMS`].
    pub transfer_batch: usize,
    /// Most bytes of keys and states in one message that carries them, one item at least: a
    /// transfer round, an anti-entropy push or fetch answer, a hash-tree answer's key list, a hint
    /// delivery, a stray hand-off and its answer. Keep it well under the frame bound
    /// ([`crate::wire::Limits::max_frame`]); the default is a quarter of the default frame.
    /// Failed sends shrink it for a while (see `kv/sync.rs`, BATCHES).
    pub batch_bytes: usize,
    /// How often an owner compares its range with one replica (anti-entropy), in ms.
    pub sync_interval: u64,
    /// How often an owner hands hinted writes to replicas that may be back, in ms (the node
    /// binary ties it to the heartbeat interval).
    pub hint_interval: u64,
    /// How long, in ms, a key's owner must have seen the same tombstone-only state before it
    /// collects it from every replica; `None` keeps tombstones forever. It must be longer than
    /// any node stays down or cut off and then comes back with its data: such a node may still
    /// hold a value the collected tombstone had replaced, and would bring it back (Cassandra's
    /// `gc_grace_seconds` rule).
    pub tombstone_grace: Option<u64>,
    /// Bounds on siblings and clock size per key.
    pub versions: VersionLimits,
    /// Whether owners hold session requests to their floors ([`crate::session`]). Only tests
    /// turn it off, to show that the session checker catches what it prevents.
    pub enforce_sessions: bool,
}

impl Options {
    /// A majority of `replicas`: the default W and R, so that `R + W > N`.
    pub fn majority(replicas: usize) -> usize {
        replicas / 2 + 1
    }

    /// The defaults with `replicas` copies of every key and majority quorums (so
    /// `with_replicas(1)` is a node that may run alone).
    pub fn with_replicas(replicas: usize) -> Options {
        let majority = Options::majority(replicas);
        Options {
            replicas,
            write_quorum: majority,
            read_quorum: majority,
            ..Options::default()
        }
    }

    /// Checks that the quorums fit the replication factor and a transfer batch fits what a
    /// receiver decodes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first quorum outside `1..=N`, or a transfer batch over
    /// [`crate::message::MAX_ITEMS`].
    pub fn validate(&self) -> Result<()> {
        if self.replicas == 0 {
            return Err(Error::InvalidInput(
                "replicas (N) must be at least 1".into(),
            ));
        }
        if self.transfer_batch > crate::message::MAX_ITEMS {
            return Err(Error::InvalidInput(format!(
                "the transfer batch {} is over {}: a receiver refuses longer lists",
                self.transfer_batch,
                crate::message::MAX_ITEMS
            )));
        }
        for (name, q) in [("write", self.write_quorum), ("read", self.read_quorum)] {
            if q == 0 || q > self.replicas {
                return Err(Error::InvalidInput(format!(
                    "the {name} quorum {q} is outside 1..={}: a quorum counts copies of a key, of \
                     which there are N = {}",
                    self.replicas, self.replicas
                )));
            }
        }
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicas: 3,
            write_quorum: 2,
            read_quorum: 2,
            request_timeout: 10_000,
            retry_delay: 100,
            transfer_batch: 512,
            batch_bytes: crate::wire::Limits::default().max_frame / 4,
            sync_interval: 1_000,
            hint_interval: crate::ring::detector::DetectorOptions::default().interval,
            tombstone_grace: Some(3_600_000),
            versions: VersionLimits::default(),
            enforce_sessions: true,
        }
    }
}

/// What the data layer asks of its driver, beyond what the ring asks: reporting its events.
pub trait KvIo: RingIo {
    /// Something worth logging or counting happened to the data.
    fn report(&mut self, event: Event);
}

/// Things the data layer reports for logs, metrics and tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The number of copies our keys can have changed (fewer than wanted while the ring has
    /// fewer than N nodes).
    Copies {
        /// Copies now, ourselves included.
        available: usize,
        /// Copies wanted (N).
        wanted: usize,
    },
    /// A key transfer to `to` finished; `keys` keys moved.
    TransferDone {
        /// The receiver.
        to: NodeRef,
        /// How many keys it received in all rounds.
        keys: u64,
    },
    /// A write left a key with more siblings than the warning bound: clients should read and
    /// resolve them.
    ManySiblings {
        /// The key.
        key: Vec<u8>,
        /// How many siblings it has.
        siblings: usize,
    },
    /// Read repair or anti-entropy pushed `keys` merged states to `with`.
    Repaired {
        /// The replica repaired.
        with: NodeRef,
        /// How many keys were pushed.
        keys: u64,
    },
    /// One step of an anti-entropy exchange with `with` (reported by the asker): how many hash
    /// tree nodes it compared, how many keys the replica listed in the leaves that differ, and
    /// how many states travelled (pushed, or fetched and merged). Its sum over a repair is the
    /// repair's traffic, which follows what differs, not what is stored.
    SyncStep {
        /// The replica compared with.
        with: NodeRef,
        /// Tree nodes compared in this step.
        nodes: u64,
        /// Keys the replica listed.
        keys_listed: u64,
        /// States pushed or fetched.
        states: u64,
    },
    /// Copies collected: stray copies handed off to `with` (their owner) and deleted, or
    /// tombstones every replica held, deleted here and on the replicas (`with`: ourselves).
    Collected {
        /// The owner the strays went to, or this node.
        with: NodeRef,
        /// How many keys were deleted here.
        keys: u64,
        /// Tombstones (true) or stray copies (false).
        tombstones: bool,
    },
    /// A message carrying states to `with` failed (it did not fit a frame, or went
    /// unanswered): the states stay where they are, and the exchange is retried with a batch of
    /// at most `batch_bytes` bytes (halved after every failure, back to
    /// [`Options::batch_bytes`] after successes).
    RepairFailed {
        /// The peer the states were for.
        with: NodeRef,
        /// What the message was: "push" (anti-entropy), "fetch" (its answer), "hints",
        /// "hand-off" or "transfer".
        what: &'static str,
        /// How many keys it carried (for a fetch, how many were asked for).
        keys: u64,
        /// How many bytes of keys and states it carried (for a fetch, the budget asked for).
        bytes: u64,
        /// Why it failed.
        error: Error,
        /// The byte budget of the next state-carrying messages.
        batch_bytes: u64,
    },
    /// A peer's state of `key` claimed a version of ours beyond every counter we could have
    /// issued (more than [`OWN_DOTS_WINDOW`] past ours): forged, and that part of it was not
    /// adopted (FORGED VERSIONS in `version/mod.rs`).
    ForgedDots {
        /// The key.
        key: Vec<u8>,
        /// The largest counter of ours the state claimed.
        claimed: u64,
        /// The largest counter we may have issued.
        issued: u64,
    },
    /// A peer's state of `key` holds versions of ours beyond the counter this data directory
    /// remembers, within [`OWN_DOTS_WINDOW`]: adopted, and our counter raised above them.
    OwnDotsAhead {
        /// The key.
        key: Vec<u8>,
        /// The largest counter of ours the state holds.
        claimed: u64,
        /// Our counter before.
        issued: u64,
    },
    /// A storage operation failed.
    StorageError {
        /// The failure.
        error: Error,
    },
}

/// Why the data layer sent a request, so its answer can be routed.
#[derive(Clone, Debug)]
pub(crate) enum Purpose {
    /// A client operation forwarded to the key's owner.
    Store { op: u64, owner: NodeRef },
    /// Round `round` of a key transfer to `to`.
    Transfer { to: Id, round: u64 },
    /// A replica's answer to a write's `Replicate`.
    ReplicaWrite {
        op: u64,
        to: NodeRef,
        keys: Vec<Vec<u8>>,
    },
    /// The owner's answer to our hand-off of stray copies, with the digests of what we sent
    /// and how many bytes it took.
    Handoff {
        to: NodeRef,
        from: Id,
        until: Id,
        sent: Vec<(Vec<u8>, u64)>,
        bytes: u64,
    },
    /// A replica's (or former replica's) answer to a tombstone-collection check.
    Reap { from: NodeRef },
    /// A replica's answer to the hand-over of hinted writes (`bytes` of states).
    Hints {
        to: NodeRef,
        keys: Vec<Vec<u8>>,
        bytes: u64,
    },
    /// A replica's answer to a quorum read.
    ReplicaRead { op: u64, from: NodeRef },
    /// A replica's state for a session write waiting for its floor.
    FloorRead { op: u64 },
    /// A replica's answer to one step of an anti-entropy descent.
    Sync(SyncOp),
    /// A replica's answer to an anti-entropy fetch.
    SyncFetch(FetchOp),
    /// An anti-entropy push of `keys` states (`bytes` bytes) to `to`; the answer carries
    /// nothing, but a failure is reported and shrinks the batches.
    Push { to: NodeRef, keys: u64, bytes: u64 },
    /// A repair that needs no answer (read repair, a tombstone-collection commit).
    Repair,
}

/// Most keys the hash tree's rebuild after a restart reads per tick (and at most
/// [`Options::batch_bytes`] of them): a million keys take some 25 s of 20 ms ticks, and no tick
/// spends more than a few milliseconds on it.
const REBUILD_KEYS: usize = 2048;

/// Bytes a `(key, state)` item takes in a message beyond the key and the state: bincode's
/// length prefixes (at most 9 bytes each) with room to spare.
const ITEM_OVERHEAD: usize = 32;

/// The smallest byte budget failures shrink batches to; a batch carries one item at least
/// whatever its budget.
const MIN_BATCH_BYTES: usize = 64 << 10;

/// The bytes an item `(key, state)` adds to a message.
pub(crate) fn item_bytes(key: &[u8], state: &[u8]) -> usize {
    key.len() + state.len() + ITEM_OVERHEAD
}

/// The items of one message that carries states, within a byte budget and a count: an item
/// that would take it over either is left out, except that an empty batch takes any one item,
/// so a state larger than the budget still travels, alone.
#[derive(Debug)]
pub(crate) struct Batch {
    items: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
    max_bytes: usize,
    max_items: usize,
}

impl Batch {
    /// An empty batch of at most `max_items` items and `max_bytes` bytes.
    pub(crate) fn new(max_bytes: usize, max_items: usize) -> Batch {
        Batch {
            items: Vec::new(),
            bytes: 0,
            max_bytes,
            max_items,
        }
    }

    /// Whether `(key, state)` would fit.
    pub(crate) fn fits(&self, key: &[u8], state: &[u8]) -> bool {
        self.items.is_empty()
            || (self.items.len() < self.max_items
                && self.bytes + item_bytes(key, state) <= self.max_bytes)
    }

    /// Add `(key, state)` if it fits; returns whether it did.
    pub(crate) fn push(&mut self, key: Vec<u8>, state: Vec<u8>) -> bool {
        if !self.fits(&key, &state) {
            return false;
        }
        self.bytes += item_bytes(&key, &state);
        self.items.push((key, state));
        true
    }

    /// Whether no item was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many items were added.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The bytes the items take.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The items, in the order they were added.
    pub(crate) fn into_items(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.items
    }
}

/// An anti-entropy fetch from `to` in the exchange over `(from, until]`: `keys` keys asked
/// for within `max_bytes`; then go on from `resume`, if set.
#[derive(Clone, Debug)]
pub(crate) struct FetchOp {
    to: NodeRef,
    from: Id,
    until: Id,
    foreign: bool,
    resume: Option<Id>,
    keys: u64,
    max_bytes: u64,
}

/// One step of an anti-entropy descent with `to` over `(from, until]`, at tree level `level`;
/// `rest` is where the exchange's range ends (past `until` when the descent narrowed to the
/// part it could take at once), the rest following in the next exchange.
#[derive(Clone, Debug)]
pub(crate) struct SyncOp {
    to: NodeRef,
    from: Id,
    until: Id,
    rest: Id,
    level: u8,
    foreign: bool,
}

/// What a lookup this layer asked the ring for is for.
#[derive(Clone, Debug)]
enum Routed {
    /// A client request, to forward to the owner.
    Client(ClientOp),
    /// Anti-entropy for copies outside our range: the owner of the range starting after `from`.
    SyncForeign { from: Id },
}

/// One node's data: its storage, and every exchange about values in flight. See the [module
/// documentation](self) for the call contract.
pub struct Kv<S: Storage> {
    me: NodeRef,
    opts: Options,
    /// The storage, with the hash tree of what it holds (`kv/tree.rs`); every write goes
    /// through it.
    storage: Indexed<S>,
    /// This run of the node, part of every write id it coordinates; `None` until the first
    /// write id is issued (see [`Kv::settle_incarnation`]).
    incarnation: Option<u64>,
    /// The driver's part of the incarnation: a hash of the id, seed and start time.
    incarnation_salt: u64,
    /// How many copies our keys had at the last tick, to report changes.
    copies: usize,
    /// The hand-over of part of our range to a newcomer, or of everything on a leave.
    transfer: Option<transfer::Transfer>,
    /// What an interrupted join hand-over left its receiver possibly holding, by receiver id.
    /// Bounded by [`transfer::MAX_ABORTED`]; an entry goes when its receiver is adopted.
    aborted: BTreeMap<Id, BTreeMap<Vec<u8>, u64>>,
    /// Lookups asked of the ring, by the number it gave them.
    routed: BTreeMap<u64, Routed>,
    /// Client operations waiting for a retry, by when.
    retries: BTreeMap<(u64, u64), ClientOp>,
    /// Client operations forwarded to their owner, waiting for its answer.
    stores: BTreeMap<u64, ClientOp>,
    /// Writes and reads this node coordinates as owner, waiting for replicas.
    writes: BTreeMap<u64, WriteOp>,
    reads: BTreeMap<u64, ReadOp>,
    /// Session writes waiting for their replicas' states to meet the session's floor.
    floors: BTreeMap<u64, FloorOp>,
    /// Keys whose last written state every copy stored, for session reads' stability; at most
    /// `MAX_STABLE`, oldest forgotten first (in `stable_order`).
    stable: BTreeMap<Vec<u8>, Settles>,
    stable_order: VecDeque<Vec<u8>>,
    /// The replicas when `stable` was last checked ([`Kv::tick`] clears it when they change).
    stable_replicas: Vec<Id>,
    /// Anti-entropy: the next replica to compare with, whether a round is in flight, when next.
    sync_next: usize,
    syncing: bool,
    /// Exchanges chained since the last tick: one with more to do goes on at once, up to
    /// [`sync::MAX_SYNC_CHAIN`] more per interval.
    sync_chain: u32,
    /// Hinted handoff: keys whose replication to a replica failed, by replica, to hand over
    /// when it answers again.
    hints: BTreeMap<Id, (NodeRef, BTreeSet<Vec<u8>>)>,
    next_hints: u64,
    /// Where the scan for copies outside our range resumes (None: from ourselves).
    sync_cursor: Option<Id>,
    /// Tombstone collection: the tombstone-only keys of our range, with the digest of their
    /// state and when we first saw it; where the next scan resumes; the round in flight.
    tombs: BTreeMap<Vec<u8>, (u64, u64)>,
    reap_cursor: Option<Id>,
    /// Our range's start and replicas when the grace periods in `tombs` started, and those
    /// replicas.
    reap_view: Option<(Id, Vec<Id>)>,
    reap_targets: Vec<NodeRef>,
    /// Nodes that were our replicas before the view last changed, and until when tombstone
    /// collection asks them too: they may still hold copies of values our tombstones replaced.
    formers: Vec<(NodeRef, u64)>,
    reaping: Option<collect::ReapOp>,
    /// Tombstone checks we agreed to, by key: the digest we hold and until when a commit of it
    /// is plausible (a commit no check preceded is refused; see `kv/collect.rs`).
    reap_checks: BTreeMap<Vec<u8>, (u64, u64)>,
    /// Requests refused as implausible (`kv/transfer.rs`, `kv/collect.rs`).
    refusals: Refusals,
    next_sync: u64,
    /// Answers to writes applied here, by write id, so retries are applied at most once.
    applied: BTreeMap<WriteId, Response>,
    applied_order: VecDeque<WriteId>,
    /// The largest dot counter this node has issued, for any key; the next write is numbered
    /// above it (see [`Kv::dot_floor`]).
    dot_floor: u64,
    /// The counter up to which dots may be issued without persisting a new lease; `None`
    /// until the persisted lease is read.
    dot_lease: Option<u64>,
    calls: Calls<Purpose>,
    /// Events met where no [`KvIo`] was at hand (merges of peers' states), reported at the end
    /// of the input.
    reports: Vec<Event>,
    /// The byte budget of the next message that carries states: [`Options::batch_bytes`],
    /// halved after each failed send (down to [`MIN_BATCH_BYTES`]), doubled back after each
    /// one that succeeded.
    batch_bytes: usize,
}

impl<S: Storage> Kv<S> {
    /// The data layer of node `me` over `storage`.
    pub fn new(me: NodeRef, opts: Options, storage: S, seed: u64, now: u64) -> Self {
        let phase = timer_phase(me.id, seed);
        // Only the salt of the incarnation: the driver may pass the same seed and time on every
        // run; the persisted counter is what keeps runs apart.
        let mut h = DefaultHasher::new();
        (me.id, seed, now, "incarnation").hash(&mut h);
        let incarnation_salt = h.finish();
        // A small store is indexed before the first input; a large one goes on at every tick
        // (which also reports a storage error this first slice may meet).
        let mut storage = Indexed::new(storage);
        let _ = storage.rebuild_step(REBUILD_KEYS, opts.batch_bytes);
        Kv {
            next_sync: now + phase % opts.sync_interval.max(1),
            next_hints: now,
            me,
            storage,
            incarnation: None,
            incarnation_salt,
            copies: 0,
            transfer: None,
            aborted: BTreeMap::new(),
            routed: BTreeMap::new(),
            retries: BTreeMap::new(),
            stores: BTreeMap::new(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            floors: BTreeMap::new(),
            stable: BTreeMap::new(),
            stable_order: VecDeque::new(),
            stable_replicas: Vec::new(),
            sync_next: 0,
            syncing: false,
            sync_chain: 0,
            hints: BTreeMap::new(),
            sync_cursor: None,
            tombs: BTreeMap::new(),
            reap_cursor: None,
            reap_view: None,
            reap_targets: Vec::new(),
            formers: Vec::new(),
            reaping: None,
            reap_checks: BTreeMap::new(),
            refusals: Refusals::default(),
            applied: BTreeMap::new(),
            applied_order: VecDeque::new(),
            dot_floor: 0,
            dot_lease: None,
            calls: Calls::default(),
            reports: Vec::new(),
            batch_bytes: opts.batch_bytes,
            opts,
        }
    }

    /// This run's incarnation, once the first write id settled it ([`Kv::settle_incarnation`]).
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// This run's incarnation, the middle part of every write id it coordinates (its sequence
    /// numbers start again at every run). Settled before the first write id is issued: a counter
    /// kept in the storage meta ([`INCARNATION_META`]) is raised by one and persisted, and makes
    /// the high 32 bits, so no two runs on one data directory share an incarnation whatever seed
    /// and clock the driver passes (for 2^32 runs), and a later run's ids are newer (keys keep
    /// the newest applied ids, by `(incarnation, seq)`); the low 32 bits are the driver's salt,
    /// which keeps runs apart when a directory is wiped and the node id kept.
    ///
    /// # Errors
    /// [`Error::Io`] if the meta cannot be read or persisted; [`Error::InvalidData`] if the
    /// stored counter is corrupt. Nothing is issued then; the next request tries again.
    fn settle_incarnation(&mut self) -> Result<u64> {
        if let Some(incarnation) = self.incarnation {
            return Ok(incarnation);
        }
        let runs = match self.storage.get_meta(INCARNATION_META)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                Error::InvalidData(
                    "the incarnation counter in the data directory is corrupt".into(),
                )
            })?),
            None => 0,
        };
        let run = runs.wrapping_add(1);
        self.storage
            .set_meta(INCARNATION_META, &run.to_be_bytes())?;
        let incarnation = ((run & 0xFFFF_FFFF) << 32) | (self.incarnation_salt & 0xFFFF_FFFF);
        self.incarnation = Some(incarnation);
        Ok(incarnation)
    }

    /// The data layer's tunables.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The storage engine.
    pub fn storage(&self) -> &S {
        self.storage.inner()
    }

    /// The storage engine, mutably, for the driver's bookkeeping around its flush. Data written
    /// through it would bypass the hash tree (`kv/tree.rs`), and anti-entropy would not see it.
    pub fn storage_mut(&mut self) -> &mut S {
        self.storage.inner_mut()
    }

    /// Take the storage engine back, as a crash or shutdown does.
    pub fn into_storage(self) -> S {
        self.storage.into_inner()
    }

    /// Whether the hash tree accounts for every stored key: after a restart it is rebuilt in
    /// slices at every tick, and until then the node takes part in no anti-entropy exchange and
    /// its key counts are lower bounds.
    pub fn is_indexed(&self) -> bool {
        self.storage.is_built()
    }

    /// How many keys are stored: the node's own and its copies of others'.
    pub fn keys_stored(&self) -> u64 {
        self.storage.tree().root().keys
    }

    /// The other nodes that hold copies of our keys: our first `N − 1` successors.
    pub fn replica_targets(&self, ring: &Ring) -> Vec<NodeRef> {
        ring.successors()
            .iter()
            .filter(|s| s.id != self.me.id)
            .take(self.opts.replicas.saturating_sub(1))
            .copied()
            .collect()
    }

    /// The data requests this node refused as implausible, by kind (see PLAUSIBILITY in the
    /// module essay).
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// The node a hand-over of ours (to a newcomer, or our leave) is sending keys to, if one
    /// is in progress.
    pub fn handing_over_to(&self) -> Option<NodeRef> {
        self.transfer.as_ref().map(transfer::Transfer::receiver)
    }

    /// How many copies our keys have right now (ourselves included), at most `N`.
    pub fn replicas_available(&self, ring: &Ring) -> usize {
        1 + self.replica_targets(ring).len()
    }

    /// How many stored keys lie in the range this node owns: a sum over the hash tree, which
    /// reads at most the two leaves at the range's ends.
    pub fn keys_owned(&self, ring: &Ring) -> u64 {
        match ring.range_start() {
            Some(p) => self
                .storage
                .summary(&Cover::new(p.id, self.me.id), 0, 0)
                .map_or(0, |s| s.keys),
            None => self.keys_stored(),
        }
    }

    /// Take the data layer's request `id` out of its table, if it is one.
    pub(crate) fn take_call(&mut self, id: RequestId) -> Option<Pending<Purpose>> {
        self.calls.take(id)
    }

    /// The data layer's requests whose deadline has come.
    pub(crate) fn expired_calls(&self, now: u64) -> impl Iterator<Item = RequestId> + '_ {
        self.calls.expired(now)
    }

    // ---------------------------------------------------------------- inputs

    /// Time passed (after the ring's tick): retry client requests that are due, then, while the
    /// node is in the ring, report a change in copies and run anti-entropy, tombstone
    /// collection and hinted handoff when they are due.
    pub fn tick(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        self.flush_reports(io);
        let now = io.now();
        if !self.storage.is_built() {
            if let Err(error) = self
                .storage
                .rebuild_step(REBUILD_KEYS, self.opts.batch_bytes)
            {
                io.report(Event::StorageError { error });
            }
        }
        let due: Vec<(u64, u64)> = self
            .retries
            .range(..(now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(op) = self.retries.remove(&k) {
                self.start_client_op(ring, io, op);
            }
        }
        // A hand-over's next slice; a watch outlives no hand-over.
        match &self.transfer {
            Some(t) if t.is_idle() => self.transfer_round(ring, io),
            None if self.storage.is_watching() => self.storage.unwatch(),
            _ => {}
        }
        if !ring.is_joined() || ring.is_leaving() {
            return;
        }
        // Records of states every replica stored are void once the replicas change: a node
        // that left the list may come back without its copy.
        let replicas: Vec<Id> = self.replica_targets(ring).iter().map(|t| t.id).collect();
        if replicas != self.stable_replicas {
            self.stable.clear();
            self.stable_order.clear();
            self.stable_replicas = replicas;
        }
        let copies = self.replicas_available(ring);
        if copies != self.copies {
            self.copies = copies;
            io.report(Event::Copies {
                available: copies,
                wanted: self.opts.replicas,
            });
        }
        if now >= self.next_sync {
            self.next_sync = now + self.opts.sync_interval;
            self.sync_tick(ring, io);
            self.reap_tick(ring, io);
        }
        if now >= self.next_hints {
            self.next_hints = now + self.opts.hint_interval;
            if !self.hints.is_empty() {
                self.deliver_hints(ring, io);
            }
        }
    }

    /// A data or client request arrived. Returns the answer, or `None` if it comes later.
    pub fn handle_request(
        &mut self,
        ring: &mut Ring,
        io: &mut dyn KvIo,
        conn: ConnId,
        id: RequestId,
        request: Request,
    ) -> Option<Result<Response>> {
        let response = self.dispatch_request(ring, io, conn, id, request);
        self.flush_reports(io);
        response
    }

    /// [`Kv::handle_request`], but for the reports.
    fn dispatch_request(
        &mut self,
        ring: &mut Ring,
        io: &mut dyn KvIo,
        conn: ConnId,
        id: RequestId,
        request: Request,
    ) -> Option<Result<Response>> {
        let response = match request {
            Request::Transfer {
                from,
                items,
                deletes,
                leaving,
            } => self.on_transfer(ring, from, items, deletes, leaving),
            // A client may send this (zero-hop reads): its R and floor are checked as a Get's.
            Request::StoreGet { key, r, session } => match self
                .check_serving(ring, &key)
                .and_then(|()| r.map_or(Ok(()), |q| self.check_quorum(q)))
                .and_then(|()| session.as_ref().map_or(Ok(()), |f| f.validate()))
            {
                Ok(()) => {
                    let responder = Responder::Conn { conn, id };
                    self.coordinate_read(ring, io, responder, key, r, session);
                    return None;
                }
                Err(e) => Err(e),
            },
            request @ Request::StoreWrite { .. } => {
                let write = StoreWrite::from_request(request).expect("a StoreWrite");
                let checked = self
                    .check_serving(ring, &write.key)
                    .and_then(|()| write.session.as_ref().map_or(Ok(()), |s| s.validate()));
                match checked {
                    Ok(()) => {
                        self.coordinate_write(ring, io, Responder::Conn { conn, id }, write);
                        return None;
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Replicate { .. } | Request::Handoff { .. } if self.handed_over(ring) => Err(
                Error::Unavailable("node is leaving the ring and has handed its keys over".into()),
            ),
            Request::Replicate { items } => self.on_replicate(items),
            Request::ReplicaRead { key } => self.on_replica_read(&key),
            Request::SyncTree {
                asker,
                from,
                to,
                level,
                nodes,
            } => self.on_sync_tree(ring, asker, from, to, level, nodes),
            Request::SyncFetch { keys, max_bytes } => self.on_sync_fetch(keys, max_bytes),
            Request::Handoff { from, items } => {
                self.on_handoff(ring, io, Responder::Conn { conn, id }, from, items);
                return None;
            }
            Request::Reap { items, commit } => self.on_reap(ring, io, items, commit),
            Request::Keys { after, max } => self.list_keys(ring, after, max),
            Request::Get { r: Some(q), .. }
            | Request::Put { w: Some(q), .. }
            | Request::Delete { w: Some(q), .. }
                if self.check_quorum(q).is_err() =>
            {
                Err(self.check_quorum(q).expect_err("checked"))
            }
            // A session part over its bounds is refused before it costs anything more.
            Request::Get {
                session: Some(ref f),
                ..
            } if f.validate().is_err() => Err(f.validate().expect_err("checked")),
            Request::Put {
                session: Some(ref s),
                ..
            }
            | Request::Delete {
                session: Some(ref s),
                ..
            } if s.validate().is_err() => Err(s.validate().expect_err("checked")),
            Request::Get { .. } | Request::Put { .. } | Request::Delete { .. } => {
                if !ring.is_joined() {
                    Err(Error::Unavailable("node is still joining the ring".into()))
                } else if ring.is_leaving() {
                    Err(Error::Unavailable("node is leaving the ring".into()))
                } else {
                    match self.settle_incarnation() {
                        Err(e) => Err(e),
                        Ok(incarnation) => {
                            let deadline = io.now() + self.opts.request_timeout;
                            let write_id = WriteId {
                                coordinator: self.me.id,
                                incarnation,
                                seq: io.next_op(),
                            };
                            let op = ClientOp::new(conn, id, request, deadline, write_id);
                            self.start_client_op(ring, io, op);
                            return None;
                        }
                    }
                }
            }
            _ => return None,
        };
        Some(response)
    }

    /// The answer to one of this layer's requests (after the ring observed it).
    pub(crate) fn on_answer(
        &mut self,
        ring: &mut Ring,
        io: &mut dyn KvIo,
        purpose: Purpose,
        response: Result<Response>,
    ) {
        self.dispatch_answer(ring, io, purpose, response);
        self.flush_reports(io);
    }

    /// [`Kv::on_answer`], but for the reports.
    fn dispatch_answer(
        &mut self,
        ring: &mut Ring,
        io: &mut dyn KvIo,
        purpose: Purpose,
        response: Result<Response>,
    ) {
        match purpose {
            Purpose::Store { op, owner } => self.on_store_answer(io, op, owner, response),
            Purpose::Transfer { to, round } => {
                self.on_transfer_answer(ring, io, to, round, response)
            }
            Purpose::ReplicaWrite { op, to, keys } => {
                self.on_replica_write_answer(io, op, to, keys, response)
            }
            Purpose::Handoff {
                to,
                from,
                until,
                sent,
                bytes,
            } => self.on_handoff_answer(ring, io, to, from, until, sent, bytes, response),
            Purpose::Reap { from } => self.on_reap_answer(ring, io, from, response),
            Purpose::Hints { to, keys, bytes } => {
                self.on_hints_answer(ring, io, to, keys, bytes, response)
            }
            Purpose::ReplicaRead { op, from } => {
                self.on_replica_read_answer(io, op, from, response)
            }
            Purpose::FloorRead { op, .. } => self.on_floor_read_answer(ring, io, op, response),
            Purpose::Sync(op) => self.on_sync_answer(ring, io, op, response),
            Purpose::SyncFetch(fetch) => self.on_sync_fetch_answer(io, fetch, response),
            Purpose::Push { to, keys, bytes } => {
                self.after_batch(io, to, "push", keys, bytes, response.err())
            }
            Purpose::Repair => {}
        }
    }

    /// React to what the ring reported.
    pub fn on_notice(&mut self, ring: &mut Ring, io: &mut dyn KvIo, notice: Notice) {
        match notice {
            Notice::Newcomer(node) => self.on_newcomer(ring, io, node),
            Notice::Found { lookup, owner } => match self.routed.remove(&lookup) {
                Some(Routed::Client(op)) => self.forward_to_owner(ring, io, op, owner),
                Some(Routed::SyncForeign { from }) => self.on_foreign_owner(io, from, owner),
                None => {}
            },
            Notice::NotFound { lookup, error } => match self.routed.remove(&lookup) {
                Some(Routed::Client(op)) => self.retry_client_op(io, op, error),
                Some(Routed::SyncForeign { .. }) => self.syncing = false,
                None => {}
            },
            Notice::PeerBack(peer) => {
                // It is back: hand it the writes it missed.
                if self.hints.contains_key(&peer.id) {
                    self.deliver_hints(ring, io);
                }
            }
        }
    }

    /// The node leaves (after [`Ring::leave`]): abandon a hand-over to a newcomer (we keep
    /// nothing anyway) and hand everything to the successor.
    pub fn leave(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        self.transfer = None;
        self.begin_leave_transfer(ring, io);
    }

    // ---------------------------------------------------------------- shared helpers

    /// Whether we may coordinate a request for `key` as its owner.
    /// A client's R or W: within 1..=N.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the range.
    fn check_quorum(&self, q: u8) -> Result<()> {
        if q == 0 || usize::from(q) > self.opts.replicas {
            return Err(Error::InvalidInput(format!(
                "a quorum of {q} is outside 1..={}: there are {} copies of each key",
                self.opts.replicas, self.opts.replicas
            )));
        }
        Ok(())
    }

    fn check_serving(&self, ring: &Ring, key: &[u8]) -> Result<()> {
        if !ring.is_joined() || ring.is_leaving() {
            return Err(Error::Unavailable("node is not serving data".into()));
        }
        if !ring.owns(Id::hash(key)) {
            return Err(Error::WrongOwner);
        }
        Ok(())
    }

    /// Whether we are leaving and the last round of our hand-over is done (or there was none
    /// to do): a copy stored now would leave with us, so we store none.
    fn handed_over(&self, ring: &Ring) -> bool {
        ring.is_leaving() && self.transfer.is_none()
    }

    /// Whether a transfer (to a newcomer, or our leave) is moving keys: a transfer round tells
    /// its receiver to delete the keys it sent that vanished here since, so nothing is
    /// collected meanwhile.
    fn moving_keys(&self, ring: &Ring) -> bool {
        ring.is_leaving() || self.transfer.is_some()
    }

    /// Whether a transfer may be moving the key with id `id`: all of them while we leave, those
    /// in the newcomer's part of our range during a join hand-over. Such a copy is not collected
    /// meanwhile; the others (strays of other ranges, copies we keep as a replica) may be.
    fn moving_key(&self, ring: &Ring, id: Id) -> bool {
        ring.is_leaving() || self.transfer.as_ref().is_some_and(|t| t.covers(id))
    }

    /// Whether `node` is one of the nodes that keep copies of our keys (ourselves or one of
    /// our `N − 1` replicas), or may be: while we have fewer than `N − 1` replicas (a small
    /// ring, or a view still repairing) every node counts, and no copy is collected.
    fn keeps_copies(&self, ring: &Ring, node: &NodeRef) -> bool {
        let targets = self.replica_targets(ring);
        node.id == self.me.id
            || targets.len() + 1 < self.opts.replicas
            || targets.iter().any(|t| t.id == node.id)
    }

    /// Whether `id` lies in the range we own and have been handed.
    fn in_own_range(&self, ring: &Ring, id: Id) -> bool {
        ring.is_installed()
            && ring
                .range_start()
                .is_some_and(|s| in_half_open(s.id, self.me.id, id))
    }

    /// One page of the live keys of our range after `after` ([`Request::Keys`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a page of no keys or over [`crate::message::MAX_ITEMS`];
    /// storage failures.
    fn list_keys(&self, ring: &Ring, after: Id, max: u32) -> Result<Response> {
        let page = 1..=crate::message::MAX_ITEMS;
        let max = usize::try_from(max)
            .ok()
            .filter(|m| page.contains(m))
            .ok_or_else(|| {
                Error::InvalidInput(format!("a page of keys holds 1 to {} keys", page.end()))
            })?;
        let me = self.me.id;
        let start = ring.range_start().map_or(me, |p| p.id);
        let from = if after != me && in_half_open(start, me, after) {
            after
        } else {
            start
        };
        let mut keys = Vec::new();
        let mut looked = 0;
        let mut last = None;
        let mut failed = None;
        self.storage.visit_range(from, me, &mut |key, bytes| {
            looked += 1;
            last = Some(Id::hash(key));
            match Versioned::decode(bytes) {
                Ok(state) if !state.is_deleted() => keys.push(key.to_vec()),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
            failed.is_none() && keys.len() < max && looked < 4 * max
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let full = keys.len() >= max || looked >= 4 * max;
        Ok(Response::Keys {
            keys,
            next: if full { last } else { None },
        })
    }

    /// The versions of `key` in our storage (empty if absent).
    fn read_versions(&self, key: &[u8]) -> Result<Versioned> {
        match self.storage.get(key)? {
            Some(bytes) => Versioned::decode(&bytes),
            None => Ok(Versioned::empty()),
        }
    }

    /// Merge `incoming` into our copy of `key`, writing only if something changed.
    /// Returns whether it did. What `incoming` claims of our own dots beyond what we issued is
    /// first weighed by [`Kv::own_dots_ahead`]: every state a peer sends is adopted here.
    fn merge_into_storage(&mut self, key: &[u8], incoming: &Versioned) -> Result<bool> {
        let issuer = self.issuer()?;
        let mut disowned;
        let incoming = if incoming.unissued(&issuer).is_some() {
            disowned = incoming.clone();
            self.own_dots_ahead(key, &mut disowned)?;
            &disowned
        } else {
            incoming
        };
        let mut state = self.read_versions(key)?;
        let before = state.digest();
        state.merge(incoming);
        let changed = state.digest() != before;
        if changed {
            self.storage.put(key, &state.encode())?;
        }
        Ok(changed)
    }

    /// A peer's state of `key` names dots of ours beyond what we issued. Within
    /// [`OWN_DOTS_WINDOW`] of our counter they are ours from a life this data directory does not
    /// remember (it was restored from a backup, or the node crashed after its replication left
    /// and before its lease was flushed): we adopt them, and number from above them
    /// ([`Event::OwnDotsAhead`]); dropping them would lose those writes, and issuing their
    /// counters again would mint two versions under one dot. Beyond the window (or the
    /// counter's ceiling) no life of ours could have issued them: they are left out
    /// ([`Kv::disown`]), so a forged state cannot exhaust our counter in one message.
    ///
    /// # Errors
    /// If the raised counter's lease cannot be stored.
    fn own_dots_ahead(&mut self, key: &[u8], state: &mut Versioned) -> Result<()> {
        let issuer = self.issuer()?;
        let Some(claimed) = state.unissued(&issuer) else {
            return Ok(());
        };
        let window = issuer.issued.saturating_add(OWN_DOTS_WINDOW);
        if claimed <= window.min(crate::version::MAX_COUNTER) {
            self.issued_dot(claimed)?;
            self.reports.push(Event::OwnDotsAhead {
                key: key.to_vec(),
                claimed,
                issued: issuer.issued,
            });
        } else {
            self.disown(key, state, &issuer);
        }
        Ok(())
    }

    /// Drop from `state`, a peer's state of `key`, what it claims of our dots beyond what we
    /// issued ([`Versioned::disown_unissued`]), and report it ([`Event::ForgedDots`], at the
    /// end of the input that met it).
    fn disown(&mut self, key: &[u8], state: &mut Versioned, issuer: &crate::version::Issuer) {
        if let Some(claimed) = state.disown_unissued(issuer) {
            self.reports.push(Event::ForgedDots {
                key: key.to_vec(),
                claimed,
                issued: issuer.issued,
            });
        }
    }

    /// Report the events met where no [`KvIo`] was at hand.
    fn flush_reports(&mut self, io: &mut dyn KvIo) {
        for event in self.reports.drain(..) {
            io.report(event);
        }
    }

    /// An empty batch for a message that carries states, within the current byte budget.
    fn batch(&self, max_items: usize) -> Batch {
        Batch::new(self.batch_bytes, max_items)
    }

    /// The outcome of a message that carried states (`keys` of them, `bytes` bytes) to `to`:
    /// after a success the budget grows back toward [`Options::batch_bytes`]; a failure is
    /// reported and halves it, so the retry (the next round of the exchange) sends less.
    fn after_batch(
        &mut self,
        io: &mut dyn KvIo,
        to: NodeRef,
        what: &'static str,
        keys: u64,
        bytes: u64,
        error: Option<Error>,
    ) {
        let Some(error) = error else {
            self.batch_bytes = self
                .batch_bytes
                .saturating_mul(2)
                .min(self.opts.batch_bytes);
            return;
        };
        self.batch_bytes = (self.batch_bytes / 2).max(MIN_BATCH_BYTES.min(self.opts.batch_bytes));
        io.report(Event::RepairFailed {
            with: to,
            what,
            keys,
            bytes,
            error,
            batch_bytes: self.batch_bytes as u64,
        });
    }

    fn send(&mut self, io: &mut dyn KvIo, to: NodeRef, request: Request, purpose: Purpose) {
        self.calls.send(io, to, request, purpose);
    }
}
