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
//! robin): it sends per-bucket digests (a bucket is the first byte of the key id); the replica
//! answers with its keys in the buckets that differ, each with the digest of its state; the
//! owner pushes its states of the keys the replica lacks or holds otherwise
//! ([`Request::Replicate`]) and fetches the replica's states of the keys it lacks or holds
//! otherwise ([`Request::SyncFetch`]), and both sides merge. Comparing keys, not whole
//! buckets, matters under a write load: every bucket then differs by the writes in flight,
//! and only the keys that really differ should travel. This brings back copies lost to a
//! crash, fills a new replica after a join or leave, and reconciles the two sides of a healed
//! partition.
//!
//! Every other round goes the other way: a node walks the keys it holds outside its own range,
//! looks up the owner of the next such range and runs the same exchange with it (updating only
//! the copies it holds), so a version that only a former owner holds (after a partition, or a
//! ring that changed under it) reaches the current owner; a node that is none of that owner's
//! replicas hands its copies off instead ([`super::collect`]).
//!
//! Each exchange moves at most a batch each way, and one is in flight at a time; one that had
//! more to do (more keys differ than a batch, or the key list hit its size bound) goes on at
//! once, up to [`MAX_SYNC_CHAIN`] more per interval, so a big repair finishes in seconds and
//! still cannot starve client traffic.
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

use super::{Batch, Event, FetchOp, Kv, KvIo, Purpose, Routed};
use crate::error::{Error, Result};
use crate::id::{Id, in_half_open};
use crate::message::{NodeRef, Request, Response};
use crate::ring::{Lookup, Ring};
use crate::storage::Storage;
use crate::version::Versioned;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};

/// Most items in one anti-entropy message.
pub(super) const SYNC_BATCH: usize = 256;

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
        if targets.is_empty() || !ring.is_installed() || self.syncing {
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

    /// Start a digest exchange with `to` over the range `(from, until]`.
    fn sync_range(&mut self, io: &mut dyn KvIo, to: NodeRef, from: Id, until: Id) {
        let digests = match bucket_digests(&self.storage, from, until) {
            Ok(d) => d,
            Err(error) => return io.report(Event::StorageError { error }),
        };
        self.syncing = true;
        let req = Request::SyncDigest {
            asker: self.me,
            from,
            to: until,
            digests: digests.into_iter().collect(),
        };
        let foreign = until != self.me.id;
        let purpose = Purpose::Sync {
            to,
            from,
            until,
            foreign,
        };
        self.send(io, to, req, purpose);
    }

    /// Copies we hold outside our own range are replicas, or strays left by a partition or a
    /// changed ring. One range at a time, find the owner of the next such key and run the
    /// digest exchange with it, so that whatever only we hold reaches the owner (and from it the
    /// owner's replicas).
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

    /// A replica's side of [`Request::SyncDigest`]: our keys in the buckets that differ, each
    /// with its state's digest, within the byte budget.
    pub(super) fn on_sync_digest(
        &self,
        ring: &Ring,
        asker: NodeRef,
        from: Id,
        to: Id,
        theirs: Vec<(u8, u64)>,
    ) -> Result<Response> {
        let stray = to == self.me.id && !self.keeps_copies(ring, &asker);
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
                if bytes >= self.opts.batch_bytes {
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

    /// A replica's side of [`Request::SyncFetch`]: our states of those keys, in the order asked,
    /// within the asker's byte budget and ours; `complete` says whether all fitted.
    pub(super) fn on_sync_fetch(&self, keys: Vec<Vec<u8>>, max_bytes: u64) -> Result<Response> {
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let mut batch = Batch::new(max_bytes.min(self.opts.batch_bytes), usize::MAX);
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

    /// The asker's side of a digest exchange over `(from, until]`: compare the replica's keys
    /// with ours in the buckets that differ, push a batch of our states it lacks or holds
    /// otherwise, and fetch a batch of its states we lack or hold otherwise. Outside our own
    /// range (`foreign`) we only bring up to date the copies we hold; a stray hands off instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_sync_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
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
            return self.hand_off(ring, io, to, from, until);
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
            Err(error) => return io.report(Event::StorageError { error }),
        };
        // Both batches are bounded; `more` records that a differing key did not fit one.
        let (mut push, mut fetch, mut more) = (self.batch(SYNC_BATCH), Vec::new(), false);
        for (k, v) in entries {
            if !buckets.contains(&Id::hash(&k).0[0]) {
                continue;
            }
            match theirs.remove(&k) {
                Some(d) if d == state_digest(&v) => {}
                held => {
                    if held.is_some() {
                        if fetch.len() < SYNC_BATCH {
                            fetch.push(k.clone());
                        } else {
                            more = true;
                        }
                    }
                    if !push.push(k, v) {
                        more = true;
                    }
                }
            }
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
        if !push.is_empty() {
            let purpose = Purpose::Push {
                to,
                keys: push.len() as u64,
                bytes: push.bytes() as u64,
            };
            let items = push.into_items();
            self.send(io, to, Request::Replicate { items }, purpose);
        }
        // More differed than a batch holds: the same range again; cut short: the rest of it.
        let resume = if more {
            Some(from)
        } else {
            (!complete).then_some(horizon)
        };
        if fetch.is_empty() {
            return self.resume_sync(io, to, until, resume);
        }
        self.syncing = true;
        let purpose = Purpose::SyncFetch(FetchOp {
            to,
            from,
            until,
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
