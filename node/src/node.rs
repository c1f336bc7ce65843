//! One chordkv node: the ring ([`crate::ring`]) and the data layer ([`crate::kv`]) composed
//! into the single state machine that the tokio [`crate::server`] and the simulator drive.
//!
//! The node routes each input to the layer it concerns and keeps the order between them: the
//! ring hears every answer first (it is the heartbeat that counts), then the layer that asked
//! handles it; after each step of the ring, its [notices](ring::Notice) go to the data layer at once. Both
//! layers write into one output queue through [`Io`], so outputs come out in the order the
//! layers made them, and request ids and operation numbers are unique node-wide.
//!
//! # Call contract
//!
//! [`Node`] owns no sockets, clocks, threads or global randomness. The driver feeds it inputs,
//! each stamped with the current time in milliseconds (any monotonic origin):
//! - [`Node::start`]: form a ring of one, or join through a bootstrap address.
//! - [`Node::handle_request`]: a request that arrived on connection `conn` (an opaque number the
//!   driver chose), from a peer or a client.
//! - [`Node::handle_response`]: the answer, or the transport's error, for a request the node
//!   asked to send. Every [`Output::Send`] must eventually get exactly one; the node also times
//!   requests out itself, and ignores answers that arrive afterwards.
//! - [`Node::tick`]: time passed. Call it often (every 10–50 ms); intervals live in [`Options`].
//! - [`Node::leave`]: begin a graceful leave.
//!
//! After every input, drain [`Node::poll_output`] until it returns `None`: messages to send,
//! responses to deliver, and [`Event`]s to log or count. A response that acknowledges a write must
//! not reach the network before the driver has made the write durable ([`Storage::flush`]).

use crate::error::{Error, Result};
use crate::kv::{self, Kv, KvIo};
use crate::message::{NodeRef, NodeStatus, Request, RequestId, Response};
use crate::ring::{self, Ring, RingIo};
use crate::rpc::{ConnId, Io, Refusals};
use crate::storage::Storage;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;

/// Every tunable of a node: the ring's and the data layer's. Tests pin them; the node binary
/// exposes the main ones as flags.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The ring: successor list, stabilization, fingers, failure detection, timeouts.
    pub ring: ring::Options,
    /// The data: replicas and quorums, hand-over, anti-entropy, collection, versions.
    pub kv: kv::Options,
    /// Seed for the timer phases, so that nodes started together do not act in lockstep, and
    /// part of the node's incarnation number (a counter in the storage meta keeps runs apart
    /// whatever the seed: [`Kv::incarnation`]).
    pub seed: u64,
}

/// What the node asks its driver to do, or tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send `request` to the node at `to`; feed its answer to [`Node::handle_response`] with `id`.
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

/// Things the node reports for logs, metrics and tests: the ring's and the data layer's.
#[derive(Clone, PartialEq)]
pub enum Event {
    /// On the ring (joins, successors, lookups, suspicions, the end of a leave).
    Ring(ring::Event),
    /// To the data (copies, hand-overs, repairs, collection, storage errors).
    Kv(kv::Event),
}

impl fmt::Debug for Event {
    /// As the layer's own event: which layer it came from shows in its name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ring(e) => fmt::Debug::fmt(e, f),
            Event::Kv(e) => fmt::Debug::fmt(e, f),
        }
    }
}

/// Where both layers' outputs go, and the numbers they draw, node-wide.
struct NodeIo {
    now: u64,
    rpc_timeout: u64,
    next_id: RequestId,
    next_op: u64,
    outbox: VecDeque<Output>,
}

impl Io for NodeIo {
    fn now(&self) -> u64 {
        self.now
    }

    fn rpc_timeout(&self) -> u64 {
        self.rpc_timeout
    }

    fn next_op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    fn send(&mut self, to: SocketAddr, request: Request) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.outbox.push_back(Output::Send { to, id, request });
        id
    }

    fn respond(&mut self, conn: ConnId, id: RequestId, response: Result<Response>) {
        self.outbox
            .push_back(Output::Respond { conn, id, response });
    }
}

impl RingIo for NodeIo {
    fn emit(&mut self, event: ring::Event) {
        self.outbox.push_back(Output::Event(Event::Ring(event)));
    }
}

impl KvIo for NodeIo {
    fn report(&mut self, event: kv::Event) {
        self.outbox.push_back(Output::Event(Event::Kv(event)));
    }
}

/// Whose request an answer belongs to.
enum Asker {
    Ring(ring::Purpose),
    Kv(kv::Purpose),
}

/// One node: its view of the ring and its data. See the [module documentation](self) for the
/// call contract.
pub struct Node<S: Storage> {
    io: NodeIo,
    ring: Ring,
    kv: Kv<S>,
}

impl<S: Storage> Node<S> {
    /// A node that is not yet part of any ring. Call [`Node::start`] next.
    pub fn new(me: NodeRef, opts: Options, storage: S, now: u64) -> Self {
        Node {
            io: NodeIo {
                now,
                rpc_timeout: opts.ring.rpc_timeout,
                next_id: 1,
                next_op: 1,
                outbox: VecDeque::new(),
            },
            ring: Ring::new(me, opts.ring, opts.seed, now),
            kv: Kv::new(me, opts.kv, storage, opts.seed, now),
        }
    }

    /// Form a ring of one (`bootstrap` is `None` or our own address) or join the ring that the node
    /// at `bootstrap` belongs to. Joining retries until it succeeds.
    pub fn start(&mut self, bootstrap: Option<SocketAddr>, now: u64) {
        self.io.now = now;
        self.ring.start(&mut self.io, bootstrap);
        self.pass_notices();
    }

    /// Begin a graceful leave: hand every key to the successor, tell the neighbours, then emit
    /// [`ring::Event::Left`]. Client requests are refused from now on.
    pub fn leave(&mut self, now: u64) {
        self.io.now = now;
        if self.ring.is_leaving() {
            return;
        }
        self.ring.leave();
        self.kv.leave(&mut self.ring, &mut self.io);
        self.pass_notices();
    }

    /// This node.
    pub fn me(&self) -> NodeRef {
        self.ring.me()
    }

    /// Whether the node has joined a ring.
    pub fn is_joined(&self) -> bool {
        self.ring.is_joined()
    }

    /// The node's view of the ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The node's view of the ring, mutably (for the simulator's settled rings).
    pub(crate) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    /// The node's data layer.
    pub fn kv(&self) -> &Kv<S> {
        &self.kv
    }

    /// The storage engine (for status and tests).
    pub fn storage(&self) -> &S {
        self.kv.storage()
    }

    /// The storage engine, mutably (for the driver's flush and for tests that seed data).
    pub fn storage_mut(&mut self) -> &mut S {
        self.kv.storage_mut()
    }

    /// Take the storage engine back, as a crash or shutdown does (the simulator restarts nodes
    /// on it).
    pub fn into_storage(self) -> S {
        self.kv.into_storage()
    }

    /// The requests this node refused as implausible for its view of the ring, by kind (both
    /// layers'; see PLAUSIBILITY in [`crate::ring`] and [`crate::kv`]). For metrics and tests.
    pub fn refusals(&self) -> Refusals {
        let mut all = self.ring.refusals().clone();
        all.add(self.kv.refusals());
        all
    }

    /// The node's view of itself, as answered to [`Request::Status`].
    pub fn status(&self) -> NodeStatus {
        let ring = &self.ring;
        NodeStatus {
            node: ring.me(),
            joined: ring.is_joined(),
            pred: ring.predecessor(),
            succs: ring.successors().to_vec(),
            fingers: ring.distinct_fingers(),
            keys: self.kv.keys_stored(),
            successors_wanted: ring.options().successors as u32,
            owned: self.kv.keys_owned(ring),
            replicas: self.kv.replicas_available(ring) as u32,
            replicas_wanted: self.kv.options().replicas as u32,
        }
    }

    /// The next output to carry out, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.io.outbox.pop_front()
    }

    // ---------------------------------------------------------------- inputs

    /// Time passed: expire requests past their deadline, then run the ring's timers and the
    /// data layer's.
    pub fn tick(&mut self, now: u64) {
        self.io.now = now;
        let mut expired: Vec<RequestId> = self.ring.expired_calls(now).collect();
        expired.extend(self.kv.expired_calls(now));
        expired.sort_unstable();
        for id in expired {
            let timeout = Err(Error::Timeout("peer did not answer".into()));
            self.handle_response(id, timeout, now);
        }
        self.ring.tick(&mut self.io);
        self.pass_notices();
        self.kv.tick(&mut self.ring, &mut self.io);
        self.pass_notices();
    }

    /// A request arrived on connection `conn`.
    pub fn handle_request(&mut self, conn: ConnId, id: RequestId, request: Request, now: u64) {
        self.io.now = now;
        let response = match request {
            Request::Status => Some(Ok(Response::Status(self.status()))),
            // Fault injection is the transport's business; the server answers it.
            Request::Block { .. } => Some(Err(Error::InvalidInput(
                "fault injection is handled by the server".into(),
            ))),
            Request::Ping
            | Request::FindSuccessor { .. }
            | Request::GetNeighbors
            | Request::Notify { .. }
            | Request::Leaving { .. }
            | Request::FailureNotice { .. }
            | Request::Adopted { .. }
            | Request::Lookup { .. } => self.ring.handle_request(&mut self.io, conn, id, request),
            _ => self
                .kv
                .handle_request(&mut self.ring, &mut self.io, conn, id, request),
        };
        // What the request set off (a hand-over to a notifying newcomer) comes before its answer.
        self.pass_notices();
        if let Some(response) = response {
            self.io.respond(conn, id, response);
        }
    }

    /// The answer (or transport error) for a request this node sent.
    pub fn handle_response(&mut self, id: RequestId, response: Result<Response>, now: u64) {
        self.io.now = now;
        let (to, asker) = match self.ring.take_call(id) {
            Some(p) => (p.to, Asker::Ring(p.purpose)),
            None => match self.kv.take_call(id) {
                Some(p) => (p.to, Asker::Kv(p.purpose)),
                None => return, // late answer to a request that already timed out
            },
        };
        if let Some(peer) = to {
            let probe = matches!(&asker, Asker::Ring(p) if p.is_probe());
            self.ring.observe(&mut self.io, peer, &response, probe);
            self.pass_notices();
        }
        match asker {
            Asker::Ring(purpose) => self.ring.on_answer(&mut self.io, purpose, to, response),
            Asker::Kv(purpose) => {
                self.kv
                    .on_answer(&mut self.ring, &mut self.io, purpose, response)
            }
        }
        self.pass_notices();
    }

    /// Hand the ring's notices to the data layer, in order.
    fn pass_notices(&mut self) {
        while let Some(notice) = self.ring.poll_notice() {
            self.kv.on_notice(&mut self.ring, &mut self.io, notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::storage::{MemoryStorage, SledStorage};
    use crate::version::VersionVector;

    /// A ring of one (keeping one copy) on `storage`, started as an embedding that passes seed
    /// 0 and a clock at 0 would start it, every time.
    fn boot<S: Storage>(storage: S) -> Node<S> {
        let me = NodeRef {
            id: Id::hash(b"embedded"),
            addr: "127.0.0.1:7000".parse().expect("addr"),
        };
        // One copy: a lone node on the default N = 3, W = 2 refuses writes.
        let opts = Options {
            kv: kv::Options::with_replicas(1),
            ..Options::default()
        };
        let mut node = Node::new(me, opts, storage, 0);
        node.start(None, 0);
        while node.poll_output().is_some() {}
        node
    }

    /// Hands `request` to the node at time 0 and returns its answer, which a ring of one gives
    /// at once.
    fn call<S: Storage>(node: &mut Node<S>, request: Request) -> Result<Response> {
        node.handle_request(1, 1, request, 0);
        let mut answer = None;
        while let Some(out) = node.poll_output() {
            if let Output::Respond { response, .. } = out {
                answer = Some(response);
            }
        }
        answer.expect("a ring of one answers at once")
    }

    fn put(key: &[u8], value: &[u8], context: VersionVector) -> Request {
        put_mode(key, value, context, Default::default())
    }

    fn put_mode(
        key: &[u8],
        value: &[u8],
        context: VersionVector,
        mode: crate::message::WriteMode,
    ) -> Request {
        Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context,
            w: None,
            session: None,
            mode,
        }
    }

    /// The values and context of `key`.
    fn read_reply<S: Storage>(node: &mut Node<S>, key: &[u8]) -> (Vec<Vec<u8>>, VersionVector) {
        let get = Request::Get {
            key: key.to_vec(),
            r: None,
            session: None,
        };
        match call(node, get) {
            Ok(Response::Read(reply)) => (reply.values, reply.context),
            other => panic!("read of {key:?}: {other:?}"),
        }
    }

    #[test]
    fn write_modes_decide_what_else_a_write_replaces_at_the_owner() {
        use crate::message::WriteMode;
        let mut node = boot(MemoryStorage::new());
        let blind = |value: &[u8], mode| put_mode(b"k", value, VersionVector::new(), mode);
        // Context: a blind write keeps what it did not see.
        assert!(call(&mut node, blind(b"a", WriteMode::Context)).is_ok());
        assert!(call(&mut node, blind(b"b", WriteMode::Context)).is_ok());
        let (mut values, seen) = read_reply(&mut node, b"k");
        values.sort();
        assert_eq!(values, [b"a".to_vec(), b"b".to_vec()]);
        // Overwrite: a blind write replaces every version the owner holds.
        assert!(call(&mut node, blind(b"c", WriteMode::Overwrite)).is_ok());
        assert_eq!(read_reply(&mut node, b"k").0, [b"c".to_vec()]);
        // IfUnchanged: refused with a context from before the overwrite, nothing written...
        let stale = put_mode(b"k", b"d", seen, WriteMode::IfUnchanged);
        assert!(matches!(call(&mut node, stale), Err(Error::Changed(_))));
        assert_eq!(read_reply(&mut node, b"k").0, [b"c".to_vec()]);
        // ...applied with a fresh one, and a delete may be conditional too.
        let (_, fresh) = read_reply(&mut node, b"k");
        let cas = put_mode(b"k", b"e", fresh.clone(), WriteMode::IfUnchanged);
        assert!(call(&mut node, cas).is_ok());
        let stale_delete = Request::Delete {
            key: b"k".to_vec(),
            context: fresh,
            w: None,
            session: None,
            mode: WriteMode::IfUnchanged,
        };
        assert!(matches!(
            call(&mut node, stale_delete),
            Err(Error::Changed(_))
        ));
        assert_eq!(read_reply(&mut node, b"k").0, [b"e".to_vec()]);
        // IfUnchanged on an absent key: an empty context covers nothing, so it is a create.
        let create = put_mode(b"new", b"1", VersionVector::new(), WriteMode::IfUnchanged);
        assert!(call(&mut node, create.clone()).is_ok());
        let again = put_mode(b"new", b"2", VersionVector::new(), WriteMode::IfUnchanged);
        assert!(matches!(call(&mut node, again), Err(Error::Changed(_))));
    }

    fn read<S: Storage>(node: &mut Node<S>, key: &[u8]) -> Vec<Vec<u8>> {
        let get = Request::Get {
            key: key.to_vec(),
            r: None,
            session: None,
        };
        match call(node, get) {
            Ok(Response::Read(reply)) => reply.values,
            other => panic!("read of {key:?}: {other:?}"),
        }
    }

    /// Starts a node on `storage`, settles its incarnation with a read, and returns both.
    fn incarnation_of_a_run<S: Storage>(storage: S) -> (u64, S) {
        let mut node = boot(storage);
        assert_eq!(
            node.kv().incarnation(),
            None,
            "settled by the first write id"
        );
        let _ = read(&mut node, b"k");
        let incarnation = node.kv().incarnation().expect("settled");
        (incarnation, node.into_storage())
    }

    fn assert_new(seen: &mut Vec<u64>, incarnation: u64) {
        assert!(
            !seen.contains(&incarnation),
            "run {} repeats incarnation {incarnation:#x}: {seen:x?}",
            seen.len()
        );
        seen.push(incarnation);
    }

    #[test]
    fn incarnations_never_repeat_across_restarts_on_one_storage() {
        let mut storage = MemoryStorage::new();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (incarnation, kept) = incarnation_of_a_run(storage);
            assert_new(&mut seen, incarnation);
            storage = kept;
        }
    }

    #[test]
    fn incarnations_never_repeat_across_reopenings_of_one_sled_directory() -> Result<()> {
        let dir = tempfile::TempDir::new()?;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (incarnation, storage) = incarnation_of_a_run(SledStorage::open(dir.path())?);
            drop(storage);
            assert_new(&mut seen, incarnation);
        }
        Ok(())
    }

    /// A write after a restart numbers its write id from the start again; with a repeated
    /// incarnation it was taken for a retry of the write of the previous run with the same
    /// number, and acknowledged without being applied.
    #[test]
    fn a_write_after_a_restart_is_not_taken_for_a_retry_of_an_earlier_one() {
        let mut node = boot(MemoryStorage::new());
        let first = call(&mut node, put(b"k", b"old", VersionVector::new()));
        assert!(matches!(first, Ok(Response::Written { .. })), "{first:?}");
        let context = match call(
            &mut node,
            Request::Get {
                key: b"k".to_vec(),
                r: None,
                session: None,
            },
        ) {
            Ok(Response::Read(reply)) => reply.context,
            other => panic!("{other:?}"),
        };
        let mut node = boot(node.into_storage());
        // The same inputs in the same order: the same sequence numbers as the previous run.
        let second = call(&mut node, put(b"k", b"new", context));
        assert!(matches!(second, Ok(Response::Written { .. })), "{second:?}");
        assert_eq!(read(&mut node, b"k"), vec![b"new".to_vec()]);
    }

    /// This node's id, as [`boot`] names it.
    fn me() -> Id {
        Id::hash(b"embedded")
    }

    fn written(answer: Result<Response>) -> crate::version::Dot {
        match answer {
            Ok(Response::Written { dot, .. }) => dot,
            other => panic!("the write was not acknowledged: {other:?}"),
        }
    }

    /// A write whose context gave this node a counter near `u64::MAX` used to become its next
    /// dot and its persisted lease: every later write overflowed, also after a restart.
    #[test]
    fn a_context_forging_our_counter_is_refused_and_writes_go_on_after_a_restart() {
        let mut node = boot(MemoryStorage::new());
        let first = written(call(&mut node, put(b"k", b"v1", VersionVector::new())));
        let forged: VersionVector = [(me(), u64::MAX - 1)].into_iter().collect();
        match call(&mut node, put(b"k", b"evil", forged.clone())) {
            Err(Error::InvalidInput(m))
                if m.contains(&(u64::MAX - 1).to_string()) && m.contains("forged") => {}
            other => panic!("a forged context was not refused as such: {other:?}"),
        }
        assert_eq!(read(&mut node, b"k"), vec![b"v1".to_vec()]);
        let next = written(call(&mut node, put(b"k2", b"v2", VersionVector::new())));
        assert_eq!(next.counter, first.counter + 1);

        let mut node = boot(node.into_storage());
        let after = written(call(&mut node, put(b"k3", b"v3", VersionVector::new())));
        assert!(
            after.counter > next.counter && after.counter < 1 << 48,
            "after a restart: {after}"
        );
        assert!(call(&mut node, put(b"k", b"evil", forged)).is_err());
        assert_eq!(read(&mut node, b"k3"), vec![b"v3".to_vec()]);
    }

    /// A peer's state of `b"k"`: a version of another node's, and one of ours, with a
    /// counter we never issued.
    fn forged_state() -> Vec<(Vec<u8>, Vec<u8>)> {
        state_with_our_dot(u64::MAX - 1)
    }

    /// A plain read of "k".
    fn read_k(node: &mut Node<MemoryStorage>) -> crate::message::ReadReply {
        match call(
            node,
            Request::Get {
                key: b"k".to_vec(),
                r: None,
                session: None,
            },
        ) {
            Ok(Response::Read(reply)) => reply,
            other => panic!("a read of k answered {other:?}"),
        }
    }

    /// A state of "k" holding a peer's value and a value under our dot `counter`.
    fn state_with_our_dot(counter: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut state = crate::version::Versioned::empty();
        state.write(Id([7; 20]), &VersionVector::new(), Some(b"theirs".to_vec()));
        let mut ours = crate::version::Versioned::empty();
        ours.raise_dot_floor(counter - 1);
        ours.write(me(), &VersionVector::new(), Some(b"ours".to_vec()));
        state.merge(&ours);
        vec![(b"k".to_vec(), state.encode())]
    }

    /// A peer's state naming our dots a little past our counter holds writes of ours this data
    /// directory forgot (a restore from a backup): they are kept, and our counter moves above
    /// them, so none is issued twice.
    #[test]
    fn a_peers_state_with_our_dots_just_ahead_is_kept_and_our_counter_moves_past_them() {
        let mut node = boot(MemoryStorage::new());
        let answer = call(
            &mut node,
            Request::Replicate {
                items: state_with_our_dot(5_000),
            },
        );
        assert!(matches!(answer, Ok(Response::Ack)), "{answer:?}");
        let reply = read_k(&mut node);
        let mut values = reply.values.clone();
        values.sort();
        assert_eq!(values, vec![b"ours".to_vec(), b"theirs".to_vec()]);
        assert_eq!(reply.context.get(&me()), 5_000);
        let dot = written(call(&mut node, put(b"k", b"next", reply.context)));
        assert_eq!(dot.counter, 5_001, "numbered above the adopted dot");
        let dot = written(call(&mut node, put(b"other", b"v", VersionVector::new())));
        assert_eq!(dot.counter, 5_002);
    }

    /// Replication brings a state claiming a dot of ours far beyond what we issued (past
    /// [`kv::OWN_DOTS_WINDOW`]): it is adopted without that dot, the node reports it, and its
    /// counter stays its own.
    #[test]
    fn a_peers_state_claiming_our_counter_is_adopted_without_it_and_reported() {
        let requests = [
            Request::Replicate {
                items: forged_state(),
            },
            // A Transfer carrying it is refused before this, by the plausibility check (a lone
            // node has no successor to be handed a range by); a Handoff to a lone node keeps
            // no copy.
        ];
        for request in requests {
            let kind = request.kind();
            let mut node = boot(MemoryStorage::new());
            node.handle_request(1, 1, request, 0);
            let mut reported = Vec::new();
            let mut answer = None;
            while let Some(out) = node.poll_output() {
                match out {
                    Output::Respond { response, .. } => answer = Some(response),
                    Output::Event(Event::Kv(e @ kv::Event::ForgedDots { .. })) => reported.push(e),
                    _ => {}
                }
            }
            assert!(matches!(answer, Some(Ok(_))), "{kind}: {answer:?}");
            assert_eq!(
                reported,
                vec![kv::Event::ForgedDots {
                    key: b"k".to_vec(),
                    claimed: u64::MAX - 1,
                    issued: 0,
                }],
                "{kind}"
            );
            let reply = read_k(&mut node);
            assert_eq!(reply.values, vec![b"theirs".to_vec()], "{kind}");
            assert_eq!(reply.context.get(&me()), 0, "{kind}");
            let dot = written(call(&mut node, put(b"k", b"mine", reply.context)));
            assert_eq!(dot.counter, 1, "{kind}: our counter moved");
            let dot = written(call(&mut node, put(b"other", b"v", VersionVector::new())));
            assert_eq!(dot.counter, 2, "{kind}: our counter moved");
        }
    }
}
