//! The Chord ring as a pure state machine: who is on the ring, and who owns what.
//!
//! This layer knows nodes, identifiers and time, nothing about values: the data layer
//! ([`crate::kv`]) sits on top of it, asks it for routes and learns from it what changed.
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
//! make lookups fast; correctness rests on the successor list alone (Zave 2017). See
//! `ring/lookup.rs`.
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
//!   lies between the current predecessor and itself. The predecessor is watched by the heartbeat
//!   detector; one that does not answer is dropped.
//! - A successor that does not answer is dropped from the list, and the next one takes its place.
//!
//! A one-node ring has no successors and no predecessor; it learns its first successor when the
//! newcomer's notify gives it a predecessor, which its next stabilize adopts (as Zave's rules
//! require for rings smaller than `r + 1`). See `ring/maintain.rs`.
//!
//! LOOKUP
//!
//! Lookups are iterative: the node that starts one asks each hop in turn, so it counts hops and
//! timeouts itself and routes around a dead hop by asking the previous hop again with the dead node
//! on an `avoid` list. Each hop answers from fingers *and* successor list: the successor if the
//! target lies in `(self, successor]`, else the closest preceding known node (§4.3, ToN 2003
//! §IV.E.3).
//!
//! OWNERSHIP AND HAND-OVER
//!
//! Adopting a newcomer `m` as predecessor moves the range `(p, m]` (`p`: the predecessor `n` had)
//! from `n` to `m`, and the keys in it must move first. So a notify that would make `n` adopt `m`
//! does not: once `m` answered a ping as itself, the ring tells the layer above
//! ([`Notice::Newcomer`]), which hands the keys over and then calls [`Ring::adopt_predecessor`].
//! Until then `n` keeps its predecessor and its range, so reads never see a gap. On adoption `n`
//! tells `m` so (`Adopted`, naming where `m`'s range starts), and `m` checks it by asking `n` for
//! its predecessor. Only then is `m` *installed*: it owns its range and may hand part of it to a
//! newer node. A node that is not installed owns nothing and ignores notifies; otherwise two
//! newcomers in one gap could adopt each other before either held its keys, and keys would land
//! on the wrong node.
//!
//! A graceful leave is the mirror image: the layer above hands everything to the successor, then
//! [`Ring::announce_leave`] tells both neighbours, which close the gap at once. A node that left
//! is not adopted back by a notify it sent before leaving that arrives late.
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
//! suspected neighbour is announced to the others with a failure notice. Answers to the layer
//! above's requests count as heartbeats too ([`Ring::observe`]).
//!
//! PARTITIONS
//!
//! A partition splits the ring in two rings that each repair themselves. Each node remembers the
//! nodes it suspected and now and then looks itself up through one of them; once the partition
//! heals, that lookup answers from the other ring, and a closer successor found there is adopted
//! (after it answered), which stabilization spreads until the rings are one again (after
//! Shafaat et al., "Dealing with network partitions in structured overlay networks", 2009).
//!
//! PLAUSIBILITY
//!
//! The requests that move ownership or drop a neighbour are checked against this node's view
//! before they act; one no correct node could send in that view is refused with an error that
//! says why ([`crate::rpc::Refusals`], counted by kind in [`Ring::refusals`]), nothing changed.
//! Authentication (only cluster members may send) is the server's; this is the layer behind it,
//! against a member that is stale, confused or buggy. What each request carries is compared with
//! the ring state, as none names its sender beyond what it says:
//! - *Notify*: Chord's rule (a notifier between our predecessor and us) stands, but the
//!   notifier is pinged at the address it gave and must answer as itself before the layer above
//!   hears of it: a hand-over streams our range to that address, and one with nothing to move
//!   adopts at once. One answering as another node is refused; one not answering is dropped (a
//!   live newcomer notifies again). A notify naming ourselves is refused.
//! - *Adopted*: only a claim. A newcomer is installed when its successor itself names it its
//!   predecessor (in the stabilize round the claim sets off at once); the claim only says where
//!   the range starts. A start between us and our successor is refused.
//! - *Leaving*: only from our predecessor or one of our successors, and not naming itself its
//!   own predecessor. The successor list becomes the nearest `r` of ours and the leaver's
//!   (its list only when it was our first successor), so no node we know is dropped for the
//!   leaver's word.
//! - *FailureNotice*: it suspects a neighbour only once our own probe of it has gone unanswered
//!   for an interval (see the [`detector`]): a neighbour that answers is never dropped however
//!   many notices come. One naming ourselves is refused.
//!
//! What cannot be checked without the sender: that an `Adopted` or a `Leaving` came from the
//! node it concerns; a connection bound to a node's address by the server's handshake would let
//! the ring compare the two.
//!
//! CAVEATS
//!
//! A node joining through a node that is itself still joining waits for it.
//!
//! # Call contract
//!
//! [`Ring`] owns no sockets, clocks, threads or global randomness; its driver is the node
//! ([`crate::node::Node`]), which implements [`RingIo`] for it and composes it with the data
//! layer. Inputs: [`Ring::start`], [`Ring::handle_request`] for the ring's own requests,
//! [`Ring::observe`] and then `Ring::on_answer` for the answers to requests in its [`Calls`]
//! table (the driver times them out, by [`Calls::expired`]), [`Ring::tick`], [`Ring::leave`].
//! The layer above also calls [`Ring::lookup`], [`Ring::adopt_predecessor`],
//! [`Ring::adopt_successor`] and [`Ring::announce_leave`]. Outputs go to [`RingIo`] as they are
//! made; after every input the driver drains [`Ring::poll_notice`] and hands each [`Notice`] to
//! the layer above, in order.

use crate::error::{Error, Result};
use crate::id::{BITS, Id, distance, in_half_open};
use crate::message::{NodeRef, Request, RequestId, Response};
use crate::rpc::{Calls, ConnId, Io, Pending, Refusals, timer_phase};
use detector::{Detector, DetectorOptions};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

pub mod detector;
mod lookup;
mod maintain;

pub use lookup::Lookup;

/// The ring's tunables. Tests pin them; the node binary exposes the main ones as flags.
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
    /// How long to wait for a peer's answer, in ms (for every request of the node).
    pub rpc_timeout: u64,
    /// A peer is suspected after this many requests in a row timed out (a refused connection
    /// counts at once).
    pub suspect_after: u32,
    /// A lookup that asks more nodes than this fails (a routing loop guard).
    pub max_hops: u32,
    /// How often to look ourselves up through a node we lost, to merge rings after a
    /// partition, in ms.
    pub merge_interval: u64,
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
            max_hops: 256,
            merge_interval: 5_000,
        }
    }
}

/// What the ring asks of its driver, beyond sending and answering: reporting its events.
pub trait RingIo: Io {
    /// Something worth logging or counting happened on the ring.
    fn emit(&mut self, event: Event);
}

/// Things the ring reports for logs, metrics and tests.
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
    /// The graceful leave finished; the driver may exit.
    Left {
        /// Whether every key reached a successor (false when none could be reached).
        handed_over: bool,
    },
}

/// What the ring tells the layer above, in the order it happens (drain with
/// [`Ring::poll_notice`] after every input).
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A newcomer between our predecessor and us asked to be adopted (Chord's notify). The part
    /// of our range it takes, from our predecessor to it, must be handed to it first; then call
    /// [`Ring::adopt_predecessor`].
    Newcomer(NodeRef),
    /// A lookup started with [`Ring::lookup`] found the owner.
    Found {
        /// The lookup, as [`Lookup::Pending`] named it.
        lookup: u64,
        /// The owner of the target.
        owner: NodeRef,
    },
    /// A lookup started with [`Ring::lookup`] gave up.
    NotFound {
        /// The lookup, as [`Lookup::Pending`] named it.
        lookup: u64,
        /// Why.
        error: Error,
    },
    /// A neighbour the detector had suspected answered again.
    PeerBack(NodeRef),
}

/// Why the ring sent a request, so its answer can be routed.
#[derive(Clone, Debug)]
pub(crate) enum Purpose {
    /// One hop of lookup `op`.
    Lookup { op: u64 },
    /// Checking that the owner a lookup found is alive.
    Verify { op: u64, owner: NodeRef },
    /// Join: fetch the successor's successor list.
    JoinNeighbors { succ: NodeRef },
    /// Stabilize: ask the successor for its neighbours.
    Stabilize { succ: NodeRef },
    /// Stabilize: check a candidate successor is live and fetch its list.
    StabilizeCandidate { cand: NodeRef },
    /// Ring merging: check a candidate successor from another ring and fetch its list.
    MergeCandidate { cand: NodeRef },
    /// Notify; the answer carries nothing.
    Notify,
    /// Checking that a notifier answers as itself at the address it gave, before its
    /// hand-over begins.
    VerifyNewcomer { node: NodeRef },
    /// A heartbeat probe of a neighbour.
    Probe,
    /// A failure notice; the answer carries nothing.
    Notice,
    /// A leave notice.
    Leaving,
    /// Telling a newcomer we adopted it; resent until it answers or we drop it.
    Adopted { to: NodeRef, start: Option<NodeRef> },
}

impl Purpose {
    /// Whether this is a heartbeat probe, whose silence is the detector's own business.
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Purpose::Probe)
    }
}

/// One Chord node's view of the ring. See the [module documentation](self) for the call
/// contract.
pub struct Ring {
    me: NodeRef,
    opts: Options,
    joined: bool,
    /// Whether our successor has handed us our range `(pred, self]` (or we started the ring): only
    /// then do we own it and hand parts of it to newcomers.
    installed: bool,
    leaving: bool,
    pred: Option<NodeRef>,
    /// The last predecessor we had: the start of the range we own while `pred` is unknown.
    range_start: Option<NodeRef>,
    succs: Vec<NodeRef>,
    /// The predecessor our successor last named (successor id, its predecessor's id): whether it
    /// has adopted us, which ends any hand-over to us.
    succ_pred: Option<(Id, Option<Id>)>,
    /// Notifiers being checked (pinged at the address they gave) before the layer above hears
    /// of them.
    verifying: BTreeSet<Id>,
    /// Where our range starts by an `Adopted` that our successor has not confirmed yet.
    adopted_start: Option<Option<NodeRef>>,
    /// Requests refused as implausible, by kind.
    refusals: Refusals,
    fingers: Vec<Option<NodeRef>>,
    next_finger: usize,
    finger_lookup: bool,
    stabilizing: bool,
    /// The successor when the current stabilization round began.
    round_succ: NodeRef,
    leave_acks: u32,
    bootstrap: Option<SocketAddr>,
    join_retry_at: Option<u64>,
    next_stabilize: u64,
    next_fix: u64,
    /// Nodes that told us they left, until when to ignore their late notifies.
    departed: BTreeMap<Id, u64>,
    /// Nodes we suspected, to try now and then: after a partition heals they are how two rings
    /// find each other again.
    lost: VecDeque<NodeRef>,
    next_merge: u64,
    /// Heartbeats to the neighbours: who is suspected, with timeouts that grow on mistakes.
    detector: Detector,
    /// The neighbours (predecessor, then successors) the detector was last told to watch.
    monitored: Vec<NodeRef>,
    /// Consecutive timeouts per peer, for [`Options::suspect_after`].
    strikes: BTreeMap<Id, u32>,
    /// Lookups in flight, by operation number.
    lookups: BTreeMap<u64, lookup::LookupOp>,
    calls: Calls<Purpose>,
    notices: VecDeque<Notice>,
}

impl Ring {
    /// A node that is not yet part of any ring. Call [`Ring::start`] next.
    pub fn new(me: NodeRef, opts: Options, seed: u64, now: u64) -> Self {
        let phase = timer_phase(me.id, seed);
        let jitter = |iv: u64| now + phase % iv.max(1);
        Ring {
            next_stabilize: jitter(opts.stabilize_interval),
            next_fix: jitter(opts.fix_fingers_interval),
            next_merge: jitter(opts.merge_interval),
            me,
            joined: false,
            installed: false,
            leaving: false,
            pred: None,
            range_start: None,
            succs: Vec::new(),
            succ_pred: None,
            verifying: BTreeSet::new(),
            adopted_start: None,
            refusals: Refusals::default(),
            fingers: vec![None; BITS],
            next_finger: 0,
            finger_lookup: false,
            stabilizing: false,
            round_succ: me,
            leave_acks: 0,
            bootstrap: None,
            join_retry_at: None,
            departed: BTreeMap::new(),
            lost: VecDeque::new(),
            detector: Detector::new(opts.detector),
            monitored: Vec::new(),
            strikes: BTreeMap::new(),
            lookups: BTreeMap::new(),
            calls: Calls::default(),
            notices: VecDeque::new(),
            opts,
        }
    }

    /// Form a ring of one (`bootstrap` is `None` or our own address) or join the ring that the node
    /// at `bootstrap` belongs to. Joining retries until it succeeds.
    pub fn start(&mut self, io: &mut dyn RingIo, bootstrap: Option<SocketAddr>) {
        match bootstrap {
            Some(addr) if addr != self.me.addr => self.start_join(io, addr),
            _ => {
                self.joined = true;
                self.installed = true;
                io.emit(Event::Joined { succ: self.me });
            }
        }
    }

    /// Begin a graceful leave: from now on the node takes no part in routing or joins. The
    /// layer above hands its keys over, then calls [`Ring::announce_leave`].
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    // ---------------------------------------------------------------- questions

    /// This node.
    pub fn me(&self) -> NodeRef {
        self.me
    }

    /// The ring's tunables.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Whether the node has joined a ring.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Whether the node owns its range (its successor handed it over, or it started the ring).
    pub fn is_installed(&self) -> bool {
        self.installed
    }

    /// Whether a graceful leave has begun.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<NodeRef> {
        self.pred
    }

    /// Where the range this node owns starts: its predecessor, or while that is unknown
    /// (suspected) the last one it had; `None` if it never had one (alone, or just joined).
    pub fn range_start(&self) -> Option<NodeRef> {
        self.pred.or(self.range_start)
    }

    /// The first successor; the node itself when it is alone.
    pub fn successor(&self) -> NodeRef {
        self.succs.first().copied().unwrap_or(self.me)
    }

    /// The successor list, nearest first (empty when alone).
    pub fn successors(&self) -> &[NodeRef] {
        &self.succs
    }

    /// Whether our successor, when last asked, named us its predecessor: it has adopted us, so
    /// no hand-over to us is under way.
    pub fn successor_adopted_me(&self) -> bool {
        self.succ_pred == Some((self.successor().id, Some(self.me.id)))
    }

    /// The ring requests this node refused as implausible, by kind (see PLAUSIBILITY in the
    /// [module documentation](self)).
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Finger `i` (`successor(self + 2^i)`), if known.
    pub fn finger(&self, i: usize) -> Option<NodeRef> {
        self.fingers.get(i).copied().flatten()
    }

    /// The distinct nodes in the finger table, in ring order from this node.
    pub fn distinct_fingers(&self) -> Vec<NodeRef> {
        let mut fingers: Vec<NodeRef> = Vec::new();
        for f in self.fingers.iter().flatten() {
            if fingers.last() != Some(f) && !fingers.contains(f) {
                fingers.push(*f);
            }
        }
        fingers.sort_by_key(|f| distance(self.me.id, f.id));
        fingers
    }

    /// Whether the heartbeat detector suspects `peer` now.
    pub fn is_suspected(&self, peer: &Id) -> bool {
        self.detector.is_suspected(peer)
    }

    /// Whether this node believes it owns `id`: `(pred, self]`, measured from the last
    /// predecessor it had when the current one is unknown (suspected). Refusing writes outside that
    /// range until a new predecessor notifies us is what keeps a write from landing on a node that
    /// is not the owner after a false suspicion. A node that never had one (alone, or just joined)
    /// owns whatever it is sent.
    pub fn owns(&self, id: Id) -> bool {
        if !self.installed {
            return false; // our successor still holds (and serves) our range
        }
        match self.range_start() {
            None => true,
            Some(p) => in_half_open(p.id, self.me.id, id),
        }
    }

    /// The next notice for the layer above, if any. Drain after every input.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// Take the ring's request `id` out of its table, if it is one.
    pub(crate) fn take_call(&mut self, id: RequestId) -> Option<Pending<Purpose>> {
        self.calls.take(id)
    }

    /// The ring's requests whose deadline has come.
    pub(crate) fn expired_calls(&self, now: u64) -> impl Iterator<Item = RequestId> + '_ {
        self.calls.expired(now)
    }

    /// Take the pointers a settled ring gives this node: `pred`, the successor list `succs`
    /// (nearest first) and every finger, as a member that joined long ago and owns its range.
    /// For the simulator, which builds rings of thousands of nodes in the state the protocol
    /// converges to ([`crate::testing::sim::Sim::grow_settled`]) instead of joining them one
    /// by one; nothing else may skip the protocol.
    pub(crate) fn set_settled(
        &mut self,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
        fingers: Vec<Option<NodeRef>>,
    ) {
        assert_eq!(fingers.len(), BITS, "one finger per bit");
        self.joined = true;
        self.installed = true;
        self.pred = pred;
        self.range_start = pred;
        self.succ_pred = succs.first().map(|s| (s.id, Some(self.me.id)));
        self.round_succ = succs.first().copied().unwrap_or(self.me);
        self.succs = succs;
        self.fingers = fingers;
        self.next_finger = 0;
    }

    // ---------------------------------------------------------------- inputs

    /// Time passed: retry a join that failed, then run the ring's timers (stabilize, heartbeats,
    /// ring merging, fingers) while the node is in the ring.
    pub fn tick(&mut self, io: &mut dyn RingIo) {
        let now = io.now();
        if let (Some(at), Some(addr)) = (self.join_retry_at, self.bootstrap) {
            if now >= at && !self.joined {
                self.start_join(io, addr);
            }
        }
        if !self.joined || self.leaving {
            return;
        }
        if now >= self.next_stabilize {
            // Until the successor has handed our range over, ask often: we learn it from the
            // successor naming us its predecessor.
            let interval = if self.installed {
                self.opts.stabilize_interval
            } else {
                self.opts.stabilize_interval.div_ceil(5)
            };
            self.next_stabilize = now + interval;
            self.stabilize(io);
        }
        self.heartbeat(io);
        if now >= self.next_merge {
            self.next_merge = now + self.opts.merge_interval;
            if self.installed {
                if let Some(via) = self.lost.pop_front() {
                    self.lost.push_back(via);
                    self.start_lookup(io, self.me.id, lookup::Then::Merge { via }, Some(via.addr));
                }
            }
        }
        if now >= self.next_fix {
            self.next_fix = now + self.opts.fix_fingers_interval;
            self.fix_fingers(io);
        }
    }

    /// One of the ring's own requests arrived (ring maintenance, or a client's `Lookup`).
    /// Returns the answer, or `None` if it comes later (a lookup) or the request is not the
    /// ring's.
    pub fn handle_request(
        &mut self,
        io: &mut dyn RingIo,
        conn: ConnId,
        id: RequestId,
        request: Request,
    ) -> Option<Result<Response>> {
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
            Request::Notify { node } => self.on_notify(io, node).map(|()| Response::Ack),
            Request::Leaving { node, pred, succs } => self
                .on_leaving(io, node, pred, succs)
                .map(|()| Response::Ack),
            Request::FailureNotice { dead } if dead.id == self.me.id => Err(self
                .refusals
                .refuse("failure_notice", "it names us, and we are answering")),
            Request::FailureNotice { dead } => {
                if let Some(v) = self.detector.on_notice(dead, io.now()) {
                    self.on_verdict(io, v);
                }
                Ok(Response::Ack)
            }
            Request::Adopted { pred } => self.on_adopted(io, pred).map(|()| Response::Ack),
            Request::Lookup { key } => {
                if !self.joined {
                    Err(Error::Unavailable("node is still joining the ring".into()))
                } else {
                    let then = lookup::Then::Reply { conn, id };
                    self.start_lookup(io, Id::hash(&key), then, None);
                    return None;
                }
            }
            _ => return None,
        };
        Some(response)
    }

    /// What an answer (or the transport's failure) from `to` to any request of this node says
    /// about `to`'s liveness: call it for every answer, the layer above's too, before the
    /// answer itself is handled. A refused connection suspects the peer at once; silence from a
    /// neighbour makes the detector probe it; any answer at all shows it alive.
    pub fn observe(
        &mut self,
        io: &mut dyn RingIo,
        to: NodeRef,
        response: &Result<Response>,
        probe: bool,
    ) {
        let now = io.now();
        let monitored = self.detector.peer(&to.id).is_some();
        match response {
            // A refused connection means nothing listens there: the node is gone.
            Err(Error::Unreachable(_)) => {
                if let Some(v) = self.detector.on_failure(to.id, now, true) {
                    self.on_verdict(io, v);
                }
                self.suspect(io, to);
            }
            // A probe's own silence is the detector's business (it keeps its own deadline).
            Err(Error::Timeout(_)) if probe => {}
            // Silence from a neighbour makes the detector probe it now; from anyone else, a
            // few in a row make us suspect it (it may be one lost message).
            Err(Error::Timeout(_)) if monitored => {
                if let Some(v) = self.detector.on_failure(to.id, now, false) {
                    self.on_verdict(io, v);
                }
            }
            Err(Error::Timeout(_)) => {
                let strikes = self.strikes.entry(to.id).or_insert(0);
                *strikes += 1;
                if *strikes >= self.opts.suspect_after {
                    self.suspect(io, to);
                }
            }
            // Any answer, even an error, shows the node is alive.
            _ => {
                self.strikes.remove(&to.id);
                if let Some(v) = self.detector.on_ack(to.id, now) {
                    self.on_verdict(io, v);
                }
            }
        }
    }

    /// The answer to one of the ring's requests (after [`Ring::observe`]).
    pub(crate) fn on_answer(
        &mut self,
        io: &mut dyn RingIo,
        purpose: Purpose,
        asked: Option<NodeRef>,
        response: Result<Response>,
    ) {
        match purpose {
            Purpose::Lookup { op } => self.on_lookup_answer(io, op, asked, response),
            Purpose::Verify { op, owner } => self.on_verify_answer(io, op, owner, response),
            Purpose::MergeCandidate { cand } => self.on_merge_candidate(io, cand, response),
            Purpose::JoinNeighbors { succ } => self.on_join_neighbors(io, succ, response),
            Purpose::Stabilize { succ } => self.on_stabilize_answer(io, succ, response),
            Purpose::StabilizeCandidate { cand } => self.on_candidate_answer(io, cand, response),
            Purpose::VerifyNewcomer { node } => self.on_newcomer_verified(io, node, response),
            Purpose::Notify | Purpose::Probe | Purpose::Notice => {}
            Purpose::Adopted { to, start } => {
                if response.is_err() && self.pred == Some(to) {
                    self.send_adopted(io, to, start);
                }
            }
            Purpose::Leaving => {
                self.leave_acks = self.leave_acks.saturating_sub(1);
                if self.leave_acks == 0 {
                    io.emit(Event::Left { handed_over: true });
                }
            }
        }
    }

    fn send(&mut self, io: &mut dyn RingIo, to: NodeRef, request: Request, purpose: Purpose) {
        self.calls.send(io, to, request, purpose);
    }
}

/// How many lost nodes a node remembers for ring merging.
const MAX_LOST: usize = 32;
