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
//! timeout ([`Detector::on_notice`]). A notice suspects a monitored peer at once, *unless* we
//! heard from that peer within the last `interval` ms: first-hand evidence of life beats
//! second-hand news of death (the notifier may itself be wrong, or partitioned from the peer only).
//! An overridden notice still makes the peer due for a probe at once, so a real failure is
//! confirmed within one timeout.
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
    /// monitored, not yet suspected, and we have not heard from it within the last `interval` ms
    /// (`now < last_heard + interval` overrides the notice: first-hand evidence of life beats
    /// second-hand news; the peer is then probed at once to settle it). Unmonitored peers are
    /// ignored. Returns the verdict, if the notice caused one.
    pub fn on_notice(&mut self, dead: NodeRef, now: u64) -> Option<Verdict> {
        let state = self.peers.get_mut(&dead.id)?;
        if state.suspicion.is_some() {
            return None;
        }
        let heard_recently = state
            .last_heard
            .is_some_and(|heard| now < heard.saturating_add(self.opts.interval));
        if heard_recently {
            self.stats.notices_overridden += 1;
            if state.probe_deadline.is_none() {
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
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    /// Peer `n`: id `n` repeated, so ids sort like `n`.
    fn peer(n: u8) -> NodeRef {
        NodeRef {
            id: Id([n; 20]),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + u16::from(n))),
        }
    }

    fn opts(interval: u64, initial_timeout: u64, backoff: Backoff) -> DetectorOptions {
        DetectorOptions {
            interval,
            initial_timeout,
            backoff,
            ..DetectorOptions::default()
        }
    }

    /// Drives a detector against simulated peers, event by event.
    struct Sim {
        det: Detector,
        now: u64,
        /// Answers in flight: (arrival time, send order) → peer.
        inflight: BTreeMap<(u64, u64), Id>,
        sent: u64,
        /// Every verdict, with the time it was given and the peer's timeout at that moment.
        verdicts: Vec<(u64, Verdict, u64)>,
    }

    impl Sim {
        fn new(opts: DetectorOptions, peers: &[NodeRef]) -> Self {
            let mut det = Detector::new(opts);
            det.monitor(peers.iter().copied(), 0);
            Sim {
                det,
                now: 0,
                inflight: BTreeMap::new(),
                sent: 0,
                verdicts: Vec::new(),
            }
        }

        /// Run until `end`. `delay(peer, probe_number_of_that_peer, sent_at)` says after how many
        /// ms the peer answers a probe, or `None` for silence. Answers due at a time are delivered
        /// before that time's tick, as the call contract asks.
        fn run(&mut self, end: u64, mut delay: impl FnMut(Id, u64, u64) -> Option<u64>) {
            let mut probes: BTreeMap<Id, u64> = BTreeMap::new();
            loop {
                let arrival = self.inflight.keys().next().map(|(at, _)| *at);
                let next = match (arrival, self.det.next_timeout()) {
                    (Some(a), Some(t)) => a.min(t),
                    (a, t) => match a.or(t) {
                        Some(x) => x,
                        None => break,
                    },
                };
                if next > end {
                    break;
                }
                assert!(next >= self.now, "time went backwards");
                self.now = next;
                while let Some(entry) = self.inflight.first_entry() {
                    if entry.key().0 > self.now {
                        break;
                    }
                    let id = entry.remove();
                    if let Some(v) = self.det.on_ack(id, self.now) {
                        self.record(v);
                    }
                }
                for v in self.det.tick(self.now) {
                    self.record(v);
                }
                for node in self.det.poll_probes(self.now) {
                    let n = probes.entry(node.id).or_insert(0);
                    if let Some(d) = delay(node.id, *n, self.now) {
                        self.inflight.insert((self.now + d, self.sent), node.id);
                    }
                    *n += 1;
                    self.sent += 1;
                }
            }
            self.now = end;
        }

        fn record(&mut self, v: Verdict) {
            let id = match v {
                Verdict::Suspected { peer, .. } | Verdict::Restored { peer, .. } => peer.id,
            };
            self.verdicts.push((self.now, v, self.det.timeout_of(&id)));
        }

        fn suspicions_of(&self, id: Id) -> Vec<(u64, Verdict, u64)> {
            self.verdicts
                .iter()
                .filter(|(_, v, _)| matches!(v, Verdict::Suspected { peer, .. } if peer.id == id))
                .copied()
                .collect()
        }
    }

    #[test]
    fn silent_peer_is_suspected_one_timeout_after_its_first_probe() {
        let mut sim = Sim::new(DetectorOptions::default(), &[peer(1)]);
        sim.run(4_999, |_, _, _| None);
        assert_eq!(
            sim.verdicts.first().map(|(t, v, _)| (*t, *v)),
            Some((
                1_000,
                Verdict::Suspected {
                    peer: peer(1),
                    cause: Cause::Timeout,
                    detection_ms: 1_000
                }
            ))
        );
        assert_eq!(sim.verdicts.len(), 1, "one verdict per suspicion");
        assert!(sim.det.is_suspected(&peer(1).id));
        // A suspected peer is still probed, once per max(interval, timeout): at 0, 1000, ... 4000.
        assert_eq!(sim.det.stats().probes, 5);
    }

    #[test]
    fn peer_that_falls_silent_is_suspected_within_interval_plus_timeout_of_its_last_answer() {
        // (interval, timeout, answer delay, silent from)
        let cases = [
            (500, 1_000, 10, 3_000),
            (500, 1_000, 400, 3_000),
            (500, 1_000, 999, 7_777),
            (2_000, 300, 50, 10_000),
            (100, 5_000, 1_000, 20_001),
        ];
        for (interval, timeout, delay, silent_from) in cases {
            let mut sim = Sim::new(opts(interval, timeout, Backoff::Double), &[peer(1)]);
            let mut last_answer = 0;
            sim.run(silent_from + 3 * (interval + timeout), |_, _, sent| {
                (sent + delay < silent_from).then(|| {
                    last_answer = sent + delay;
                    delay
                })
            });
            let case = (interval, timeout, delay, silent_from);
            let suspicions = sim.suspicions_of(peer(1).id);
            assert_eq!(suspicions.len(), 1, "case {case:?}: {:?}", sim.verdicts);
            let (at, verdict, _) = suspicions[0];
            assert!(at >= silent_from, "case {case:?}: suspected while alive");
            assert!(
                at - last_answer <= interval + timeout,
                "case {case:?}: suspected at {at}, last answer {last_answer}"
            );
            assert_eq!(
                verdict,
                Verdict::Suspected {
                    peer: peer(1),
                    cause: Cause::Timeout,
                    detection_ms: at - last_answer
                },
                "case {case:?}"
            );
        }
    }

    #[test]
    fn peer_that_always_answers_within_its_timeout_is_never_suspected() {
        // (interval, timeout, answer delays, cycled)
        let cases: [(u64, u64, &[u64]); 5] = [
            (500, 1_000, &[0]),
            (500, 1_000, &[999]),
            (500, 1_000, &[1, 700, 999, 300]),
            (100, 1_000, &[950]),
            (3_000, 200, &[199, 0]),
        ];
        for (interval, timeout, delays) in cases {
            let peers = [peer(1), peer(2), peer(3)];
            let mut sim = Sim::new(opts(interval, timeout, Backoff::Double), &peers);
            sim.run(60_000, |_, n, _| Some(delays[n as usize % delays.len()]));
            assert_eq!(sim.verdicts, [], "case {interval} {timeout} {delays:?}");
            for p in peers {
                assert_eq!(sim.det.timeout_of(&p.id), timeout);
            }
        }
    }

    #[test]
    fn suspected_peer_that_answers_is_restored_and_its_timeout_grows_up_to_max() {
        let cases = [
            (Backoff::Double, vec![2_000, 4_000, 8_000, 10_000, 10_000]),
            (Backoff::Add(3_000), vec![4_000, 7_000, 10_000, 10_000]),
            (Backoff::Add(1), vec![1_001, 1_002, 1_003]),
        ];
        for (backoff, expected) in cases {
            let mut det = Detector::new(opts(500, 1_000, backoff));
            let p = peer(1);
            det.monitor([p], 0);
            let mut now = 0;
            for (round, want) in expected.iter().enumerate() {
                assert_eq!(det.poll_probes(now), [p]);
                let timeout = det.timeout_of(&p.id);
                now += timeout;
                let verdicts = det.tick(now);
                let suspected = matches!(
                    verdicts[..],
                    [Verdict::Suspected { peer, cause: Cause::Timeout, .. }] if peer == p
                );
                assert!(suspected, "{backoff:?} round {round}: {verdicts:?}");
                now += 100;
                assert_eq!(
                    det.on_ack(p.id, now),
                    Some(Verdict::Restored {
                        peer: p,
                        false_suspicion: true,
                        suspected_ms: 100
                    })
                );
                assert!(!det.is_suspected(&p.id));
                assert_eq!(det.timeout_of(&p.id), *want, "{backoff:?} round {round}");
                // An answer from a peer not suspected is no verdict, and grows nothing.
                assert_eq!(det.on_ack(p.id, now), None);
                assert_eq!(det.timeout_of(&p.id), *want);
                now += 500;
            }
            let rounds = expected.len() as u64;
            assert_eq!(det.stats().suspicions, rounds);
            assert_eq!(det.stats().false_suspicions, rounds);
            assert_eq!(det.peer(&p.id).map(|s| s.false_suspicions), Some(rounds));
        }
    }

    /// Chandra–Toueg ◇P, eventual strong accuracy: a live peer that always answers after `D` ms,
    /// `D > initial_timeout`, is wrongly suspected only until its timeout has grown past `D`.
    #[test]
    fn false_suspicions_of_a_slow_live_peer_stop_once_its_timeout_exceeds_the_delay() {
        // (interval, backoff, delay D, expected false suspicions)
        let cases = [
            // Probes further apart than D: each round is one probe, as in the textbook.
            (5_000, Backoff::Double, 3_500, 2), // 1000, 2000 suspected; 4000 holds
            (5_000, Backoff::Add(1_000), 3_500, 3), // 1000, 2000, 3000; 4000 holds
            (20_000, Backoff::Double, 9_999, 4), // 1000..8000; capped at 10000 holds
            // Probes closer than D: answers to older probes also show life, so it settles sooner.
            (500, Backoff::Double, 3_500, 1),
            (500, Backoff::Add(500), 3_500, 1),
        ];
        for (interval, backoff, delay, expected) in cases {
            let case = (interval, backoff, delay);
            let mut sim = Sim::new(opts(interval, 1_000, backoff), &[peer(1)]);
            sim.run(200_000, |_, _, _| Some(delay));
            let suspicions = sim.suspicions_of(peer(1).id);
            assert_eq!(
                suspicions.len(),
                expected,
                "case {case:?}: {:?}",
                sim.verdicts
            );
            let stats = sim.det.stats();
            assert_eq!(stats.false_suspicions, stats.suspicions, "case {case:?}");
            assert!(!sim.det.is_suspected(&peer(1).id), "case {case:?}");
            for (at, _, timeout) in suspicions {
                assert!(
                    timeout < delay,
                    "case {case:?}: suspected at {at} with timeout {timeout}"
                );
            }
        }
    }

    /// Negative control for the test above: beyond `max_timeout` the peer counts as failed, and
    /// is suspected again and again.
    #[test]
    fn peer_slower_than_max_timeout_is_suspected_forever() {
        let mut sim = Sim::new(opts(20_000, 1_000, Backoff::Double), &[peer(1)]);
        sim.run(400_000, |_, _, _| Some(12_000));
        let suspicions = sim.suspicions_of(peer(1).id);
        assert!(suspicions.len() > 10, "{suspicions:?}");
        assert_eq!(sim.det.timeout_of(&peer(1).id), 10_000);
        assert!(suspicions.last().is_some_and(|(at, _, _)| *at > 350_000));
    }

    #[test]
    fn refused_connection_suspects_at_once_and_a_restart_is_not_a_false_suspicion() {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        assert_eq!(det.poll_probes(0), [p]);
        assert_eq!(det.on_ack(p.id, 50), None);
        assert_eq!(
            det.on_failure(p.id, 300, true),
            Some(Verdict::Suspected {
                peer: p,
                cause: Cause::Refused,
                detection_ms: 250
            })
        );
        assert!(det.is_suspected(&p.id));
        // No second verdict for the same suspicion, by refusal or by timeout.
        assert_eq!(det.on_failure(p.id, 400, true), None);
        assert_eq!(det.poll_probes(600), [p]);
        assert_eq!(det.tick(1_600), []);
        // It restarted: the suspicion was right, so its timeout stays.
        assert_eq!(
            det.on_ack(p.id, 2_000),
            Some(Verdict::Restored {
                peer: p,
                false_suspicion: false,
                suspected_ms: 1_700
            })
        );
        assert_eq!(det.timeout_of(&p.id), 1_000);
        assert_eq!(det.stats().false_suspicions, 0);
        // A refusal while suspected by timeout upgrades the cause.
        assert_eq!(det.poll_probes(2_500), [p]);
        assert!(matches!(
            det.tick(3_500)[..],
            [Verdict::Suspected {
                cause: Cause::Timeout,
                ..
            }]
        ));
        assert_eq!(det.on_failure(p.id, 3_600, true), None);
        assert!(matches!(
            det.on_ack(p.id, 9_000),
            Some(Verdict::Restored {
                false_suspicion: false,
                ..
            })
        ));
        assert_eq!(det.timeout_of(&p.id), 1_000);
        // Unmonitored peers are ignored.
        assert_eq!(det.on_failure(peer(9).id, 9_000, true), None);
    }

    #[test]
    fn any_message_from_a_peer_postpones_its_next_probe_by_an_interval() {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        assert_eq!(det.poll_probes(0), [p]);
        assert_eq!(det.on_ack(p.id, 100), None);
        assert_eq!(
            det.poll_probes(500),
            [],
            "heard at 100: next probe due at 600"
        );
        assert_eq!(det.poll_probes(600), [p]);
        det.on_ack(p.id, 650);
        // Traffic the owner sends anyway (stabilize) keeps the peer unprobed, and unsuspected.
        for heard in [1_000, 1_400, 1_800, 2_200] {
            assert_eq!(det.on_ack(p.id, heard), None);
            assert_eq!(det.poll_probes(heard + 1), []);
            assert_eq!(det.tick(heard + 1), []);
        }
        assert_eq!(det.next_timeout(), Some(2_700));
        assert_eq!(det.stats().probes, 2);
    }

    #[test]
    fn transport_error_other_than_refused_only_hastens_the_next_probe() {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        assert_eq!(det.poll_probes(0), [p]);
        // A probe is outstanding: the error changes nothing, its deadline decides.
        assert_eq!(det.on_failure(p.id, 100, false), None);
        assert_eq!(det.poll_probes(100), []);
        assert_eq!(det.on_ack(p.id, 200), None);
        assert_eq!(det.poll_probes(300), [], "next probe is due at 700");
        // No probe outstanding: the error makes one due at once.
        assert_eq!(det.on_failure(p.id, 300, false), None);
        assert!(!det.is_suspected(&p.id));
        assert_eq!(det.poll_probes(300), [p]);
    }

    #[test]
    fn notice_suspects_a_monitored_peer_unless_we_heard_from_it_within_the_interval() {
        // (last heard, notice at, suspected?)
        let cases = [
            (None, 10, true),
            (Some(1_000), 1_000, false),
            (Some(1_000), 1_499, false),
            (Some(1_000), 1_500, true),
            (Some(1_000), 9_000, true),
        ];
        for (heard, at, suspects) in cases {
            let mut det = Detector::new(DetectorOptions::default());
            let p = peer(1);
            det.monitor([p], 0);
            if let Some(heard) = heard {
                det.on_ack(p.id, heard);
            }
            let verdict = det.on_notice(p, at);
            let case = (heard, at);
            assert_eq!(det.is_suspected(&p.id), suspects, "case {case:?}");
            if suspects {
                assert_eq!(
                    verdict,
                    Some(Verdict::Suspected {
                        peer: p,
                        cause: Cause::Notice,
                        detection_ms: at - heard.unwrap_or(0)
                    }),
                    "case {case:?}"
                );
                assert_eq!(det.stats().notices_applied, 1);
                // A second notice is no news.
                assert_eq!(det.on_notice(p, at + 1), None);
                // It answers after all: restored, but our timeout was not at fault.
                assert!(matches!(
                    det.on_ack(p.id, at + 2),
                    Some(Verdict::Restored {
                        false_suspicion: false,
                        ..
                    })
                ));
                assert_eq!(det.timeout_of(&p.id), 1_000);
            } else {
                assert_eq!(verdict, None, "case {case:?}");
                assert_eq!(det.stats().notices_overridden, 1);
                // ... and the peer is probed at once to settle it.
                assert_eq!(det.poll_probes(at), [p], "case {case:?}");
            }
        }
    }

    #[test]
    fn notice_about_an_unmonitored_peer_is_ignored() {
        let mut det = Detector::new(DetectorOptions::default());
        det.monitor([peer(1)], 0);
        assert_eq!(det.on_notice(peer(2), 5_000), None);
        assert!(!det.is_suspected(&peer(2).id));
        assert_eq!(det.stats(), Stats::default());
    }

    #[test]
    fn leaving_the_monitored_set_forgets_the_peer_but_remembers_its_grown_timeout() {
        let mut det = Detector::new(DetectorOptions::default());
        let (a, b) = (peer(1), peer(2));
        det.monitor([a, b], 0);
        assert_eq!(det.poll_probes(0), [a, b]);
        det.on_ack(b.id, 10);
        assert_eq!(det.tick(1_000).len(), 1);
        det.on_ack(a.id, 1_200); // false suspicion: a's timeout is now 2000
        assert_eq!(det.timeout_of(&a.id), 2_000);

        det.monitor([b], 2_000);
        assert!(det.peer(&a.id).is_none());
        assert_eq!(det.monitored().map(|s| s.node).collect::<Vec<_>>(), [b]);
        assert_eq!(det.remembered(), 1, "b stays monitored, a is remembered");
        assert_eq!(det.timeout_of(&a.id), 2_000);
        assert_eq!(det.on_ack(a.id, 2_100), None, "ignored while unmonitored");

        // Back in the set: probed at once, with the remembered timeout.
        det.monitor([a, b], 3_000);
        assert_eq!(det.remembered(), 0);
        assert_eq!(det.poll_probes(3_000), [a, b]);
        assert_eq!(det.peer(&a.id).and_then(|s| s.probe_deadline), Some(5_000));
        // Dropping b, which never grew, leaves nothing to remember.
        det.monitor([a], 3_100);
        assert_eq!(det.remembered(), 0);
        assert_eq!(det.timeout_of(&b.id), 1_000);
    }

    #[test]
    fn late_answer_from_a_peer_forgotten_while_suspected_still_counts_as_false_suspicion() {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        det.poll_probes(0);
        assert_eq!(det.tick(1_000).len(), 1);
        det.monitor([], 1_000); // the owner dropped it
        assert!(det.is_suspected(&p.id));
        assert_eq!(
            det.on_ack(p.id, 1_700),
            Some(Verdict::Restored {
                peer: p,
                false_suspicion: true,
                suspected_ms: 700
            })
        );
        assert!(!det.is_suspected(&p.id));
        assert_eq!(det.timeout_of(&p.id), 2_000);
        det.monitor([p], 2_000);
        assert_eq!(det.peer(&p.id).map(|s| s.timeout), Some(2_000));
    }

    #[test]
    fn remembered_peer_monitored_again_starts_unsuspected_and_can_be_suspected_again() {
        let mut det = Detector::new(DetectorOptions::default());
        let p = peer(1);
        det.monitor([p], 0);
        det.poll_probes(0);
        assert_eq!(det.tick(1_000).len(), 1);
        det.monitor([], 1_000);
        det.monitor([p], 5_000);
        assert!(!det.is_suspected(&p.id));
        assert_eq!(det.poll_probes(5_000), [p]);
        assert_eq!(
            det.tick(6_000),
            [Verdict::Suspected {
                peer: p,
                cause: Cause::Timeout,
                detection_ms: 1_000
            }]
        );
    }

    #[test]
    fn timeout_memory_is_bounded_and_evicts_the_longest_forgotten() {
        let mut det = Detector::new(DetectorOptions {
            remember: 3,
            ..DetectorOptions::default()
        });
        let peers: Vec<NodeRef> = (1..=5).map(peer).collect();
        let mut now = 0;
        // Give every peer a grown timeout, then forget them one at a time, 5 first.
        det.monitor(peers.iter().copied(), now);
        det.poll_probes(now);
        now += 1_000;
        assert_eq!(det.tick(now).len(), 5);
        for p in &peers {
            det.on_ack(p.id, now);
        }
        for keep in (0..5).rev() {
            now += 1;
            det.monitor(peers[..keep].iter().copied(), now);
        }
        assert_eq!(det.remembered(), 3);
        let timeouts: Vec<u64> = peers.iter().map(|p| det.timeout_of(&p.id)).collect();
        assert_eq!(timeouts, [2_000, 2_000, 2_000, 1_000, 1_000]);
    }

    #[test]
    fn peers_are_probed_and_judged_in_id_order() {
        let mut det = Detector::new(DetectorOptions::default());
        det.monitor([peer(9), peer(3), peer(5), peer(3)], 0);
        assert_eq!(det.poll_probes(0), [peer(3), peer(5), peer(9)]);
        let suspected: Vec<NodeRef> = det
            .tick(1_000)
            .into_iter()
            .filter_map(|v| match v {
                Verdict::Suspected { peer, .. } => Some(peer),
                Verdict::Restored { .. } => None,
            })
            .collect();
        assert_eq!(suspected, [peer(3), peer(5), peer(9)]);
        // Their next probes fell due at 500, held back until the outstanding ones expired.
        assert_eq!(det.next_timeout(), Some(500));
        assert_eq!(det.poll_probes(1_000), [peer(3), peer(5), peer(9)]);
        assert_eq!(det.next_timeout(), Some(2_000));
    }

    #[test]
    fn backoff_grows_capped_and_never_shrinks() {
        let cases = [
            (Backoff::Double, 1_000, 10_000, 2_000),
            (Backoff::Double, 6_000, 10_000, 10_000),
            (Backoff::Double, u64::MAX, u64::MAX, u64::MAX),
            (Backoff::Add(500), 1_000, 10_000, 1_500),
            (Backoff::Add(500), 9_800, 10_000, 10_000),
            (Backoff::Add(500), 12_000, 10_000, 12_000),
        ];
        for (backoff, timeout, max, want) in cases {
            assert_eq!(
                backoff.grow(timeout, max),
                want,
                "{backoff:?} {timeout} {max}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "below initial_timeout")]
    fn options_with_max_below_initial_timeout_are_refused() {
        Detector::new(DetectorOptions {
            max_timeout: 10,
            ..DetectorOptions::default()
        });
    }

    proptest::proptest! {
        /// ◇P accuracy under any schedule: when every probe is answered within `bound` ms
        /// (`bound < max_timeout`), a peer is suspected only while its timeout is below `bound`,
        /// so at most as often as the backoff needs to grow past `bound`.
        #[test]
        fn answers_within_a_bound_stop_suspicions_once_the_timeout_exceeds_it(
            interval in 50u64..3_000,
            initial in 50u64..3_000,
            add in proptest::option::of(1u64..3_000),
            bound in 1u64..9_999,
            delays in proptest::collection::vec(
                proptest::collection::vec(0.0f64..1.0, 1..20),
                1..4,
            ),
        ) {
            let backoff = add.map_or(Backoff::Double, Backoff::Add);
            let o = DetectorOptions {
                interval,
                initial_timeout: initial,
                backoff,
                ..DetectorOptions::default()
            };
            let peers: Vec<NodeRef> = (0..delays.len() as u8).map(peer).collect();
            let mut sim = Sim::new(o, &peers);
            // Every answer takes less than `bound`: the delays are fractions of it, cycled.
            sim.run(300_000, |id, n, _| {
                let d = &delays[usize::from(id.0[0])];
                Some((d[n as usize % d.len()] * bound as f64) as u64 % bound)
            });
            // How many false suspicions it takes the backoff to grow past `bound`.
            let mut steps = 0;
            let mut t = initial;
            while t < bound {
                let grown = backoff.grow(t, o.max_timeout);
                proptest::prop_assert!(grown > t, "{:?} does not grow {}", backoff, t);
                t = grown;
                steps += 1;
            }
            for p in &peers {
                let suspicions = sim.suspicions_of(p.id);
                for (at, _, timeout) in &suspicions {
                    proptest::prop_assert!(
                        *timeout < bound,
                        "suspected at {} with timeout {} >= bound {}", at, timeout, bound
                    );
                }
                proptest::prop_assert!(
                    suspicions.len() <= steps,
                    "{} suspicions, {} growth steps to pass {}", suspicions.len(), steps, bound
                );
            }
        }
    }
}
