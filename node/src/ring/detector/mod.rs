//! Failure detection by heartbeats: an "eventually perfect" failure detector.
//!
//! PROBES
//!
//! The node watches a small set of peers, its predecessor and successor list, set by
//! [`Detector::monitor`]. Each is probed (the driver sends a `Ping`) once per
//! [`DetectorOptions::interval`], with at most one probe outstanding per peer. Any message heard
//! from a peer counts as an answer ([`Detector::on_ack`]) and postpones its next probe by one
//! interval, so a peer that the node already talks to (stabilize, transfers) costs no extra pings.
//! A newly monitored peer is probed at once.
//!
//! SUSPICION
//!
//! A probe not answered within the peer's current timeout makes the peer *suspected*
//! ([`Verdict::Suspected`]); so does a refused connection, at once
//! ([`Detector::on_failure`]), since nothing listens at that address. A peer that falls silent
//! right after an answer is suspected at most `interval + timeout` after that answer (plus the
//! driver's tick granularity). Suspected peers are still probed, so a live one is found out.
//!
//! FALSE SUSPICIONS AND BACKOFF
//!
//! This is the eventually perfect detector ◇P of Chandra and Toueg ("Unreliable failure
//! detectors for reliable distributed systems", JACM 1996), built the way their timeout-based
//! implementation for partially synchronous systems is: a suspected peer that answers was wrongly
//! suspected; the suspicion is withdrawn ([`Verdict::Restored`]) and that peer's timeout grows by
//! [`DetectorOptions::backoff`], up to [`DetectorOptions::max_timeout`].
//! So a crashed peer is always suspected eventually (strong completeness), and a live peer whose
//! answers take at most `D < max_timeout` is wrongly suspected only finitely often: once its
//! timeout exceeds `D`, never again (eventual strong accuracy). Only suspicions made by a timeout
//! grow the timeout: a refused connection proves the process was down (an answer later means it
//! restarted), and a notice reflects another node's timeouts, not ours.
//!
//! FAILURE NOTICES
//!
//! A node that detects a failure tells the others, so repair does not wait for every node's own
//! timeout ([`Detector::on_notice`]). A notice suspects a monitored peer at once only if our own
//! probe of it has gone unanswered for at least `interval` ms: first-hand evidence of life
//! beats second-hand news of death (the notifier may itself be wrong, stale, buggy, or
//! partitioned from the peer only), and a peer that answers within the interval is never dropped
//! on anyone's word, however many notices arrive. An overridden notice still makes the peer due
//! for a probe at once (unless we heard from it within the interval), so a real failure is
//! confirmed within one timeout, and repeated notices cost no more than one probe each interval.
//! Where the peer did die, our probe is usually that overdue by the time a notice comes: the
//! notifier waited a whole timeout, longer than the interval, before it sent it.
//!
//! MEMORY
//!
//! A peer that leaves the monitored set is forgotten, but a grown timeout (or an unwithdrawn
//! suspicion) is remembered in a bounded map ([`DetectorOptions::remember`] entries, the longest
//! forgotten evicted first). A peer that flaps in and out of the successor list thus keeps its long
//! timeout, and a late answer from a peer dropped because it was suspected still counts as a false
//! suspicion.
//!
//! CAVEATS
//!
//! - Answers are matched to peers, not to probes: any message from a peer clears its outstanding
//!   probe, even an answer to an older request. That is evidence of life, which is all a crash
//!   detector needs, but it means a peer that answers steadily yet slowly may go unsuspected; this
//!   detects crashes, not slowness.
//! - Timeouts only grow. A peer that was slow once keeps a long timeout (and slower detection) for
//!   as long as it is monitored or remembered.
//! - A peer whose answers take longer than `max_timeout` is suspected again and again: beyond that
//!   bound it is treated as failed.
//!
//! # Call contract
//!
//! [`Detector`] owns no sockets, clocks or randomness; every input carries `now`, the driver's
//! logical time in milliseconds (monotonic, any origin). The owner (the Chord state machine):
//! - calls [`Detector::monitor`] whenever its predecessor or successor list changes (calling it
//!   on every tick is fine and cheap);
//! - feeds every message heard from a peer, answers to probes included, to [`Detector::on_ack`];
//!   a transport error to [`Detector::on_failure`]; and a failure notice from another node to
//!   [`Detector::on_notice`];
//! - on each timer tick calls [`Detector::tick`] (deadlines, after the answers that arrived at
//!   that same time), then [`Detector::poll_probes`] and sends a `Ping` to each peer returned.
//!   [`Detector::next_timeout`] says when the next tick has work to do.
//!
//! Every input returns the [`Verdict`]s it caused; the owner acts on them (drop a suspected peer,
//! send failure notices, count metrics). Each peer gets exactly one [`Verdict::Suspected`] per
//! suspicion and at most one [`Verdict::Restored`] ending it. Peers are always visited in id
//! order, so the outputs are a function of the inputs alone.
//!
//! For a late answer to count as a false suspicion, the driver must still deliver it: keep a probe
//! pending for at least [`DetectorOptions::max_timeout`], and do not report its expiry through
//! [`Detector::on_failure`] (the detector keeps its own deadlines).

use crate::id::Id;
use crate::message::NodeRef;
use std::collections::BTreeMap;

/// How a peer's timeout grows after each false suspicion (then capped at
/// [`DetectorOptions::max_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// `timeout' = 2 · timeout`. A peer with answer delay `D` is wrongly suspected at most
    /// `⌈log2(D / initial_timeout)⌉` times; the timeout may overshoot `D` up to twofold.
    Double,
    /// `timeout' = timeout + ms` (`ms > 0`). More false suspicions, `⌈(D − initial_timeout) / ms⌉`
    /// at most, but the timeout overshoots `D` by less than `ms`.
    Add(u64),
}

impl Backoff {
    /// The timeout after one more false suspicion: grown, capped at `max`, never shrunk.
    pub fn grow(self, timeout: u64, max: u64) -> u64 {
        let grown = match self {
            Backoff::Double => timeout.saturating_mul(2),
            Backoff::Add(ms) => timeout.saturating_add(ms),
        };
        grown.min(max).max(timeout)
    }
}

/// The detector's tunables, in milliseconds. Tests pin them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorOptions {
    /// Time between probes of one peer (and the window in which hearing from a peer overrides a
    /// failure notice). Must be positive.
    pub interval: u64,
    /// The timeout of a peer never wrongly suspected. Must be positive.
    pub initial_timeout: u64,
    /// The most a timeout grows to; a peer slower than this is treated as failed.
    pub max_timeout: u64,
    /// How a timeout grows after a false suspicion.
    pub backoff: Backoff,
    /// How many forgotten peers' grown timeouts (and open suspicions) to remember.
    pub remember: usize,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            interval: 500,
            initial_timeout: 1_000,
            max_timeout: 10_000,
            backoff: Backoff::Double,
            remember: 256,
        }
    }
}

/// What made the detector suspect a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A probe went unanswered for the peer's whole timeout.
    Timeout,
    /// A connection to the peer was refused.
    Refused,
    /// Another node's failure notice named the peer.
    Notice,
}

/// A change in what the detector believes about a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The peer is now suspected to have failed.
    Suspected {
        /// The peer.
        peer: NodeRef,
        /// Why.
        cause: Cause,
        /// Time since we last heard from the peer (or began monitoring it, if never), in ms.
        detection_ms: u64,
    },
    /// A suspected peer was heard from: the suspicion is withdrawn.
    Restored {
        /// The peer.
        peer: NodeRef,
        /// Whether our own timeout suspected it wrongly ([`Cause::Timeout`]); its timeout has then
        /// grown. False after a refused connection (the peer restarted) or a notice.
        false_suspicion: bool,
        /// How long it was suspected, in ms.
        suspected_ms: u64,
    },
}

/// An open suspicion of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspicion {
    /// When it began, in ms.
    pub since: u64,
    /// What caused it (a refused connection while suspected upgrades it to [`Cause::Refused`]).
    pub cause: Cause,
}

/// What the detector knows about one monitored peer. Read-only outside the detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The peer.
    pub node: NodeRef,
    /// Its current probe timeout, in ms.
    pub timeout: u64,
    /// When monitoring of it began.
    pub monitored_since: u64,
    /// When we last heard from it, if ever while monitored.
    pub last_heard: Option<u64>,
    /// When the last probe was sent to it, if any.
    pub last_probe: Option<u64>,
    /// The deadline of the outstanding probe, if one is.
    pub probe_deadline: Option<u64>,
    /// When it is next due for a probe (once no probe is outstanding).
    pub next_probe: u64,
    /// The open suspicion, if it is suspected.
    pub suspicion: Option<Suspicion>,
    /// Suspicions of it while monitored.
    pub suspicions: u64,
    /// Of those, the ones withdrawn as false.
    pub false_suspicions: u64,
}

impl PeerState {
    fn new(node: NodeRef, timeout: u64, now: u64) -> Self {
        PeerState {
            node,
            timeout,
            monitored_since: now,
            last_heard: None,
            last_probe: None,
            probe_deadline: None,
            next_probe: now,
            suspicion: None,
            suspicions: 0,
            false_suspicions: 0,
        }
    }
}

/// Counters for metrics, over the detector's whole life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Probes handed out by [`Detector::poll_probes`].
    pub probes: u64,
    /// Suspicions, of any cause.
    pub suspicions: u64,
    /// Suspicions by timeout later withdrawn: each grew a timeout.
    pub false_suspicions: u64,
    /// Suspicions withdrawn, of any cause.
    pub restorations: u64,
    /// Failure notices that suspected a peer.
    pub notices_applied: u64,
    /// Failure notices overridden because we had just heard from the peer.
    pub notices_overridden: u64,
}

/// A forgotten peer's grown timeout or open suspicion.
#[derive(Clone, Debug)]
struct Remembered {
    node: NodeRef,
    timeout: u64,
    suspicion: Option<Suspicion>,
    /// Forgetting order, for eviction.
    seq: u64,
}

/// A heartbeat failure detector for a node's neighbours. See the [module documentation](self)
/// for the call contract.
#[derive(Clone, Debug)]
pub struct Detector {
    opts: DetectorOptions,
    peers: BTreeMap<Id, PeerState>,
    memory: BTreeMap<Id, Remembered>,
    next_seq: u64,
    stats: Stats,
}

impl Detector {
    /// A detector monitoring no one.
    ///
    /// # Panics
    /// If `interval` or `initial_timeout` is zero, `max_timeout < initial_timeout`, or the
    /// backoff is `Add(0)`: the timeout could then never grow past a slow peer's delay.
    pub fn new(opts: DetectorOptions) -> Self {
        assert!(opts.interval > 0, "detector interval must be positive");
        assert!(
            opts.initial_timeout > 0,
            "detector initial_timeout must be positive"
        );
        assert!(
            opts.max_timeout >= opts.initial_timeout,
            "detector max_timeout {} is below initial_timeout {}",
            opts.max_timeout,
            opts.initial_timeout
        );
        assert!(
            opts.backoff != Backoff::Add(0),
            "detector backoff Add(0) never grows the timeout"
        );
        Detector {
            opts,
            peers: BTreeMap::new(),
            memory: BTreeMap::new(),
            next_seq: 0,
            stats: Stats::default(),
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &DetectorOptions {
        &self.opts
    }

    /// Set the monitored peers (the predecessor and the successor list; not the node itself).
    ///
    /// Peers already monitored keep their state. New peers are probed at once, starting from
    /// their remembered timeout if they were forgotten recently, and unsuspected: the owner chose
    /// to watch them again. Peers left out are forgotten, but a grown timeout or an open suspicion
    /// is remembered (see [`DetectorOptions::remember`]). A duplicate id keeps its last address.
    pub fn monitor(&mut self, peers: impl IntoIterator<Item = NodeRef>, now: u64) {
        let mut next: BTreeMap<Id, PeerState> = BTreeMap::new();
        for node in peers {
            if let Some(state) = next.get_mut(&node.id) {
                state.node = node;
                continue;
            }
            let state = match self.peers.remove(&node.id) {
                Some(mut state) => {
                    state.node = node;
                    state
                }
                None => {
                    let timeout = self
                        .memory
                        .remove(&node.id)
                        .map_or(self.opts.initial_timeout, |m| m.timeout);
                    PeerState::new(node, timeout, now)
                }
            };
            next.insert(node.id, state);
        }
        let gone = std::mem::replace(&mut self.peers, next);
        for (id, state) in gone {
            self.remember(id, state);
        }
    }

    /// The peers due for a probe at `now`, in id order: each monitored peer once per interval,
    /// and only when no probe to it is outstanding. The owner sends each a `Ping` and reports the
    /// answer to [`Detector::on_ack`].
    pub fn poll_probes(&mut self, now: u64) -> Vec<NodeRef> {
        let mut due = Vec::new();
        for state in self.peers.values_mut() {
            if state.probe_deadline.is_none() && now >= state.next_probe {
                state.last_probe = Some(now);
                state.probe_deadline = Some(now.saturating_add(state.timeout));
                state.next_probe = now.saturating_add(self.opts.interval);
                self.stats.probes += 1;
                due.push(state.node);
            }
        }
        due
    }

    /// We heard from `peer` (a probe's answer or any other message): it is alive.
    ///
    /// Clears its outstanding probe and postpones its next one by an interval. If it was
    /// suspected, the suspicion is withdrawn ([`Verdict::Restored`]) and, if our own timeout had
    /// caused it, its timeout grows. Works for a forgotten peer still remembered as suspected too
    /// (its remembered timeout grows); otherwise an unmonitored peer is ignored.
    pub fn on_ack(&mut self, peer: Id, now: u64) -> Option<Verdict> {
        let (opts, stats) = (&self.opts, &mut self.stats);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.last_heard = Some(now);
            state.probe_deadline = None;
            state.next_probe = state.next_probe.max(now.saturating_add(opts.interval));
            let verdict = withdraw(
                opts,
                stats,
                state.node,
                &mut state.timeout,
                &mut state.suspicion,
                now,
            );
            if let Some(Verdict::Restored {
                false_suspicion: true,
                ..
            }) = verdict
            {
                state.false_suspicions += 1;
            }
            return verdict;
        }
        let memory = self.memory.get_mut(&peer)?;
        let verdict = withdraw(
            opts,
            stats,
            memory.node,
            &mut memory.timeout,
            &mut memory.suspicion,
            now,
        );
        if memory.timeout <= opts.initial_timeout && memory.suspicion.is_none() {
            self.memory.remove(&peer); // nothing left worth remembering
        }
        verdict
    }

    /// A request to `peer` failed in the transport. `refused`: the connection was refused, so
    /// nothing listens there and the peer is suspected at once ([`Cause::Refused`]; an open
    /// suspicion by timeout or notice is upgraded to it). Any other failure proves nothing a
    /// deadline would not, and only makes the peer due for a probe at once if none is outstanding.
    /// Unmonitored peers are ignored, except that a refusal upgrades a remembered suspicion.
    pub fn on_failure(&mut self, peer: Id, now: u64, refused: bool) -> Option<Verdict> {
        let Some(state) = self.peers.get_mut(&peer) else {
            if refused {
                if let Some(s) = self
                    .memory
                    .get_mut(&peer)
                    .and_then(|m| m.suspicion.as_mut())
                {
                    s.cause = Cause::Refused;
                }
            }
            return None;
        };
        if !refused {
            if state.probe_deadline.is_none() {
                state.next_probe = state.next_probe.min(now);
            }
            return None;
        }
        state.probe_deadline = None;
        match state.suspicion.as_mut() {
            Some(s) => {
                s.cause = Cause::Refused;
                None
            }
            None => Some(suspect(&mut self.stats, state, Cause::Refused, now)),
        }
    }

    /// Another node says `dead` failed. Suspects it at once ([`Cause::Notice`]) if it is
    /// monitored, not yet suspected, and our own probe of it has gone unanswered for at least
    /// `interval` ms: second-hand news of death only hastens a suspicion we have grounds for
    /// ourselves. Otherwise the notice is overridden; the peer is probed at once to settle it,
    /// unless we heard from it within the last `interval` ms (then its next probe is soon
    /// anyway), so no number of notices costs a live peer more than its usual probes or evicts
    /// it. Unmonitored peers are ignored. Returns the verdict, if the notice caused one.
    pub fn on_notice(&mut self, dead: NodeRef, now: u64) -> Option<Verdict> {
        let state = self.peers.get_mut(&dead.id)?;
        if state.suspicion.is_some() {
            return None;
        }
        // Our own probe has gone unanswered for an interval: we have doubts of our own. (Any
        // message from the peer clears its probe, so we have not heard from it since either.)
        let overdue = state.probe_deadline.is_some()
            && state
                .last_probe
                .is_some_and(|sent| now >= sent.saturating_add(self.opts.interval));
        if !overdue {
            self.stats.notices_overridden += 1;
            let heard_recently = state
                .last_heard
                .is_some_and(|heard| now < heard.saturating_add(self.opts.interval));
            if state.probe_deadline.is_none() && !heard_recently {
                state.next_probe = state.next_probe.min(now);
            }
            return None;
        }
        self.stats.notices_applied += 1;
        Some(suspect(&mut self.stats, state, Cause::Notice, now))
    }

    /// Time passed: every peer whose outstanding probe reached its deadline (`now >= deadline`)
    /// becomes suspected, in id order. A peer already suspected only gets probed again.
    pub fn tick(&mut self, now: u64) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for state in self.peers.values_mut() {
            let expired = state.probe_deadline.is_some_and(|deadline| now >= deadline);
            if !expired {
                continue;
            }
            state.probe_deadline = None;
            if state.suspicion.is_none() {
                verdicts.push(suspect(&mut self.stats, state, Cause::Timeout, now));
            }
        }
        verdicts
    }

    /// The earliest time at which [`Detector::tick`] or [`Detector::poll_probes`] has work to do,
    /// if any peer is monitored. It may lie in the past: then call them now.
    pub fn next_timeout(&self) -> Option<u64> {
        self.peers
            .values()
            .map(|s| s.probe_deadline.unwrap_or(s.next_probe))
            .min()
    }

    /// Whether `peer` is suspected: monitored and suspected, or forgotten while suspected and not
    /// heard from since.
    pub fn is_suspected(&self, peer: &Id) -> bool {
        match self.peers.get(peer) {
            Some(state) => state.suspicion.is_some(),
            None => self.memory.get(peer).is_some_and(|m| m.suspicion.is_some()),
        }
    }

    /// The probe timeout `peer` has, or would have if monitored now, in ms.
    pub fn timeout_of(&self, peer: &Id) -> u64 {
        match self.peers.get(peer) {
            Some(state) => state.timeout,
            None => self
                .memory
                .get(peer)
                .map_or(self.opts.initial_timeout, |m| m.timeout),
        }
    }

    /// What the detector knows about a monitored peer.
    pub fn peer(&self, peer: &Id) -> Option<&PeerState> {
        self.peers.get(peer)
    }

    /// The monitored peers, in id order.
    pub fn monitored(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.values()
    }

    /// How many forgotten peers are remembered (at most [`DetectorOptions::remember`]).
    pub fn remembered(&self) -> usize {
        self.memory.len()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Keep what is worth keeping of a peer that left the monitored set; evict the longest
    /// forgotten entry beyond the bound.
    fn remember(&mut self, id: Id, state: PeerState) {
        if state.timeout <= self.opts.initial_timeout && state.suspicion.is_none() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.memory.insert(
            id,
            Remembered {
                node: state.node,
                timeout: state.timeout,
                suspicion: state.suspicion,
                seq,
            },
        );
        while self.memory.len() > self.opts.remember {
            let oldest = self
                .memory
                .iter()
                .min_by_key(|(_, m)| m.seq)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => self.memory.remove(&id),
                None => break,
            };
        }
    }
}

/// Open a suspicion of `state`'s peer.
fn suspect(stats: &mut Stats, state: &mut PeerState, cause: Cause, now: u64) -> Verdict {
    state.suspicion = Some(Suspicion { since: now, cause });
    state.suspicions += 1;
    stats.suspicions += 1;
    let heard = state.last_heard.unwrap_or(state.monitored_since);
    Verdict::Suspected {
        peer: state.node,
        cause,
        detection_ms: now.saturating_sub(heard),
    }
}

/// Withdraw an open suspicion of `node`, if any, growing `timeout` if it was our timeout's fault.
fn withdraw(
    opts: &DetectorOptions,
    stats: &mut Stats,
    node: NodeRef,
    timeout: &mut u64,
    suspicion: &mut Option<Suspicion>,
    now: u64,
) -> Option<Verdict> {
    let open = suspicion.take()?;
    let false_suspicion = open.cause == Cause::Timeout;
    if false_suspicion {
        *timeout = opts.backoff.grow(*timeout, opts.max_timeout);
        stats.false_suspicions += 1;
    }
    stats.restorations += 1;
    Some(Verdict::Restored {
        peer: node,
        false_suspicion,
        suspected_ms: now.saturating_sub(open.since),
    })
}

#[cfg(test)]
mod tests;
