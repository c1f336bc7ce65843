//! Repairing replicas that missed writes: hinted handoff and anti-entropy.
//!
//! HINTED HANDOFF
//!
//! A replica that does not take a write (down, or cut off) is remembered with the key as a hint;
//! every hint interval, and as soon as the failure detector hears from it again, the owner
//! hands each replica it does not suspect the current state of its hinted keys, and forgets the
//! hints it acknowledges. Hints live in memory and are bounded; anti-entropy repairs whatever
//! they miss.
//!
//! ANTI-ENTROPY
//!
//! Every `sync_interval` the owner compares its range `(pred, self]` with one replica (round
//! robin) by their hash trees ([`super::tree`], Dynamo §4.7): it sends its root restricted to
//! the range ([`Request::SyncTree`]); the replica answers which of the nodes asked about differ
//! from its own ([`Response::SyncKeys`]); the owner sends those nodes' children, and so on down
//! to the leaves, where the replica also lists its keys in the leaves that differ, each with its
//! entry hash. The owner pushes its states of the keys the replica lacks or holds otherwise
//! ([`Request::Replicate`]) and fetches the replica's states of the keys it lacks or holds
//! otherwise ([`Request::SyncFetch`]), and both sides merge. Two copies in sync cost one small
//! round trip and a few summaries per interval, whatever they store; copies that differ cost
//! `DEPTH` round trips and the keys of the leaves that differ. At most [`FANOUT`] differing
//! nodes are descended into per step (256 nodes per request): with more, the exchange narrows
//! to the part of the range those cover and the rest follows as the next exchange. Comparing
//! keys, not whole leaves, matters under a write load: leaves then differ by the writes in
//! flight, and only the keys that really differ should travel. This brings back copies lost to
//! a crash, fills a new replica after a join or leave, and reconciles the two sides of a healed
//! partition. A node whose tree is still being rebuilt after a restart neither starts nor
//! answers an exchange.
//!
//! Every other round goes the other way: a node walks the keys it holds outside its own range,
//! looks up the owner of the next such range and runs the same exchange with it (updating only
//! the copies it holds), so a version that only a former owner holds (after a partition, or a
//! ring that changed under it) reaches the current owner; a node that is none of that owner's
//! replicas hands its copies off instead ([`super::collect`]).
//!
//! Each exchange moves at most a batch each way, and one is in flight at a time; one that had
//! more to do (more keys differ than a batch, the key list hit its size bound, or the descent
//! narrowed) goes on at once, up to [`MAX_SYNC_CHAIN`] more per interval, so a big repair
//! finishes in seconds and still cannot starve client traffic.
//!
//! BATCHES
//!
//! Every message that carries states (a push, a fetch answer, a hint delivery, like a transfer
//! round or a hand-off) holds at most [`SYNC_BATCH`] of them and at most the byte budget, one
//! state at least (a state larger than the budget travels alone, and fits a frame by the state
//! bound, [`crate::version::VersionLimits::max_state_bytes`]): whatever the values' size, a
//! batch stays well under the frame bound (the default budget is a quarter of the default
//! frame). The asker of a fetch names its budget, and the answer stops where the next state
//! would not fit, saying so; the exchange then goes on from the same place. A message that
//! fails anyway (the peer's frame is smaller, or it timed out) is reported
//! ([`Event::RepairFailed`]) and halves the budget for the next ones, which doubles back with
//! every success; the exchange is retried with the smaller batch: a fetch at once, the rest in
//! their next round.

use super::tree::{self, Cover, DEPTH, FANOUT, LEAVES, entry_hash, level_width};
use super::{Batch, Event, FetchOp, Kv, KvIo, Purpose, Routed, SyncOp};
use crate::error::{Error, Result};
use crate::id::{Id, in_half_open, in_open};
use crate::message::{MAX_ITEMS, MAX_TREE_NODES, NodeRef, Request, Response};
use crate::ring::{Lookup, Ring};
use crate::storage::Storage;
use crate::version::Versioned;
use std::collections::{BTreeMap, BTreeSet};

/// Most items in one anti-entropy message.
pub(super) const SYNC_BATCH: usize = 256;

/// Most hash-tree nodes in one descent request: the children of [`FANOUT`] nodes.
pub(super) const MAX_SYNC_NODES: usize = FANOUT * FANOUT;

// What the messages' decoders accept (message.rs, BOUNDS) must hold what we send.
const _: () = assert!(SYNC_BATCH <= MAX_ITEMS && MAX_SYNC_NODES <= MAX_TREE_NODES);

/// Most batches of anti-entropy or hand-off a node chains per sync interval after the first: an
/// exchange with more to do goes on at once, one in flight at a time, up to this many more.
pub(super) const MAX_SYNC_CHAIN: u32 = 16;

/// Most hinted keys kept in all; beyond that anti-entropy alone repairs.
const MAX_HINTS: usize = 100_000;

impl<S: Storage> Kv<S> {
    // ---------------------------------------------------------------- hinted handoff

    pub(super) fn add_hint(&mut self, to: NodeRef, key: Vec<u8>) {
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
    /// current state of each key (so later writes ride along), within the byte budget.
    pub(super) fn deliver_hints(&mut self, ring: &Ring, io: &mut dyn KvIo) {
        let due: Vec<(NodeRef, Vec<Vec<u8>>)> = self
            .hints
            .values()
            .filter(|(node, _)| !ring.is_suspected(&node.id))
            .map(|(node, keys)| (*node, keys.iter().take(SYNC_BATCH).cloned().collect()))
            .collect();
        for (to, keys) in due {
            let mut batch = self.batch(SYNC_BATCH);
            // The keys this delivery settles: those sent, and those gone here since.
            let mut settled = Vec::new();
            for k in keys {
                match self.storage.get(&k) {
                    Ok(Some(v)) if !batch.fits(&k, &v) => break,
                    Ok(Some(v)) => {
                        batch.push(k.clone(), v);
                        settled.push(k);
                    }
                    Ok(None) => settled.push(k),
                    Err(error) => return io.report(Event::StorageError { error }),
                }
            }
            let bytes = batch.bytes() as u64;
            let purpose = Purpose::Hints {
                to,
                keys: settled,
                bytes,
            };
            let items = batch.into_items();
            self.send(io, to, Request::Replicate { items }, purpose);
        }
    }

    pub(super) fn on_hints_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        to: NodeRef,
        keys: Vec<Vec<u8>>,
        bytes: u64,
        response: Result<Response>,
    ) {
        let n = keys.len() as u64;
        let error = match response {
            Ok(Response::Ack) => None,
            Ok(other) => Some(Error::InvalidData(format!(
                "a hint delivery was answered {other:?}"
            ))),
            Err(e) => Some(e),
        };
        if let Some(error) = error {
            // Still away (or the batch was too much for it): try again next round, with a
            // smaller batch, unless it is no longer one of our replicas (its keys' copies are
            // elsewhere now, and anti-entropy keeps those).
            self.after_batch(io, to, "hints", n, bytes, Some(error));
            if !ring.successors().iter().any(|s| s.id == to.id) {
                self.hints.remove(&to.id);
            }
            return;
        }
        self.after_batch(io, to, "hints", n, bytes, None);
        io.report(Event::Repaired { with: to, keys: n });
        if let Some((_, pending)) = self.hints.get_mut(&to.id) {
            for k in &keys {
                pending.remove(k);
            }
            if pending.is_empty() {
                self.hints.remove(&to.id);
            }
        }
    }

    // ---------------------------------------------------------------- anti-entropy

    /// One anti-entropy round with the next replica, if it is time.
    pub(super) fn sync_tick(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        let targets = self.replica_targets(ring);
        let Some(start) = ring.range_start() else {
            return; // no known range yet
        };
        self.sync_chain = 0;
        let ready = ring.is_installed() && self.storage.is_built();
        if targets.is_empty() || !ready || self.syncing {
            return;
        }
        let round = self.sync_next;
        self.sync_next = self.sync_next.wrapping_add(1);
        if round % 2 == 1 {
            return self.sync_foreign(ring, io, start.id);
        }
        let to = targets[(round / 2) % targets.len()];
        self.sync_range(io, to, start.id, self.me.id);
    }

    /// Start a hash-tree exchange with `to` over the range `(from, until]`: send our root
    /// restricted to the range.
    fn sync_range(&mut self, io: &mut dyn KvIo, to: NodeRef, from: Id, until: Id) {
        if !self.storage.is_built() {
            return;
        }
        let root = match self.storage.summary(&Cover::new(from, until), 0, 0) {
            Ok(root) => root,
            Err(error) => return io.report(Event::StorageError { error }),
        };
        let op = SyncOp {
            to,
            from,
            until,
            rest: until,
            level: 0,
            foreign: until != self.me.id,
        };
        self.send_descent(io, op, vec![(0, root.hash)]);
    }

    /// Ask `op.to` which of these nodes of level `op.level` differ over `(op.from, op.until]`.
    fn send_descent(&mut self, io: &mut dyn KvIo, op: SyncOp, nodes: Vec<(u32, u64)>) {
        self.syncing = true;
        io.report(Event::SyncStep {
            with: op.to,
            nodes: nodes.len() as u64,
            keys_listed: 0,
            states: 0,
        });
        let req = Request::SyncTree {
            asker: self.me,
            from: op.from,
            to: op.until,
            level: op.level,
            nodes,
        };
        self.send(io, op.to, req, Purpose::Sync(op));
    }

    /// Copies we hold outside our own range are replicas, or strays left by a partition or a
    /// changed ring. One range at a time, find the owner of the next such key and run the
    /// hash-tree exchange with it, so that whatever only we hold reaches the owner (and from it
    /// the owner's replicas).
    fn sync_foreign(&mut self, ring: &mut Ring, io: &mut dyn KvIo, pred: Id) {
        let cursor = self.sync_cursor.unwrap_or(self.me.id);
        let next = match self.storage.scan_range(cursor, pred, 1) {
            Ok(next) => next,
            Err(error) => return io.report(Event::StorageError { error }),
        };
        match next.first() {
            Some((key, _)) => {
                let target = Id::hash(key);
                self.syncing = true;
                match ring.lookup(io, target, BTreeSet::new()) {
                    Lookup::Found(owner) => self.on_foreign_owner(io, cursor, owner),
                    Lookup::Pending(lookup) => {
                        let routed = Routed::SyncForeign { from: cursor };
                        self.routed.insert(lookup, routed);
                    }
                }
            }
            // Past the last foreign key: start again from our own position next time.
            None => self.sync_cursor = None,
        }
    }

    /// The owner of the next foreign range is known: compare `(from, owner]` with it.
    pub(super) fn on_foreign_owner(&mut self, io: &mut dyn KvIo, from: Id, owner: NodeRef) {
        self.syncing = false;
        if owner.id == self.me.id {
            self.sync_cursor = None;
            return;
        }
        self.sync_cursor = Some(owner.id);
        self.sync_range(io, owner, from, owner.id);
    }

    /// A replica's side of [`Request::SyncTree`]: which of the asker's nodes differ from
    /// ours over `(from, to]`, and at the leaves our keys in those that do, each with its entry
    /// hash, within the byte budget. The work is bounded by the request, whatever we store:
    /// at most [`MAX_SYNC_NODES`] summaries (each O(1) but at the range's two ends) and the
    /// listed leaves' keys.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_sync_tree(
        &self,
        ring: &Ring,
        asker: NodeRef,
        from: Id,
        to: Id,
        level: u8,
        nodes: Vec<(u32, u64)>,
    ) -> Result<Response> {
        if !self.storage.is_built() {
            return Err(Error::Unavailable(
                "rebuilding its hash tree after a restart".into(),
            ));
        }
        if level > DEPTH || nodes.len() > MAX_SYNC_NODES {
            return Err(Error::InvalidInput(format!(
                "a hash-tree request for {} nodes of level {level}: at most {MAX_SYNC_NODES} \
                 of levels 0..={DEPTH}",
                nodes.len()
            )));
        }
        let cover = Cover::new(from, to);
        let mut differ = Vec::new();
        for (index, hash) in nodes {
            let i = index as usize;
            if i >= level_width(level) {
                return Err(Error::InvalidInput(format!(
                    "level {level} of the hash tree has no node {index}"
                )));
            }
            if self.storage.summary(&cover, level, i)?.hash != hash {
                differ.push(i);
            }
        }
        differ.sort_by_key(|&i| cover.order(level, i));
        differ.dedup();
        let (mut keys, mut bytes, mut complete) = (Vec::new(), 0, true);
        if level == DEPTH {
            complete = self.storage.visit_leaves(&cover, &differ, &mut |k, v| {
                // Bounded by count too: a receiver refuses a list longer than MAX_ITEMS.
                if bytes >= self.opts.batch_bytes || keys.len() >= MAX_ITEMS {
                    return false;
                }
                bytes += k.len() + 16;
                keys.push((k.to_vec(), entry_hash(k, v)));
                true
            })?;
        }
        Ok(Response::SyncKeys {
            differ: differ.into_iter().map(|i| i as u32).collect(),
            keys,
            complete,
            stray: to == self.me.id && !self.keeps_copies(ring, &asker),
        })
    }

    /// A replica's side of [`Request::SyncFetch`]: our states of those keys, in the order asked,
    /// within the asker's byte budget and ours; `complete` says whether all fitted.
    pub(super) fn on_sync_fetch(&self, keys: Vec<Vec<u8>>, max_bytes: u64) -> Result<Response> {
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        // At most one item per key asked for, and a request's keys are at most MAX_ITEMS.
        let mut batch = Batch::new(max_bytes.min(self.opts.batch_bytes), MAX_ITEMS);
        let mut complete = true;
        for k in keys {
            if let Some(v) = self.storage.get(&k)? {
                if !batch.push(k, v) {
                    complete = false;
                    break;
                }
            }
        }
        Ok(Response::SyncItems {
            items: batch.into_items(),
            complete,
        })
    }

    /// The asker's side of a hash-tree exchange: the replica named the nodes that differ. Above
    /// the leaves, descend into them (at most [`FANOUT`] of them per step, in ring order: with
    /// more, the exchange narrows to the range they cover and the rest follows); at the leaves,
    /// compare the replica's keys with ours in the leaves that differ, push a batch of our
    /// states it lacks or holds otherwise, and fetch a batch of its states we lack or hold
    /// otherwise. Outside our own range (`foreign`) we only bring up to date the copies we
    /// hold; a stray hands off instead.
    pub(super) fn on_sync_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        op: SyncOp,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let Ok(Response::SyncKeys {
            differ,
            keys,
            complete,
            stray,
        }) = response
        else {
            return;
        };
        if op.foreign && stray {
            return self.hand_off(ring, io, op.to, op.from, op.rest);
        }
        let cover = Cover::new(op.from, op.until);
        let mut differ: Vec<usize> = differ
            .into_iter()
            .map(|i| i as usize)
            .filter(|&i| i < level_width(op.level) && cover.touches(op.level, i))
            .collect();
        differ.sort_by_key(|&i| cover.order(op.level, i));
        differ.dedup();
        if differ.is_empty() {
            // Equal over `(from, until]`: on to the rest of the range, if the descent narrowed.
            let next = (op.until != op.rest).then_some(op.until);
            return self.resume_sync(io, op.to, op.rest, next);
        }
        if op.level < DEPTH {
            return self.descend(io, op, differ);
        }
        self.compare_leaves(io, op, &cover, &differ, keys, complete);
    }

    /// One level down: the children of the nodes that differ (at most [`FANOUT`] of them; with
    /// more, the range is cut after the last one taken, and the rest follows), each restricted
    /// to the range.
    fn descend(&mut self, io: &mut dyn KvIo, mut op: SyncOp, mut differ: Vec<usize>) {
        if differ.len() > FANOUT {
            differ.truncate(FANOUT);
            let last = differ[FANOUT - 1];
            let span = LEAVES / level_width(op.level);
            let cut = tree::leaf_last_id((last + 1) * span - 1);
            if in_open(op.from, op.until, cut) {
                op.until = cut;
            }
        }
        let cover = Cover::new(op.from, op.until);
        op.level += 1;
        let mut nodes = Vec::new();
        for parent in differ {
            for child in (0..FANOUT).map(|c| parent * FANOUT + c) {
                if !cover.touches(op.level, child) {
                    continue;
                }
                match self.storage.summary(&cover, op.level, child) {
                    Ok(s) => nodes.push((child as u32, s.hash)),
                    Err(error) => return io.report(Event::StorageError { error }),
                }
            }
        }
        self.send_descent(io, op, nodes);
    }

    /// The leaves that differ, with the replica's keys in them: push and fetch what differs.
    fn compare_leaves(
        &mut self,
        io: &mut dyn KvIo,
        op: SyncOp,
        cover: &Cover,
        leaves: &[usize],
        keys: Vec<(Vec<u8>, u64)>,
        complete: bool,
    ) {
        let SyncOp {
            to,
            from,
            until,
            rest,
            foreign,
            ..
        } = op;
        // The keys listed end somewhere in the range if the answer was cut short: compare up to
        // there now, and the rest in the next exchange.
        let horizon = match keys.last() {
            Some((k, _)) if !complete => Id::hash(k),
            _ => until,
        };
        let listed = keys.len() as u64;
        let mut theirs: BTreeMap<Vec<u8>, u64> = keys
            .into_iter()
            .filter(|(k, _)| in_half_open(from, horizon, Id::hash(k)))
            .collect();
        // Both batches are bounded; `more` records that a differing key did not fit one.
        let (mut push, mut fetch, mut more) = (self.batch(SYNC_BATCH), Vec::new(), false);
        // Our keys in those leaves, clockwise, up to the horizon.
        let walked = self.storage.visit_leaves(cover, leaves, &mut |k, v| {
            if !in_half_open(from, horizon, Id::hash(k)) {
                return false;
            }
            match theirs.remove(k) {
                Some(h) if h == entry_hash(k, v) => {}
                held => {
                    if held.is_some() {
                        if fetch.len() < SYNC_BATCH {
                            fetch.push(k.to_vec());
                        } else {
                            more = true;
                        }
                    }
                    if !push.push(k.to_vec(), v.to_vec()) {
                        more = true;
                    }
                }
            }
            true
        });
        if let Err(error) = walked {
            return io.report(Event::StorageError { error });
        }
        // The keys only the replica holds are ours to take, in our own range.
        if !foreign {
            for k in theirs.into_keys() {
                if fetch.len() < SYNC_BATCH {
                    fetch.push(k);
                } else {
                    more = true;
                }
            }
        }
        io.report(Event::Repaired {
            with: to,
            keys: push.len() as u64,
        });
        io.report(Event::SyncStep {
            with: to,
            nodes: 0,
            keys_listed: listed,
            states: push.len() as u64,
        });
        if !push.is_empty() {
            let purpose = Purpose::Push {
                to,
                keys: push.len() as u64,
                bytes: push.bytes() as u64,
            };
            let items = push.into_items();
            self.send(io, to, Request::Replicate { items }, purpose);
        }
        // More differed than a batch holds: the same range again; cut short: the rest of it;
        // a narrowed descent: the rest of the range.
        let resume = if more {
            Some(from)
        } else if !complete {
            Some(horizon)
        } else {
            (until != rest).then_some(until)
        };
        if fetch.is_empty() {
            return self.resume_sync(io, to, rest, resume);
        }
        self.syncing = true;
        let purpose = Purpose::SyncFetch(FetchOp {
            to,
            from,
            until: rest,
            foreign,
            resume,
            keys: fetch.len() as u64,
            max_bytes: self.batch_bytes as u64,
        });
        let req = Request::SyncFetch {
            keys: fetch,
            max_bytes: self.batch_bytes as u64,
        };
        self.send(io, to, req, purpose);
    }

    /// The replica's states we fetched: merge them (outside our range, only into copies we
    /// hold), then go on if the exchange had more to do: the same range again if the answer
    /// was cut short, or failed (with a smaller budget).
    pub(super) fn on_sync_fetch_answer(
        &mut self,
        io: &mut dyn KvIo,
        fetch: FetchOp,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let FetchOp {
            to,
            from,
            until,
            foreign,
            mut resume,
            keys,
            max_bytes,
        } = fetch;
        let items = match response {
            Ok(Response::SyncItems { items, complete }) => {
                self.after_batch(io, to, "fetch", keys, max_bytes, None);
                if !complete {
                    resume = Some(from);
                }
                items
            }
            Ok(other) => {
                let e = Error::InvalidData(format!("a fetch was answered {other:?}"));
                return self.after_batch(io, to, "fetch", keys, max_bytes, Some(e));
            }
            Err(e) => {
                self.after_batch(io, to, "fetch", keys, max_bytes, Some(e));
                return self.resume_sync(io, to, until, Some(from));
            }
        };
        io.report(Event::SyncStep {
            with: to,
            nodes: 0,
            keys_listed: 0,
            states: items.len() as u64,
        });
        for (k, v) in &items {
            if foreign && !matches!(self.storage.get(k), Ok(Some(_))) {
                continue;
            }
            if let Ok(state) = Versioned::decode(v) {
                if let Err(error) = self.merge_into_storage(k, &state) {
                    io.report(Event::StorageError { error });
                }
            }
        }
        self.resume_sync(io, to, until, resume);
    }

    /// Continue an exchange with `to` over `(from, until]` at once, if it has more to do and
    /// this interval has room for another batch.
    fn resume_sync(&mut self, io: &mut dyn KvIo, to: NodeRef, until: Id, resume: Option<Id>) {
        if let Some(from) = resume {
            if from != until && self.chain_more() {
                self.sync_range(io, to, from, until);
            }
        }
    }

    /// Whether another batch may follow in this sync interval (and count it).
    pub(super) fn chain_more(&mut self) -> bool {
        if self.sync_chain >= MAX_SYNC_CHAIN {
            return false;
        }
        self.sync_chain += 1;
        true
    }
}

/// The digest of an encoded state; a state that does not decode gets one no state has.
pub(super) fn state_digest(bytes: &[u8]) -> u64 {
    Versioned::decode(bytes).map_or(0, |s| s.digest())
}
