//! COLLECTION: deleting copies once other nodes are known to hold everything they held.
//!
//! Copies are deleted in two cases, and in both only once other nodes are known to hold
//! everything the deleted copy held:
//! - *Stray copies.* A ring change can leave a node holding keys of a range whose preference list
//!   it has left. In the foreign round of anti-entropy ([`super::sync`]), the owner answers the
//!   hash-tree request with `stray` when the asker is none of its `N − 1` replicas (and it has all
//!   of them). The stray hands a batch of its copies over ([`Request::Handoff`]): the owner merges
//!   it, replicates the merged states to all its replicas, and only when every one of them stored
//!   them answers with the keys the stray may delete; the stray deletes those whose state has not
//!   changed since it sent them. Every answer carries the owner's merged states, so the copies a
//!   stray keeps (when it may not delete them yet) are brought up to date: they hold the owner's
//!   tombstones, not the values those replaced.
//! - *Tombstones.* A deleted key must keep its tombstone while any copy of the value it
//!   replaced may still be merged somewhere. An owner with all `N − 1` replicas watches its
//!   range for tombstone-only states; one unchanged for
//!   [`super::Options::tombstone_grace`] (a period that starts again whenever our range or
//!   replicas change) is checked with every replica ([`Request::Reap`]) and, if they all hold
//!   exactly the same state and our view did not change meanwhile, deleted here and there. A
//!   replica that misses the delete keeps its tombstone, which anti-entropy brings back and a
//!   later round collects: a tombstone coming back is harmless, a value would not be. The
//!   replicas that left the preference list in the last two grace periods are asked too: they
//!   may still hold, as strays not yet handed off, values our tombstones replaced. One that
//!   holds the key in another state holds the collection up and is sent our state; one that
//!   holds it identically, or not at all, agrees.
//!
//! A replica takes a commit only for a tombstone outside its own range that the owner checked
//! with it moments before (it remembers the checks it answered "held"): the request does not name
//! the owner, and a commit that deleted whatever matched a digest let one message delete live
//! values on every node.
//!
//! Neither touches a key a transfer of ours may be moving (every key while we leave; the
//! newcomer's part of our range during a join hand-over): a transfer round tells its receiver
//! to delete the keys it sent earlier that have vanished since. Strays of other ranges are never
//! in a join hand-over, so they are handed off meanwhile.
//!
//! What makes collection safe is the grace period: a node that was down or cut off for longer
//! (or a stray not handed off within two grace periods of leaving the preference list) may
//! still hold a value whose tombstone is gone, and would bring it back. Cassandra's `gc_grace_seconds` has the same rule. A node never issues
//! a dot twice ([`super::coordinator`]), so a key written again after collection gets versions
//! no old context covers.

use super::coordinator::{Responder, WriteOp};
use super::sync::{SYNC_BATCH, state_digest};
use super::{Event, Kv, KvIo, Purpose};
use crate::error::{Error, Result};
use crate::id::{Id, in_half_open};
use crate::message::{MAX_ITEMS, NodeRef, Request, Response};
use crate::ring::Ring;
use crate::storage::Storage;
use crate::version::Versioned;
use std::collections::{BTreeMap, BTreeSet};

/// How many keys one tombstone-collection round looks at.
const REAP_SCAN: usize = 1024;

/// Most tombstones whose age is tracked; beyond that, the rest wait for a later pass.
const MAX_TOMBS: usize = 100_000;

/// Most former replicas remembered for tombstone collection.
const MAX_FORMERS: usize = 16;

/// How many RPC timeouts after a replica answered a tombstone check a commit of it is taken:
/// the owner commits once every replica answered (each within one timeout), and waits for its
/// flush first.
const REAP_WINDOW: u64 = 10;

/// Most tombstone checks a replica remembers for the commits that follow them: a few rounds of
/// each of the owners it keeps copies for. Beyond it, a check is answered but not remembered,
/// and its commit refused: the tombstone stays until a later round.
const MAX_REAP_CHECKS: usize = 16 * SYNC_BATCH;

/// A tombstone collection waiting for the replicas' checks.
#[derive(Clone, Debug)]
pub(super) struct ReapOp {
    /// The tombstones to collect and the digests of their states here.
    candidates: Vec<(Vec<u8>, u64)>,
    /// How many replicas hold each with the same digest.
    votes: BTreeMap<Vec<u8>, usize>,
    /// How many former replicas hold each with the same digest or not at all.
    former_votes: BTreeMap<Vec<u8>, usize>,
    /// The replicas asked, and our range and replicas when they were.
    targets: Vec<NodeRef>,
    view: Option<(Id, Vec<Id>)>,
    /// The former replicas asked.
    formers: Vec<NodeRef>,
    outstanding: usize,
}

impl<S: Storage> Kv<S> {
    // ---------------------------------------------------------------- stray copies

    /// We hold copies in `(from, until]`, owned by `to`, and are none of their replicas: send
    /// a batch of them to the owner, to delete once it confirms they are safe elsewhere.
    pub(super) fn hand_off(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        to: NodeRef,
        from: Id,
        until: Id,
    ) {
        let entries = match self.storage.scan_range(from, until, SYNC_BATCH) {
            Ok(entries) => entries,
            Err(error) => return io.report(Event::StorageError { error }),
        };
        let mut batch = self.batch(SYNC_BATCH);
        for (k, v) in entries {
            // A transfer round tells its receiver to delete the keys it sent that vanished
            // here since: none of those is collected meanwhile.
            if !self.moving_key(ring, Id::hash(&k)) && !batch.push(k, v) {
                break;
            }
        }
        if batch.is_empty() {
            return;
        }
        let bytes = batch.bytes() as u64;
        let items = batch.into_items();
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
            bytes,
        };
        // The owner answers only once all its replicas did: give it their round trip too.
        let deadline = io.now() + 2 * io.rpc_timeout();
        self.calls
            .send_with_deadline(io, to, req, purpose, deadline);
    }

    /// The owner's side of [`Request::Handoff`]: merge the stray copies we own, and once the
    /// merged states are stored on all `N − 1` replicas, tell the sender which it may delete.
    /// Nothing may be deleted if the sender keeps copies of our keys after all, or if we are
    /// leaving (what we store now leaves with us). Either way the answer carries our merged
    /// states, so the sender's copies no longer hold values we have seen replaced. The merged
    /// states are one batch within our byte budget: a copy whose merged state does not fit is
    /// merged here but neither confirmed nor answered, and the sender keeps it for its next
    /// hand-off.
    pub(super) fn on_handoff(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        responder: Responder,
        from: NodeRef,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        // At most one state per item handed off, and those are at most MAX_ITEMS.
        let mut merged = self.batch(MAX_ITEMS);
        for (key, bytes) in items {
            let owned = self.in_own_range(ring, Id::hash(&key));
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
                Ok(Some(state)) if !merged.fits(&key, &state) => break,
                Ok(Some(state)) => {
                    merged.push(key, state);
                }
                Ok(None) => {}
                Err(e) => return self.answer(io, responder, Err(e)),
            }
        }
        let merged = merged.into_items();
        let keep = Response::HandedOff {
            keys: Vec::new(),
            states: merged.clone(),
        };
        if ring.is_leaving() || self.keeps_copies(ring, &from) || merged.is_empty() {
            return self.answer(io, responder, Ok(keep));
        }
        let targets = self.replica_targets(ring);
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
            settles: None,
        };
        self.replicate(io, op, targets, merged);
    }

    /// The owner answered a hand-off: delete the copies it confirmed, unless they changed
    /// since we sent them, and bring the others up to date with its states.
    /// A failed hand-off is reported, and the next one (in a later foreign round of
    /// anti-entropy) sends a smaller batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_handoff_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        to: NodeRef,
        from: Id,
        until: Id,
        sent: Vec<(Vec<u8>, u64)>,
        bytes: u64,
        response: Result<Response>,
    ) {
        self.syncing = false;
        let n = sent.len() as u64;
        let (keys, states) = match response {
            Ok(Response::HandedOff { keys, states }) => (keys, states),
            Ok(other) => {
                let e = Error::InvalidData(format!("a hand-off was answered {other:?}"));
                return self.after_batch(io, to, "hand-off", n, bytes, Some(e));
            }
            Err(e) => return self.after_batch(io, to, "hand-off", n, bytes, Some(e)),
        };
        self.after_batch(io, to, "hand-off", n, bytes, None);
        // A transfer in flight tells its receiver to delete what vanished here: keep those.
        let confirmed: BTreeSet<Vec<u8>> = keys
            .into_iter()
            .filter(|k| !self.moving_key(ring, Id::hash(k)))
            .collect();
        let sent: BTreeMap<Vec<u8>, u64> = sent.into_iter().collect();
        let mut collected = 0;
        for (key, digest) in &sent {
            if !confirmed.contains(key) {
                continue;
            }
            let result = self.storage.get(key).and_then(|now| match now {
                Some(v) if state_digest(&v) == *digest => {
                    self.storage.delete(key).map(|o| o.is_some())
                }
                _ => Ok(false),
            });
            match result {
                Ok(true) => collected += 1,
                Ok(false) => {}
                Err(error) => return io.report(Event::StorageError { error }),
            }
        }
        for (key, bytes) in states {
            // Only copies we sent and still hold.
            if !sent.contains_key(&key) || !matches!(self.storage.get(&key), Ok(Some(_))) {
                continue;
            }
            if let Ok(state) = Versioned::decode(&bytes) {
                if let Err(error) = self.merge_into_storage(&key, &state) {
                    io.report(Event::StorageError { error });
                }
            }
        }
        if collected > 0 {
            io.report(Event::Collected {
                with: to,
                keys: collected,
                tombstones: false,
            });
        }
        // All of the batch went: more may follow at once (the next scan finds none if not).
        if collected > 0 && collected == sent.len() as u64 && self.chain_more() {
            self.hand_off(ring, io, to, from, until);
        }
    }

    // ---------------------------------------------------------------- tombstones

    /// Every `sync_interval`, if tombstones are collected: look at the next stretch of our
    /// range for keys that are tombstones only. A tombstone unchanged here for the grace period
    /// is a candidate; ask every replica whether it holds exactly the same state
    /// ([`Request::Reap`]), and collect the ones they all hold ([`Kv::on_reap_answer`]).
    pub(super) fn reap_tick(&mut self, ring: &Ring, io: &mut dyn KvIo) {
        let Some(grace) = self.opts.tombstone_grace else {
            return;
        };
        let targets = self.replica_targets(ring);
        let Some(start) = ring.range_start().map(|p| p.id) else {
            return;
        };
        if !ring.is_installed() {
            return;
        }
        // The replicas that left since the last look (whatever else is going on) are asked
        // too, for two grace periods: a former replica may keep a value a tombstone replaced
        // for longer than a grace period, as a stray whose hand-off is slow, and collecting the
        // tombstone before that copy is gone would let it back.
        let now = io.now();
        let until = now.saturating_add(grace.saturating_mul(2));
        for old in std::mem::replace(&mut self.reap_targets, targets.clone()) {
            if !targets.contains(&old) {
                self.formers.retain(|(f, _)| f.id != old.id);
                self.formers.push((old, until));
            }
        }
        if self.formers.len() > MAX_FORMERS {
            let excess = self.formers.len() - MAX_FORMERS;
            self.formers.drain(..excess);
        }
        let me = self.me.id;
        self.formers
            .retain(|(f, until)| *until > now && f.id != me && !targets.contains(f));
        if self.reaping.is_some()
            || self.moving_keys(ring)
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
            Err(error) => return io.report(Event::StorageError { error }),
        };
        self.reap_cursor = match entries.last() {
            Some((k, _)) if entries.len() == REAP_SCAN => Some(Id::hash(k)),
            _ => {
                // A whole pass: forget tombstones no longer in our range.
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
                    if now.saturating_sub(since) >= grace && candidates.len() < SYNC_BATCH {
                        candidates.push((key, digest));
                    }
                }
                // Changed since: its grace period starts again.
                Some(_) => {
                    self.tombs.insert(key, (digest, now));
                }
                None if self.tombs.len() >= MAX_TOMBS => {}
                None => {
                    self.tombs.insert(key, (digest, now));
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let formers: Vec<NodeRef> = self.formers.iter().map(|(f, _)| *f).collect();
        for t in targets.iter().chain(&formers) {
            let req = Request::Reap {
                items: candidates.clone(),
                commit: false,
            };
            self.send(io, *t, req, Purpose::Reap { from: *t });
        }
        let op = ReapOp {
            candidates,
            votes: BTreeMap::new(),
            former_votes: BTreeMap::new(),
            outstanding: targets.len() + formers.len(),
            view: self.reap_view.clone(),
            targets,
            formers,
        };
        if op.outstanding == 0 {
            // No replicas (N = 1): ours is the only copy.
            return self.finish_reap(ring, io, op);
        }
        self.reaping = Some(op);
    }

    /// A replica's side of [`Request::Reap`]: which of the keys we hold with exactly the given
    /// digest (with `commit`, deleting those), and which we hold not at all. None of either
    /// while a transfer of ours may be moving the key: it would tell its receiver to delete it
    /// too, or may be carrying it elsewhere. A check we answer "held" is remembered for
    /// [`REAP_WINDOW`] RPC timeouts, and a commit is taken only as the end of such a check
    /// ([`Kv::check_reap_commit`]).
    pub(super) fn on_reap(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        items: Vec<(Vec<u8>, u64)>,
        commit: bool,
    ) -> Result<Response> {
        let now = io.now();
        if commit {
            if let Err(why) = self.check_reap_commit(ring, now, &items) {
                return Err(self.refusals.refuse("reap", why));
            }
        } else {
            self.reap_checks.retain(|_, (_, until)| *until > now);
        }
        let until = now.saturating_add(REAP_WINDOW.saturating_mul(io.rpc_timeout()));
        let (mut keys, mut absent) = (Vec::new(), Vec::new());
        for (key, digest) in items {
            if self.moving_key(ring, Id::hash(&key)) {
                continue;
            }
            match self.storage.get(&key)? {
                Some(v) if state_digest(&v) == digest => {
                    if commit {
                        self.storage.delete(&key)?;
                        self.reap_checks.remove(&key);
                    } else if self.reap_checks.len() < MAX_REAP_CHECKS
                        || self.reap_checks.contains_key(&key)
                    {
                        self.reap_checks.insert(key.clone(), (digest, until));
                    }
                    keys.push(key);
                }
                Some(_) => {}
                None => absent.push(key),
            }
        }
        Ok(Response::Reaped { keys, absent })
    }

    /// Whether a tombstone-collection commit is one a key's owner could send us (see
    /// PLAUSIBILITY in the [data layer essay](super)); if not, why. The request does not name
    /// its sender, so what it says is checked against what we hold and were asked: an owner
    /// commits only keys outside our own range (it is their owner, not we), only tombstones, and
    /// only after it asked us whether we hold them with that digest and we said yes, moments ago.
    /// A key we no longer hold with that digest is no reason to refuse (a write may have come
    /// in between): it is left alone, as before.
    pub(super) fn check_reap_commit(
        &self,
        ring: &Ring,
        now: u64,
        items: &[(Vec<u8>, u64)],
    ) -> Result<(), String> {
        for (key, digest) in items {
            let name = String::from_utf8_lossy(key);
            if self.in_own_range(ring, Id::hash(key)) {
                return Err(format!("{name} is in our own range: only we collect it"));
            }
            let Ok(Some(bytes)) = self.storage.get(key) else {
                continue;
            };
            let Ok(state) = Versioned::decode(&bytes) else {
                continue;
            };
            if state.digest() != *digest {
                continue;
            }
            if !state.is_deleted() {
                return Err(format!(
                    "{name} holds a live value here: only tombstones are collected"
                ));
            }
            let checked = self
                .reap_checks
                .get(key)
                .is_some_and(|&(d, until)| d == *digest && now < until);
            if !checked {
                return Err(format!(
                    "{name} was not checked with us in the last {REAP_WINDOW} RPC timeouts"
                ));
            }
        }
        Ok(())
    }

    /// A replica answered a tombstone check; once all have, [`Kv::finish_reap`]. A former
    /// replica votes for the keys it holds exactly as we do or not at all; one that holds
    /// another state (a value the tombstone replaced, say) gets our state, so that the next
    /// round finds the tombstone there.
    pub(super) fn on_reap_answer(
        &mut self,
        ring: &Ring,
        io: &mut dyn KvIo,
        from: NodeRef,
        response: Result<Response>,
    ) {
        let Some(r) = self.reaping.as_mut() else {
            return;
        };
        r.outstanding -= 1;
        let former = r.formers.contains(&from);
        let mut stale = Vec::new();
        if let Ok(Response::Reaped { keys, absent }) = response {
            if former {
                let voted: BTreeSet<Vec<u8>> = keys.into_iter().chain(absent).collect();
                for (k, _) in &r.candidates {
                    if voted.contains(k) {
                        *r.former_votes.entry(k.clone()).or_default() += 1;
                    } else {
                        stale.push(k.clone());
                    }
                }
            } else {
                for k in keys {
                    *r.votes.entry(k).or_default() += 1;
                }
            }
        }
        let mut items = Vec::new();
        for key in stale {
            match self.storage.get(&key) {
                Ok(Some(state)) => items.push((key, state)),
                Ok(None) => {}
                Err(error) => io.report(Event::StorageError { error }),
            }
        }
        if !items.is_empty() {
            io.report(Event::Repaired {
                with: from,
                keys: items.len() as u64,
            });
            self.send(io, from, Request::Replicate { items }, Purpose::Repair);
        }
        let Some(r) = self.reaping.as_mut() else {
            return;
        };
        if r.outstanding == 0 {
            let r = self.reaping.take().expect("present");
            self.finish_reap(ring, io, r);
        }
    }

    /// Collect the tombstones every replica asked holds exactly as we do: delete ours, and tell
    /// those replicas to delete theirs. Nothing if our range or replicas changed meanwhile, or
    /// a transfer started.
    fn finish_reap(&mut self, ring: &Ring, io: &mut dyn KvIo, r: ReapOp) {
        let targets: Vec<Id> = r.targets.iter().map(|t| t.id).collect();
        let current: Vec<Id> = self.replica_targets(ring).iter().map(|t| t.id).collect();
        if self.moving_keys(ring) || current != targets || self.reap_view != r.view {
            return;
        }
        let mut reaped = Vec::new();
        for (key, digest) in r.candidates {
            if r.votes.get(&key).copied().unwrap_or(0) != r.targets.len()
                || r.former_votes.get(&key).copied().unwrap_or(0) != r.formers.len()
            {
                continue;
            }
            // Unchanged here too (no write arrived while the replicas answered)?
            let result = self.storage.get(&key).and_then(|now| match now {
                Some(v) if state_digest(&v) == digest => {
                    self.storage.delete(&key).map(|o| o.is_some())
                }
                _ => Ok(false),
            });
            match result {
                Ok(true) => {
                    self.tombs.remove(&key);
                    reaped.push((key, digest));
                }
                Ok(false) => {}
                Err(error) => return io.report(Event::StorageError { error }),
            }
        }
        if reaped.is_empty() {
            return;
        }
        io.report(Event::Collected {
            with: self.me,
            keys: reaped.len() as u64,
            tombstones: true,
        });
        for t in r.targets.into_iter().chain(r.formers) {
            let req = Request::Reap {
                items: reaped.clone(),
                commit: true,
            };
            self.send(io, t, req, Purpose::Repair);
        }
    }
}
