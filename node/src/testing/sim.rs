//! A deterministic simulator: many nodes of the real [`Node`] state machine in one process.
//!
//! Time is logical (milliseconds). Messages travel through one priority queue with seeded random
//! delays and, optionally, drops; a partition silently drops messages between two groups, as a
//! network would; a crashed node's peers get "cannot reach" at once, as TCP's connection refused
//! does on a real host (with [`SimOptions::silent_crashes`], nothing at all, as from a host that
//! is gone). The same seed gives the same run, byte for byte, so a failing seed replays.
//!
//! The simulator drives exactly the code the tokio server drives: it calls
//! [`Node::handle_request`], [`Node::handle_response`] and [`Node::tick`] and carries out what
//! [`Node::poll_output`] returns. Nothing here decides protocol behaviour.
//!
//! With [`SimOptions::max_frame`] set, every message is also encoded as the wire would encode
//! it, its size recorded ([`Sim::largest_messages`]), and one over the bound is not delivered:
//! as on a real connection, the sender of an oversized request gets [`Error::TooLarge`] at
//! once, and the asker of an oversized answer gets [`Error::TooLarge`] in its place.

use super::history::{self, History};
use super::zave::RingCheck;
use crate::error::{Error, Result};
use crate::id::{BITS, Id};
use crate::message::{Envelope, NodeRef, Request, RequestId, Response};
use crate::node::{Event, Node, Options, Output};
use crate::ring;
use crate::rpc::ConnId;
use crate::storage::{MemoryStorage, Storage};
use crate::version::Versioned;
use crate::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Connection ids at or above this belong to simulated clients, below it to peer nodes.
const CLIENT_CONN: ConnId = 1 << 40;

/// How the simulated network behaves.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Seeds message delays and drops.
    pub seed: u64,
    /// Shortest one-way message delay, ms.
    pub min_delay: u64,
    /// Longest one-way message delay, ms.
    pub max_delay: u64,
    /// Probability that any one message is lost.
    pub drop_rate: f64,
    /// How often every node's [`Node::tick`] runs, ms.
    pub tick: u64,
    /// The protocol options every node gets.
    pub node: Options,
    /// Keep every node's events for [`Sim::take_events`] (off: long runs would hoard them).
    pub record_events: bool,
    /// Fold every output of every node, with its time and node, into [`Sim::trace_digest`], and
    /// print the digest when the simulation ends. On by default when `CHORDKV_TRACE` is set: two
    /// builds whose runs print the same digests behaved identically, message for message, which
    /// is how a refactor shows it changed no behaviour.
    pub trace: bool,
    /// Encode every message, record its size, and refuse one whose body exceeds this many
    /// bytes (see the module docs); `None` skips the encoding, which costs time.
    pub max_frame: Option<usize>,
    /// The port every simulated node listens on (see [`Sim::addr_on`]). A node's id is the hash
    /// of its address, so another port gives another ring of ids: how a benchmark draws a new
    /// ring per seed.
    pub port: u16,
    /// Crashed nodes vanish from the network, as a powered-off host does: what is sent to
    /// them is lost and the sender waits out its timeout. Off (the default), a crashed node's
    /// peers are refused at once, as by a host whose process died.
    pub silent_crashes: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            min_delay: 1,
            max_delay: 10,
            drop_rate: 0.0,
            tick: 10,
            node: Options::default(),
            record_events: false,
            trace: std::env::var_os("CHORDKV_TRACE").is_some(),
            max_frame: None,
            port: 7000,
            silent_crashes: false,
        }
    }
}

/// A simulated node: its state machine, or the storage it left behind when it crashed.
enum Slot {
    Up(Box<Node<MemoryStorage>>),
    Down(MemoryStorage),
    Gone,
}

enum Msg {
    Request {
        from: usize,
        to: SocketAddr,
        id: RequestId,
        request: Request,
    },
    Response {
        to: usize,
        id: RequestId,
        response: Result<Response>,
    },
}

/// Messages of one kind sent so far, and their bytes on the wire (frame prefix included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// How many were sent.
    pub messages: u64,
    /// Their encoded frames' total length.
    pub bytes: u64,
}

/// A simulated cluster. Nodes are named by index, in the order they were added.
pub struct Sim {
    opts: SimOptions,
    now: u64,
    rng: StdRng,
    addrs: Vec<SocketAddr>,
    slots: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    msgs: BTreeMap<u64, Msg>,
    seq: u64,
    /// Pairs of nodes that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    /// Kinds of request ([`Request::kind`]) lost in transit, whoever sends them.
    lost_kinds: BTreeSet<&'static str>,
    next_client: ConnId,
    responses: BTreeMap<(ConnId, RequestId), Result<Response>>,
    events: Vec<(u64, usize, Event)>,
    /// Count of messages delivered, for cost reports.
    pub delivered: u64,
    /// Digest of every output so far, with [`SimOptions::trace`].
    trace: DefaultHasher,
    outputs: u64,
    /// Zave's invariant over the running members' successor lists, checked after every step.
    ring_check: RingCheck,
    /// Each node's successor list as `ring_check` last saw it (`None`: not a member).
    checked_lists: Vec<Option<Vec<Id>>>,
    /// Nodes asked to leave: no longer counted as members.
    departing: BTreeSet<usize>,
    by_id: BTreeMap<Id, usize>,
    /// With [`SimOptions::max_frame`]: the largest body seen per message kind, and the kind of
    /// request each pending answer is for, by answering node, connection and request id.
    largest: BTreeMap<String, usize>,
    asked: BTreeMap<(usize, ConnId, RequestId), &'static str>,
    /// With [`SimOptions::max_frame`]: what was sent between nodes, by kind.
    traffic: BTreeMap<String, Traffic>,
}

impl Sim {
    /// An empty simulation.
    pub fn new(opts: SimOptions) -> Sim {
        let successors = opts.node.ring.successors;
        let mut ring_check = RingCheck::new(successors);
        ring_check.set_reliable(opts.drop_rate == 0.0, 0);
        Sim {
            rng: StdRng::seed_from_u64(opts.seed),
            opts,
            now: 0,
            addrs: Vec::new(),
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            queue: BinaryHeap::new(),
            msgs: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            lost_kinds: BTreeSet::new(),
            next_client: CLIENT_CONN,
            responses: BTreeMap::new(),
            events: Vec::new(),
            delivered: 0,
            trace: DefaultHasher::new(),
            outputs: 0,
            ring_check,
            checked_lists: Vec::new(),
            departing: BTreeSet::new(),
            by_id: BTreeMap::new(),
            largest: BTreeMap::new(),
            asked: BTreeMap::new(),
            traffic: BTreeMap::new(),
        }
    }

    /// With [`SimOptions::max_frame`]: the largest encoded body of every kind of message sent
    /// so far, in bytes, requests by [`Request::kind`] and answers as "`kind` answer" (refused
    /// ones included).
    pub fn largest_messages(&self) -> &BTreeMap<String, usize> {
        &self.largest
    }

    /// With [`SimOptions::max_frame`]: every message sent between nodes since the start (or the
    /// last [`Sim::reset_traffic`]), by kind as in [`Sim::largest_messages`]: what maintenance
    /// costs. Refused messages are not counted; messages lost in transit are (they were sent).
    pub fn traffic(&self) -> &BTreeMap<String, Traffic> {
        &self.traffic
    }

    /// Start counting [`Sim::traffic`] afresh.
    pub fn reset_traffic(&mut self) {
        self.traffic.clear();
    }

    /// With [`SimOptions::max_frame`]: record the size of `envelope`, a message of `kind`, and
    /// the refusal a real connection would give if it exceeds the bound.
    fn check_frame(&mut self, kind: String, envelope: &Envelope) -> Option<Error> {
        let max_frame = self.opts.max_frame?;
        let size = match wire::encode_frame(envelope, wire::HARD_MAX_FRAME) {
            Ok(frame) => frame.len() - wire::PREFIX_LEN,
            Err(e) => return Some(e),
        };
        if size > max_frame {
            let largest = self.largest.entry(kind).or_default();
            *largest = (*largest).max(size);
            return Some(Error::TooLarge {
                what: "frame".into(),
                size: size as u64,
                limit: max_frame as u64,
            });
        }
        let traffic = self.traffic.entry(kind.clone()).or_default();
        traffic.messages += 1;
        traffic.bytes += (size + wire::PREFIX_LEN) as u64;
        let largest = self.largest.entry(kind).or_default();
        *largest = (*largest).max(size);
        None
    }

    /// A digest of every output every node produced so far, with the time and the node (only
    /// with [`SimOptions::trace`]; else a constant).
    pub fn trace_digest(&self) -> u64 {
        self.trace.finish()
    }

    /// The current logical time, ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// How many nodes were ever added.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The simulated address of node `i` at the default port: 127.x.y.z:7000, unique per index.
    pub fn addr(i: usize) -> SocketAddr {
        Sim::addr_on(i, SimOptions::default().port)
    }

    /// The simulated address of node `i` at `port`: 127.x.y.z:port, unique per index.
    pub fn addr_on(i: usize, port: u16) -> SocketAddr {
        let i = i as u32 + 1;
        let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        SocketAddr::new(IpAddr::V4(ip), port)
    }

    /// The index of the node at `addr`, if it is one of ours.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// Node `i` as others see it.
    pub fn node_ref(&self, i: usize) -> NodeRef {
        let addr = self.addrs[i];
        NodeRef {
            id: Id::hash(addr.to_string().as_bytes()),
            addr,
        }
    }

    /// Add a node and start it: alone when `bootstrap` is `None`, else joining through that node.
    pub fn add_node(&mut self, bootstrap: Option<usize>) -> usize {
        let i = self.place_node();
        self.boot(i, bootstrap);
        i
    }

    /// Give the next node index an address and an empty, stopped slot.
    fn place_node(&mut self) -> usize {
        let i = self.slots.len();
        let addr = Sim::addr_on(i, self.opts.port);
        self.addrs.push(addr);
        self.by_addr.insert(addr, i);
        self.by_id.insert(self.node_ref(i).id, i);
        self.checked_lists.push(None);
        self.slots.push(Slot::Down(MemoryStorage::new()));
        i
    }

    /// Add `n` nodes to an empty simulation as a ring that has settled: every node starts with
    /// the successor list, predecessor and fingers the protocol converges to
    /// ([`Sim::ring_errors`] is empty at once), owning its range, with empty storage. Growing
    /// a ring of thousands by joins takes hours of simulation; the protocol runs from this
    /// state as from any other (tests/sim_ring checks it is the state joins reach).
    ///
    /// # Panics
    /// If nodes were added before.
    pub fn grow_settled(&mut self, n: usize) {
        assert!(self.slots.is_empty(), "grow_settled builds a whole ring");
        for _ in 0..n {
            let i = self.place_node();
            let mut opts = self.opts.node.clone();
            opts.seed = self.opts.seed;
            let node = Node::new(self.node_ref(i), opts, MemoryStorage::new(), self.now);
            self.slots[i] = Slot::Up(Box::new(node));
        }
        let ring = self.true_ring_of(|_| true);
        let r = self.opts.node.ring.successors.min(n.saturating_sub(1));
        for (pos, me) in ring.iter().enumerate() {
            let succs: Vec<NodeRef> = (1..=r).map(|k| ring[(pos + k) % n]).collect();
            let pred = (n > 1).then(|| ring[(pos + n - 1) % n]);
            let fingers = (0..BITS)
                .map(|f| successor_in(&ring, me.id.add_pow2(f)).filter(|o| o.id != me.id))
                .collect();
            let i = self.by_addr[&me.addr];
            if let Some(node) = self.node_mut(i) {
                node.ring_mut().set_settled(pred, succs, fingers);
            }
        }
        for i in 0..n {
            self.watch_ring(i);
        }
        for i in 0..n {
            self.check_ring(i);
        }
    }

    fn boot(&mut self, i: usize, bootstrap: Option<usize>) {
        let storage = match std::mem::replace(&mut self.slots[i], Slot::Gone) {
            Slot::Down(s) => s,
            other => {
                self.slots[i] = other;
                return;
            }
        };
        let mut opts = self.opts.node.clone();
        opts.seed = self.opts.seed;
        let mut node = Node::new(self.node_ref(i), opts, storage, self.now);
        node.start(bootstrap.map(|b| self.addrs[b]), self.now);
        self.slots[i] = Slot::Up(Box::new(node));
        self.departing.remove(&i);
        self.drain(i);
        self.check_ring(i);
    }

    /// Crash node `i`: it stops at once; its storage is kept for a restart.
    pub fn crash(&mut self, i: usize) {
        if let Slot::Up(node) = std::mem::replace(&mut self.slots[i], Slot::Gone) {
            self.slots[i] = Slot::Down(node.into_storage());
        }
        // The principals the crash took are the test's doing; a member left with no live
        // successor is outside the model the protocol is proven in: say so.
        self.watch_ring(i);
        self.ring_check.lowered();
        let (slots, by_id) = (&self.slots, &self.by_id);
        let live = |id: Id| {
            by_id
                .get(&id)
                .is_some_and(|&j| matches!(slots[j], Slot::Up(_)))
        };
        if let Err(e) = self.ring_check.check_all(self.now, live) {
            panic!(
                "seed {}, {} ms: crashing n{i} broke Zave's invariant: {e}",
                self.opts.seed, self.now
            );
        }
    }

    /// Restart a crashed node on its old storage, joining through `bootstrap`.
    pub fn restart(&mut self, i: usize, bootstrap: Option<usize>) {
        self.boot(i, bootstrap);
    }

    /// Ask node `i` to leave gracefully; it disappears once it reports [`ring::Event::Left`].
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(c) = self.node_mut(i) {
            c.leave(now);
        }
        // A leaving node is no longer a member: the principal it was is the test's doing.
        self.departing.insert(i);
        self.watch_ring(i);
        self.ring_check.lowered();
        self.drain(i);
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        matches!(self.slots[i], Slot::Up(_))
    }

    /// Node `i`'s state machine, if it is running.
    pub fn node(&self, i: usize) -> Option<&Node<MemoryStorage>> {
        match &self.slots[i] {
            Slot::Up(c) => Some(c),
            _ => None,
        }
    }

    fn node_mut(&mut self, i: usize) -> Option<&mut Node<MemoryStorage>> {
        match &mut self.slots[i] {
            Slot::Up(c) => Some(c),
            _ => None,
        }
    }

    /// Cut every link between a node of `a` and a node of `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
        self.ring_check.set_reliable(false, self.now);
    }

    /// Change the probability that a message is lost, from now on.
    pub fn set_drop_rate(&mut self, p: f64) {
        self.opts.drop_rate = p;
        let quiet = self.quiet_until();
        self.ring_check
            .set_reliable(p == 0.0 && self.cut.is_empty(), quiet);
    }

    /// By when every message lost so far has been given up on (a probe stays pending for the
    /// detector's longest timeout, a request for the RPC timeout) and a ring that lost a member
    /// to a false suspicion has had a stabilization round to take it back.
    fn quiet_until(&self) -> u64 {
        let ring = &self.opts.node.ring;
        self.now + ring.detector.max_timeout.max(ring.rpc_timeout) + ring.stabilize_interval
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.cut.clear();
        let quiet = self.quiet_until();
        self.ring_check
            .set_reliable(self.opts.drop_rate == 0.0, quiet);
    }

    /// Events every node reported, with the time and node index, since the last call (only
    /// with [`SimOptions::record_events`]).
    pub fn take_events(&mut self) -> Vec<(u64, usize, Event)> {
        std::mem::take(&mut self.events)
    }

    /// Send a client request to node `i`; returns a token for [`Sim::response`].
    pub fn submit(&mut self, i: usize, request: Request) -> (ConnId, RequestId) {
        let conn = self.next_client;
        self.next_client += 1;
        let now = self.now;
        match self.node_mut(i) {
            Some(c) => c.handle_request(conn, 1, request, now),
            None => {
                let e = Error::Unavailable(format!("cannot reach node {i}: it is down"));
                self.responses.insert((conn, 1), Err(e));
            }
        }
        self.drain(i);
        (conn, 1)
    }

    /// The response to a submitted request, once it arrived.
    pub fn response(&mut self, token: (ConnId, RequestId)) -> Option<Result<Response>> {
        self.responses.remove(&token)
    }

    /// Submit a client request to node `i` and run until it is answered (or `max_ms` pass).
    ///
    /// # Errors
    /// The node's answer if it is an error, or [`Error::Timeout`] if none came in time.
    pub fn request(&mut self, i: usize, request: Request, max_ms: u64) -> Result<Response> {
        let token = self.submit(i, request);
        let deadline = self.now + max_ms;
        while self.now < deadline {
            if let Some(r) = self.response(token) {
                return r;
            }
            self.step();
        }
        self.response(token)
            .unwrap_or_else(|| Err(Error::Timeout("simulated request got no answer".into())))
    }

    /// Run for `ms` of logical time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Run until `done` holds (checked every tick) or `max_ms` pass; returns whether it held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max_ms;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Advance to the next tick boundary, delivering every message due before it, then tick all.
    fn step(&mut self) {
        let next_tick = (self.now / self.opts.tick + 1) * self.opts.tick;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > next_tick {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            if let Some(msg) = self.msgs.remove(&seq) {
                self.deliver(msg);
            }
        }
        self.now = next_tick;
        for i in 0..self.slots.len() {
            let now = self.now;
            if let Some(c) = self.node_mut(i) {
                c.tick(now);
                self.drain(i);
                self.check_ring(i);
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        self.delivered += 1;
        let now = self.now;
        match msg {
            Msg::Request {
                from,
                to,
                id,
                request,
            } => {
                let target = self.by_addr.get(&to).copied();
                // Only a running node answers (and so has an answer to measure).
                if let (Some(t), Some(_)) = (target, self.opts.max_frame) {
                    if self.is_up(t) {
                        self.asked.insert((t, from as ConnId, id), request.kind());
                    }
                }
                let silent = self.opts.silent_crashes && target.is_some();
                match target.and_then(|t| self.node_mut(t).map(|c| (t, c))) {
                    Some((t, c)) => {
                        c.handle_request(from as ConnId, id, request, now);
                        self.drain(t);
                        self.check_ring(t);
                    }
                    None if silent => {
                        // A host that is gone: the request is lost.
                    }
                    None => {
                        // Nothing listens there: connection refused, answered at once.
                        let e = Error::Unreachable(format!("{to}: connection refused"));
                        self.post(
                            from,
                            to,
                            Msg::Response {
                                to: from,
                                id,
                                response: Err(e),
                            },
                        );
                    }
                }
            }
            Msg::Response { to, id, response } => {
                if let Some(c) = self.node_mut(to) {
                    c.handle_response(id, response, now);
                    self.drain(to);
                    self.check_ring(to);
                }
            }
        }
    }

    /// With [`SimOptions::max_frame`]: node `i`'s answer on `conn` to request `id`, or the
    /// error the asker gets in its place if it is too large for a frame.
    fn check_answer(
        &mut self,
        i: usize,
        conn: ConnId,
        id: RequestId,
        response: Result<Response>,
    ) -> Result<Response> {
        let Some(kind) = self.asked.remove(&(i, conn, id)) else {
            return response;
        };
        let envelope = Envelope::Response { id, body: response };
        let refused = self.check_frame(format!("{kind} answer"), &envelope);
        let Envelope::Response { body, .. } = envelope else {
            unreachable!("built as a response above")
        };
        match refused {
            Some(e) => Err(e),
            None => body,
        }
    }

    /// Carry out node `i`'s outputs.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.node_mut(i).and_then(|c| c.poll_output()) {
            if self.opts.trace {
                (self.now, i, format!("{out:?}")).hash(&mut self.trace);
                self.outputs += 1;
            }
            match out {
                Output::Send { to, id, request } => {
                    let kind = request.kind().to_string();
                    let envelope = Envelope::Request { id, body: request };
                    let refused = self.check_frame(kind, &envelope);
                    let Envelope::Request { body: request, .. } = envelope else {
                        unreachable!("built as a request above")
                    };
                    if let Some(e) = refused {
                        // The sender's channel refuses it before writing anything.
                        let addr = self.addrs[i];
                        let response = Err(e);
                        self.post(
                            i,
                            addr,
                            Msg::Response {
                                to: i,
                                id,
                                response,
                            },
                        );
                        continue;
                    }
                    let msg = Msg::Request {
                        from: i,
                        to,
                        id,
                        request,
                    };
                    self.post(i, to, msg);
                }
                Output::Respond { conn, id, response } => {
                    if conn >= CLIENT_CONN {
                        self.responses.insert((conn, id), response);
                    } else {
                        let to = conn as usize;
                        let addr = self.addrs[to];
                        let response = self.check_answer(i, conn, id, response);
                        self.post(i, addr, Msg::Response { to, id, response });
                    }
                }
                Output::Event(e) => {
                    if let Event::Ring(ring::Event::Left { .. }) = e {
                        if let Slot::Up(c) = std::mem::replace(&mut self.slots[i], Slot::Gone) {
                            self.slots[i] = Slot::Down(c.into_storage());
                        }
                    }
                    if self.opts.record_events {
                        self.events.push((self.now, i, e));
                    }
                }
            }
        }
    }

    /// Tell the ring check what node `i`'s successor list is now, if it changed.
    fn watch_ring(&mut self, i: usize) {
        let member = self
            .node(i)
            .filter(|n| n.is_joined() && !self.departing.contains(&i));
        let same = match (member, &self.checked_lists[i]) {
            (None, None) => true,
            (Some(n), Some(seen)) => n
                .ring()
                .successors()
                .iter()
                .map(|s| s.id)
                .eq(seen.iter().copied()),
            _ => false,
        };
        if same {
            return;
        }
        let list: Option<Vec<Id>> =
            member.map(|n| n.ring().successors().iter().map(|s| s.id).collect());
        self.checked_lists[i] = list.clone();
        let id = self.node_ref(i).id;
        self.ring_check.set(id, list);
    }

    /// After a step at node `i`: Zave's invariant still holds ([`RingCheck`]), or the
    /// simulation stops with the seed and the time.
    fn check_ring(&mut self, i: usize) {
        self.watch_ring(i);
        let id = self.node_ref(i).id;
        let (slots, by_id) = (&self.slots, &self.by_id);
        let live = |id: Id| {
            by_id
                .get(&id)
                .is_some_and(|&j| matches!(slots[j], Slot::Up(_)))
        };
        if let Err(e) = self.ring_check.check(id, self.now, live) {
            panic!(
                "seed {}, {} ms: Zave's invariant broken after a step at n{i}: {e}",
                self.opts.seed, self.now
            );
        }
    }

    /// Lose every request of this kind ([`Request::kind`]) from now on, or (`lost: false`)
    /// deliver them again: a hand-off that never gets through, say, while the node is
    /// otherwise reachable.
    pub fn lose_requests(&mut self, kind: &'static str, lost: bool) {
        if lost {
            self.lost_kinds.insert(kind);
        } else {
            self.lost_kinds.remove(kind);
        }
    }

    /// Queue a message from node `from` toward `to_addr` with a random delay, unless it is lost.
    fn post(&mut self, from: usize, to_addr: SocketAddr, msg: Msg) {
        if let Msg::Request { request, .. } = &msg {
            if self.lost_kinds.contains(request.kind()) {
                return;
            }
        }
        let to = self.by_addr.get(&to_addr).copied();
        if let Some(t) = to {
            if self.cut.contains(&(from, t)) {
                return;
            }
        }
        if self.opts.drop_rate > 0.0 && self.rng.random_bool(self.opts.drop_rate) {
            return;
        }
        let delay = self
            .rng
            .random_range(self.opts.min_delay..=self.opts.max_delay);
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.msgs.insert(self.seq, msg);
    }

    // ---------------------------------------------------------------- checking

    /// The running, joined nodes sorted by id: the ring as it truly is.
    pub fn true_ring(&self) -> Vec<NodeRef> {
        self.true_ring_of(|c| c.is_joined())
    }

    /// The running nodes for which `member` holds, sorted by id.
    pub fn true_ring_of(&self, member: impl Fn(&Node<MemoryStorage>) -> bool) -> Vec<NodeRef> {
        let mut ring: Vec<NodeRef> = (0..self.slots.len())
            .filter_map(|i| self.node(i))
            .filter(|c| member(c))
            .map(|c| c.me())
            .collect();
        ring.sort();
        ring
    }

    /// The true successor of `id` among the running nodes.
    pub fn true_successor(&self, id: Id) -> Option<NodeRef> {
        successor_in(&self.true_ring(), id)
    }

    /// Every way the nodes' pointers differ from the true ring: successor lists, predecessors and,
    /// when `fingers` is set, every finger. Empty means the ring is exactly right.
    pub fn ring_errors(&self, fingers: bool) -> Vec<String> {
        let ring = self.true_ring();
        let n = ring.len();
        let mut errors: Vec<String> = (0..self.slots.len())
            .filter(|&i| self.node(i).is_some_and(|c| !c.is_joined()))
            .map(|i| format!("n{i}: still joining"))
            .collect();
        for (pos, me) in ring.iter().enumerate() {
            let Some(i) = self.by_addr.get(&me.addr).copied() else {
                continue;
            };
            let Some(c) = self.node(i) else { continue };
            let r = self.opts.node.ring.successors.min(n - 1);
            let want: Vec<NodeRef> = (1..=r).map(|k| ring[(pos + k) % n]).collect();
            if c.ring().successors() != want.as_slice() {
                errors.push(format!(
                    "n{i}: successors {:?}, want {:?}",
                    c.ring().successors(),
                    want
                ));
            }
            let want_pred = (n > 1).then(|| ring[(pos + n - 1) % n]);
            if c.ring().predecessor() != want_pred {
                errors.push(format!(
                    "n{i}: predecessor {:?}, want {want_pred:?}",
                    c.ring().predecessor()
                ));
            }
            if fingers && n > 1 {
                for f in 0..BITS {
                    let start = me.id.add_pow2(f);
                    let owner = successor_in(&ring, start).filter(|o| o.id != me.id);
                    if c.ring().finger(f) != owner {
                        errors.push(format!(
                            "n{i}: finger {f} is {:?}, want {owner:?}",
                            c.ring().finger(f)
                        ));
                    }
                }
            }
        }
        errors
    }

    /// The index of the running node that truly owns `key`.
    pub fn owner_of(&self, key: &[u8]) -> Option<usize> {
        let owner = self.true_successor(Id::hash(key))?;
        self.by_addr.get(&owner.addr).copied()
    }

    /// Which running nodes hold `key` in their storage.
    pub fn holders(&self, key: &[u8]) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                self.node(i)
                    .is_some_and(|c| matches!(c.storage().get(key), Ok(Some(_))))
            })
            .collect()
    }

    /// Node `i`'s stored state of `key` (empty if it has none or is down).
    pub fn stored_state(&self, i: usize, key: &[u8]) -> Result<Versioned> {
        match self
            .node(i)
            .map(|c| c.storage().get(key))
            .transpose()?
            .flatten()
        {
            Some(bytes) => Versioned::decode(&bytes),
            None => Ok(Versioned::empty()),
        }
    }

    /// The merge of every running node's copy of `key`, after checking that the key's owner and
    /// its next `replicas − 1` successors each hold exactly that merge (replicas converged).
    ///
    /// # Errors
    /// A description of the first replica that differs, or a state that does not decode.
    pub fn converged_state(&self, key: &[u8], replicas: usize) -> Result<Versioned> {
        let mut merged = Versioned::empty();
        for i in self.holders(key) {
            merged.merge(&self.stored_state(i, key)?);
        }
        for i in self.preference_list(key, replicas) {
            if self.stored_state(i, key)? != merged {
                return Err(Error::InvalidData(format!(
                    "replica n{i} of {:?} has not converged",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        Ok(merged)
    }

    /// The key's preference list in the true ring: its owner and next `replicas − 1`
    /// successors, as node indices.
    pub fn preference_list(&self, key: &[u8], replicas: usize) -> Vec<usize> {
        let ring = self.true_ring();
        let Some(owner) = self.true_successor(Id::hash(key)) else {
            return Vec::new();
        };
        let at = ring.iter().position(|n| *n == owner).unwrap_or(0);
        (0..replicas.min(ring.len()))
            .map(|k| self.by_addr[&ring[(at + k) % ring.len()].addr])
            .collect()
    }

    /// The running nodes holding a copy of `key` outside its preference list: strays a moved
    /// range left behind, which collection should remove once their owner has what they hold.
    pub fn strays(&self, key: &[u8], replicas: usize) -> Vec<usize> {
        let keepers = self.preference_list(key, replicas);
        self.holders(key)
            .into_iter()
            .filter(|i| !keepers.contains(i))
            .collect()
    }

    /// Grow a ring: a first node, then `n − 1` more joining through it, `every_ms` apart.
    pub fn grow(&mut self, n: usize, every_ms: u64) {
        if n == 0 {
            return;
        }
        let first = self.add_node(None);
        for _ in 1..n {
            self.add_node(Some(first));
            self.run_for(every_ms);
        }
    }

    /// Run until every successor list and predecessor is exact, checking every 100 ms, for at
    /// most `max_ms`; returns whether it got there.
    pub fn settle(&mut self, max_ms: u64) -> bool {
        self.run_until(max_ms, |s| {
            s.now() % 100 == 0 && s.ring_errors(false).is_empty()
        })
    }

    /// Judge a client history against the data: every written key must have converged on its
    /// `replicas` copies ([`Sim::converged_state`]) and be held nowhere else ([`Sim::strays`]),
    /// and the history checker must find no lost, duplicated, phantom or resurrected write in
    /// those states.
    ///
    /// # Errors
    /// The first key that has not converged or has strays, or the checker's first violation
    /// and their count.
    pub fn check_history(&self, history: &mut History, replicas: usize) -> Result<()> {
        let keys: BTreeSet<Vec<u8>> = history.writes().iter().map(|w| w.key.clone()).collect();
        for key in keys {
            let state = self.converged_state(&key, replicas)?;
            let strays = self.strays(&key, replicas);
            if !strays.is_empty() {
                return Err(Error::InvalidData(format!(
                    "{:?} still has copies outside its preference list, on {strays:?}",
                    String::from_utf8_lossy(&key)
                )));
            }
            history.record_final_state(&key, &state);
        }
        let violations = history::check(history);
        let Some(first) = violations.first() else {
            return Ok(());
        };
        // Name the writes to the first key in trouble, to start the diagnosis from.
        let text = first.to_string();
        let writes: Vec<String> = history
            .writes()
            .iter()
            .filter(|w| text.contains(&format!("{:?}", String::from_utf8_lossy(&w.key))))
            .take(10)
            .map(|w| format!("{w:?}"))
            .collect();
        Err(Error::InvalidData(format!(
            "{} violations, first: {first}; writes to that key: {writes:#?}",
            violations.len()
        )))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.opts.trace {
            let (checked, enforced) = self.ring_check.steps();
            eprintln!(
                "sim trace: seed {} nodes {} outputs {} digest {:016x} ring checks {checked} \
                 ({enforced} with r + 1 principals)",
                self.opts.seed,
                self.slots.len(),
                self.outputs,
                self.trace_digest()
            );
        }
    }
}

/// The first node of the sorted `ring` at or after `id`, wrapping around.
pub fn successor_in(ring: &[NodeRef], id: Id) -> Option<NodeRef> {
    let at = ring.partition_point(|n| n.id < id);
    ring.get(at).or(ring.first()).copied()
}
