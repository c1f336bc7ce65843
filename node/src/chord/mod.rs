//! The Chord protocol as a pure state machine.
//!
//! IDENTIFIERS
//!
//! Nodes and keys share one 160-bit circle ([`crate::id`]). Key `k` belongs to `successor(k)`.
//! A node `n` believes it owns `(pred, n]`; with no known predecessor it claims what it is sent.
//!
//! FINGERS
//!
//! `fingers[i] = successor(n + 2^i)` for `i` in `0..160` (the paper's finger `i+1`, SIGCOMM 2001
//! §4.3). They are refreshed one lookup at a time by *fix_fingers*; one lookup usually settles
//! many fingers at once, since every finger start in `(n, owner]` has that same owner. Fingers only
//! make lookups fast; correctness rests on the successor list alone (Zave 2017).
//!
//! JOIN AND STABILIZE
//!
//! This follows Zave's corrected protocol ("Reasoning about identifier spaces", TSE 2017):
//! - *join*: look up `successor(n)` through the bootstrap node, then copy that successor's
//!   successor list before calling itself joined, then notify it.
//! - *stabilize*: ask the successor for its predecessor and successor list; adopt
//!   `[succ] + succ.succs` (dropping ourselves and duplicates, keeping `r`); if the successor's
//!   predecessor `p` lies between us and it, adopt `p` only after `p` itself answered (never adopt a
//!   pointer to a node not checked to be live). Then notify the successor.
//! - *notify / rectify*: a node adopts a notifier as predecessor when it has none or the notifier
//!   lies between the current predecessor and itself. The predecessor is pinged every
//!   `check_pred_interval`; one that does not answer is dropped.
//! - A successor that does not answer is dropped from the list, and the next one takes its place.
//!
//! A one-node ring has no successors and no predecessor; it learns its first successor when the
//! newcomer's notify gives it a predecessor, which its next stabilize adopts (as Zave's rules
//! require for rings smaller than `r + 1`).
//!
//! LOOKUP
//!
//! Lookups are iterative: the node that starts one asks each hop in turn, so it counts hops and
//! timeouts itself and routes around a dead hop by asking the previous hop again with the dead node
//! on an `avoid` list. Each hop answers from fingers *and* successor list: the successor if the
//! target lies in `(self, successor]`, else the closest preceding known node (§4.3, ToN 2003
//! §IV.E.3).
//!
//! KEYS ON JOIN AND LEAVE
//!
//! When a newcomer `m` notifies its successor `n`, `n` first hands over every key in `(n, m]`
//! (all it holds outside its new range `(m, n]`), and adopts `m` as predecessor only when a whole
//! round finds nothing left to send. Until then `n` keeps serving those keys, so reads never see a
//! gap. A round sends what changed since the last acknowledged round, including deletes, and `n`
//! removes its copies only after `m` acknowledged storing them: an interrupted move loses nothing.
//! A round whose answer was lost leaves its keys marked "maybe held", so a retry to the same node
//! resends or deletes them and nothing stale stays visible.
//!
//! On adoption `n` tells `m` so (`Adopted`, naming where `m`'s range starts). Only then is `m`
//! *installed*: it serves its range and may hand part of it to a newer node. A node that is not
//! installed refuses data requests and ignores notifies; otherwise two newcomers in one gap could
//! adopt each other before either held its keys, and keys would land on the wrong node.
//!
//! A graceful leave hands all keys to the successor the same way, then tells both neighbours. If
//! the successor has meanwhile adopted a newer predecessor it answers `Redirect`, and the leaver
//! hands everything to that node instead. A node that left is not adopted back by a notify it sent
//! before leaving that arrives late.
//!
//! FAILURES
//!
//! Every request has a deadline. A peer whose connection is refused, or that misses
//! `suspect_after` deadlines in a row, is suspected: dropped from fingers, successor list and
//! predecessor. Stabilization then repairs the ring around it. A node whose predecessor is
//! suspected keeps claiming only the range it had, `(last predecessor, self]`, until a new
//! predecessor notifies it: a false suspicion must not make it accept writes for keys it does not
//! own.
//!
//! Every node watches its predecessor and successor list with the heartbeat [`detector`]; a
//! suspected neighbour is announced to the others with a failure notice.
//!
//! A partition splits the ring in two rings that each repair themselves. Each node remembers the
//! nodes it suspected and now and then looks itself up through one of them; once the partition
//! heals, that lookup answers from the other ring, and a closer successor found there is adopted
//! (after it answered), which stabilization spreads until the rings are one again (after
//! Shafaat et al., "Dealing with network partitions in structured overlay networks", 2009).
//!
//! REPLICATION
//!
//! Data is versioned ([`crate::version`]) and kept on N nodes; the owner coordinates writes and
//! reads at quorums W and R, and repairs replicas by read repair and anti-entropy. See
//! `replica.rs`.
//!
//! CAVEATS
//!
//! A node joining through a node that is itself still joining waits for it. Values are compared
//! across transfer rounds by a 64-bit hash.
//!
//! # Call contract
//!
//! [`Chord`] owns no sockets, clocks, threads or global randomness. The driver (the tokio
//! [`crate::server`] or the [`crate::sim`] simulator) feeds it inputs, each stamped with the
//! current time in milliseconds (any monotonic origin):
//! - [`Chord::handle_request`]: a request that arrived on connection `conn` (an opaque number the
//!   driver chose), from a peer or a client.
//! - [`Chord::handle_response`]: the answer, or the transport's error, for a request the machine
//!   asked to send. Every [`Output::Send`] must eventually get exactly one; the machine also times
//!   requests out itself, and ignores answers that arrive afterwards.
//! - [`Chord::tick`]: time passed. Call it often (every 10–50 ms); intervals live in [`Options`].
//! - [`Chord::leave`]: begin a graceful leave.
//!
//! After every input, drain [`Chord::poll_output`] until it returns `None`: messages to send,
//! responses to deliver, and [`Event`]s to log or count. A response that acknowledges a write must
//! not reach the network before the driver has made the write durable ([`Storage::flush`]).

use crate::error::{Error, Result};
use crate::id::{BITS, Id, distance, in_half_open, in_open};
use crate::message::{
    LookupInfo, NodeRef, NodeStatus, Request, RequestId, Response, Route, WriteId,
};
use crate::storage::Storage;
use crate::version::{VersionLimits, VersionVector, Versioned};
use detector::{Cause, Detector, DetectorOptions, Verdict};
use replica::{ReadOp, Responder, WriteOp};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;

pub mod detector;
mod replica;

/// Identifies the connection a request arrived on; chosen by the driver, echoed in responses.
pub type ConnId = u64;

/// The tunables of the protocol. Tests pin them; the node binary exposes the main ones as flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// Successor list length `r`.
    pub successors: usize,
    /// How often to stabilize, in ms.
    pub stabilize_interval: u64,
    /// How often to refresh the next finger, in ms.
    pub fix_fingers_interval: u64,
    /// The heartbeat failure detector watching the predecessor and successor list.
    pub detector: DetectorOptions,
    /// How long to wait for a peer's answer, in ms.
    pub rpc_timeout: u64,
    /// A peer is suspected after this many requests in a row timed out (a refused connection
    /// counts at once).
    pub suspect_after: u32,
    /// How long a client request may take in all, retries included, in ms.
    pub request_timeout: u64,
    /// Pause before retrying a request that met a changing ring, in ms.
    pub retry_delay: u64,
    /// Most key/value pairs in one transfer message.
    pub transfer_batch: usize,
    /// Most bytes of values in one transfer message.
    pub transfer_bytes: usize,
    /// A lookup that asks more nodes than this fails (a routing loop guard).
    pub max_hops: u32,
    /// Copies of every key, N: the owner and its next N − 1 successors.
    pub replicas: usize,
    /// Copies that must be stored before a write is acknowledged, W (1..=N).
    pub write_quorum: usize,
    /// Copies a read merges before it answers, R (1..=N).
    pub read_quorum: usize,
    /// How often an owner compares its range with one replica (anti-entropy), in ms.
    pub sync_interval: u64,
    /// How often to look ourselves up through a node we lost, to merge rings after a
    /// partition, in ms.
    pub merge_interval: u64,
    /// How long, in ms, a key's owner must have seen the same tombstone-only state before it
    /// collects it from every replica; `None` keeps tombstones forever. It must be longer than
    /// any node stays down or cut off and then comes back with its data: such a node may still
    /// hold a value the collected tombstone had replaced, and would bring it back (Cassandra's
    /// `gc_grace_seconds` rule).
    pub tombstone_grace: Option<u64>,
    /// Bounds on siblings and clock size per key.
    pub versions: VersionLimits,
    /// Seed for the timer phases, so that nodes started together do not act in lockstep.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            successors: 8,
            stabilize_interval: 500,
            fix_fingers_interval: 100,
            detector: DetectorOptions::default(),
            rpc_timeout: 1_000,
            suspect_after: 3,
            request_timeout: 10_000,
            retry_delay: 100,
            transfer_batch: 512,
            transfer_bytes: 2 << 20,
            max_hops: 256,
            versions: VersionLimits::default(),
            replicas: 3,
            write_quorum: 2,
            read_quorum: 2,
            sync_interval: 1_000,
            merge_interval: 5_000,
            tombstone_grace: Some(3_600_000),
            seed: 0,
        }
    }
}

/// What the machine asks its driver to do, or tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `request` to the node at `to`; feed its answer to [`Chord::handle_response`] with `id`.
    Send {
        /// Where to send it.
        to: SocketAddr,
        /// The id to answer with.
        id: RequestId,
        /// What to send.
        request: Request,
    },
    /// Answer the request `id` that arrived on connection `conn`.
    Respond {
        /// The connection the request came on.
        conn: ConnId,
        /// The request's id.
        id: RequestId,
        /// The answer.
        response: Result<Response>,
    },
    /// Something worth logging or counting happened.
    Event(Event),
}

/// Things the machine reports for logs, metrics and tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The node finished joining; `succ` is its first successor.
    Joined {
        /// Its successor at the time.
        succ: NodeRef,
    },
    /// The successor handed this node its range: it now serves its keys.
    Installed,
    /// The predecessor changed.
    PredecessorChanged {
        /// The new predecessor, if any.
        pred: Option<NodeRef>,
    },
    /// The first successor changed.
    SuccessorChanged {
        /// The new successor (the node itself when alone).
        succ: NodeRef,
    },
    /// A stabilization round completed.
    Stabilized,
    /// A lookup finished.
    LookupDone {
        /// Remote nodes asked.
        hops: u32,
        /// Asks that failed and were routed around.
        timeouts: u32,
    },
    /// A lookup gave up.
    LookupFailed {
        /// Why.
        error: Error,
    },
    /// A peer stopped answering and was dropped from the routing state.
    Suspected {
        /// The peer.
        node: NodeRef,
    },
    /// The failure detector suspected a neighbour (before it is dropped: see
    /// [`Event::Suspected`]).
    Detected {
        /// The neighbour.
        node: NodeRef,
        /// Time since it was last heard from, ms: the detection delay.
        detection_ms: u64,
    },
    /// A suspected neighbour answered after all: the suspicion was wrong, and its timeout grows.
    FalseSuspicion {
        /// The neighbour.
        node: NodeRef,
    },
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
    /// A storage operation failed.
    StorageError {
        /// The failure.
        error: Error,
    },
    /// The graceful leave finished; the driver may exit.
    Left {
        /// Whether every key reached a successor (false when none could be reached).
        handed_over: bool,
    },
}

/// Why an outbound request was sent, so its answer can be routed.
#[derive(Clone, Debug)]
enum Purpose {
    /// One hop of lookup `op`.
    Lookup { op: u64 },
    /// Join: fetch the successor's successor list.
    JoinNeighbors { succ: NodeRef },
    /// Stabilize: ask the successor for its neighbours.
    Stabilize { succ: NodeRef },
    /// Stabilize: check a candidate successor is live and fetch its list.
    StabilizeCandidate { cand: NodeRef },
    /// Notify; the answer carries nothing.
    Notify,
    /// A heartbeat probe of a neighbour.
    Probe,
    /// A failure notice; the answer carries nothing.
    Notice,
    /// A client operation forwarded to the key's owner.
    Store { op: u64, owner: NodeRef },
    /// A round of a key transfer.
    Transfer,
    /// A leave notice.
    Leaving,
    /// A replica's answer to a write's `Replicate`.
    ReplicaWrite {
        op: u64,
        to: NodeRef,
        keys: Vec<Vec<u8>>,
    },
    /// The owner's answer to our hand-off of stray copies, with the digests of what we sent.
    Handoff {
        to: NodeRef,
        from: Id,
        until: Id,
        sent: Vec<(Vec<u8>, u64)>,
    },
    /// A replica's answer to a tombstone-collection check.
    Reap,
    /// A replica's answer to the hand-over of hinted writes.
    Hints { to: NodeRef, keys: Vec<Vec<u8>> },
    /// A replica's answer to a quorum read.
    ReplicaRead { op: u64, from: NodeRef },
    /// A replica's answer to an anti-entropy digest.
    Sync {
        to: NodeRef,
        from: Id,
        until: Id,
        foreign: bool,
    },
    /// A replica's answer to an anti-entropy fetch; then go on from `resume`, if set.
    SyncFetch {
        to: NodeRef,
        until: Id,
        foreign: bool,
        resume: Option<Id>,
    },
    /// A repair push; the answer carries nothing.
    Repair,
    /// Ring merging: check a candidate successor from another ring and fetch its list.
    MergeCandidate { cand: NodeRef },
    /// Checking that the owner a lookup found is alive.
    Verify { op: u64, owner: NodeRef },
    /// Telling a newcomer we adopted it; resent until it answers or we drop it.
    Adopted { to: NodeRef, start: Option<NodeRef> },
}

#[derive(Clone, Debug)]
struct Pending {
    deadline: u64,
    to: Option<NodeRef>,
    purpose: Purpose,
}

/// What to do with the owner once a lookup finds it.
#[derive(Clone, Debug)]
enum Then {
    Join,
    /// A lookup of our own id through a node we once lost: another ring's view of our
    /// successor, to merge rings after a partition heals.
    Merge {
        via: NodeRef,
    },
    /// Anti-entropy for copies outside our range: the owner of the range starting after `from`.
    SyncForeign {
        from: Id,
    },
    Finger(usize),
    Reply {
        conn: ConnId,
        id: RequestId,
    },
    Client(ClientOp),
}

/// A client data request being coordinated.
#[derive(Clone, Debug)]
struct ClientOp {
    conn: ConnId,
    id: RequestId,
    request: Request,
    deadline: u64,
    /// Owners that did not answer: later lookups for this request route around them.
    avoid: BTreeSet<Id>,
    /// Kept across retries so the owner applies the write at most once.
    write_id: WriteId,
}

#[derive(Clone, Debug)]
struct LookupOp {
    target: Id,
    then: Then,
    hops: u32,
    timeouts: u32,
    /// Nodes that answered so far, to fall back to when the next one fails.
    path: Vec<NodeRef>,
    avoid: BTreeSet<Id>,
    /// Where the first hop goes when the lookup starts elsewhere (join via a bootstrap address).
    via: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
enum TransferGoal {
    /// Hand `(self, to]` to a newcomer that notified us, then adopt it as predecessor.
    Join,
    /// Hand everything to the successor, then leave.
    Leave,
}

/// What one transfer message carried: keys with the hash of the value sent, and deleted keys.
#[derive(Clone, Debug)]
struct Round {
    items: Vec<(Vec<u8>, u64)>,
    deletes: Vec<Vec<u8>>,
}

#[derive(Clone, Debug)]
struct Transfer {
    to: NodeRef,
    goal: TransferGoal,
    /// Keys the receiver has acknowledged, with a hash of the value it holds.
    sent: BTreeMap<Vec<u8>, u64>,
    /// The round in flight, so its acknowledgement can record what the receiver now holds.
    in_flight: Option<Round>,
}

/// One Chord node's protocol state. See the [module documentation](self) for the call contract.
pub struct Chord<S: Storage> {
    me: NodeRef,
    opts: Options,
    storage: S,
    joined: bool,
    /// Whether our successor has handed us our range `(pred, self]` (or we started the ring): only
    /// then do we serve data and hand parts of the range to newcomers.
    installed: bool,
    leaving: bool,
    pred: Option<NodeRef>,
    /// The last predecessor we had: the start of the range we own while `pred` is unknown.
    range_start: Option<NodeRef>,
    succs: Vec<NodeRef>,
    fingers: Vec<Option<NodeRef>>,
    next_finger: usize,
    finger_lookup: bool,
    stabilizing: bool,
    /// The successor when the current stabilization round began.
    round_succ: NodeRef,
    transfer: Option<Transfer>,
    /// What an interrupted join hand-over left its receiver possibly holding, by receiver id.
    /// Bounded by [`MAX_ABORTED`]; an entry goes when its receiver is adopted.
    aborted: BTreeMap<Id, BTreeMap<Vec<u8>, u64>>,
    leave_acks: u32,
    bootstrap: Option<SocketAddr>,
    join_retry_at: Option<u64>,
    next_stabilize: u64,
    next_fix: u64,
    now: u64,
    next_id: RequestId,
    /// Nodes that told us they left, until when to ignore their late notifies.
    departed: BTreeMap<Id, u64>,
    /// Nodes we suspected, to try now and then: after a partition heals they are how two rings
    /// find each other again.
    lost: VecDeque<NodeRef>,
    next_merge: u64,
    /// This run of the node, part of every write id it coordinates.
    incarnation: u64,
    /// How many copies our keys had at the last tick, to report changes.
    copies: usize,
    /// Heartbeats to the neighbours: who is suspected, with timeouts that grow on mistakes.
    detector: Detector,
    /// The neighbours (predecessor, then successors) the detector was last told to watch.
    monitored: Vec<NodeRef>,
    /// Consecutive timeouts per peer, for [`Options::suspect_after`].
    strikes: BTreeMap<Id, u32>,
    pending: BTreeMap<RequestId, Pending>,
    lookups: BTreeMap<u64, LookupOp>,
    /// Client operations waiting for a retry, by when.
    retries: BTreeMap<(u64, u64), ClientOp>,
    stores: BTreeMap<u64, ClientOp>,
    next_op: u64,
    /// Writes and reads this node coordinates as owner, waiting for replicas.
    writes: BTreeMap<u64, WriteOp>,
    reads: BTreeMap<u64, ReadOp>,
    /// Anti-entropy: the next replica to compare with, whether a round is in flight, when next.
    sync_next: usize,
    syncing: bool,
    /// Exchanges chained since the last tick: one with more to do goes on at once, up to
    /// [`replica::MAX_SYNC_CHAIN`] more per interval.
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
    /// Our range's start and replicas when the grace periods in `tombs` started.
    reap_view: Option<(Id, Vec<Id>)>,
    reaping: Option<replica::ReapOp>,
    next_sync: u64,
    /// Answers to writes applied here, by write id, so retries are applied at most once.
    applied: BTreeMap<WriteId, Response>,
    applied_order: VecDeque<WriteId>,
    /// The largest dot counter this node has issued, for any key; the next write is numbered
    /// above it (see [`Chord::dot_floor`]).
    dot_floor: u64,
    /// The counter up to which dots may be issued without persisting a new lease; `None`
    /// until the persisted lease is read.
    dot_lease: Option<u64>,
    outbox: VecDeque<Output>,
}

impl<S: Storage> Chord<S> {
    /// A node that is not yet part of any ring. Call [`Chord::start`] next.
    pub fn new(me: NodeRef, opts: Options, storage: S, now: u64) -> Self {
        // Spread timer phases by node and seed so a thousand simulated nodes do not act in lockstep.
        let mut h = DefaultHasher::new();
        (me.id, opts.seed).hash(&mut h);
        let phase = h.finish();
        // Distinct per run of the node: seeded by the driver and the start time.
        let mut h = DefaultHasher::new();
        (me.id, opts.seed, now, "incarnation").hash(&mut h);
        let incarnation = h.finish();
        let jitter = |iv: u64| now + phase % iv.max(1);
        Chord {
            next_stabilize: jitter(opts.stabilize_interval),
            next_fix: jitter(opts.fix_fingers_interval),
            me,
            storage,
            joined: false,
            installed: false,
            leaving: false,
            pred: None,
            range_start: None,
            succs: Vec::new(),
            fingers: vec![None; BITS],
            next_finger: 0,
            finger_lookup: false,
            stabilizing: false,
            round_succ: me,
            transfer: None,
            aborted: BTreeMap::new(),
            leave_acks: 0,
            bootstrap: None,
            join_retry_at: None,
            now,
            next_id: 1,
            strikes: BTreeMap::new(),
            detector: Detector::new(opts.detector),
            monitored: Vec::new(),
            copies: 0,
            lost: VecDeque::new(),
            next_merge: jitter(opts.merge_interval),
            incarnation,
            departed: BTreeMap::new(),
            pending: BTreeMap::new(),
            lookups: BTreeMap::new(),
            retries: BTreeMap::new(),
            stores: BTreeMap::new(),
            next_op: 1,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            sync_next: 0,
            syncing: false,
            sync_chain: 0,
            sync_cursor: None,
            tombs: BTreeMap::new(),
            reap_cursor: None,
            reap_view: None,
            reaping: None,
            hints: BTreeMap::new(),
            next_hints: now,
            next_sync: jitter(opts.sync_interval),
            applied: BTreeMap::new(),
            applied_order: VecDeque::new(),
            dot_floor: 0,
            dot_lease: None,
            outbox: VecDeque::new(),
            opts,
        }
    }

    /// Form a ring of one (`bootstrap` is `None` or our own address) or join the ring that the node
    /// at `bootstrap` belongs to. Joining retries until it succeeds.
    pub fn start(&mut self, bootstrap: Option<SocketAddr>, now: u64) {
        self.now = now;
        match bootstrap {
            Some(addr) if addr != self.me.addr => self.start_join(addr),
            _ => {
                self.joined = true;
                self.installed = true;
                self.emit(Event::Joined { succ: self.me });
            }
        }
    }

    /// Begin a graceful leave: hand every key to the successor, tell the neighbours, then emit
    /// [`Event::Left`]. Client requests are refused from now on.
    pub fn leave(&mut self, now: u64) {
        self.now = now;
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.transfer = None; // a join transfer in progress is abandoned: we keep nothing anyway
        self.begin_leave_transfer();
    }

    /// This node.
    pub fn me(&self) -> NodeRef {
        self.me
    }

    /// Whether the node has joined a ring.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<NodeRef> {
        self.pred
    }

    /// The first successor; the node itself when it is alone.
    pub fn successor(&self) -> NodeRef {
        self.succs.first().copied().unwrap_or(self.me)
    }

    /// The successor list, nearest first (empty when alone).
    pub fn successors(&self) -> &[NodeRef] {
        &self.succs
    }

    /// Finger `i` (`successor(self + 2^i)`), if known.
    pub fn finger(&self, i: usize) -> Option<NodeRef> {
        self.fingers.get(i).copied().flatten()
    }

    /// Take the storage engine back, as a crash or shutdown does (the simulator restarts nodes
    /// on it).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The storage engine (for status and tests).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage engine, mutably (for the driver's flush and for tests that seed data).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// The node's view of itself, as answered to [`Request::Status`].
    pub fn status(&self) -> NodeStatus {
        let mut fingers: Vec<NodeRef> = Vec::new();
        for f in self.fingers.iter().flatten() {
            if fingers.last() != Some(f) && !fingers.contains(f) {
                fingers.push(*f);
            }
        }
        fingers.sort_by_key(|f| distance(self.me.id, f.id));
        NodeStatus {
            node: self.me,
            joined: self.joined,
            pred: self.pred,
            succs: self.succs.clone(),
            fingers,
            keys: self.storage.len().unwrap_or(0),
            successors_wanted: self.opts.successors as u32,
            owned: match self.pred.or(self.range_start) {
                Some(p) => self
                    .storage
                    .scan_range(p.id, self.me.id, usize::MAX)
                    .map_or(0, |e| e.len() as u64),
                None => self.storage.len().unwrap_or(0),
            },
            replicas: self.replicas_available() as u32,
            replicas_wanted: self.opts.replicas as u32,
        }
    }

    /// The next output to carry out, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop_front()
    }

    // ---------------------------------------------------------------- inputs

    /// Time passed: run whatever timers are due and expire requests past their deadline.
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.handle_response(id, Err(Error::Timeout("peer did not answer".into())), now);
        }
        if let (Some(at), Some(addr)) = (self.join_retry_at, self.bootstrap) {
            if now >= at && !self.joined {
                self.start_join(addr);
            }
        }
        if self.joined && !self.leaving {
            self.ring_timers(now);
        }
        // The data layer's timers, after the ring's.
        let due: Vec<(u64, u64)> = self
            .retries
            .range(..(now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            if let Some(op) = self.retries.remove(&k) {
                self.start_client_op(op);
            }
        }
        if !self.joined || self.leaving {
            return;
        }
        let copies = self.replicas_available();
        if copies != self.copies {
            self.copies = copies;
            self.emit(Event::Copies {
                available: copies,
                wanted: self.opts.replicas,
            });
        }
        if now >= self.next_sync {
            self.next_sync = now + self.opts.sync_interval;
            self.sync_tick();
            self.reap_tick();
        }
        if now >= self.next_hints {
            self.next_hints = now + self.opts.detector.interval;
            if !self.hints.is_empty() {
                self.deliver_hints();
            }
        }
    }

    /// The ring's timers: stabilize, heartbeats, ring merging, fingers.
    fn ring_timers(&mut self, now: u64) {
        if now >= self.next_stabilize {
            // Until the successor has handed our range over, ask often: we learn it from the
            // successor naming us its predecessor.
            let interval = if self.installed {
                self.opts.stabilize_interval
            } else {
                self.opts.stabilize_interval.div_ceil(5)
            };
            self.next_stabilize = now + interval;
            self.stabilize();
        }
        self.heartbeat(now);
        if now >= self.next_merge {
            self.next_merge = now + self.opts.merge_interval;
            if self.installed {
                if let Some(via) = self.lost.pop_front() {
                    self.lost.push_back(via);
                    self.start_lookup(self.me.id, Then::Merge { via }, Some(via.addr));
                }
            }
        }
        if now >= self.next_fix {
            self.next_fix = now + self.opts.fix_fingers_interval;
            self.fix_fingers();
        }
    }

    /// A request arrived on connection `conn`.
    pub fn handle_request(&mut self, conn: ConnId, id: RequestId, request: Request, now: u64) {
        self.now = now;
        let response = match request {
            Request::Ping => Ok(Response::Pong { node: self.me }),
            Request::FindSuccessor { target, avoid } => {
                if !self.joined || self.leaving {
                    Err(Error::Unavailable("node is not in the ring".into()))
                } else {
                    let avoid: BTreeSet<Id> = avoid.into_iter().collect();
                    Ok(Response::Route(self.route(target, &avoid)))
                }
            }
            Request::GetNeighbors => Ok(Response::Neighbors {
                pred: self.pred,
                succs: self.succs.clone(),
            }),
            Request::Notify { node } => {
                self.on_notify(node);
                Ok(Response::Ack)
            }
            Request::Leaving { node, pred, succs } => {
                self.on_leaving(node, pred, succs);
                Ok(Response::Ack)
            }
            Request::FailureNotice { dead } => {
                if let Some(v) = self.detector.on_notice(dead, now) {
                    self.on_verdict(v);
                }
                Ok(Response::Ack)
            }
            Request::Adopted { pred } => {
                self.on_adopted(pred);
                Ok(Response::Ack)
            }
            Request::Transfer {
                from,
                items,
                deletes,
                leaving,
            } => self.on_transfer(from, items, deletes, leaving),
            Request::StoreGet { key, r } => match self.check_serving(&key) {
                Ok(()) => return self.coordinate_read(Responder::Conn { conn, id }, key, r),
                Err(e) => Err(e),
            },
            Request::StoreWrite {
                key,
                value,
                context,
                write_id,
                w,
            } => match self.check_serving(&key) {
                Ok(()) => {
                    let responder = Responder::Conn { conn, id };
                    return self.coordinate_write(responder, key, value, context, write_id, w);
                }
                Err(e) => Err(e),
            },
            Request::Replicate { items } => self.on_replicate(items),
            Request::ReplicaRead { key } => self.on_replica_read(&key),
            Request::SyncDigest {
                asker,
                from,
                to,
                digests,
            } => self.on_sync_digest(asker, from, to, digests),
            Request::SyncFetch { keys } => self.on_sync_fetch(keys),
            Request::Handoff { from, items } => {
                return self.on_handoff(Responder::Conn { conn, id }, from, items);
            }
            Request::Reap { items, commit } => self.on_reap(items, commit),
            Request::Get { r: Some(q), .. }
            | Request::Put { w: Some(q), .. }
            | Request::Delete { w: Some(q), .. }
                if q == 0 || usize::from(q) > self.opts.replicas =>
            {
                Err(Error::InvalidInput(format!(
                    "a quorum of {q} is outside 1..={}: there are {} copies of each key",
                    self.opts.replicas, self.opts.replicas
                )))
            }
            Request::Get { .. } | Request::Put { .. } | Request::Delete { .. } => {
                if !self.joined {
                    Err(Error::Unavailable("node is still joining the ring".into()))
                } else if self.leaving {
                    Err(Error::Unavailable("node is leaving the ring".into()))
                } else {
                    let deadline = now + self.opts.request_timeout;
                    let write_id = WriteId {
                        coordinator: self.me.id,
                        incarnation: self.incarnation,
                        seq: self.next_op,
                    };
                    self.next_op += 1;
                    self.start_client_op(ClientOp {
                        conn,
                        id,
                        request,
                        deadline,
                        avoid: BTreeSet::new(),
                        write_id,
                    });
                    return;
                }
            }
            Request::Lookup { key } => {
                if !self.joined {
                    Err(Error::Unavailable("node is still joining the ring".into()))
                } else {
                    self.start_lookup(Id::hash(&key), Then::Reply { conn, id }, None);
                    return;
                }
            }
            Request::Status => Ok(Response::Status(self.status())),
            // Fault injection is the transport's business; the server answers it.
            Request::Block { .. } => Err(Error::InvalidInput(
                "fault injection is handled by the server".into(),
            )),
        };
        self.outbox
            .push_back(Output::Respond { conn, id, response });
    }

    /// The answer (or transport error) for a request this machine sent.
    pub fn handle_response(&mut self, id: RequestId, response: Result<Response>, now: u64) {
        self.now = now;
        let Some(pending) = self.pending.remove(&id) else {
            return; // late answer to a request that already timed out
        };
        if let Some(to) = pending.to {
            let probe = matches!(pending.purpose, Purpose::Probe);
            let monitored = self.detector.peer(&to.id).is_some();
            match &response {
                // A refused connection means nothing listens there: the node is gone.
                Err(Error::Unreachable(_)) => {
                    if let Some(v) = self.detector.on_failure(to.id, now, true) {
                        self.on_verdict(v);
                    }
                    self.suspect(to);
                }
                // A probe's own silence is the detector's business (it keeps its own deadline).
                Err(Error::Timeout(_)) if probe => {}
                // Silence from a neighbour makes the detector probe it now; from anyone else, a
                // few in a row make us suspect it (it may be one lost message).
                Err(Error::Timeout(_)) if monitored => {
                    if let Some(v) = self.detector.on_failure(to.id, now, false) {
                        self.on_verdict(v);
                    }
                }
                Err(Error::Timeout(_)) => {
                    let strikes = self.strikes.entry(to.id).or_insert(0);
                    *strikes += 1;
                    if *strikes >= self.opts.suspect_after {
                        self.suspect(to);
                    }
                }
                // Any answer, even an error, shows the node is alive.
                _ => {
                    self.strikes.remove(&to.id);
                    if let Some(v) = self.detector.on_ack(to.id, now) {
                        self.on_verdict(v);
                    }
                }
            }
        }
        match pending.purpose {
            Purpose::Lookup { op } => self.on_lookup_answer(op, pending.to, response),
            Purpose::Verify { op, owner } => self.on_verify_answer(op, owner, response),
            Purpose::ReplicaWrite { op, to, keys } => {
                self.on_replica_write_answer(op, to, keys, response)
            }
            Purpose::Handoff {
                to,
                from,
                until,
                sent,
            } => self.on_handoff_answer(to, from, until, sent, response),
            Purpose::Reap => self.on_reap_answer(response),
            Purpose::Hints { to, keys } => self.on_hints_answer(to, keys, response),
            Purpose::ReplicaRead { op, from } => self.on_replica_read_answer(op, from, response),
            Purpose::Sync {
                to,
                from,
                until,
                foreign,
            } => self.on_sync_answer(to, from, until, foreign, response),
            Purpose::SyncFetch {
                to,
                until,
                foreign,
                resume,
            } => self.on_sync_fetch_answer(to, until, foreign, resume, response),
            Purpose::Repair => {}
            Purpose::MergeCandidate { cand } => {
                if let Ok(Response::Neighbors { succs, .. }) = response {
                    let mine = self.succs.clone();
                    let merged: Vec<NodeRef> = succs.into_iter().chain(mine).collect();
                    self.adopt_successors(cand, merged);
                    self.send(cand, Request::Notify { node: self.me }, Purpose::Notify);
                    self.next_stabilize = now;
                }
            }
            Purpose::JoinNeighbors { succ } => match response {
                Ok(Response::Neighbors { pred, succs }) => {
                    self.adopt_successors(succ, succs);
                    // A node restarting in the place the ring kept for it is installed already.
                    self.installed = pred.is_some_and(|p| p.id == self.me.id);
                    self.joined = true;
                    self.emit(Event::Joined { succ });
                    self.send(succ, Request::Notify { node: self.me }, Purpose::Notify);
                    self.next_stabilize = now;
                }
                _ => self.retry_join(),
            },
            Purpose::Stabilize { succ } => {
                self.stabilizing = false;
                match response {
                    Ok(Response::Neighbors { pred, succs }) => {
                        self.adopt_successors(succ, succs);
                        if !self.installed && pred.is_some_and(|p| p.id == self.me.id) {
                            // Our successor handed us our range and adopted us: we own it now.
                            self.installed = true;
                            self.emit(Event::Installed);
                        }
                        match pred {
                            Some(p) if p != self.me && in_open(self.me.id, succ.id, p.id) => {
                                self.stabilizing = true;
                                self.send(
                                    p,
                                    Request::GetNeighbors,
                                    Purpose::StabilizeCandidate { cand: p },
                                );
                            }
                            _ => self.finish_stabilize(),
                        }
                    }
                    // The successor was dropped by `suspect`; try the next one at once.
                    _ => self.next_stabilize = now,
                }
            }
            Purpose::StabilizeCandidate { cand } => {
                self.stabilizing = false;
                // A candidate that does not answer is simply not adopted.
                if let Ok(Response::Neighbors { succs, .. }) = response {
                    self.adopt_successors(cand, succs);
                }
                self.finish_stabilize();
            }
            Purpose::Notify | Purpose::Probe | Purpose::Notice => {}
            Purpose::Adopted { to, start } => {
                if response.is_err() && self.pred == Some(to) {
                    self.send_adopted(to, start);
                }
            }
            Purpose::Store { op, owner } => self.on_store_answer(op, owner, response),
            Purpose::Transfer => self.on_transfer_answer(response),
            Purpose::Leaving => {
                self.leave_acks = self.leave_acks.saturating_sub(1);
                if self.leave_acks == 0 {
                    self.emit(Event::Left { handed_over: true });
                }
            }
        }
    }

    // ---------------------------------------------------------------- routing

    /// One lookup step from this node's state: the owner of `target` if it is our successor (or
    /// ourselves), else the closest preceding node we know that is not in `avoid`.
    fn route(&self, target: Id, avoid: &BTreeSet<Id>) -> Route {
        if let Some(p) = self.pred {
            if in_half_open(p.id, self.me.id, target) && !avoid.contains(&self.me.id) {
                return Route::Found(self.me);
            }
        }
        let succ = self
            .succs
            .iter()
            .find(|s| !avoid.contains(&s.id))
            .copied()
            .unwrap_or(self.me);
        if in_half_open(self.me.id, succ.id, target) {
            return Route::Found(succ);
        }
        match self.closest_preceding(target, avoid) {
            Some(n) => Route::Next(n),
            None => Route::Found(succ),
        }
    }

    /// The known node closest before `target` (fingers and successor list), excluding `avoid`.
    fn closest_preceding(&self, target: Id, avoid: &BTreeSet<Id>) -> Option<NodeRef> {
        self.fingers
            .iter()
            .flatten()
            .chain(self.succs.iter())
            .filter(|n| n.id != self.me.id && !avoid.contains(&n.id))
            .filter(|n| in_open(self.me.id, target, n.id))
            .max_by_key(|n| distance(self.me.id, n.id))
            .copied()
    }

    fn start_lookup(&mut self, target: Id, then: Then, via: Option<SocketAddr>) {
        self.start_lookup_avoiding(target, then, via, BTreeSet::new());
    }

    fn start_lookup_avoiding(
        &mut self,
        target: Id,
        then: Then,
        via: Option<SocketAddr>,
        mut avoid: BTreeSet<Id>,
    ) {
        let op = self.next_op;
        self.next_op += 1;
        if matches!(then, Then::Join | Then::Merge { .. }) {
            avoid.insert(self.me.id);
        }
        self.lookups.insert(
            op,
            LookupOp {
                target,
                then,
                hops: 0,
                timeouts: 0,
                path: Vec::new(),
                avoid,
                via,
            },
        );
        self.lookup_step(op);
    }

    /// Ask the next node for lookup `op`, or finish it from local state.
    fn lookup_step(&mut self, op: u64) {
        let Some(l) = self.lookups.get(&op) else {
            return;
        };
        if l.hops + l.timeouts > self.opts.max_hops {
            let l = self.lookups.remove(&op).expect("present");
            return self.lookup_failed(
                l,
                Error::Unavailable("lookup exceeded its hop limit".into()),
            );
        }
        let request = Request::FindSuccessor {
            target: l.target,
            avoid: l.avoid.iter().copied().collect(),
        };
        // Ask the last node that answered, else the bootstrap, else decide from our own state.
        let next = match (l.path.last(), l.via) {
            (Some(n), _) => Err(*n),
            (None, Some(addr)) => Ok(addr),
            (None, None) => match self.route(l.target, &l.avoid) {
                Route::Found(owner) => return self.lookup_done(op, owner),
                Route::Next(n) => Err(n),
            },
        };
        let l = self.lookups.get_mut(&op).expect("present");
        l.hops += 1;
        match next {
            Err(node) => self.send(node, request, Purpose::Lookup { op }),
            Ok(addr) => self.send_addr(addr, None, request, Purpose::Lookup { op }),
        }
    }

    fn on_lookup_answer(&mut self, op: u64, asked: Option<NodeRef>, response: Result<Response>) {
        let Some(l) = self.lookups.get_mut(&op) else {
            return;
        };
        match response {
            Ok(Response::Route(Route::Found(owner))) => self.lookup_done(op, owner),
            Ok(Response::Route(Route::Next(next))) => {
                if l.avoid.contains(&next.id) || l.path.contains(&next) {
                    // A stale answer pointing back at a dead node or a loop: route locally instead.
                    l.timeouts += 1;
                    l.path.clear();
                } else {
                    l.path.push(next);
                }
                self.lookup_step(op);
            }
            other => {
                // The asked node failed: avoid it and ask the one that pointed us to it again.
                l.timeouts += 1;
                l.hops = l.hops.saturating_sub(1);
                match asked {
                    Some(n) => {
                        l.avoid.insert(n.id);
                        if l.path.last() == Some(&n) {
                            l.path.pop();
                        }
                    }
                    None => {
                        // The bootstrap address itself failed.
                        let l = self.lookups.remove(&op).expect("present");
                        let e = match other {
                            Err(e) => e,
                            Ok(r) => Error::InvalidData(format!("unexpected answer {r:?}")),
                        };
                        return self.lookup_failed(l, e);
                    }
                }
                // With the path empty, a join starts again at the bootstrap; others route locally.
                self.lookup_step(op);
            }
        }
    }

    fn lookup_done(&mut self, op: u64, owner: NodeRef) {
        let Some(l) = self.lookups.get(&op) else {
            return;
        };
        // A lookup answered for a client names a node it has not contacted: the last hop may not
        // have noticed that its successor died. Make sure the owner is alive before answering.
        if matches!(l.then, Then::Reply { .. }) && owner.id != self.me.id {
            return self.send(owner, Request::Ping, Purpose::Verify { op, owner });
        }
        self.finish_lookup(op, owner);
    }

    fn on_verify_answer(&mut self, op: u64, owner: NodeRef, response: Result<Response>) {
        match response {
            Ok(Response::Pong { node }) if node.id == owner.id => self.finish_lookup(op, owner),
            _ => {
                // Dead, or another node now answers at that address: route around it.
                if let Some(l) = self.lookups.get_mut(&op) {
                    l.avoid.insert(owner.id);
                    l.timeouts += 1;
                }
                self.lookup_step(op);
            }
        }
    }

    fn finish_lookup(&mut self, op: u64, owner: NodeRef) {
        let Some(l) = self.lookups.remove(&op) else {
            return;
        };
        self.emit(Event::LookupDone {
            hops: l.hops,
            timeouts: l.timeouts,
        });
        match l.then {
            Then::Join => {
                if owner.id == self.me.id {
                    return self.retry_join();
                }
                self.send(
                    owner,
                    Request::GetNeighbors,
                    Purpose::JoinNeighbors { succ: owner },
                );
            }
            Then::SyncForeign { from } => self.on_foreign_owner(from, owner),
            Then::Merge { via } => {
                // It answered: it is alive, whichever ring it is in.
                self.lost.retain(|n| n.id != via.id);
                let succ = self.successor();
                if owner.id != self.me.id
                    && (succ == self.me || in_open(self.me.id, succ.id, owner.id))
                {
                    // Its ring has a node between us and our successor: check it is live and
                    // take it as successor; stabilization weaves the two rings together.
                    self.send(
                        owner,
                        Request::GetNeighbors,
                        Purpose::MergeCandidate { cand: owner },
                    );
                }
            }
            Then::Finger(i) => {
                self.finger_lookup = false;
                let owner = (owner.id != self.me.id).then_some(owner);
                self.fingers[i] = owner;
                let mut j = i + 1;
                // Every later finger start that still precedes the owner has the same owner.
                if let Some(o) = owner {
                    while j < BITS && in_half_open(self.me.id, o.id, self.me.id.add_pow2(j)) {
                        self.fingers[j] = owner;
                        j += 1;
                    }
                }
                self.next_finger = j % BITS;
            }
            Then::Reply { conn, id } => {
                let info = LookupInfo {
                    key_id: l.target,
                    owner,
                    hops: l.hops,
                    timeouts: l.timeouts,
                };
                self.respond(conn, id, Ok(Response::Lookup(info)));
            }
            Then::Client(c) => self.forward_to_owner(c, owner),
        }
    }

    fn lookup_failed(&mut self, l: LookupOp, error: Error) {
        self.emit(Event::LookupFailed {
            error: error.clone(),
        });
        match l.then {
            Then::Join => self.retry_join(),
            Then::Merge { .. } => {} // still unreachable: it stays on the list for another try
            Then::SyncForeign { .. } => self.syncing = false,
            Then::Finger(_) => self.finger_lookup = false,
            Then::Reply { conn, id } => self.respond(conn, id, Err(error)),
            Then::Client(c) => self.retry_client_op(c, error),
        }
    }

    // ---------------------------------------------------------------- join, stabilize, notify

    fn start_join(&mut self, bootstrap: SocketAddr) {
        self.bootstrap = Some(bootstrap);
        self.join_retry_at = None;
        self.start_lookup(self.me.id, Then::Join, Some(bootstrap));
    }

    fn retry_join(&mut self) {
        self.joined = false;
        self.join_retry_at = Some(self.now + self.opts.rpc_timeout);
    }

    fn stabilize(&mut self) {
        if self.stabilizing {
            return;
        }
        self.round_succ = self.successor();
        match self.succs.first().copied() {
            Some(succ) => {
                self.stabilizing = true;
                self.send(succ, Request::GetNeighbors, Purpose::Stabilize { succ });
            }
            None => {
                // Alone: our predecessor, if any, is the only candidate successor (ring of one
                // learning its first peer). Check it is live before adopting it.
                if let Some(p) = self.pred.filter(|p| *p != self.me) {
                    self.stabilizing = true;
                    self.send(
                        p,
                        Request::GetNeighbors,
                        Purpose::StabilizeCandidate { cand: p },
                    );
                }
            }
        }
    }

    fn finish_stabilize(&mut self) {
        let succ = self.successor();
        if succ != self.round_succ {
            // We moved closer to our true successor; keep walking now instead of a round later,
            // so k nodes joining in one gap settle in k round trips, not k intervals.
            self.next_stabilize = self.now;
        }
        if succ != self.me {
            self.send(succ, Request::Notify { node: self.me }, Purpose::Notify);
        }
        self.emit(Event::Stabilized);
    }

    /// Successor list := `[succ] + theirs`, without ourselves or duplicates, at most `r` long.
    fn adopt_successors(&mut self, succ: NodeRef, theirs: Vec<NodeRef>) {
        let old = self.successor();
        let mut list = Vec::with_capacity(self.opts.successors);
        for n in std::iter::once(succ).chain(theirs) {
            if n.id != self.me.id && !list.iter().any(|m: &NodeRef| m.id == n.id) {
                list.push(n);
            }
            if list.len() == self.opts.successors {
                break;
            }
        }
        self.succs = list;
        if self.successor() != old {
            self.emit(Event::SuccessorChanged {
                succ: self.successor(),
            });
        }
    }

    fn on_notify(&mut self, node: NodeRef) {
        // A node that does not hold its own range yet must not hand part of it on: the newcomer
        // would get an empty range and the keys would later land on the wrong node.
        if node.id == self.me.id || self.leaving || !self.installed {
            return;
        }
        // A notify can overtake the leave notice its sender sent later; a node that just left
        // must not be adopted back.
        if self
            .departed
            .get(&node.id)
            .is_some_and(|&until| self.now < until)
        {
            return;
        }
        let closer = match self.pred {
            None => true,
            Some(p) => in_open(p.id, self.me.id, node.id),
        };
        if !closer {
            return;
        }
        if self.transfer.is_some() {
            return; // one hand-over at a time; the newcomer notifies again next round
        }
        // Resume what an interrupted hand-over to this same node left it holding.
        let sent = self.aborted.remove(&node.id).unwrap_or_default();
        self.transfer = Some(Transfer {
            to: node,
            goal: TransferGoal::Join,
            sent,
            in_flight: None,
        });
        self.transfer_round();
    }

    fn on_leaving(&mut self, node: NodeRef, pred: Option<NodeRef>, succs: Vec<NodeRef>) {
        let until = self.now + 10 * self.opts.rpc_timeout;
        self.departed.retain(|_, t| *t > self.now);
        self.departed.insert(node.id, until);
        if self.pred == Some(node) {
            self.pred = pred.filter(|p| p.id != self.me.id);
            self.range_start = self.pred.or(self.range_start);
            self.emit(Event::PredecessorChanged { pred: self.pred });
        }
        if self.succs.iter().any(|s| s.id == node.id) {
            let rest: Vec<NodeRef> = succs.into_iter().filter(|s| s.id != node.id).collect();
            let mut list: Vec<NodeRef> = self
                .succs
                .iter()
                .copied()
                .filter(|s| s.id != node.id)
                .collect();
            if self.succs.first() == Some(&node) {
                list = rest.into_iter().chain(list).collect();
            }
            match list.first().copied() {
                Some(first) => self.adopt_successors(first, list[1..].to_vec()),
                None => self.adopt_successors(self.me, Vec::new()),
            }
        }
        self.forget_finger(node.id);
    }

    /// Drop a node that stopped answering from every routing structure.
    fn suspect(&mut self, node: NodeRef) {
        self.strikes.remove(&node.id);
        let mut known = self.forget_finger(node.id);
        if self.pred.is_some_and(|p| p.id == node.id) {
            self.pred = None;
            known = true;
            self.emit(Event::PredecessorChanged { pred: None });
        }
        if self.succs.iter().any(|s| s.id == node.id) {
            known = true;
            let old = self.successor();
            self.succs.retain(|s| s.id != node.id);
            if self.successor() != old {
                self.emit(Event::SuccessorChanged {
                    succ: self.successor(),
                });
            }
        }
        if known {
            self.emit(Event::Suspected { node });
            // Remember it: if it was cut off rather than dead, it may be in another ring now.
            if !self.lost.iter().any(|n| n.id == node.id) {
                if self.lost.len() >= MAX_LOST {
                    self.lost.pop_front();
                }
                self.lost.push_back(node);
            }
        }
    }

    fn forget_finger(&mut self, id: Id) -> bool {
        let mut found = false;
        for f in self.fingers.iter_mut() {
            if f.is_some_and(|n| n.id == id) {
                *f = None;
                found = true;
            }
        }
        found
    }

    /// Heartbeats: watch the predecessor and successor list, probe whoever is due, act on
    /// suspicions that came due.
    fn heartbeat(&mut self, now: u64) {
        // Tell the detector who the neighbours are only when they changed: this runs every tick.
        let neighbours: Vec<NodeRef> = self.pred.iter().chain(self.succs.iter()).copied().collect();
        if neighbours != self.monitored {
            let set: BTreeSet<NodeRef> = neighbours
                .iter()
                .filter(|n| n.id != self.me.id)
                .copied()
                .collect();
            self.detector.monitor(set, now);
            self.monitored = neighbours;
        }
        for v in self.detector.tick(now) {
            self.on_verdict(v);
        }
        for peer in self.detector.poll_probes(now) {
            // The probe stays pending as long as the longest timeout, so a late answer still
            // reaches the detector and withdraws a false suspicion.
            let deadline = now + self.detector.options().max_timeout;
            self.send_with_deadline(peer, Request::Ping, Purpose::Probe, deadline);
        }
    }

    fn on_verdict(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Suspected {
                peer,
                cause,
                detection_ms,
            } => {
                self.emit(Event::Detected {
                    node: peer,
                    detection_ms,
                });
                self.suspect(peer);
                if cause != Cause::Notice {
                    // Tell the neighbours, so they repair without waiting for their own timeouts.
                    let mut told = BTreeSet::new();
                    for n in self
                        .pred
                        .iter()
                        .chain(self.succs.iter())
                        .copied()
                        .collect::<Vec<_>>()
                    {
                        if n.id != peer.id && told.insert(n.id) {
                            self.send(n, Request::FailureNotice { dead: peer }, Purpose::Notice);
                        }
                    }
                }
            }
            Verdict::Restored {
                peer,
                false_suspicion,
                ..
            } => {
                if false_suspicion {
                    self.emit(Event::FalseSuspicion { node: peer });
                }
                // It is back: hand it the writes it missed.
                if self.hints.contains_key(&peer.id) {
                    self.deliver_hints();
                }
            }
        }
    }

    fn fix_fingers(&mut self) {
        if self.finger_lookup {
            return;
        }
        let succ = self.successor();
        // Fingers whose start lies in (self, successor] need no lookup.
        let mut scanned = 0;
        while scanned < BITS {
            let i = self.next_finger;
            let start = self.me.id.add_pow2(i);
            if succ == self.me || in_half_open(self.me.id, succ.id, start) {
                self.fingers[i] = (succ != self.me).then_some(succ);
                self.next_finger = (i + 1) % BITS;
                scanned += 1;
                continue;
            }
            self.finger_lookup = true;
            self.start_lookup(start, Then::Finger(i), None);
            return;
        }
    }

    // ---------------------------------------------------------------- data

    /// Whether this node believes it owns `id`: `(pred, self]`, measured from the last
    /// predecessor it had when the current one is unknown (suspected). Refusing writes outside that
    /// range until a new predecessor notifies us is what keeps a write from landing on a node that
    /// is not the owner after a false suspicion. A node that never had one (alone, or just joined)
    /// owns whatever it is sent.
    fn owns(&self, id: Id) -> bool {
        if !self.installed {
            return false; // our successor still holds (and serves) our range
        }
        match self.pred.or(self.range_start) {
            None => true,
            Some(p) => in_half_open(p.id, self.me.id, id),
        }
    }

    /// Apply a store request (`StoreGet`/`StorePut`/`StoreDelete`) to our own storage.
    /// Whether we may coordinate a request for `key` as its owner.
    fn check_serving(&self, key: &[u8]) -> Result<()> {
        if !self.joined || self.leaving {
            return Err(Error::Unavailable("node is not serving data".into()));
        }
        if !self.owns(Id::hash(key)) {
            return Err(Error::WrongOwner);
        }
        Ok(())
    }

    /// Remember a write's answer so a retry is not applied twice (bounded, oldest forgotten).
    fn remember_applied(&mut self, id: WriteId, response: Response) {
        if self.applied.insert(id, response).is_none() {
            self.applied_order.push_back(id);
        }
        while self.applied_order.len() > MAX_APPLIED {
            if let Some(old) = self.applied_order.pop_front() {
                self.applied.remove(&old);
            }
        }
    }

    /// The versions of `key` in our storage (empty if absent).
    fn read_versions(&self, key: &[u8]) -> Result<Versioned> {
        match self.storage.get(key)? {
            Some(bytes) => Versioned::decode(&bytes),
            None => Ok(Versioned::empty()),
        }
    }

    /// Make a new version of `key` as its owner: our dot, superseding what `context` covers.
    fn write_version(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &VersionVector,
        write_id: WriteId,
    ) -> Result<Response> {
        let mut state = self.read_versions(key)?;
        let existed = !state.is_deleted();
        if let Some(dot) = state.applied_dot(&write_id) {
            // A retry of a write applied before, perhaps by the previous owner: same answer.
            return Ok(Response::Written { dot, existed });
        }
        state.raise_dot_floor(self.dot_floor()?);
        let outcome = state.write_checked(self.me.id, context, value, &self.opts.versions)?;
        self.issued_dot(outcome.dot.counter)?;
        state.record_applied(write_id, outcome.dot);
        if outcome.warn {
            self.emit(Event::ManySiblings {
                key: key.to_vec(),
                siblings: outcome.siblings,
            });
        }
        self.storage.put(key, &state.encode())?;
        Ok(Response::Written {
            dot: outcome.dot,
            existed,
        })
    }

    /// The floor above which this node numbers its next dot, for any key: the largest counter
    /// it ever issued, in this run or an earlier one. So a dot is never issued twice, even for
    /// a key whose state this node no longer holds (moved away, collected as a stray, or reaped
    /// as a tombstone) while contexts elsewhere still cover its old dots. Across restarts the
    /// floor comes from a lease in the storage meta ([`Chord::issued_dot`]).
    fn dot_floor(&mut self) -> Result<u64> {
        if self.dot_lease.is_none() {
            // Everything issued before this run is at or below the persisted lease.
            let stored = match self.storage.get_meta(DOT_LEASE_META)? {
                Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                    Error::InvalidData("the dot lease in the data directory is corrupt".into())
                })?),
                None => 0,
            };
            self.dot_floor = self.dot_floor.max(stored);
            self.dot_lease = Some(stored);
        }
        Ok(self.dot_floor)
    }

    /// Record that this node is about to issue a dot with `counter`, before the version is
    /// stored: every counter issued stays at or below the persisted lease, renewed
    /// [`DOT_LEASE`] counters ahead when a counter passes it (Riak's vnode counter lease), so a
    /// write persists nothing extra except once per lease. A key last written through a busier
    /// node carries that node's floor, so a counter can jump well past ours.
    fn issued_dot(&mut self, counter: u64) -> Result<()> {
        self.dot_floor = self.dot_floor.max(counter);
        if self.dot_lease.is_none_or(|lease| counter > lease) {
            let renewed = counter.saturating_add(DOT_LEASE);
            self.storage
                .set_meta(DOT_LEASE_META, &renewed.to_be_bytes())?;
            self.dot_lease = Some(renewed);
        }
        Ok(())
    }

    fn start_client_op(&mut self, op: ClientOp) {
        if self.now >= op.deadline {
            return self.respond(
                op.conn,
                op.id,
                Err(Error::Timeout(
                    "the ring did not settle in time; retry".into(),
                )),
            );
        }
        let key = match &op.request {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key, .. } => {
                key
            }
            _ => return,
        };
        let target = Id::hash(key);
        let avoid = op.avoid.clone();
        self.start_lookup_avoiding(target, Then::Client(op), None, avoid);
    }

    fn forward_to_owner(&mut self, op: ClientOp, owner: NodeRef) {
        let store = match op.request.clone() {
            Request::Get { key, r } => Request::StoreGet { key, r },
            Request::Put {
                key,
                value,
                context,
                w,
            } => Request::StoreWrite {
                key,
                value: Some(value),
                context,
                write_id: op.write_id,
                w,
            },
            Request::Delete { key, context, w } => Request::StoreWrite {
                key,
                value: None,
                context,
                write_id: op.write_id,
                w,
            },
            _ => return,
        };
        if owner.id == self.me.id {
            if let Err(e) = self.check_serving(match &store {
                Request::StoreGet { key, .. } | Request::StoreWrite { key, .. } => key,
                _ => return,
            }) {
                return self.finish_client_op(op, Err(e));
            }
            return match store {
                Request::StoreGet { key, r } => self.coordinate_read(Responder::Local(op), key, r),
                Request::StoreWrite {
                    key,
                    value,
                    context,
                    write_id,
                    w,
                } => self.coordinate_write(Responder::Local(op), key, value, context, write_id, w),
                _ => {}
            };
        }
        let n = self.next_op;
        self.next_op += 1;
        self.stores.insert(n, op);
        self.send(owner, store, Purpose::Store { op: n, owner });
    }

    fn on_store_answer(&mut self, n: u64, owner: NodeRef, response: Result<Response>) {
        if let Some(mut op) = self.stores.remove(&n) {
            if matches!(response, Err(Error::Timeout(_) | Error::Unreachable(_))) {
                op.avoid.insert(owner.id);
            }
            self.finish_client_op(op, response);
        }
    }

    fn finish_client_op(&mut self, op: ClientOp, result: Result<Response>) {
        match result {
            Err(e) if e.is_retryable() => self.retry_client_op(op, e),
            other => self.respond(op.conn, op.id, other),
        }
    }

    fn retry_client_op(&mut self, op: ClientOp, error: Error) {
        let at = self.now + self.opts.retry_delay;
        if at >= op.deadline {
            return self.respond(op.conn, op.id, Err(error));
        }
        let n = self.next_op;
        self.next_op += 1;
        self.retries.insert((at, n), op);
    }

    fn on_transfer(
        &mut self,
        from: NodeRef,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        deletes: Vec<Vec<u8>>,
        leaving: bool,
    ) -> Result<Response> {
        if self.leaving {
            // Whatever we took now would leave with us.
            return Err(Error::Unavailable("node is leaving the ring".into()));
        }
        if leaving {
            // A leaver's keys belong to its successor. If we adopted a newer predecessor between
            // it and us, that node is the leaver's successor now: storing here would strand keys
            // outside our range.
            if let Some(p) = self.pred.filter(|p| in_open(from.id, self.me.id, p.id)) {
                return Ok(Response::Redirect { to: p });
            }
        }
        // Versions merge: a hand-over never replaces a newer version with an older one, and
        // concurrent ones stay as siblings.
        for (k, v) in &items {
            let mut state = self.read_versions(k)?;
            state.merge(&Versioned::decode(v)?);
            self.storage.put(k, &state.encode())?;
        }
        for k in &deletes {
            self.storage.delete(k)?;
        }
        Ok(Response::Ack)
    }

    fn begin_leave_transfer(&mut self) {
        match self.succs.first().copied() {
            Some(succ) => {
                self.transfer = Some(Transfer {
                    to: succ,
                    goal: TransferGoal::Leave,
                    sent: BTreeMap::new(),
                    in_flight: None,
                });
                self.transfer_round();
            }
            None => {
                let handed_over = self.storage.is_empty().unwrap_or(false);
                self.emit(Event::Left { handed_over });
            }
        }
    }

    /// The ring arc a transfer hands over: `(self, to]` for a newcomer, everything for a leave.
    fn transfer_range(&self, t: &Transfer) -> (Id, Id) {
        match t.goal {
            TransferGoal::Join => (self.me.id, t.to.id),
            TransferGoal::Leave => (self.me.id, self.me.id),
        }
    }

    /// Send what changed since the last acknowledged round, or finish when nothing did.
    fn transfer_round(&mut self) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let (from, to) = self.transfer_range(t);
        let entries = match self.storage.scan_range(from, to, usize::MAX) {
            Ok(entries) => entries,
            Err(error) => {
                self.emit(Event::StorageError { error });
                self.transfer = None;
                return;
            }
        };
        let mut items = Vec::new();
        let mut hashes = Vec::new();
        let mut bytes = 0;
        let mut present = BTreeSet::new();
        for (k, v) in entries {
            let h = value_hash(&v);
            if t.sent.get(&k) != Some(&h)
                && items.len() < self.opts.transfer_batch
                && (items.is_empty() || bytes + v.len() <= self.opts.transfer_bytes)
            {
                bytes += v.len() + k.len();
                hashes.push((k.clone(), h));
                items.push((k.clone(), v));
            }
            present.insert(k);
        }
        let deletes: Vec<Vec<u8>> = t
            .sent
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        if items.is_empty() && deletes.is_empty() {
            return self.finish_transfer();
        }
        let to = t.to;
        let leaving = matches!(t.goal, TransferGoal::Leave);
        if let Some(t) = self.transfer.as_mut() {
            t.in_flight = Some(Round {
                items: hashes,
                deletes: deletes.clone(),
            });
        }
        self.send(
            to,
            Request::Transfer {
                from: self.me,
                items,
                deletes,
                leaving,
            },
            Purpose::Transfer,
        );
    }

    fn on_transfer_answer(&mut self, response: Result<Response>) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Some(Round { items, deletes }) = t.in_flight.take() else {
            return;
        };
        match response {
            Ok(Response::Ack) => {
                t.sent.extend(items);
                for k in deletes {
                    t.sent.remove(&k);
                }
                self.transfer_round();
            }
            Ok(Response::Redirect { to })
                if matches!(t.goal, TransferGoal::Leave) && in_open(self.me.id, t.to.id, to.id) =>
            {
                // A node joined between us and our successor: it is our successor now. Whatever
                // the old successor already took went on to the newcomer in its own hand-over;
                // we start over with the newcomer, sending everything again.
                let succs = self.succs.clone();
                self.transfer = None;
                self.adopt_successors(to, succs);
                self.begin_leave_transfer();
            }
            _ => {
                let mut t = self.transfer.take().expect("present");
                // The lost round may or may not have been stored: remember its keys as "maybe
                // held" (a hash no value has), so a retry to the same node resends or deletes them.
                t.sent
                    .extend(items.into_iter().map(|(k, _)| (k, MAYBE_HELD)));
                t.sent.extend(deletes.into_iter().map(|k| (k, MAYBE_HELD)));
                match t.goal {
                    // A successor still trusted (one lost message) gets the same hand-over again;
                    // one found dead (dropped by `suspect`) is replaced by the next successor,
                    // which now owns the keys.
                    TransferGoal::Leave if self.succs.first() == Some(&t.to) => {
                        self.transfer = Some(t);
                        self.transfer_round();
                    }
                    TransferGoal::Leave => self.begin_leave_transfer(),
                    // A newcomer that failed mid-transfer notifies again if it is alive; we kept
                    // every key, so nothing was lost, and what it may hold is remembered.
                    TransferGoal::Join => {
                        if self.aborted.len() >= MAX_ABORTED {
                            // Forget the farthest receiver: the nearest are the likeliest to be
                            // adopted next. What it may hold stays invisible unless it becomes
                            // the owner without notifying us again.
                            let far = self
                                .aborted
                                .keys()
                                .max_by_key(|id| distance(**id, self.me.id))
                                .copied();
                            if let Some(far) = far {
                                self.aborted.remove(&far);
                            }
                        }
                        self.aborted.insert(t.to.id, t.sent);
                    }
                }
            }
        }
    }

    fn finish_transfer(&mut self) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        let (from, to) = self.transfer_range(&t);
        // Everything in the arc is now acknowledged by the receiver, unchanged since. A node
        // that hands a newcomer its range stays one of the newcomer's replicas and keeps copies.
        let keep = matches!(t.goal, TransferGoal::Join) && self.opts.replicas > 1;
        if !keep {
            match self.storage.scan_range(from, to, usize::MAX) {
                Ok(entries) => {
                    for (k, _) in entries {
                        if let Err(error) = self.storage.delete(&k) {
                            self.emit(Event::StorageError { error });
                        }
                    }
                }
                Err(error) => self.emit(Event::StorageError { error }),
            }
        }
        self.emit(Event::TransferDone {
            to: t.to,
            keys: t.sent.len() as u64,
        });
        match t.goal {
            TransferGoal::Join => {
                let start = self.pred.or(self.range_start);
                self.pred = Some(t.to);
                self.range_start = self.pred;
                self.emit(Event::PredecessorChanged { pred: self.pred });
                self.send_adopted(t.to, start);
            }
            TransferGoal::Leave => {
                let notice = Request::Leaving {
                    node: self.me,
                    pred: self.pred,
                    succs: self.succs.clone(),
                };
                let mut targets: Vec<NodeRef> = vec![t.to];
                if let Some(p) = self.pred.filter(|p| p.id != t.to.id) {
                    targets.push(p);
                }
                self.leave_acks = targets.len() as u32;
                for n in targets {
                    self.send(n, notice.clone(), Purpose::Leaving);
                }
            }
        }
    }

    /// Tell a newcomer we adopted it: its range, `(start, newcomer]`, is now its own.
    fn send_adopted(&mut self, to: NodeRef, start: Option<NodeRef>) {
        self.send(
            to,
            Request::Adopted { pred: start },
            Purpose::Adopted { to, start },
        );
    }

    /// The newcomer's side of [`Request::Adopted`].
    fn on_adopted(&mut self, pred: Option<NodeRef>) {
        if self.installed {
            return;
        }
        self.installed = true;
        self.emit(Event::Installed);
        if self.pred.is_none() {
            self.pred = pred.filter(|p| p.id != self.me.id);
            self.range_start = self.pred;
            self.emit(Event::PredecessorChanged { pred: self.pred });
        }
    }

    // ---------------------------------------------------------------- plumbing

    fn send(&mut self, to: NodeRef, request: Request, purpose: Purpose) {
        self.send_addr(to.addr, Some(to), request, purpose);
    }

    fn send_with_deadline(
        &mut self,
        to: NodeRef,
        request: Request,
        purpose: Purpose,
        deadline: u64,
    ) {
        self.send(to, request, purpose);
        if let Some(p) = self.pending.get_mut(&(self.next_id - 1)) {
            p.deadline = deadline;
        }
    }

    fn send_addr(
        &mut self,
        addr: SocketAddr,
        to: Option<NodeRef>,
        request: Request,
        purpose: Purpose,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                deadline: self.now + self.opts.rpc_timeout,
                to,
                purpose,
            },
        );
        self.outbox.push_back(Output::Send {
            to: addr,
            id,
            request,
        });
    }

    fn respond(&mut self, conn: ConnId, id: RequestId, response: Result<Response>) {
        self.outbox
            .push_back(Output::Respond { conn, id, response });
    }

    fn emit(&mut self, event: Event) {
        self.outbox.push_back(Output::Event(event));
    }
}

/// How many lost nodes a node remembers for ring merging.
const MAX_LOST: usize = 32;

/// How many dot counters a node may issue per persisted lease (see [`Chord::issued_dot`]).
const DOT_LEASE: u64 = 1 << 20;

/// The storage meta name of the dot lease.
const DOT_LEASE_META: &str = "dot-lease";

/// How many applied write ids an owner remembers for at-most-once retries.
const MAX_APPLIED: usize = 1 << 16;

/// Most interrupted hand-overs whose receivers' possible holdings are remembered.
const MAX_ABORTED: usize = 16;

/// The hash recorded for a key the receiver may or may not hold (its round was not acknowledged).
/// [`value_hash`] never returns it, so such a key is always sent again, or deleted.
const MAYBE_HELD: u64 = 0;

/// A hash of a value, to tell whether the receiver already holds exactly this value.
fn value_hash(v: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish().max(1)
}
