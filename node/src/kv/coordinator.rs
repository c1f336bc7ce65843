//! Client requests: routing them to the key's owner, and the owner coordinating quorum writes
//! and reads over its replicas (see the [data layer essay](super) under REPLICATION).
//!
//! DOTS
//!
//! The owner numbers every new version with its own dot (actor, counter). A node never issues
//! a counter twice, for any key, across restarts: counters are numbered above a node-wide
//! floor, and the floor is leased in the storage meta [`DOT_LEASE`] counters ahead (Riak's vnode
//! counter lease), so a write persists nothing extra except once per lease. A key written again
//! after its state was collected or moved away therefore gets versions no old context covers.
//! No number from a client's context or a peer's state moves the counter (FORGED VERSIONS in
//! `version/mod.rs`): the owner refuses a context that names it beyond what it issued, and
//! adopts states without what they claim of its dots beyond that.

use super::{Event, Kv, KvIo, Purpose, Routed};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::message::{NodeRef, ReadReply, Request, RequestId, Response, WriteId, WriteMode};
use crate::ring::{Lookup, Ring};
use crate::rpc::ConnId;
use crate::session::{Floor, SessionWrite};
use crate::storage::Storage;
use crate::version::{Issuer, VersionVector, Versioned};
use std::collections::{BTreeSet, VecDeque};

/// How many dot counters a node may issue per persisted lease (see [`Kv::issued_dot`]).
const DOT_LEASE: u64 = 1 << 20;

/// The storage meta name of the dot lease.
const DOT_LEASE_META: &str = "dot-lease";

/// How many applied write ids an owner remembers for at-most-once retries.
const MAX_APPLIED: usize = 1 << 16;

/// A client data request being coordinated.
#[derive(Clone, Debug)]
pub(super) struct ClientOp {
    conn: ConnId,
    id: RequestId,
    request: Box<Request>,
    deadline: u64,
    /// Owners that did not answer: later lookups for this request route around them.
    avoid: BTreeSet<Id>,
    /// Kept across retries so the owner applies the write at most once.
    write_id: WriteId,
    /// Why the last attempt failed: what the client hears if the deadline passes before a
    /// retry (a bare "timed out" would hide it).
    last_error: Option<Box<Error>>,
    /// Retries so far, for the backoff of requests that wait for a session's floor.
    attempts: u32,
}

impl ClientOp {
    /// What the client hears when this operation gives up with `error`. A session write
    /// refused for its floor after an owner failed to answer an earlier attempt may have been
    /// applied by that attempt: "cannot write" would tell the client it was not, and a retry
    /// of its own would write it twice, so it hears that the outcome is unknown.
    fn final_error(&self, error: Error) -> Error {
        let write = matches!(*self.request, Request::Put { .. } | Request::Delete { .. });
        match error {
            Error::SessionUnmet { .. } if write && !self.avoid.is_empty() => {
                Error::Ambiguous(format!(
                    "an earlier attempt of this write reached an owner that did not answer, and \
                     the retry was refused ({error}); read the key to see whether it was applied"
                ))
            }
            other => other,
        }
    }

    /// A client's `Get`, `Put` or `Delete` that arrived as request `id` on `conn`.
    pub(super) fn new(
        conn: ConnId,
        id: RequestId,
        request: Request,
        deadline: u64,
        write_id: WriteId,
    ) -> ClientOp {
        ClientOp {
            conn,
            id,
            request: Box::new(request),
            deadline,
            avoid: BTreeSet::new(),
            write_id,
            last_error: None,
            attempts: 0,
        }
    }
}

/// Who is waiting for a coordinated request.
#[derive(Clone, Debug)]
pub(super) enum Responder {
    /// A request that arrived on a connection.
    Conn { conn: ConnId, id: RequestId },
    /// A client operation this node coordinates for itself (it is the owner).
    Local(ClientOp),
}

/// A write (or a stray hand-off) waiting for its replicas.
#[derive(Clone, Debug)]
pub(super) struct WriteOp {
    pub(super) responder: Responder,
    /// The client write's id; `None` for a hand-off.
    pub(super) write_id: Option<WriteId>,
    pub(super) response: Response,
    /// What to answer if too few replicas store it; `None`: an error.
    pub(super) on_failure: Option<Response>,
    /// Replica acknowledgements still needed.
    pub(super) needed: usize,
    pub(super) acks: usize,
    pub(super) outstanding: usize,
    pub(super) done: bool,
    /// For a client write sent to all `N − 1` replicas: the key, the context of the state
    /// sent and the replicas, remembered as stable ([`Kv::stable`]) if every one stores it.
    pub(super) settles: Option<Box<Settles>>,
}

/// A key's state that every one of its `N` copies stored: the owner answers session reads of
/// states it dominates as stable (see SESSIONS in the [data layer essay](super)).
#[derive(Clone, Debug)]
pub(super) struct Settles {
    key: Vec<u8>,
    context: VersionVector,
    /// The replicas that stored it; a change of replicas voids the record.
    replicas: Vec<Id>,
}

/// How many keys' stable states an owner remembers.
const MAX_STABLE: usize = 4096;

/// A read waiting for its replicas.
#[derive(Clone, Debug)]
pub(super) struct ReadOp {
    responder: Responder,
    key: Vec<u8>,
    merged: Versioned,
    /// Digests of the copies seen, for read repair, and for a session read their contexts, for
    /// stability (empty otherwise).
    copies: Vec<(NodeRef, u64, VersionVector)>,
    /// A session read: its answer carries the versions' dependencies and their stability.
    session: bool,
    /// The session floor the answer must meet (none when enforcement is off).
    floor: Option<Box<Floor>>,
    /// For a session read: a context every copy is known to hold ([`Kv::known_stable`]).
    settled: Option<VersionVector>,
    needed: usize,
    answered: usize,
    outstanding: usize,
    /// Replicas not asked (yet): a plain read asks only the `needed` first, and the next one
    /// for each that fails.
    spare: VecDeque<NodeRef>,
    done: bool,
}

/// A session write whose owner's state did not meet the session's floor: waiting for the
/// replicas' states, merged in until it does (see SESSIONS in the [data layer essay](super)).
#[derive(Clone, Debug)]
pub(super) struct FloorOp {
    responder: Responder,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    context: VersionVector,
    write_id: WriteId,
    w: Option<u8>,
    session: Box<SessionWrite>,
    mode: WriteMode,
    outstanding: usize,
}

/// The refusal of a session request whose floor the copies reached do not meet.
fn session_unmet(op: &str, guarantee: crate::session::Guarantee, copies: usize) -> Error {
    Error::SessionUnmet {
        op: op.into(),
        guarantee,
        detail: format!(
            "the {copies} copies reached hold older states than this session has seen: the \
             copies that hold what it saw are unreachable or behind"
        ),
    }
}

impl<S: Storage> Kv<S> {
    // ---------------------------------------------------------------- routing to the owner

    pub(super) fn start_client_op(&mut self, ring: &mut Ring, io: &mut dyn KvIo, op: ClientOp) {
        if io.now() >= op.deadline {
            let e = op.last_error.clone().map_or_else(
                || Error::Timeout("the ring did not settle in time; retry".into()),
                |e| *e,
            );
            return io.respond(op.conn, op.id, Err(op.final_error(e)));
        }
        let key = match &*op.request {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key, .. } => {
                key
            }
            _ => return,
        };
        let target = Id::hash(key);
        match ring.lookup(io, target, op.avoid.clone()) {
            Lookup::Found(owner) => self.forward_to_owner(ring, io, op, owner),
            Lookup::Pending(lookup) => {
                self.routed.insert(lookup, Routed::Client(op));
            }
        }
    }

    pub(super) fn forward_to_owner(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        op: ClientOp,
        owner: NodeRef,
    ) {
        let store = match (*op.request).clone() {
            Request::Get { key, r, session } => Request::StoreGet { key, r, session },
            Request::Put {
                key,
                value,
                context,
                w,
                session,
                mode,
            } => Request::StoreWrite {
                key,
                value: Some(value),
                context,
                write_id: op.write_id,
                w,
                session,
                mode,
            },
            Request::Delete {
                key,
                context,
                w,
                session,
                mode,
            } => Request::StoreWrite {
                key,
                value: None,
                context,
                write_id: op.write_id,
                w,
                session,
                mode,
            },
            _ => return,
        };
        if owner.id == self.me.id {
            if let Err(e) = self.check_serving(
                ring,
                match &store {
                    Request::StoreGet { key, .. } | Request::StoreWrite { key, .. } => key,
                    _ => return,
                },
            ) {
                return self.finish_client_op(io, op, Err(e));
            }
            return match store {
                Request::StoreGet { key, r, session } => {
                    self.coordinate_read(ring, io, Responder::Local(op), key, r, session)
                }
                store => {
                    if let Some(write) = StoreWrite::from_request(store) {
                        self.coordinate_write(ring, io, Responder::Local(op), write)
                    }
                }
            };
        }
        let n = io.next_op();
        // An owner that waits for its replicas to meet a session's floor takes up to one RPC
        // timeout of its own before it answers: give it two.
        let floored = matches!(
            &store,
            Request::StoreGet {
                session: Some(_),
                ..
            } | Request::StoreWrite {
                session: Some(_),
                ..
            }
        );
        let deadline = io.now() + io.rpc_timeout() * if floored { 2 } else { 1 };
        self.stores.insert(n, op);
        let purpose = Purpose::Store { op: n, owner };
        self.calls
            .send_with_deadline(io, owner, store, purpose, deadline);
    }

    pub(super) fn on_store_answer(
        &mut self,
        io: &mut dyn KvIo,
        n: u64,
        owner: NodeRef,
        response: Result<Response>,
    ) {
        if let Some(mut op) = self.stores.remove(&n) {
            if matches!(response, Err(Error::Timeout(_) | Error::Unreachable(_))) {
                op.avoid.insert(owner.id);
            }
            self.finish_client_op(io, op, response);
        }
    }

    fn finish_client_op(&mut self, io: &mut dyn KvIo, op: ClientOp, result: Result<Response>) {
        match result {
            Err(e) if e.is_retryable() => self.retry_client_op(io, op, e),
            other => io.respond(op.conn, op.id, other),
        }
    }

    pub(super) fn retry_client_op(&mut self, io: &mut dyn KvIo, mut op: ClientOp, error: Error) {
        // A session's floor waits for copies to catch up or come back: back off, up to 16
        // times the retry delay. Other retries meet a changing ring, which settles quickly.
        let delay = match error {
            Error::SessionUnmet { .. } => self.opts.retry_delay << op.attempts.min(4),
            _ => self.opts.retry_delay,
        };
        op.attempts += 1;
        // The last retry is not skipped for a long backoff: it goes one retry delay before the
        // deadline, leaving it that long to be answered.
        let last = op.deadline.saturating_sub(self.opts.retry_delay);
        let at = (io.now() + delay).min(last);
        if at <= io.now() || at >= op.deadline {
            let error = op.final_error(error);
            return io.respond(op.conn, op.id, Err(error));
        }
        op.last_error = Some(Box::new(error));
        let n = io.next_op();
        self.retries.insert((at, n), op);
    }

    /// Deliver the outcome of a coordinated request.
    pub(super) fn answer(
        &mut self,
        io: &mut dyn KvIo,
        responder: Responder,
        result: Result<Response>,
    ) {
        match responder {
            Responder::Conn { conn, id } => io.respond(conn, id, result),
            Responder::Local(op) => self.finish_client_op(io, op, result),
        }
    }

    // ---------------------------------------------------------------- quorum writes

    /// How many replicas (besides us) a request must hear from: the quorum the client asked
    /// for, or the configured one, minus our own copy. Either is a floor, never shrunk to what
    /// is reachable: a request whose quorum exceeds the copies it can reach right now (this node
    /// and its live successors, at most `N`) is refused before anything is applied, with an
    /// error that says how many it could reach. A partition, a false suspicion or a ring smaller
    /// than the quorum therefore makes writes unavailable rather than less durable than promised.
    fn replicas_needed(
        &self,
        what: &str,
        asked: Option<u8>,
        configured: usize,
        targets: usize,
    ) -> Result<usize> {
        let quorum = asked.map_or(configured, usize::from).max(1);
        if quorum > 1 + targets {
            let why = if asked.is_some() {
                "asked for"
            } else {
                "configured"
            };
            return Err(Error::Unavailable(format!(
                "this {what} needs {quorum} copies ({why}) and only {} can be reached right \
                 now (this node and its live successors); retry when the ring has repaired, or \
                 use a smaller quorum",
                1 + targets
            )));
        }
        Ok(quorum - 1)
    }

    /// Coordinate a write as the owner: store our new version, replicate it, answer at `W`.
    /// A session write is applied only on a state that meets its floor: if ours does not, the
    /// replicas' states are fetched and merged in first ([`Kv::on_floor_read_answer`]).
    pub(super) fn coordinate_write(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        responder: Responder,
        write: StoreWrite,
    ) {
        let StoreWrite {
            key,
            value,
            context,
            write_id,
            w,
            session,
            mode,
        } = write;
        if self
            .writes
            .values()
            .any(|w| w.write_id == Some(write_id) && !w.done)
        {
            let e = Error::Unavailable("this write is still being replicated; retry".into());
            return self.answer(io, responder, Err(e));
        }
        // Refuse before applying anything: a write that cannot get the copies it asks for.
        let targets = self.replica_targets(ring);
        let needed = match self.replicas_needed("write", w, self.opts.write_quorum, targets.len()) {
            Ok(n) => n,
            Err(e) => return self.answer(io, responder, Err(e)),
        };
        // A session write is applied only on a state that meets the session's floor (a retry
        // of a write applied before is not applied again, so it is not held to it).
        if let Some(s) = session.as_ref().filter(|_| self.opts.enforce_sessions)
            && !self.applied.contains_key(&write_id)
        {
            let state = match self.read_versions(&key) {
                Ok(state) => state,
                Err(e) => return self.answer(io, responder, Err(e)),
            };
            if state.applied_dot(&write_id).is_none()
                && let Some(g) = s.floor.unmet_by_write(state.context())
            {
                if targets.is_empty() {
                    return self.answer(io, responder, Err(session_unmet("write", g, 1)));
                }
                let op = io.next_op();
                let outstanding = targets.len();
                for t in targets {
                    let req = Request::ReplicaRead { key: key.clone() };
                    self.send(io, t, req, Purpose::FloorRead { op });
                }
                let floor = FloorOp {
                    responder,
                    key,
                    value,
                    context,
                    write_id,
                    w,
                    session: session.expect("checked"),
                    mode,
                    outstanding,
                };
                self.floors.insert(op, floor);
                return;
            }
        }
        // A retry of a write already applied here is not applied again: its version is
        // replicated once more and the first answer returned.
        let response = match self.applied.get(&write_id) {
            Some(first) => first.clone(),
            None => match self.write_version(io, &key, value, &context, write_id, session, mode) {
                Ok(r) => {
                    self.remember_applied(write_id, r.clone());
                    r
                }
                Err(e) => return self.answer(io, responder, Err(e)),
            },
        };
        let (state, context) = match self.read_versions(&key) {
            Ok(state) => (state.encode(), state.context().clone()),
            Err(e) => return self.answer(io, responder, Err(e)),
        };
        let settles = (1 + targets.len() >= self.opts.replicas).then(|| {
            Box::new(Settles {
                key: key.clone(),
                context,
                replicas: targets.iter().map(|t| t.id).collect(),
            })
        });
        let op = WriteOp {
            responder,
            write_id: Some(write_id),
            response,
            on_failure: None,
            needed,
            acks: 0,
            outstanding: targets.len(),
            done: false,
            settles,
        };
        self.replicate(io, op, targets, vec![(key, state)]);
    }

    /// A replica's state for a session write waiting for its floor: merge it into ours; write
    /// once the floor is met, refuse once every replica answered and it is not.
    pub(super) fn on_floor_read_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        op: u64,
        response: Result<Response>,
    ) {
        let Some(f) = self.floors.get_mut(&op) else {
            return;
        };
        f.outstanding -= 1;
        let key = f.key.clone();
        if let Ok(Response::State(Some(bytes))) = response {
            // A corrupt copy is left out; repair fixes it.
            if let Ok(state) = Versioned::decode(&bytes)
                && let Err(error) = self.merge_into_storage(&key, &state)
            {
                io.report(Event::StorageError { error });
            }
        }
        let unmet = match self.read_versions(&key) {
            Ok(state) => self.floors[&op]
                .session
                .floor
                .unmet_by_write(state.context()),
            Err(e) => {
                let f = self.floors.remove(&op).expect("present");
                return self.answer(io, f.responder, Err(e));
            }
        };
        let f = &self.floors[&op];
        if unmet.is_none() || f.outstanding == 0 {
            let f = self.floors.remove(&op).expect("present");
            // The range may have moved while we waited.
            if let Err(e) = self.check_serving(ring, &f.key) {
                return self.answer(io, f.responder, Err(e));
            }
            match unmet {
                None => {
                    let write = StoreWrite {
                        key: f.key,
                        value: f.value,
                        context: f.context,
                        write_id: f.write_id,
                        w: f.w,
                        session: Some(f.session),
                        mode: f.mode,
                    };
                    self.coordinate_write(ring, io, f.responder, write);
                }
                Some(g) => {
                    let copies = 1 + self.replica_targets(ring).len();
                    self.answer(io, f.responder, Err(session_unmet("write", g, copies)));
                }
            }
        }
    }

    /// Send `items` to `targets` and answer `w`'s responder once `w.needed` of them stored them
    /// (at once if none is needed).
    pub(super) fn replicate(
        &mut self,
        io: &mut dyn KvIo,
        mut w: WriteOp,
        targets: Vec<NodeRef>,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let op = io.next_op();
        if w.needed == 0 {
            w.done = true;
            let response = stability(w.response.clone(), self.opts.replicas <= 1);
            self.answer(io, w.responder.clone(), Ok(response));
        }
        if !targets.is_empty() {
            self.writes.insert(op, w);
        }
        let keys: Vec<Vec<u8>> = items.iter().map(|(k, _)| k.clone()).collect();
        for t in targets {
            let purpose = Purpose::ReplicaWrite {
                op,
                to: t,
                keys: keys.clone(),
            };
            let items = items.clone();
            self.send(io, t, Request::Replicate { items }, purpose);
        }
    }

    pub(super) fn on_replica_write_answer(
        &mut self,
        io: &mut dyn KvIo,
        op: u64,
        to: NodeRef,
        keys: Vec<Vec<u8>>,
        response: Result<Response>,
    ) {
        let stored = matches!(response, Ok(Response::Ack));
        if !stored {
            // Hinted handoff: remember that this replica lacks the keys, and hand them over
            // when the replica answers again.
            for key in keys {
                self.add_hint(to, key);
            }
        }
        let Some(w) = self.writes.get_mut(&op) else {
            return;
        };
        w.outstanding -= 1;
        if stored {
            w.acks += 1;
        }
        let mut finish = None;
        if !w.done && w.acks >= w.needed {
            w.done = true;
            let stable = 1 + w.acks >= self.opts.replicas;
            finish = Some((
                w.responder.clone(),
                Ok(stability(w.response.clone(), stable)),
            ));
        } else if !w.done && w.acks + w.outstanding < w.needed {
            w.done = true;
            let result = w.on_failure.clone().ok_or_else(|| {
                Error::Unavailable(format!(
                    "the write reached {} of the {} copies required; it may still become visible",
                    1 + w.acks,
                    1 + w.needed
                ))
            });
            finish = Some((w.responder.clone(), result));
        }
        let w = self.writes.get(&op).expect("present");
        if w.outstanding == 0 {
            let w = self.writes.remove(&op).expect("present");
            if let Some(settled) = w.settles.filter(|s| w.acks == s.replicas.len()) {
                self.remember_stable(*settled);
            }
        }
        if let Some((responder, result)) = finish {
            self.answer(io, responder, result);
        }
    }

    /// Remember that every copy of a key stored a state (bounded: the oldest record goes).
    fn remember_stable(&mut self, settled: Settles) {
        let key = settled.key.clone();
        if self.stable.insert(key.clone(), settled).is_none() {
            self.stable_order.push_back(key);
            while self.stable_order.len() > MAX_STABLE {
                if let Some(old) = self.stable_order.pop_front() {
                    self.stable.remove(&old);
                }
            }
        }
    }

    /// The context every copy of `key` is known to hold a state dominating: the last state
    /// all of them stored, if the key's replicas are still the same nodes.
    fn known_stable(&self, ring: &Ring, key: &[u8]) -> Option<VersionVector> {
        let s = self.stable.get(key)?;
        let same = s
            .replicas
            .iter()
            .copied()
            .eq(self.replica_targets(ring).iter().map(|t| t.id));
        same.then(|| s.context.clone())
    }

    /// A replica's side of [`Request::Replicate`] (and of repairs): merge and store.
    pub(super) fn on_replicate(&mut self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Response> {
        for (key, bytes) in items {
            let incoming = Versioned::decode(&bytes)?;
            self.merge_into_storage(&key, &incoming)?;
        }
        Ok(Response::Ack)
    }

    // ---------------------------------------------------------------- quorum reads

    /// Coordinate a read as the owner: our copy merged with `R − 1` replicas' copies. A
    /// session read also waits for a merge that meets its floor, from as many replicas as it
    /// takes; if all of them together do not meet it, it is refused.
    pub(super) fn coordinate_read(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        responder: Responder,
        key: Vec<u8>,
        r: Option<u8>,
        session: Option<Box<Floor>>,
    ) {
        let merged = match self.read_versions(&key) {
            Ok(state) => state,
            Err(e) => return self.answer(io, responder, Err(e)),
        };
        let targets = self.replica_targets(ring);
        let needed = match self.replicas_needed("read", r, self.opts.read_quorum, targets.len()) {
            Ok(n) => n,
            Err(e) => return self.answer(io, responder, Err(e)),
        };
        // Only a session read's answer needs the copies' contexts (for its stability), and only
        // it may need more copies than R (to meet its floor, or to tell that all N agree): it
        // asks every replica. A plain read asks the R − 1 it needs, and one more for each that
        // fails (Cassandra's way: the other copies are anti-entropy's business), so a read
        // costs R copies' work, not N.
        let own = session.as_ref().map(|_| merged.context().clone());
        let asked = if session.is_some() {
            targets.len()
        } else {
            needed
        };
        let mut spare: VecDeque<NodeRef> = targets.iter().copied().collect();
        let targets: Vec<NodeRef> = spare.drain(..asked.min(spare.len())).collect();
        let mut r = ReadOp {
            responder,
            copies: vec![(self.me, merged.digest(), own.unwrap_or_default())],
            key: key.clone(),
            merged,
            session: session.is_some(),
            settled: session.as_ref().and_then(|_| self.known_stable(ring, &key)),
            floor: session.filter(|_| self.opts.enforce_sessions),
            needed,
            answered: 0,
            outstanding: targets.len(),
            spare,
            done: false,
        };
        if needed == 0 && r.unmet().is_none() {
            r.done = true;
            let reply = r.reply(self.opts.replicas);
            self.answer(io, r.responder.clone(), Ok(reply));
            if targets.is_empty() {
                return;
            }
        } else if let (true, Some(g)) = (targets.is_empty(), r.unmet()) {
            return self.answer(io, r.responder, Err(session_unmet("read", g, 1)));
        }
        let op = io.next_op();
        self.reads.insert(op, r);
        for t in targets {
            let req = Request::ReplicaRead { key: key.clone() };
            self.send(io, t, req, Purpose::ReplicaRead { op, from: t });
        }
    }

    pub(super) fn on_replica_read_answer(
        &mut self,
        io: &mut dyn KvIo,
        op: u64,
        from: NodeRef,
        response: Result<Response>,
    ) {
        let Some(r) = self.reads.get_mut(&op) else {
            return;
        };
        r.outstanding -= 1;
        if !matches!(response, Ok(Response::State(_))) {
            // This copy is out of reach: ask the next one instead, if there is one.
            if let Some(next) = r.spare.pop_front() {
                r.outstanding += 1;
                let req = Request::ReplicaRead { key: r.key.clone() };
                self.send(io, next, req, Purpose::ReplicaRead { op, from: next });
            }
        }
        if !self.reads.contains_key(&op) {
            return;
        }
        if let Ok(Response::State(state)) = response {
            let mut state = match state.map(|b| Versioned::decode(&b)).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(_) => Versioned::empty(), // a corrupt copy counts as empty; repair fixes it
            };
            // What the copy claims of our dots beyond what we issued is not shown to the
            // client, whose next write would be refused for it (nor repaired into our copy).
            if let Ok(issuer) = self.issuer()
                && state.unissued(&issuer).is_some()
            {
                let key = self.reads[&op].key.clone();
                if let Err(e) = self.own_dots_ahead(&key, &mut state) {
                    io.report(Event::StorageError { error: e });
                }
            }
            let r = self.reads.get_mut(&op).expect("present");
            let context = if r.session {
                state.context().clone()
            } else {
                VersionVector::new()
            };
            r.copies.push((from, state.digest(), context));
            r.merged.merge(&state);
            r.answered += 1;
        }
        let r = self.reads.get_mut(&op).expect("present");
        let mut finish = None;
        let unmet = r.unmet();
        if !r.done && r.answered >= r.needed && unmet.is_none() {
            r.done = true;
            finish = Some((r.responder.clone(), Ok(r.reply(self.opts.replicas))));
        } else if !r.done && r.answered + r.outstanding < r.needed {
            r.done = true;
            let e = Error::Unavailable(format!(
                "the read reached {} of the {} copies required",
                1 + r.answered,
                1 + r.needed
            ));
            finish = Some((r.responder.clone(), Err(e)));
        } else if let (false, 0, Some(g)) = (r.done, r.outstanding, unmet) {
            r.done = true;
            let e = session_unmet("read", g, 1 + r.answered);
            finish = Some((r.responder.clone(), Err(e)));
        }
        if let Some((responder, result)) = finish {
            self.answer(io, responder, result);
        }
        let r = self.reads.get(&op).expect("present");
        if r.outstanding == 0 {
            let r = self.reads.remove(&op).expect("present");
            self.read_repair(io, r);
        }
    }

    /// Bring every copy a read saw up to the merged state.
    fn read_repair(&mut self, io: &mut dyn KvIo, r: ReadOp) {
        let digest = r.merged.digest();
        let encoded = r.merged.encode();
        for (node, d, _) in r.copies {
            if d == digest {
                continue;
            }
            io.report(Event::Repaired {
                with: node,
                keys: 1,
            });
            if node.id == self.me.id {
                if let Err(error) = self.merge_into_storage(&r.key, &r.merged) {
                    io.report(Event::StorageError { error });
                }
            } else {
                let items = vec![(r.key.clone(), encoded.clone())];
                self.send(io, node, Request::Replicate { items }, Purpose::Repair);
            }
        }
    }

    /// A replica's side of [`Request::ReplicaRead`].
    pub(super) fn on_replica_read(&self, key: &[u8]) -> Result<Response> {
        Ok(Response::State(self.storage.get(key)?))
    }

    // ---------------------------------------------------------------- versions and dots

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

    /// Make a new version of `key` as its owner: our dot, superseding what `context` covers,
    /// and with [`WriteMode::Overwrite`] everything we hold.
    ///
    /// # Errors
    /// As [`Versioned::write_issued`]; [`Error::TooLarge`] if the key's state would grow over
    /// [`crate::version::VersionLimits::max_state_bytes`]; [`Error::Changed`] for a
    /// [`WriteMode::IfUnchanged`] write whose context misses a version we hold; storage
    /// failures.
    #[allow(clippy::too_many_arguments)]
    fn write_version(
        &mut self,
        io: &mut dyn KvIo,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &VersionVector,
        write_id: WriteId,
        session: Option<Box<SessionWrite>>,
        mode: WriteMode,
    ) -> Result<Response> {
        let mut state = self.read_versions(key)?;
        let existed = !state.is_deleted();
        if let Some(dot) = state.applied_dot(&write_id) {
            // A retry of a write applied before, perhaps by the previous owner: same answer.
            return Ok(Response::Written {
                dot,
                existed,
                stable: false,
            });
        }
        if state.may_have_forgotten(&write_id) {
            // The key remembers four newer writes of this coordinator and may have forgotten
            // this one: a retry of it, applied again, would bring back a version that later
            // writes replaced.
            return Err(Error::Ambiguous(
                "this write was retried after the key had forgotten whether it was applied \
                 (four newer writes through the same node came first); read the key, then \
                 write again"
                    .into(),
            ));
        }
        let overwritten;
        let context = match mode {
            WriteMode::Context => context,
            WriteMode::Overwrite => {
                let mut all = context.clone();
                all.merge(state.context());
                overwritten = all;
                &overwritten
            }
            WriteMode::IfUnchanged => {
                if !context.dominates(state.context()) {
                    return Err(Error::Changed(
                        "the key was written since it was read; read it again".into(),
                    ));
                }
                context
            }
        };
        let issuer = self.issuer()?;
        let (replaces, deps) = match session.as_deref() {
            Some(s) => (s.floor.wrote.as_slice(), Some(&s.deps)),
            None => (&[][..], None),
        };
        let outcome =
            state.write_issued(&issuer, context, replaces, value, deps, &self.opts.versions)?;
        self.issued_dot(outcome.dot.counter)?;
        state.record_applied(write_id, outcome.dot);
        if outcome.warn {
            io.report(Event::ManySiblings {
                key: key.to_vec(),
                siblings: outcome.siblings,
            });
        }
        // A state must fit a message: refuse a write that would leave it over the bound,
        // unless it leaves it smaller than it was (how an oversized merge is resolved).
        let encoded = state.encode();
        let bound = self.opts.versions.max_state_bytes;
        if encoded.len() > bound
            && self
                .storage
                .get(key)?
                .is_none_or(|b| encoded.len() > b.len())
        {
            let siblings = state.siblings().len();
            return Err(self.opts.versions.state_too_large(encoded.len(), siblings));
        }
        self.storage.put(key, &encoded)?;
        Ok(Response::Written {
            dot: outcome.dot,
            existed,
            stable: false,
        })
    }

    /// The floor above which this node numbers its next dot, for any key: the largest counter
    /// it ever issued, in this run or an earlier one. So a dot is never issued twice, even for
    /// a key whose state this node no longer holds (moved away, collected as a stray, or reaped
    /// as a tombstone) while contexts elsewhere still cover its old dots. Across restarts the
    /// floor comes from a lease in the storage meta ([`Kv::issued_dot`]).
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

    /// This node as the issuer of its dots: its actor and its [`Kv::dot_floor`], beyond which
    /// no number from a client or a peer may take its counter (FORGED VERSIONS in
    /// `version/mod.rs`).
    ///
    /// # Errors
    /// As [`Kv::dot_floor`].
    pub(super) fn issuer(&mut self) -> Result<Issuer> {
        Ok(Issuer {
            actor: self.me.id,
            issued: self.dot_floor()?,
        })
    }

    /// Record that this node is about to issue a dot with `counter`, before the version is
    /// stored: every counter issued stays at or below the persisted lease, renewed
    /// [`DOT_LEASE`] counters ahead when a counter passes it, so a write persists nothing
    /// extra except once per lease. Counters are issued one after another
    /// ([`Versioned::write_issued`]), so only this node's own writes move the lease.
    pub(super) fn issued_dot(&mut self, counter: u64) -> Result<()> {
        self.dot_floor = self.dot_floor.max(counter);
        if self.dot_lease.is_none_or(|lease| counter > lease) {
            let renewed = counter.saturating_add(DOT_LEASE);
            self.storage
                .set_meta(DOT_LEASE_META, &renewed.to_be_bytes())?;
            self.dot_lease = Some(renewed);
        }
        Ok(())
    }
}

/// A write's answer with its `stable` flag set: every one of the key's N copies stored it.
fn stability(response: Response, stable: bool) -> Response {
    match response {
        Response::Written { dot, existed, .. } => Response::Written {
            dot,
            existed,
            stable,
        },
        other => other,
    }
}

/// The parts of a [`Request::StoreWrite`], as a write is coordinated.
#[derive(Clone, Debug)]
pub(super) struct StoreWrite {
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) context: VersionVector,
    pub(super) write_id: WriteId,
    pub(super) w: Option<u8>,
    pub(super) session: Option<Box<SessionWrite>>,
    pub(super) mode: WriteMode,
}

impl StoreWrite {
    /// The parts of a [`Request::StoreWrite`]; `None` for any other request.
    pub(super) fn from_request(request: Request) -> Option<StoreWrite> {
        match request {
            Request::StoreWrite {
                key,
                value,
                context,
                write_id,
                w,
                session,
                mode,
            } => Some(StoreWrite {
                key,
                value,
                context,
                write_id,
                w,
                session,
                mode,
            }),
            _ => None,
        }
    }
}

impl ReadOp {
    /// The guarantee answering from the merge so far would break, if any.
    fn unmet(&self) -> Option<crate::session::Guarantee> {
        self.floor
            .as_ref()
            .and_then(|f| f.unmet_by_read(self.merged.context()))
    }

    /// What the read answers: the live values and the context to write back; for a session,
    /// the dependencies and whether all `replicas` copies answered with the merged state.
    fn reply(&self, replicas: usize) -> Response {
        let state = &self.merged;
        let (deps, stable) = if self.session {
            let agree = self
                .copies
                .iter()
                .filter(|(_, _, c)| c.dominates(state.context()))
                .count();
            let settled = self
                .settled
                .as_ref()
                .is_some_and(|c| c.dominates(state.context()));
            (state.deps(), agree >= replicas || settled)
        } else {
            (Default::default(), false)
        };
        Response::Read(ReadReply {
            values: state.values().into_iter().map(<[u8]>::to_vec).collect(),
            context: state.context().clone(),
            deps,
            stable,
        })
    }
}
