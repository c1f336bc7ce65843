//! JOIN AND STABILIZE: keeping successor lists and predecessors right as nodes come, leave,
//! crash and partitions heal (Zave, TSE 2017; see the [ring essay](super)), and the heartbeats
//! that notice crashes.

use super::detector::{Cause, Verdict};
use super::lookup::Then;
use super::{Event, MAX_LOST, Notice, Purpose, Ring, RingIo};
use crate::error::Result;
use crate::id::{Id, distance, in_half_open, in_open};
use crate::message::{NodeRef, Request, Response};
use std::collections::BTreeSet;
use std::net::SocketAddr;

impl Ring {
    // ---------------------------------------------------------------- join

    pub(super) fn start_join(&mut self, io: &mut dyn RingIo, bootstrap: SocketAddr) {
        self.bootstrap = Some(bootstrap);
        self.join_retry_at = None;
        self.start_lookup(io, self.me.id, Then::Join, Some(bootstrap));
    }

    pub(super) fn retry_join(&mut self, io: &mut dyn RingIo) {
        self.joined = false;
        self.join_retry_at = Some(io.now() + self.opts.rpc_timeout);
    }

    /// The join lookup found our successor: fetch its successor list before calling ourselves
    /// joined.
    pub(super) fn on_join_owner(&mut self, io: &mut dyn RingIo, owner: NodeRef) {
        if owner.id == self.me.id {
            return self.retry_join(io);
        }
        let purpose = Purpose::JoinNeighbors { succ: owner };
        self.send(io, owner, Request::GetNeighbors, purpose);
    }

    pub(super) fn on_join_neighbors(
        &mut self,
        io: &mut dyn RingIo,
        succ: NodeRef,
        response: Result<Response>,
    ) {
        match response {
            Ok(Response::Neighbors { pred, succs }) => {
                self.adopt_successors(io, succ, succs);
                self.note_successor_pred(succ, pred);
                // A node restarting in the place the ring kept for it is installed already.
                self.installed = pred.is_some_and(|p| p.id == self.me.id);
                self.joined = true;
                io.emit(Event::Joined { succ });
                self.send(io, succ, Request::Notify { node: self.me }, Purpose::Notify);
                self.next_stabilize = io.now();
            }
            _ => self.retry_join(io),
        }
    }

    // ---------------------------------------------------------------- stabilize

    pub(super) fn stabilize(&mut self, io: &mut dyn RingIo) {
        if self.stabilizing {
            return;
        }
        self.round_succ = self.successor();
        match self.succs.first().copied() {
            Some(succ) => {
                self.stabilizing = true;
                self.send(io, succ, Request::GetNeighbors, Purpose::Stabilize { succ });
            }
            None => {
                // Alone: our predecessor, if any, is the only candidate successor (ring of one
                // learning its first peer). Check it is live before adopting it.
                if let Some(p) = self.pred.filter(|p| *p != self.me) {
                    self.stabilizing = true;
                    let purpose = Purpose::StabilizeCandidate { cand: p };
                    self.send(io, p, Request::GetNeighbors, purpose);
                }
            }
        }
    }

    pub(super) fn on_stabilize_answer(
        &mut self,
        io: &mut dyn RingIo,
        succ: NodeRef,
        response: Result<Response>,
    ) {
        self.stabilizing = false;
        match response {
            Ok(Response::Neighbors { pred, succs }) => {
                self.adopt_successors(io, succ, succs);
                self.note_successor_pred(succ, pred);
                if !self.installed && pred.is_some_and(|p| p.id == self.me.id) {
                    // Our successor handed us our range and adopted us: we own it now, from
                    // where its `Adopted` said (if that came first).
                    self.installed = true;
                    io.emit(Event::Installed);
                    if let Some(start) = self.adopted_start.take() {
                        if self.pred.is_none() {
                            self.pred = start.filter(|p| p.id != self.me.id);
                            self.range_start = self.pred;
                            io.emit(Event::PredecessorChanged { pred: self.pred });
                        }
                    }
                }
                match pred {
                    Some(p) if p != self.me && in_open(self.me.id, succ.id, p.id) => {
                        self.stabilizing = true;
                        let purpose = Purpose::StabilizeCandidate { cand: p };
                        self.send(io, p, Request::GetNeighbors, purpose);
                    }
                    _ => self.finish_stabilize(io),
                }
            }
            // The successor was dropped by `suspect`; try the next one at once.
            _ => self.next_stabilize = io.now(),
        }
    }

    pub(super) fn on_candidate_answer(
        &mut self,
        io: &mut dyn RingIo,
        cand: NodeRef,
        response: Result<Response>,
    ) {
        self.stabilizing = false;
        // A candidate that does not answer is simply not adopted.
        if let Ok(Response::Neighbors { pred, succs }) = response {
            self.adopt_successors(io, cand, succs);
            self.note_successor_pred(cand, pred);
        }
        self.finish_stabilize(io);
    }

    fn finish_stabilize(&mut self, io: &mut dyn RingIo) {
        let succ = self.successor();
        if succ != self.round_succ {
            // We moved closer to our true successor; keep walking now instead of a round later,
            // so k nodes joining in one gap settle in k round trips, not k intervals.
            self.next_stabilize = io.now();
        }
        if succ != self.me {
            self.send(io, succ, Request::Notify { node: self.me }, Purpose::Notify);
        }
        io.emit(Event::Stabilized);
    }

    /// Successor list := `[succ] + theirs`, without ourselves or duplicates, at most `r` long.
    fn adopt_successors(&mut self, io: &mut dyn RingIo, succ: NodeRef, theirs: Vec<NodeRef>) {
        let old = self.successor();
        let mut list = Vec::with_capacity(self.opts.successors);
        for n in std::iter::once(succ).chain(theirs) {
            if n.id != self.me.id && !list.iter().any(|m: &NodeRef| m.id == n.id) {
                list.push(n);
            }
            if list.len() == self.opts.successors {
                break;
            }
        }
        self.succs = list;
        if self.successor() != old {
            io.emit(Event::SuccessorChanged {
                succ: self.successor(),
            });
        }
    }

    /// Remember whom `succ` named its predecessor, if it is our successor: whether it adopted
    /// us ([`Ring::successor_adopted_me`]).
    fn note_successor_pred(&mut self, succ: NodeRef, pred: Option<NodeRef>) {
        if self.successor().id == succ.id {
            self.succ_pred = Some((succ.id, pred.map(|p| p.id)));
        }
    }

    /// Put `node` first in the successor list, keeping the rest (a leaving node's hand-over
    /// was redirected to a node that joined between us and our successor).
    pub fn adopt_successor(&mut self, io: &mut dyn RingIo, node: NodeRef) {
        let succs = self.succs.clone();
        self.adopt_successors(io, node, succs);
    }

    // ---------------------------------------------------------------- notify and adoption

    /// Chord's notify, with Zave's rectify: a notifier between our predecessor and us is a
    /// newcomer, to be handed its part of our range and then adopted. It is first pinged at the
    /// address it gave and must answer as itself ([`Ring::on_newcomer_verified`]): a hand-over
    /// streams a range to that address, and one with nothing to move adopts at once.
    ///
    /// # Errors
    /// A notify naming ourselves is refused: no correct node sends one.
    pub(super) fn on_notify(&mut self, io: &mut dyn RingIo, node: NodeRef) -> Result<()> {
        if node.id == self.me.id {
            return Err(self.refusals.refuse("notify", "it names us"));
        }
        if !self.notify_closer(io, node) {
            return Ok(());
        }
        if self.verifying.insert(node.id) {
            let purpose = Purpose::VerifyNewcomer { node };
            self.send(io, node, Request::Ping, purpose);
        }
        Ok(())
    }

    /// Whether a notify from `node` would make it our predecessor (once its keys are its).
    fn notify_closer(&self, io: &dyn RingIo, node: NodeRef) -> bool {
        // A node that does not hold its own range yet must not hand part of it on: the newcomer
        // would get an empty range and the keys would later land on the wrong node.
        if node.id == self.me.id || self.leaving || !self.installed {
            return false;
        }
        // A notify can overtake the leave notice its sender sent later; a node that just left
        // must not be adopted back.
        if self
            .departed
            .get(&node.id)
            .is_some_and(|&until| io.now() < until)
        {
            return false;
        }
        match self.pred {
            None => true,
            Some(p) => in_open(p.id, self.me.id, node.id),
        }
    }

    /// A notifier answered our ping (or did not). One that answers as itself, and would still
    /// be adopted, goes to the layer above as a newcomer; one that answers as another node is
    /// refused (counted as a notify): its address is not its own.
    pub(super) fn on_newcomer_verified(
        &mut self,
        io: &mut dyn RingIo,
        node: NodeRef,
        response: Result<Response>,
    ) {
        self.verifying.remove(&node.id);
        match response {
            // Adopted only once the layer above has handed it its keys.
            Ok(Response::Pong { node: answered })
                if answered == node && self.notify_closer(io, node) =>
            {
                self.notices.push_back(Notice::Newcomer(node));
            }
            Ok(Response::Pong { node: answered }) if answered == node => {}
            Ok(Response::Pong { node: answered }) => {
                let why = format!("{node} gave the address of {answered}");
                let _ = self.refusals.refuse("notify", why);
            }
            // Not answering (or answering nonsense): nothing to adopt; a live newcomer notifies
            // again at its next round.
            _ => {}
        }
    }

    /// The keys of its part of our range were handed to `newcomer`: adopt it as predecessor and
    /// tell it that its range, from our previous predecessor on, is its own now.
    pub fn adopt_predecessor(&mut self, io: &mut dyn RingIo, newcomer: NodeRef) {
        let start = self.range_start();
        self.pred = Some(newcomer);
        self.range_start = self.pred;
        io.emit(Event::PredecessorChanged { pred: self.pred });
        self.send_adopted(io, newcomer, start);
    }

    /// Tell a newcomer we adopted it: its range, `(start, newcomer]`, is now its own.
    pub(super) fn send_adopted(
        &mut self,
        io: &mut dyn RingIo,
        to: NodeRef,
        start: Option<NodeRef>,
    ) {
        let purpose = Purpose::Adopted { to, start };
        self.send(io, to, Request::Adopted { pred: start }, purpose);
    }

    /// The newcomer's side of [`Request::Adopted`]: a claim that our successor adopted us, which
    /// we take only from our successor itself. The request does not name its sender, so we ask
    /// the successor at once (a stabilize round) and are installed when it names us its
    /// predecessor; this request only says where our range starts, which that round applies.
    ///
    /// # Errors
    /// A start between us and our successor is refused: our range cannot start after us.
    pub(super) fn on_adopted(&mut self, io: &mut dyn RingIo, pred: Option<NodeRef>) -> Result<()> {
        if self.installed {
            return Ok(()); // a resend, or news we confirmed already
        }
        let succ = self.successor();
        if let Some(p) = pred.filter(|p| succ != self.me && in_half_open(self.me.id, succ.id, p.id))
        {
            let why = format!("a range start {p} between us and our successor {succ}");
            return Err(self.refusals.refuse("adopted", why));
        }
        self.adopted_start = Some(pred);
        self.next_stabilize = io.now();
        Ok(())
    }

    // ---------------------------------------------------------------- leave

    /// Our keys reached `to`, our successor: tell it and our predecessor that we leave, so they
    /// close the gap at once; [`Event::Left`] follows when both answered.
    pub fn announce_leave(&mut self, io: &mut dyn RingIo, to: NodeRef) {
        let notice = Request::Leaving {
            node: self.me,
            pred: self.pred,
            succs: self.succs.clone(),
        };
        let mut targets: Vec<NodeRef> = vec![to];
        if let Some(p) = self.pred.filter(|p| p.id != to.id) {
            targets.push(p);
        }
        self.leave_acks = targets.len() as u32;
        for n in targets {
            self.send(io, n, notice.clone(), Purpose::Leaving);
        }
    }

    /// The leave ends with no successor to tell (the last node, or none answered).
    pub fn leave_alone(&mut self, io: &mut dyn RingIo, handed_over: bool) {
        io.emit(Event::Left { handed_over });
    }

    /// A neighbour leaves (it handed its keys to its successor): close the gap at once. Only
    /// our predecessor or one of our successors sends this. To its successor it names its
    /// predecessor, which becomes ours (our range grows by its range, whose keys it handed us);
    /// to its predecessor it names its successors, which join ours: the list becomes the
    /// nearest `r` of both, so no node we know of is dropped for one the leaver knows of.
    ///
    /// # Errors
    /// Refused, nothing changed: a leave notice naming ourselves, from a node that is neither
    /// our predecessor nor one of our successors, or naming itself as its own predecessor.
    pub(super) fn on_leaving(
        &mut self,
        io: &mut dyn RingIo,
        node: NodeRef,
        pred: Option<NodeRef>,
        succs: Vec<NodeRef>,
    ) -> Result<()> {
        if let Err(why) = self.check_leaving(node, pred) {
            return Err(self.refusals.refuse("leaving", why));
        }
        let now = io.now();
        let until = now + 10 * self.opts.rpc_timeout;
        self.departed.retain(|_, t| *t > now);
        self.departed.insert(node.id, until);
        if self.pred.is_some_and(|p| p.id == node.id) {
            self.pred = pred.filter(|p| p.id != self.me.id);
            self.range_start = self.pred.or(self.range_start);
            io.emit(Event::PredecessorChanged { pred: self.pred });
        }
        if self.succs.iter().any(|s| s.id == node.id) {
            let first = self.succs.first().is_some_and(|s| s.id == node.id);
            let theirs = if first { succs } else { Vec::new() };
            let me = self.me.id;
            let mut list: Vec<NodeRef> = self
                .succs
                .iter()
                .copied()
                .chain(theirs)
                .filter(|s| s.id != node.id && s.id != me)
                .collect();
            list.sort_by_key(|s| distance(me, s.id));
            list.dedup_by_key(|s| s.id);
            match list.first().copied() {
                Some(first) => self.adopt_successors(io, first, list[1..].to_vec()),
                None => self.adopt_successors(io, self.me, Vec::new()),
            }
        }
        self.forget_finger(node.id);
        Ok(())
    }

    /// Whether a leave notice from `node` naming `pred` is one a correct node could send us.
    fn check_leaving(&self, node: NodeRef, pred: Option<NodeRef>) -> Result<(), String> {
        if node.id == self.me.id {
            return Err("it names us".into());
        }
        let is_pred = self.pred.is_some_and(|p| p.id == node.id);
        if !is_pred && !self.succs.iter().any(|s| s.id == node.id) {
            return Err(format!(
                "{node} is neither our predecessor ({:?}) nor one of our successors",
                self.pred
            ));
        }
        if pred.is_some_and(|p| p.id == node.id) {
            return Err(format!("{node} names itself its predecessor"));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- failures

    /// Drop a node that stopped answering from every routing structure.
    pub(super) fn suspect(&mut self, io: &mut dyn RingIo, node: NodeRef) {
        self.strikes.remove(&node.id);
        let mut known = self.forget_finger(node.id);
        if self.pred.is_some_and(|p| p.id == node.id) {
            self.pred = None;
            known = true;
            io.emit(Event::PredecessorChanged { pred: None });
        }
        if self.succs.iter().any(|s| s.id == node.id) {
            known = true;
            let old = self.successor();
            self.succs.retain(|s| s.id != node.id);
            if self.successor() != old {
                io.emit(Event::SuccessorChanged {
                    succ: self.successor(),
                });
            }
        }
        if known {
            // Stop watching it now rather than at the next heartbeat. A neighbour's stale list
            // can bring it back before then; the detector must then watch it afresh (and
            // suspect it again if it is still silent) instead of keeping the suspicion it
            // already reported, which it never reports twice: such a node stayed in the
            // successor list for good (the two sides of a partition kept naming each other in
            // `tests/partition.rs`).
            self.watch_neighbours(io.now());
            io.emit(Event::Suspected { node });
            // Remember it: if it was cut off rather than dead, it may be in another ring now.
            if !self.lost.iter().any(|n| n.id == node.id) {
                if self.lost.len() >= MAX_LOST {
                    self.lost.pop_front();
                }
                self.lost.push_back(node);
            }
        }
    }

    fn forget_finger(&mut self, id: Id) -> bool {
        let mut found = false;
        for f in self.fingers.iter_mut() {
            if f.is_some_and(|n| n.id == id) {
                *f = None;
                found = true;
            }
        }
        found
    }

    /// Tell the detector who the neighbours (predecessor and successors) are, if they changed
    /// since it was last told: this runs every tick.
    fn watch_neighbours(&mut self, now: u64) {
        let neighbours: Vec<NodeRef> = self.pred.iter().chain(self.succs.iter()).copied().collect();
        if neighbours != self.monitored {
            let set: BTreeSet<NodeRef> = neighbours
                .iter()
                .filter(|n| n.id != self.me.id)
                .copied()
                .collect();
            self.detector.monitor(set, now);
            self.monitored = neighbours;
        }
    }

    /// Heartbeats: watch the predecessor and successor list, probe whoever is due, act on
    /// suspicions that came due.
    pub(super) fn heartbeat(&mut self, io: &mut dyn RingIo) {
        let now = io.now();
        self.watch_neighbours(now);
        for v in self.detector.tick(now) {
            self.on_verdict(io, v);
        }
        for peer in self.detector.poll_probes(now) {
            // The probe stays pending as long as the longest timeout, so a late answer still
            // reaches the detector and withdraws a false suspicion.
            let deadline = now + self.detector.options().max_timeout;
            self.calls
                .send_with_deadline(io, peer, Request::Ping, Purpose::Probe, deadline);
        }
    }

    pub(super) fn on_verdict(&mut self, io: &mut dyn RingIo, verdict: Verdict) {
        match verdict {
            Verdict::Suspected {
                peer,
                cause,
                detection_ms,
            } => {
                io.emit(Event::Detected {
                    node: peer,
                    detection_ms,
                });
                self.suspect(io, peer);
                if cause != Cause::Notice {
                    // Tell the neighbours, so they repair without waiting for their own timeouts.
                    let mut told = BTreeSet::new();
                    for n in self
                        .pred
                        .iter()
                        .chain(self.succs.iter())
                        .copied()
                        .collect::<Vec<_>>()
                    {
                        if n.id != peer.id && told.insert(n.id) {
                            let notice = Request::FailureNotice { dead: peer };
                            self.send(io, n, notice, Purpose::Notice);
                        }
                    }
                }
            }
            Verdict::Restored {
                peer,
                false_suspicion,
                ..
            } => {
                if false_suspicion {
                    io.emit(Event::FalseSuspicion { node: peer });
                }
                self.notices.push_back(Notice::PeerBack(peer));
            }
        }
    }

    // ---------------------------------------------------------------- partitions

    /// A lookup of our own id through `via`, a node we once lost, found `owner`.
    pub(super) fn on_merge_owner(&mut self, io: &mut dyn RingIo, via: NodeRef, owner: NodeRef) {
        // It answered: it is alive, whichever ring it is in.
        self.lost.retain(|n| n.id != via.id);
        let succ = self.successor();
        if owner.id != self.me.id && (succ == self.me || in_open(self.me.id, succ.id, owner.id)) {
            // Its ring has a node between us and our successor: check it is live and take it
            // as successor; stabilization weaves the two rings together.
            let purpose = Purpose::MergeCandidate { cand: owner };
            self.send(io, owner, Request::GetNeighbors, purpose);
        }
    }

    pub(super) fn on_merge_candidate(
        &mut self,
        io: &mut dyn RingIo,
        cand: NodeRef,
        response: Result<Response>,
    ) {
        if let Ok(Response::Neighbors { pred, succs }) = response {
            let mine = self.succs.clone();
            let merged: Vec<NodeRef> = succs.into_iter().chain(mine).collect();
            self.adopt_successors(io, cand, merged);
            self.note_successor_pred(cand, pred);
            self.send(io, cand, Request::Notify { node: self.me }, Purpose::Notify);
            self.next_stabilize = io.now();
        }
    }
}
