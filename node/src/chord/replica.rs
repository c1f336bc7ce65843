//! REPLICATION
//!
//! A key lives on its owner and the owner's next `N − 1` successors (Dynamo's preference list,
//! SOSP 2007 §4.3, with Chord's successor list as the list). The owner coordinates every request
//! for its keys:
//! - *write*: it makes the new version (its own dot, [`crate::version`]), stores it, sends it to
//!   its `N − 1` replicas ([`Request::Replicate`]) and answers once `W` copies, its own included,
//!   are stored and flushed. Fewer than `W` answers is an error for the client, though the
//!   version may survive where it was stored: an unacknowledged write is "maybe".
//! - *read*: it asks its replicas ([`Request::ReplicaRead`]), merges the first `R − 1` answers
//!   with its own copy and answers; any copy found stale is repaired with the merge (read repair).
//!
//! Every copy merges by version vectors, never by time, so the order in which copies meet does
//! not matter.
//!
//! ANTI-ENTROPY
//!
//! Every `sync_interval` the owner compares its range `(pred, self]` with one replica (round
//! robin): it sends per-bucket digests (a bucket is the first byte of the key id); the replica
//! answers with its keys in the buckets that differ, each with the digest of its state; the
//! owner pushes its states of the keys the replica lacks or holds otherwise
//! ([`Request::Replicate`]) and fetches the replica's states of the keys it lacks or holds
//! otherwise ([`Request::SyncFetch`]), and both sides merge. Comparing keys, not whole
//! buckets, matters under a write load: every bucket then differs by the writes in flight,
//! and only the keys that really differ should travel. This brings back copies lost to a
//! crash, fills a new replica after a join or leave, and reconciles the two sides of a healed
//! partition. Every other round goes the other way: a node walks the keys it holds outside its
//! own range, looks up the owner of the next such range and runs the same exchange with it
//! (updating only the copies it holds), so a version that only a former owner holds (after a
//! partition, or a ring that changed under it) reaches the current owner. Each exchange moves at most a batch each way,
//! and one is in flight at a time; one that had more to do (more keys differ than a batch, or
//! the key list hit its size bound) goes on at once, up to [`MAX_SYNC_CHAIN`] more per
//! interval, so a big repair finishes in seconds and still cannot starve client traffic.
//!
//! COLLECTION
//!
//! Copies are deleted in two cases, and in both only once other nodes are known to hold
//! everything the deleted copy held:
//! - *Stray copies.* A ring change can leave a node holding keys of a range whose preference
//!   list it has left. In the foreign round, the owner answers the digests with `stray` when the
//!   asker is none of its `N − 1` replicas (and it has all of them). The stray hands a batch
//!   of its copies over ([`Request::Handoff`]): the owner merges it, replicates the merged
//!   states to all its replicas, and only when every one of them stored them answers with the
//!   keys the stray may delete; the stray deletes those whose state has not changed since it
//!   sent them. Every answer carries the owner's merged
//!   states, so the copies a stray keeps (when it may not delete them yet) are brought up to
//!   date: they hold the owner's tombstones, not the values those replaced.
//! - *Tombstones.* A deleted key must keep its tombstone while any copy of the value it
//!   replaced may still be merged somewhere. An owner with all `N − 1` replicas watches its
//!   range for tombstone-only states; one unchanged for
//!   [`super::Options::tombstone_grace`] (a period that starts again whenever our range or
//!   replicas change) is checked with every replica ([`Request::Reap`]) and, if they all hold
//!   exactly the same state and our view did not change meanwhile, deleted here and there. A
//!   replica that misses the delete keeps its tombstone, which anti-entropy brings back and a
//!   later round collects: a tombstone coming back is harmless, a value would not be.
//!
//! Neither happens while the node is leaving or handing a range to a newcomer: a transfer
//! round tells its receiver to delete the keys it sent earlier that have vanished since.
//!
//! What makes collection safe is the grace period: a node that was down or cut off for longer
//! (or a stray not handed off within it) may still hold a value whose tombstone is gone, and
//! would bring it back. Cassandra's `gc_grace_seconds` has the same rule. A node never issues
//! a dot twice (its dots are numbered above a node-wide floor, leased in the storage meta), so
//! a key written again after collection gets versions no old context covers.
//!
//! HINTED HANDOFF
//!
//! A replica that does not take a write (down, or cut off) is remembered with the key as a hint;
//! every heartbeat interval, and as soon as the failure detector hears from it again, the owner
//! hands each replica it does not suspect the current state of its hinted keys, and forgets the
//! hints it acknowledges. Hints live in memory and are bounded;
//! anti-entropy repairs whatever they miss.
//!
//! CAVEATS
//!
//! In a ring with fewer than `N` nodes a key has fewer copies; the default quorums shrink to what
//! exists and the node says so ([`crate::message::NodeStatus::replicas`]). Each side of a
//! partition forms a ring of its own and cannot tell that from a small ring: its owners
//! acknowledge writes with the copies their side has, which merge back after the heal but are
//! fewer than W until then. (A node cut off alone keeps only the range it owned before, so it
//! refuses writes for other keys until its request deadline.) A client that needs W copies
//! whatever happens passes `w` (and `r`) explicitly: an explicit quorum is never shrunk, and a
//! request that cannot meet it fails.

use super::{Chord, ClientOp, ConnId, Event, Purpose};
use crate::error::{Error, Result};
use crate::id::{Id, in_half_open};
use crate::message::{NodeRef, ReadReply, Request, RequestId, Response, WriteId};
use crate::storage::Storage;
use crate::version::{VersionVector, Versioned};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};

/// Most items in one anti-entropy message.
const SYNC_BATCH: usize = 256;

/// Most batches of anti-entropy or hand-off a node chains per sync interval after the first: an
/// exchange with more to do goes on at once, one in flight at a time, up to this many more.
pub(super) const MAX_SYNC_CHAIN: u32 = 16;

/// How many keys one tombstone-collection round looks at.
const REAP_SCAN: usize = 1024;

/// Most tombstones whose age is tracked; beyond that, the rest wait for a later pass.
const MAX_TOMBS: usize = 100_000;

/// Most hinted keys kept in all; beyond that anti-entropy alone repairs.
const MAX_HINTS: usize = 100_000;

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
    responder: Responder,
    /// The client write's id; `None` for a hand-off.
    write_id: Option<WriteId>,
    response: Response,
    /// What to answer if too few replicas store it; `None`: an error.
    on_failure: Option<Response>,
    /// Replica acknowledgements still needed.
    needed: usize,
    acks: usize,
    outstanding: usize,
    done: bool,
}

/// A tombstone collection waiting for the replicas' checks.
#[derive(Clone, Debug)]
pub(super) struct ReapOp {
    /// The tombstones to collect and the digests of their states here.
    candidates: Vec<(Vec<u8>, u64)>,
    /// How many replicas hold each with the same digest.
    votes: BTreeMap<Vec<u8>, usize>,
    /// The replicas asked, and our range and replicas when they were.
    targets: Vec<NodeRef>,
    view: Option<(Id, Vec<Id>)>,
    outstanding: usize,
}

/// A read waiting for its replicas.
#[derive(Clone, Debug)]
pub(super) struct ReadOp {
    responder: Responder,
    key: Vec<u8>,
    merged: Versioned,
    /// Digests of the copies seen, for read repair.
    copies: Vec<(NodeRef, u64)>,
    needed: usize,
    answered: usize,
    outstanding: usize,
    done: bool,
}

impl<S: Storage> Chord<S> {
    /// The other nodes that hold copies of our keys: our first `N − 1` successors.
    pub(super) fn replica_targets(&self) -> Vec<NodeRef> {
        self.succs
            .iter()
            .filter(|s| s.id != self.me.id)
            .take(self.opts.replicas.saturating_sub(1))
            .copied()
            .collect()
    }

    /// How many replicas (besides us) a request must hear from. A quorum the client asked for
    /// is kept as asked (an error if it cannot be met: too few nodes); the default quorum shrinks
    /// to the copies that exist, so a ring smaller than N (a single node, say) still works.
    fn replicas_needed(&self, asked: Option<u8>, default: usize, targets: usize) -> Result<usize> {
        match asked {
            Some(q) if usize::from(q) > 1 + targets => Err(Error::Unavailable(format!(
                "{q} copies were asked for and only {} nodes are reachable",
                1 + targets
            ))),
            Some(q) => Ok(usize::from(q).max(1) - 1),
            None => Ok(default.clamp(1, 1 + targets) - 1),
        }
    }

    /// How many copies our keys have right now (ourselves included), at most `N`.
    pub fn replicas_available(&self) -> usize {
        1 + self.replica_targets().len()
    }

    /// Coordinate a write as the owner: store our new version, replicate it, answer at `W`.
    pub(super) fn coordinate_write(
        &mut self,
        responder: Responder,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: VersionVector,
        write_id: WriteId,
        w: Option<u8>,
    ) {
        if self
            .writes
            .values()
            .any(|w| w.write_id == Some(write_id) && !w.done)
        {
            let e = Error::Unavailable("this write is still being replicated; retry".into());
            return self.answer(responder, Err(e));
        }
        // Refuse before applying anything: a write that cannot get the copies it asks for.
        let targets = self.replica_targets();
        let needed = match self.replicas_needed(w, self.opts.write_quorum, targets.len()) {
            Ok(n) => n,
            Err(e) => return self.answer(responder, Err(e)),
        };
        // A retry of a write already applied here is not applied again: its version is
        // replicated once more and the first answer returned.
        let response = match self.applied.get(&write_id) {
            Some(first) => first.clone(),
            None => match self.write_version(&key, value, &context, write_id) {
                Ok(r) => {
                    self.remember_applied(write_id, r.clone());
                    r
                }
                Err(e) => return self.answer(responder, Err(e)),
            },
        };
        let state = match self.read_versions(&key) {
            Ok(state) => state.encode(),
            Err(e) => return self.answer(responder, Err(e)),
        };
        let op = WriteOp {
            responder,
            write_id: Some(write_id),
            response,
            on_failure: None,
            needed,
            acks: 0,
            outstanding: targets.len(),
            done: false,
        };
        self.replicate(op, targets, vec![(key, state)]);
    }

    /// Send `items` to `targets` and answer `w`'s responder once `w.needed` of them stored them
    /// (at once if none is needed).
    fn replicate(&mut self, mut w: WriteOp, targets: Vec<NodeRef>, items: Vec<(Vec<u8>, Vec<u8>)>) {
        let op = self.next_op;
        self.next_op += 1;
        if w.needed == 0 {
            w.done = true;
            self.answer(w.responder.clone(), Ok(w.response.clone()));
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
            self.send(t, Request::Replicate { items }, purpose);
        }
    }

    pub(super) fn on_replica_write_answer(
        &mut self,
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
            finish = Some((w.responder.clone(), Ok(w.response.clone())));
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
            self.writes.remove(&op);
        }
        if let Some((responder, result)) = finish {
            self.answer(responder, result);
        }
    }

    fn add_hint(&mut self, to: NodeRef, key: Vec<u8>) {
        let total: usize = self.hints.values().map(|(_, k)| k.len()).sum();
        if total >= MAX_HINTS {
            return; // anti-entropy will bring this one over
        }
        self.hints
            .entry(to.id)
            .or_insert_with(|| (to, BTreeSet::new()))
            .1
            .insert(key);
    }

    /// Hand hinted writes to replicas that may be back: one batch per replica per round, the
    /// current state of each key (so later writes ride along).
    pub(super) fn deliver_hints(&mut self) {
        let due: Vec<(NodeRef, Vec<Vec<u8>>)> = self
            .hints
            .values()
            .filter(|(node, _)| !self.detector.is_suspected(&node.id))
            .map(|(node, keys)| (*node, keys.iter().take(SYNC_BATCH).cloned().collect()))
            .collect();
        for (to, keys) in due {
            let mut items = Vec::new();
            for k in &keys {
                match self.storage.get(k) {
                    Ok(Some(v)) => items.push((k.clone(), v)),
                    Ok(None) => {}
                    Err(error) => return self.emit(Event::StorageError { error }),
                }
            }
            self.send(
                to,
                Request::Replicate { items },
                Purpose::Hints { to, keys },
            );
        }
    }

    pub(super) fn on_hints_answer(
        &mut self,
        to: NodeRef,
        keys: Vec<Vec<u8>>,
        response: Result<Response>,
    ) {
        if !matches!(response, Ok(Response::Ack)) {
            // Still away: try again next round, unless it is no longer one of our replicas (its
            // keys' copies are elsewhere now, and anti-entropy keeps those).
            if !self.succs.iter().any(|s| s.id == to.id) {
                self.hints.remove(&to.id);
            }
            return;
        }
        self.emit(Event::Repaired {
            with: to,
            keys: keys.len() as u64,
        });
        if let Some((_, pending)) = self.hints.get_mut(&to.id) {
            for k in &keys {
                pending.remove(k);
            }
            if pending.is_empty() {
                self.hints.remove(&to.id);
            }
        }
    }

    /// Coordinate a read as the owner: our copy merged with `R − 1` replicas' copies.
    pub(super) fn coordinate_read(&mut self, responder: Responder, key: Vec<u8>, r: Option<u8>) {
        let merged = match self.read_versions(&key) {
            Ok(state) => state,
            Err(e) => return self.answer(responder, Err(e)),
        };
        let targets = self.replica_targets();
        let needed = match self.replicas_needed(r, self.opts.read_quorum, targets.len()) {
            Ok(n) => n,
            Err(e) => return self.answer(responder, Err(e)),
        };
        let mut r = ReadOp {
            responder,
            copies: vec![(self.me, merged.digest())],
            key: key.clone(),
            merged,
            needed,
            answered: 0,
            outstanding: targets.len(),
            done: false,
        };
        if needed == 0 {
            r.done = true;
            self.answer(r.responder.clone(), Ok(read_reply(&r.merged)));
            if targets.is_empty() {
                return;
            }
        }
        let op = self.next_op;
        self.next_op += 1;
        self.reads.insert(op, r);
        for t in targets {
            let req = Request::ReplicaRead { key: key.clone() };
            self.send(t, req, Purpose::ReplicaRead { op, from: t });
        }
    }

    pub(super) fn on_replica_read_answer(
        &mut self,
        op: u64,
        from: NodeRef,
        response: Result<Response>,
    ) {
        let Some(r) = self.reads.get_mut(&op) else {
            return;
        };
        r.outstanding -= 1;
        if let Ok(Response::State(state)) = response {
            let state = match state.map(|b| Versioned::decode(&b)).transpose() {
                Ok(s) => s.unwrap_or_default(),
                Err(_) => Versioned::empty(), // a corrupt copy counts as empty; repair fixes it
            };
            r.copies.push((from, state.digest()));
            r.merged.merge(&state);
            r.answered += 1;
        }
        let mut finish = None;
        if !r.done && r.answered >= r.needed {
            r.done = true;
            finish = Some((r.responder.clone(), Ok(read_reply(&r.merged))));
        } else if !r.done && r.answered + r.outstanding < r.needed {
            r.done = true;
            let e = Error::Unavailable(format!(
                "the read reached {} of the {} copies required",
                1 + r.answered,
                1 + r.needed
            ));
            finish = Some((r.responder.clone(), Err(e)));
        }
        if let Some((responder, result)) = finish {
            self.answer(responder, result);
        }
        let r = self.reads.get(&op).expect("present");
        if r.outstanding == 0 {
            let r = self.reads.remove(&op).expect("present");
            self.read_repair(r);
        }
    }

    /// Bring every copy a read saw up to the merged state.
    fn read_repair(&mut self, r: ReadOp) {
        let digest = r.merged.digest();
        let encoded = r.merged.encode();
        for (node, d) in r.copies {
            if d == digest {
                continue;
            }
            self.emit(Event::Repaired {
                with: node,
                keys: 1,
            });
            if node.id == self.me.id {
                if let Err(error) = self.merge_into_storage(&r.key, &r.merged) {
                    self.emit(Event::StorageError { error });
                }
            } else {
                let items = vec![(r.key.clone(), encoded.clone())];
                self.send(node, Request::Replicate { items }, Purpose::Repair);
            }
        }
    }

    /// A replica's side of [`Request::Replicate`] (and of repairs): merge and store.
    pub(super) fn on_replicate(&mut self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Response> {
        for (key, bytes) in items {
            let incoming = Versioned::decode(&bytes)?;
            self.merge_into_storage(&key, &incoming)?;
        }
        Ok(Response::Ack)
    }

    /// Merge `incoming` into our copy of `key`, writing only if something changed.
    /// Returns whether it did.
    pub(super) fn merge_into_storage(&mut self, key: &[u8], incoming: &Versioned) -> Result<bool> {
        let mut state = self.read_versions(key)?;
        let before = state.digest();
        state.merge(incoming);
        let changed = state.digest() != before;
        if changed {
            self.storage.put(key, &state.encode())?;
        }
        Ok(changed)
    }

    /// A replica's side of [`Request::ReplicaRead`].
    pub(super) fn on_replica_read(&self, key: &[u8]) -> Result<Response> {
        Ok(Response::State(self.storage.get(key)?))
    }

    /// One anti-entropy round with the next replica, if it is time.
    pub(super) fn sync_tick(&mut self) {
        let targets = self.replica_targets();
        let Some(start) = self.pred.or(self.range_start) else {
            return; // no known range yet
        };
        self.sync_chain = 0;
        if targets.is_empty() || !self.installed || self.syncing {
            return;
        }
        let round = self.sync_next;
        self.sync_next = self.sync_next.wrapping_add(1);
        if round % 2 == 1 {
            return self.sync_foreign(start.id);
        }
        let to = targets[(round / 2) % targets.len()];
        self.sync_range(to, start.id, self.me.id);
    }

    /// Start a digest exchange with `to` over the range `(from, until]`.
    fn sync_range(&mut self, to: NodeRef, from: Id, until: Id) {
        let digests = match bucket_digests(&self.storage, from, until) {
            Ok(d) => d,
            Err(error) => return self.emit(Event::StorageError { error }),
        };
        self.syncing = true;
        let req = Request::SyncDigest {
            asker: self.me,
            from,
            to: until,
            digests: digests.into_iter().collect(),
        };
        let foreign = until != self.me.id;
        self.send(
            to,
            req,
            Purpose::Sync {
                to,
                from,
                until,
                foreign,
            },
        );
    }

    /// Copies we hold outside our own range are replicas, or strays left by a partition or a
    /// changed ring. One range at a time, find the owner of the next such key and run the
    /// digest exchange with it, so that whatever only we hold reaches the owner (and from it the
    /// owner's replicas).
    fn sync_foreign(&mut self, pred: Id) {
        let cursor = self.sync_cursor.unwrap_or(self.me.id);
        let next = match self.storage.scan_range(cursor, pred, 1) {
            Ok(next) => next,
            Err(error) => return self.emit(Event::StorageError { error }),
        };
        match next.first() {
            Some((key, _)) => {
                let target = Id::hash(key);
                self.syncing = true;
                self.start_lookup(target, super::Then::SyncForeign { from: cursor }, None);
            }
            // Past the last foreign key: start again from our own position next time.
            None => self.sync_cursor = None,
        }
    }

    /// The owner of the next foreign range is known: compare `(from, owner]` with it.
    pub(super) fn on_foreign_owner(&mut self, from: Id, owner: NodeRef) {
        self.syncing = false;
        if owner.id == self.me.id {
            self.sync_cursor = None;
            return;
        }
        self.sync_cursor = Some(owner.id);
        self.sync_range(owner, from, owner.id);
    }

    /// A replica's side of [`Request::SyncDigest`]: our keys in the buckets that differ, each
    /// with its state's digest, within the byte budget of a transfer round.
    pub(super) fn on_sync_digest(
        &self,
        asker: NodeRef,
        from: Id,
        to: Id,
        theirs: Vec<(u8, u64)>,
    ) -> Result<Response> {
        let stray = to == self.me.id && !self.keeps_copies(&asker);
        let mine = bucket_digests(&self.storage, from, to)?;
        let theirs: BTreeMap<u8, u64> = theirs.into_iter().collect();
        let buckets: BTreeSet<u8> = mine
            .keys()
            .chain(theirs.keys())
            .filter(|b| mine.get(b) != theirs.get(b))
            .copied()
            .collect();
        let mut keys = Vec::new();
        let mut bytes = 0;
        let mut complete = true;
        if !buckets.is_empty() {
            for (k, v) in self.storage.scan_range(from, to, usize::MAX)? {
                if !buckets.contains(&Id::hash(&k).0[0]) {
                    continue;
                }
                if bytes >= self.opts.transfer_bytes {
                    complete = false;
                    break;
                }
                bytes += k.len() + 16;
                keys.push((k, state_digest(&v)));
            }
        }
        Ok(Response::SyncKeys {
            buckets: buckets.into_iter().collect(),
            keys,
            complete,
            stray,
        })
    }

    /// A replica's side of [`Request::SyncFetch`]: our states of those keys.
    pub(super) fn on_sync_fetch(&self, keys: Vec<Vec<u8>>) -> Result<Response> {
        let mut items = Vec::new();
        for k in keys {
            if let Some(v) = self.storage.get(&k)? {
                items.push((k, v));
            }
        }
        Ok(Response::SyncItems { items })
    }

    /// The asker's side of a digest exchange over `(from, until]`: compare the replica's keys
    /// with ours in the buckets that differ, push a batch of our states it lacks or holds
    /// otherwise, and fetch a batch of its states we lack or hold otherwise. Outside our own
    /// range (`foreign`) we only bring up to date the copies we hold; a stray hands off instead.
    pub(super) fn on_sync_answer(
        &mut self,
        to: NodeRef,
        from: Id,
        until: Id,
        foreign: bool,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let Ok(Response::SyncKeys {
            buckets,
            keys,
            complete,
            stray,
        }) = response
        else {
            return;
        };
        if foreign && stray {
            return self.hand_off(to, from, until);
        }
        if buckets.is_empty() {
            return;
        }
        // The keys listed end somewhere in the range if the answer was cut short: compare up to
        // there now, and the rest in the next exchange.
        let horizon = match keys.last() {
            Some((k, _)) if !complete => Id::hash(k),
            _ => until,
        };
        let buckets: BTreeSet<u8> = buckets.into_iter().collect();
        let mut theirs: BTreeMap<Vec<u8>, u64> = keys
            .into_iter()
            .filter(|(k, _)| in_half_open(from, horizon, Id::hash(k)))
            .collect();
        let entries = match self.storage.scan_range(from, horizon, usize::MAX) {
            Ok(e) => e,
            Err(error) => return self.emit(Event::StorageError { error }),
        };
        let (mut push, mut fetch, mut differing) = (Vec::new(), Vec::new(), 0);
        for (k, v) in entries {
            if !buckets.contains(&Id::hash(&k).0[0]) {
                continue;
            }
            match theirs.remove(&k) {
                Some(d) if d == state_digest(&v) => {}
                held => {
                    differing += 1;
                    if held.is_some() && fetch.len() < SYNC_BATCH {
                        fetch.push(k.clone());
                    }
                    if push.len() < SYNC_BATCH {
                        push.push((k, v));
                    }
                }
            }
        }
        // The keys only the replica holds are ours to take, in our own range.
        if !foreign {
            for k in theirs.into_keys() {
                differing += 1;
                if fetch.len() < SYNC_BATCH {
                    fetch.push(k);
                }
            }
        }
        self.emit(Event::Repaired {
            with: to,
            keys: push.len() as u64,
        });
        if !push.is_empty() {
            self.send(to, Request::Replicate { items: push }, Purpose::Repair);
        }
        // More than a batch differed: the same range again; cut short: the rest of it.
        let resume = if differing > SYNC_BATCH {
            Some(from)
        } else {
            (!complete).then_some(horizon)
        };
        if fetch.is_empty() {
            return self.resume_sync(to, until, resume);
        }
        self.syncing = true;
        let purpose = Purpose::SyncFetch {
            to,
            until,
            foreign,
            resume,
        };
        self.send(to, Request::SyncFetch { keys: fetch }, purpose);
    }

    /// The replica's states we fetched: merge them (outside our range, only into copies we
    /// hold), then go on if the exchange had more to do.
    pub(super) fn on_sync_fetch_answer(
        &mut self,
        to: NodeRef,
        until: Id,
        foreign: bool,
        resume: Option<Id>,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let Ok(Response::SyncItems { items }) = response else {
            return;
        };
        for (k, v) in &items {
            if foreign && !matches!(self.storage.get(k), Ok(Some(_))) {
                continue;
            }
            if let Ok(state) = Versioned::decode(v) {
                if let Err(error) = self.merge_into_storage(k, &state) {
                    self.emit(Event::StorageError { error });
                }
            }
        }
        self.resume_sync(to, until, resume);
    }

    /// Continue an exchange with `to` over `(from, until]` at once, if it has more to do and
    /// this interval has room for another batch.
    fn resume_sync(&mut self, to: NodeRef, until: Id, resume: Option<Id>) {
        if let Some(from) = resume {
            if from != until && self.chain_more() {
                self.sync_range(to, from, until);
            }
        }
    }

    /// Whether `node` is one of the nodes that keep copies of our keys (ourselves or one of
    /// our `N − 1` replicas), or may be: while we have fewer than `N − 1` replicas (a small
    /// ring, or a view still repairing) every node counts, and no copy is collected.
    fn keeps_copies(&self, node: &NodeRef) -> bool {
        let targets = self.replica_targets();
        node.id == self.me.id
            || targets.len() + 1 < self.opts.replicas
            || targets.iter().any(|t| t.id == node.id)
    }

    /// We hold copies in `(from, until]`, owned by `to`, and are none of their replicas: send
    /// a batch of them to the owner, to delete once it confirms they are safe elsewhere.
    fn hand_off(&mut self, to: NodeRef, from: Id, until: Id) {
        if self.moving_keys() {
            return;
        }
        let mut items = match self.storage.scan_range(from, until, SYNC_BATCH) {
            Ok(items) => items,
            Err(error) => return self.emit(Event::StorageError { error }),
        };
        // Within the byte budget of a transfer round too (one item at least).
        let mut bytes = 0;
        let fits = items
            .iter()
            .take_while(|(k, v)| {
                bytes += k.len() + v.len();
                bytes <= self.opts.transfer_bytes
            })
            .count();
        items.truncate(fits.max(1));
        if items.is_empty() {
            return;
        }
        let sent = items
            .iter()
            .map(|(k, v)| (k.clone(), state_digest(v)))
            .collect();
        let req = Request::Handoff {
            from: self.me,
            items,
        };
        self.syncing = true;
        let purpose = Purpose::Handoff {
            to,
            from,
            until,
            sent,
        };
        // The owner answers only once all its replicas did: give it their round trip too.
        let deadline = self.now + 2 * self.opts.rpc_timeout;
        self.send_with_deadline(to, req, purpose, deadline);
    }

    /// The owner's side of [`Request::Handoff`]: merge the stray copies we own, and once the
    /// merged states are stored on all `N − 1` replicas, tell the sender which it may delete.
    /// Nothing may be deleted if the sender keeps copies of our keys after all, or if we are
    /// leaving (what we store now leaves with us). Either way the answer carries our merged
    /// states, so the sender's copies no longer hold values we have seen replaced.
    pub(super) fn on_handoff(
        &mut self,
        responder: Responder,
        from: NodeRef,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let start = self.pred.or(self.range_start).map(|p| p.id);
        let mut merged = Vec::new();
        for (key, bytes) in items {
            let owned = self.installed
                && start.is_some_and(|s| in_half_open(s, self.me.id, Id::hash(&key)));
            // A copy that does not decode is left where it is; the rest go on.
            let Ok(incoming) = Versioned::decode(&bytes) else {
                continue;
            };
            if !owned {
                continue;
            }
            let result = self
                .merge_into_storage(&key, &incoming)
                .and_then(|_| self.storage.get(&key));
            match result {
                Ok(Some(state)) => merged.push((key, state)),
                Ok(None) => {}
                Err(e) => return self.answer(responder, Err(e)),
            }
        }
        let keep = Response::HandedOff {
            keys: Vec::new(),
            states: merged.clone(),
        };
        if self.leaving || self.keeps_copies(&from) || merged.is_empty() {
            return self.answer(responder, Ok(keep));
        }
        let targets = self.replica_targets();
        let op = WriteOp {
            responder,
            write_id: None,
            response: Response::HandedOff {
                keys: merged.iter().map(|(k, _)| k.clone()).collect(),
                states: merged.clone(),
            },
            on_failure: Some(keep),
            needed: targets.len(),
            acks: 0,
            outstanding: targets.len(),
            done: false,
        };
        self.replicate(op, targets, merged);
    }

    /// The owner answered a hand-off: delete the copies it confirmed, unless they changed
    /// since we sent them, and bring the others up to date with its states.
    pub(super) fn on_handoff_answer(
        &mut self,
        to: NodeRef,
        from: Id,
        until: Id,
        sent: Vec<(Vec<u8>, u64)>,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let Ok(Response::HandedOff { keys, states }) = response else {
            return;
        };
        // A transfer in flight tells its receiver to delete what vanished here: keep all.
        let confirmed: BTreeSet<Vec<u8>> = if self.moving_keys() {
            BTreeSet::new()
        } else {
            keys.into_iter().collect()
        };
        let sent: BTreeMap<Vec<u8>, u64> = sent.into_iter().collect();
        let mut collected = 0;
        for (key, digest) in &sent {
            if !confirmed.contains(key) {
                continue;
            }
            let result = self.storage.get(key).and_then(|now| match now {
                Some(v) if state_digest(&v) == *digest => self.storage.delete(key),
                _ => Ok(false),
            });
            match result {
                Ok(true) => collected += 1,
                Ok(false) => {}
                Err(error) => return self.emit(Event::StorageError { error }),
            }
        }
        for (key, bytes) in states {
            // Only copies we sent and still hold.
            if !sent.contains_key(&key) || !matches!(self.storage.get(&key), Ok(Some(_))) {
                continue;
            }
            if let Ok(state) = Versioned::decode(&bytes) {
                if let Err(error) = self.merge_into_storage(&key, &state) {
                    self.emit(Event::StorageError { error });
                }
            }
        }
        if collected > 0 {
            self.emit(Event::Collected {
                with: to,
                keys: collected,
                tombstones: false,
            });
        }
        // All of the batch went: more may follow at once (the next scan finds none if not).
        if collected > 0 && collected == sent.len() as u64 && self.chain_more() {
            self.hand_off(to, from, until);
        }
    }

    /// Whether a transfer (to a newcomer, or our leave) is moving keys: a transfer round tells
    /// its receiver to delete the keys it sent that vanished here since, so nothing is
    /// collected meanwhile.
    fn moving_keys(&self) -> bool {
        self.leaving || self.transfer.is_some()
    }

    /// Whether another batch may follow in this sync interval (and count it).
    fn chain_more(&mut self) -> bool {
        if self.sync_chain >= MAX_SYNC_CHAIN {
            return false;
        }
        self.sync_chain += 1;
        true
    }

    /// Every `sync_interval`, if tombstones are collected: look at the next stretch of our
    /// range for keys that are tombstones only. A tombstone unchanged here for the grace period
    /// is a candidate; ask every replica whether it holds exactly the same state
    /// ([`Request::Reap`]), and collect the ones they all hold ([`Chord::on_reap_answer`]).
    pub(super) fn reap_tick(&mut self) {
        let Some(grace) = self.opts.tombstone_grace else {
            return;
        };
        let targets = self.replica_targets();
        let Some(start) = self.pred.or(self.range_start).map(|p| p.id) else {
            return;
        };
        if !self.installed
            || self.reaping.is_some()
            || self.moving_keys()
            || targets.len() + 1 < self.opts.replicas
        {
            return;
        }
        // Any change of our range or replicas may have left stray copies behind, stale ones
        // among them, that collection has not handed off yet: grace periods start again.
        let view = (start, targets.iter().map(|t| t.id).collect::<Vec<Id>>());
        if self.reap_view.as_ref() != Some(&view) {
            self.tombs.clear();
            self.reap_view = Some(view);
        }
        let from = match self.reap_cursor {
            Some(c) if in_half_open(start, self.me.id, c) && c != self.me.id => c,
            _ => start,
        };
        let entries = match self.storage.scan_range(from, self.me.id, REAP_SCAN) {
            Ok(e) => e,
            Err(error) => return self.emit(Event::StorageError { error }),
        };
        self.reap_cursor = match entries.last() {
            Some((k, _)) if entries.len() == REAP_SCAN => Some(Id::hash(k)),
            _ => {
                // A whole pass: forget tombstones no longer in our range.
                let me = self.me.id;
                self.tombs
                    .retain(|k, _| in_half_open(start, me, Id::hash(k)));
                None
            }
        };
        let mut candidates = Vec::new();
        for (key, bytes) in entries {
            let Ok(state) = Versioned::decode(&bytes) else {
                continue;
            };
            if !state.is_deleted() {
                self.tombs.remove(&key);
                continue;
            }
            let digest = state.digest();
            match self.tombs.get(&key) {
                Some(&(d, since)) if d == digest => {
                    if self.now.saturating_sub(since) >= grace && candidates.len() < SYNC_BATCH {
                        candidates.push((key, digest));
                    }
                }
                // Changed since: its grace period starts again.
                Some(_) => {
                    self.tombs.insert(key, (digest, self.now));
                }
                None if self.tombs.len() >= MAX_TOMBS => {}
                None => {
                    self.tombs.insert(key, (digest, self.now));
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        for t in &targets {
            let req = Request::Reap {
                items: candidates.clone(),
                commit: false,
            };
            self.send(*t, req, Purpose::Reap);
        }
        let op = ReapOp {
            candidates,
            votes: BTreeMap::new(),
            outstanding: targets.len(),
            view: self.reap_view.clone(),
            targets,
        };
        if op.outstanding == 0 {
            // No replicas (N = 1): ours is the only copy.
            return self.finish_reap(op);
        }
        self.reaping = Some(op);
    }

    /// A replica's side of [`Request::Reap`]: which of the keys we hold with exactly the given
    /// digest, and with `commit`, delete those. None while a transfer of ours is moving keys: it
    /// would tell its receiver to delete them too.
    pub(super) fn on_reap(&mut self, items: Vec<(Vec<u8>, u64)>, commit: bool) -> Result<Response> {
        let mut keys = Vec::new();
        if self.moving_keys() {
            return Ok(Response::Reaped { keys });
        }
        for (key, digest) in items {
            match self.storage.get(&key)? {
                Some(v) if state_digest(&v) == digest => {
                    if commit {
                        self.storage.delete(&key)?;
                    }
                    keys.push(key);
                }
                _ => {}
            }
        }
        Ok(Response::Reaped { keys })
    }

    /// A replica answered a tombstone check; once all have, [`Chord::finish_reap`].
    pub(super) fn on_reap_answer(&mut self, response: Result<Response>) {
        let Some(r) = self.reaping.as_mut() else {
            return;
        };
        r.outstanding -= 1;
        if let Ok(Response::Reaped { keys }) = response {
            for k in keys {
                *r.votes.entry(k).or_default() += 1;
            }
        }
        if r.outstanding == 0 {
            let r = self.reaping.take().expect("present");
            self.finish_reap(r);
        }
    }

    /// Collect the tombstones every replica asked holds exactly as we do: delete ours, and tell
    /// those replicas to delete theirs. Nothing if our range or replicas changed meanwhile, or
    /// a transfer started.
    fn finish_reap(&mut self, r: ReapOp) {
        let targets: Vec<Id> = r.targets.iter().map(|t| t.id).collect();
        let current: Vec<Id> = self.replica_targets().iter().map(|t| t.id).collect();
        if self.moving_keys() || current != targets || self.reap_view != r.view {
            return;
        }
        let mut reaped = Vec::new();
        for (key, digest) in r.candidates {
            if r.votes.get(&key).copied().unwrap_or(0) != r.targets.len() {
                continue;
            }
            // Unchanged here too (no write arrived while the replicas answered)?
            let result = self.storage.get(&key).and_then(|now| match now {
                Some(v) if state_digest(&v) == digest => self.storage.delete(&key),
                _ => Ok(false),
            });
            match result {
                Ok(true) => {
                    self.tombs.remove(&key);
                    reaped.push((key, digest));
                }
                Ok(false) => {}
                Err(error) => return self.emit(Event::StorageError { error }),
            }
        }
        if reaped.is_empty() {
            return;
        }
        self.emit(Event::Collected {
            with: self.me,
            keys: reaped.len() as u64,
            tombstones: true,
        });
        for t in r.targets {
            let req = Request::Reap {
                items: reaped.clone(),
                commit: true,
            };
            self.send(t, req, Purpose::Repair);
        }
    }

    /// Deliver the outcome of a coordinated request.
    pub(super) fn answer(&mut self, responder: Responder, result: Result<Response>) {
        match responder {
            Responder::Conn { conn, id } => self.respond(conn, id, result),
            Responder::Local(op) => self.finish_client_op(op, result),
        }
    }
}

/// What a read answers: the live values and the context to write back.
fn read_reply(state: &Versioned) -> Response {
    Response::Read(ReadReply {
        values: state.values().into_iter().map(<[u8]>::to_vec).collect(),
        context: state.context().clone(),
    })
}

/// The digest of an encoded state; a state that does not decode gets one no state has.
fn state_digest(bytes: &[u8]) -> u64 {
    Versioned::decode(bytes).map_or(0, |s| s.digest())
}

/// One digest per bucket (first byte of the key id) of the states in `(from, to]`.
fn bucket_digests<S: Storage>(storage: &S, from: Id, to: Id) -> Result<BTreeMap<u8, u64>> {
    let mut hashers: BTreeMap<u8, Sha1> = BTreeMap::new();
    for (k, v) in storage.scan_range(from, to, usize::MAX)? {
        let state = Versioned::decode(&v)?;
        let h = hashers.entry(Id::hash(&k).0[0]).or_default();
        h.update((k.len() as u64).to_be_bytes());
        h.update(&k);
        h.update(state.digest().to_be_bytes());
    }
    Ok(hashers
        .into_iter()
        .map(|(b, h)| {
            let d = h.finalize();
            let mut top = [0u8; 8];
            top.copy_from_slice(&d[..8]);
            (b, u64::from_be_bytes(top))
        })
        .collect())
}
