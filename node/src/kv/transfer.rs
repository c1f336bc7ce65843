//! Handing keys over when the ring changes: part of our range to a newcomer before the ring
//! adopts it, or everything to our successor when we leave (see the [data layer essay](super)
//! under KEYS ON JOIN AND LEAVE). The receiver takes a round only from a node that could be
//! handing it a range now, and only keys of that range (PLAUSIBILITY there).

use super::{Event, Kv, KvIo, Purpose};
use crate::error::{Error, Result};
use crate::id::{Id, distance, in_half_open, in_open};
use crate::message::{MAX_ITEMS, NodeRef, Request, Response};
use crate::ring::Ring;
use crate::storage::Storage;
use crate::version::Versioned;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Most interrupted hand-overs whose receivers' possible holdings are remembered.
pub(super) const MAX_ABORTED: usize = 16;

/// The hash recorded for a key the receiver may or may not hold (its round was not acknowledged).
/// [`value_hash`] never returns it, so such a key is always sent again, or deleted.
const MAYBE_HELD: u64 = 0;

#[derive(Clone, Debug)]
enum TransferGoal {
    /// Hand the newcomer `to` the part of our range it takes over, `(from, to]` (`from` is
    /// where our range starts; `None` when the newcomer lies outside the range we own, so
    /// nothing of ours is its), then have the ring adopt it.
    Join { from: Option<Id> },
    /// Hand everything to the successor, then leave.
    Leave,
}

/// Most entries one transfer round reads from storage, whatever it sends: a round's work is a
/// bounded slice of the range, not the range.
const SLICE_ENTRIES: usize = 4096;

/// Where the sweep of a transfer's range stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sweep {
    /// Next, the entries after this id (`None`: from the start of the range).
    At(Option<Id>),
    /// Every entry of the range was looked at; what changed since comes from the watch.
    Done,
}

/// What one transfer message carried: keys with the hash of the value sent, and deleted keys.
#[derive(Clone, Debug)]
struct Round {
    /// Which round: an answer is credited only to the round it answers ([`Purpose::Transfer`]
    /// names the receiver and the number), never to a newer transfer's round.
    n: u64,
    items: Vec<(Vec<u8>, u64)>,
    deletes: Vec<Vec<u8>>,
    /// The bytes of keys and values it carried.
    bytes: u64,
    /// Where the sweep stands once the receiver has it.
    sweep: Sweep,
}

/// A hand-over in progress.
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    to: NodeRef,
    goal: TransferGoal,
    /// Keys the receiver has acknowledged, with a hash of the value it holds.
    sent: BTreeMap<Vec<u8>, u64>,
    /// The round in flight, so its acknowledgement can record what the receiver now holds.
    in_flight: Option<Round>,
    /// How far the sweep of the range has come, and the range it sweeps (a new range, when a
    /// predecessor left meanwhile, starts it again).
    sweep: Sweep,
    arc: Option<(Id, Id)>,
    /// A round found nothing to send but the hand-over is not done: go on at the next tick.
    idle: bool,
}

impl Transfer {
    /// The node the keys go to.
    pub(super) fn receiver(&self) -> NodeRef {
        self.to
    }

    /// A hand-over to `to`, with what it may already hold.
    fn new(to: NodeRef, goal: TransferGoal, sent: BTreeMap<Vec<u8>, u64>) -> Transfer {
        Transfer {
            to,
            goal,
            sent,
            in_flight: None,
            sweep: Sweep::At(None),
            arc: None,
            idle: false,
        }
    }

    /// Whether a round found nothing to send and the hand-over goes on at the next tick.
    pub(super) fn is_idle(&self) -> bool {
        self.idle && self.in_flight.is_none()
    }

    /// The ring arc it hands over: the newcomer's part of our range for a join (none if it
    /// takes nothing of ours), everything for a leave (`me` is our id).
    fn range(&self, me: Id) -> Option<(Id, Id)> {
        match self.goal {
            TransferGoal::Join { from } => from.map(|f| (f, self.to.id)),
            TransferGoal::Leave => Some((me, me)),
        }
    }

    /// Whether this transfer hands over the key with id `id`.
    pub(super) fn covers(&self, id: Id) -> bool {
        match self.goal {
            TransferGoal::Join { from } => from.is_some_and(|f| in_half_open(f, self.to.id, id)),
            TransferGoal::Leave => true,
        }
    }
}

impl<S: Storage> Kv<S> {
    /// The ring would adopt `node` as our predecessor: hand it the part of our range it takes
    /// first, one hand-over at a time (the newcomer notifies again next round).
    pub(super) fn on_newcomer(&mut self, ring: &mut Ring, io: &mut dyn KvIo, node: NodeRef) {
        if self.transfer.is_some() {
            return;
        }
        // Resume what an interrupted hand-over to this same node left it holding.
        let sent = self.aborted.remove(&node.id).unwrap_or_default();
        // Only what the newcomer will own: copies we hold of other ranges (replicas of our
        // predecessors' keys, strays of older rings) are not its business. Its owners'
        // anti-entropy fills it as a replica, and strays must not multiply: each copy of a
        // stray is one more that must reach its owner before a tombstone may be collected.
        let from = self.join_arc_start(ring, node);
        // What it may hold is checked again, as written since: sent again if it changed here,
        // deleted there if it went.
        self.storage.watch(None, sent.keys().cloned());
        self.transfer = Some(Transfer::new(node, TransferGoal::Join { from }, sent));
        self.transfer_round(ring, io);
    }

    /// Where the part of our range that `newcomer` takes starts: where our range starts now
    /// (a predecessor that left meanwhile makes it start earlier). A node that never had a
    /// predecessor owns everything but what it keeps, so it hands over `(self, newcomer]`; a
    /// newcomer outside the range we own (our own predecessor notifying again after we
    /// suspected it, say) takes nothing of ours: `None`.
    fn join_arc_start(&self, ring: &Ring, newcomer: NodeRef) -> Option<Id> {
        match ring.range_start() {
            None => Some(self.me.id),
            Some(start) => in_open(start.id, self.me.id, newcomer.id).then_some(start.id),
        }
    }

    /// The receiver's side of [`Request::Transfer`], once it is found plausible
    /// ([`Kv::check_transfer`]).
    pub(super) fn on_transfer(
        &mut self,
        ring: &Ring,
        from: NodeRef,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        deletes: Vec<Vec<u8>>,
        leaving: bool,
    ) -> Result<Response> {
        if ring.is_leaving() {
            // Whatever we took now would leave with us.
            return Err(Error::Unavailable("node is leaving the ring".into()));
        }
        if leaving {
            // A leaver's keys belong to its successor. If we adopted a newer predecessor between
            // it and us, that node is the leaver's successor now: storing here would strand keys
            // outside our range.
            if let Some(p) = ring
                .predecessor()
                .filter(|p| in_open(from.id, self.me.id, p.id))
            {
                return Ok(Response::Redirect { to: p });
            }
        }
        if let Err(why) = self.check_transfer(ring, from, &items, &deletes, leaving) {
            return Err(self.refusals.refuse("transfer", why));
        }
        // Versions merge: a hand-over never replaces a newer version with an older one, and
        // concurrent ones stay as siblings.
        for (k, v) in &items {
            self.merge_into_storage(k, &Versioned::decode(v)?)?;
        }
        for k in &deletes {
            self.storage.delete(k)?;
        }
        Ok(Response::Ack)
    }

    /// Whether a hand-over round from `from` is one a correct node could send us now (see
    /// PLAUSIBILITY in the [data layer essay](super)); if not, why. Nothing is applied from a
    /// round refused: a round is all or nothing, as its acknowledgement is.
    ///
    /// - A join hand-over (not `leaving`) comes from one of our successors, handing us part of
    ///   its range: so every key lies in `(from, me]`, and only while that successor has not
    ///   adopted us. Once our successor named us its predecessor (and we are installed), its
    ///   hand-over is over, and a round from anyone is stale or forged: no join hand-over goes
    ///   to an installed node but after a partition, whose successor then has another
    ///   predecessor.
    /// - A leave's hand-over comes from a node that is (or lies where) our predecessor (one
    ///   with a newer node between it and us was redirected before this): its keys, all it
    ///   holds, are merged. But its deletes, which nothing in a leave produces, we take only
    ///   from our predecessor itself.
    fn check_transfer(
        &self,
        ring: &Ring,
        from: NodeRef,
        items: &[(Vec<u8>, Vec<u8>)],
        deletes: &[Vec<u8>],
        leaving: bool,
    ) -> Result<(), String> {
        if from.id == self.me.id {
            return Err("a hand-over from ourselves".into());
        }
        if leaving {
            if !deletes.is_empty() && ring.predecessor() != Some(from) {
                return Err(format!(
                    "deletes from {from}, which leaves but is not our predecessor ({:?})",
                    ring.predecessor()
                ));
            }
            return Ok(());
        }
        if !ring.successors().iter().any(|s| s.id == from.id) {
            return Err(format!(
                "{from} is none of our successors: only a successor hands us a range on a join"
            ));
        }
        if ring.is_installed() && ring.successor_adopted_me() {
            return Err(format!(
                "our successor {} adopted us already: no hand-over to us is under way",
                ring.successor()
            ));
        }
        let keys = items.iter().map(|(k, _)| k).chain(deletes);
        if let Some(k) = keys
            .into_iter()
            .find(|k| !in_half_open(from.id, self.me.id, Id::hash(k)))
        {
            return Err(format!(
                "key {} lies between us and {from}: in no range {from} could hand us",
                String::from_utf8_lossy(k)
            ));
        }
        Ok(())
    }

    pub(super) fn begin_leave_transfer(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        match ring.successors().first().copied() {
            Some(succ) => {
                // The leave sweeps everything: what a join hand-over noted is moot.
                self.storage.unwatch();
                self.transfer = Some(Transfer::new(succ, TransferGoal::Leave, BTreeMap::new()));
                self.transfer_round(ring, io);
            }
            None => {
                let handed_over = self
                    .storage
                    .scan_range(Id::MAX, Id::MAX, 1)
                    .is_ok_and(|e| e.is_empty());
                ring.leave_alone(io, handed_over);
            }
        }
    }

    /// Send the next round: a slice of the range while the sweep goes on (the entries the
    /// receiver does not hold as they are here), then the keys written since the sweep passed
    /// them (as they are now, or deleted); finish when the sweep is done and nothing was
    /// written since. Each round reads at most [`SLICE_ENTRIES`] entries; one that finds
    /// nothing to send leaves the next slice to the next tick.
    pub(super) fn transfer_round(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        // Every round covers the newcomer's part of our range as it is now.
        let start = match self.transfer.as_ref() {
            Some(t) => self.join_arc_start(ring, t.to),
            None => return,
        };
        let me = self.me.id;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.idle = false;
        if let TransferGoal::Join { from } = &mut t.goal {
            *from = start;
        }
        let arc = t.range(me);
        if t.arc != arc {
            // A new range (or the first): sweep it from its start, and note what is written
            // in it from now on.
            t.arc = arc;
            t.sweep = Sweep::At(None);
            self.storage.watch(arc, []);
        }
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        // Items and deletes are each bounded by this count; a receiver refuses more than
        // MAX_ITEMS (Options::validate says so, and an unvalidated option is clamped here).
        let per_round = self.opts.transfer_batch.min(MAX_ITEMS);
        let mut batch = self.batch(per_round);
        let mut hashes = Vec::new();
        let mut deletes = Vec::new();
        let mut sweep = Sweep::Done;
        let read = match (t.sweep, arc) {
            (Sweep::At(cursor), Some((from, to))) => {
                let (mut seen, mut last, mut cut) = (0, None, false);
                let sent = &t.sent;
                let visited = self
                    .storage
                    .visit_range(cursor.unwrap_or(from), to, &mut |k, v| {
                        let h = value_hash(v);
                        let fresh = sent.get(k) != Some(&h);
                        if seen >= SLICE_ENTRIES || (fresh && !batch.fits(k, v)) {
                            cut = true;
                            return false;
                        }
                        if fresh {
                            batch.push(k.to_vec(), v.to_vec());
                            hashes.push((k.to_vec(), h));
                        }
                        seen += 1;
                        last = Some(Id::hash(k));
                        true
                    });
                if cut {
                    sweep = Sweep::At(last);
                }
                visited
            }
            // Swept: what was written since.
            _ => {
                let (keys, overflowed) = self.storage.take_watched(per_round);
                if overflowed {
                    // Some writes went unnoted: sweep the range again.
                    sweep = Sweep::At(None);
                }
                let mut result = Ok(());
                let mut rest = Vec::new();
                for k in keys {
                    match self.storage.get(&k) {
                        Ok(Some(v)) => {
                            let h = value_hash(&v);
                            if t.sent.get(&k) == Some(&h) {
                                continue;
                            }
                            if batch.fits(&k, &v) {
                                hashes.push((k.clone(), h));
                                batch.push(k, v);
                            } else {
                                rest.push(k);
                            }
                        }
                        Ok(None) if t.sent.contains_key(&k) => deletes.push(k),
                        Ok(None) => {}
                        Err(e) => {
                            result = Err(e);
                            rest.push(k);
                        }
                    }
                }
                self.storage.watch(arc, rest);
                result
            }
        };
        if let Err(error) = read {
            io.report(Event::StorageError { error });
            self.storage.unwatch();
            self.transfer = None;
            return;
        }
        if batch.is_empty() && deletes.is_empty() {
            if sweep == Sweep::Done && self.storage.watched_is_empty() {
                return self.finish_transfer(ring, io);
            }
            if let Some(t) = self.transfer.as_mut() {
                t.sweep = sweep;
                t.idle = true;
            }
            return;
        }
        let bytes = batch.bytes() as u64;
        let items = batch.into_items();
        let to = t.to;
        let leaving = matches!(t.goal, TransferGoal::Leave);
        let n = io.next_op();
        if let Some(t) = self.transfer.as_mut() {
            t.in_flight = Some(Round {
                n,
                items: hashes,
                deletes: deletes.clone(),
                bytes,
                sweep,
            });
        }
        let request = Request::Transfer {
            from: self.me,
            items,
            deletes,
            leaving,
        };
        self.send(
            io,
            to,
            request,
            Purpose::Transfer {
                to: to.id,
                round: n,
            },
        );
    }

    /// The answer to round `round` sent to `receiver`. One of an abandoned transfer (a join
    /// hand-over cut short by our leave, say) is dropped: crediting it to the current round
    /// would mark keys as held by a node that never stored them.
    pub(super) fn on_transfer_answer(
        &mut self,
        ring: &mut Ring,
        io: &mut dyn KvIo,
        receiver: Id,
        round: u64,
        response: Result<Response>,
    ) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.to.id != receiver || t.in_flight.as_ref().is_none_or(|r| r.n != round) {
            return;
        }
        let Some(Round {
            items,
            deletes,
            bytes,
            sweep,
            ..
        }) = t.in_flight.take()
        else {
            return;
        };
        let to = t.to;
        let keys = items.len() as u64;
        match response {
            Ok(Response::Ack) => {
                self.after_batch(io, to, "transfer", keys, bytes, None);
                let Some(t) = self.transfer.as_mut() else {
                    return;
                };
                t.sent.extend(items);
                for k in deletes {
                    t.sent.remove(&k);
                }
                // A slice acknowledged moves the sweep on (nothing else moves it while a round
                // is in flight); a round of written keys leaves it done, or after an overflow
                // starting again.
                t.sweep = sweep;
                self.transfer_round(ring, io);
            }
            Ok(Response::Redirect { to })
                if matches!(t.goal, TransferGoal::Leave) && in_open(self.me.id, t.to.id, to.id) =>
            {
                // A node joined between us and our successor: it is our successor now. Whatever
                // the old successor already took went on to the newcomer in its own hand-over;
                // we start over with the newcomer, sending everything again.
                self.transfer = None;
                ring.adopt_successor(io, to);
                self.begin_leave_transfer(ring, io);
            }
            other => {
                if let Err(error) = other {
                    self.after_batch(io, to, "transfer", keys, bytes, Some(error));
                }
                let Some(mut t) = self.transfer.take() else {
                    return;
                };
                // The lost round may or may not have been stored: remember its keys as "maybe
                // held" (a hash no value has), so a retry to the same node resends or deletes
                // them, and look at them again (the sweep stays where it was; keys written
                // since the sweep passed them were taken from the watch).
                let again: Vec<Vec<u8>> = items
                    .iter()
                    .map(|(k, _)| k.clone())
                    .chain(deletes.iter().cloned())
                    .collect();
                self.storage.watch(t.arc, again);
                t.sent
                    .extend(items.into_iter().map(|(k, _)| (k, MAYBE_HELD)));
                t.sent.extend(deletes.into_iter().map(|k| (k, MAYBE_HELD)));
                match t.goal {
                    // A successor still trusted (one lost message) gets the same hand-over again;
                    // one found dead (dropped by the ring's suspicion) is replaced by the next
                    // successor, which now owns the keys.
                    TransferGoal::Leave if ring.successors().first() == Some(&t.to) => {
                        self.transfer = Some(t);
                        self.transfer_round(ring, io);
                    }
                    TransferGoal::Leave => self.begin_leave_transfer(ring, io),
                    // A newcomer that failed mid-transfer notifies again if it is alive; we kept
                    // every key, so nothing was lost, and what it may hold is remembered.
                    TransferGoal::Join { .. } => {
                        if self.aborted.len() >= MAX_ABORTED {
                            // Forget the farthest receiver: the nearest are the likeliest to be
                            // adopted next. What it may hold stays invisible unless it becomes
                            // the owner without notifying us again.
                            let far = self
                                .aborted
                                .keys()
                                .max_by_key(|id| distance(**id, self.me.id))
                                .copied();
                            if let Some(far) = far {
                                self.aborted.remove(&far);
                            }
                        }
                        self.aborted.insert(t.to.id, t.sent);
                    }
                }
            }
        }
    }

    fn finish_transfer(&mut self, ring: &mut Ring, io: &mut dyn KvIo) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        self.storage.unwatch();
        // Everything in the arc is now acknowledged by the receiver, unchanged since. A node
        // that hands a newcomer its range stays one of the newcomer's replicas and keeps copies.
        let keep = matches!(t.goal, TransferGoal::Join { .. }) && self.opts.replicas > 1;
        if let Some((from, to)) = t.range(self.me.id).filter(|_| !keep) {
            match self.storage.scan_range(from, to, usize::MAX) {
                Ok(entries) => {
                    for (k, _) in entries {
                        if let Err(error) = self.storage.delete(&k) {
                            io.report(Event::StorageError { error });
                        }
                    }
                }
                Err(error) => io.report(Event::StorageError { error }),
            }
        }
        io.report(Event::TransferDone {
            to: t.to,
            keys: t.sent.len() as u64,
        });
        match t.goal {
            TransferGoal::Join { .. } => ring.adopt_predecessor(io, t.to),
            TransferGoal::Leave => ring.announce_leave(io, t.to),
        }
    }
}

/// A hash of a value, to tell whether the receiver already holds exactly this value.
fn value_hash(v: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish().max(1)
}
