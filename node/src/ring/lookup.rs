//! LOOKUP: routing one step from local state, iterative lookups, and the fingers they refresh.
//!
//! A lookup is run by the node that starts it: it asks each hop in turn
//! ([`Request::FindSuccessor`]), counting hops and timeouts, and routes around a hop that fails
//! by asking the previous hop again with the failed node on the `avoid` list. Each hop answers
//! from its fingers and successor list ([`Ring::route`]): the owner when the target lies between
//! it and its successor, else the closest preceding node it knows (SIGCOMM 2001 §4.3; ToN 2003
//! §IV.E.3 for routing through the successor list).

use super::{Event, Notice, Purpose, Ring, RingIo};
use crate::error::{Error, Result};
use crate::id::{BITS, Id, distance, in_half_open, in_open};
use crate::message::{LookupInfo, NodeRef, Request, RequestId, Response, Route};
use crate::rpc::ConnId;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// What to do with the owner once a lookup finds it.
#[derive(Clone, Debug)]
pub(super) enum Then {
    /// Our own successor, to join through.
    Join,
    /// A lookup of our own id through a node we once lost: another ring's view of our
    /// successor, to merge rings after a partition heals.
    Merge { via: NodeRef },
    /// Finger `i`.
    Finger(usize),
    /// A client's `Lookup`: answer it.
    Reply { conn: ConnId, id: RequestId },
    /// The layer above asked ([`Ring::lookup`]): tell it ([`Notice::Found`]).
    Upper,
}

/// A lookup in flight.
#[derive(Clone, Debug)]
pub(super) struct LookupOp {
    target: Id,
    then: Then,
    hops: u32,
    timeouts: u32,
    /// Nodes that answered so far, to fall back to when the next one fails.
    path: Vec<NodeRef>,
    avoid: BTreeSet<Id>,
    /// Where the first hop goes when the lookup starts elsewhere (join via a bootstrap address).
    via: Option<SocketAddr>,
}

/// How a lookup the layer above asked for went at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This node's own state names the owner.
    Found(NodeRef),
    /// Other nodes are being asked; the answer comes as [`Notice::Found`] or
    /// [`Notice::NotFound`] with this number.
    Pending(u64),
}

impl Ring {
    /// Find the owner of `target` for the layer above, never through the nodes in `avoid`.
    pub fn lookup(&mut self, io: &mut dyn RingIo, target: Id, avoid: BTreeSet<Id>) -> Lookup {
        let op = io.next_op();
        if let Route::Found(owner) = self.route(target, &avoid) {
            io.emit(Event::LookupDone {
                hops: 0,
                timeouts: 0,
            });
            return Lookup::Found(owner);
        }
        self.insert_lookup(io, op, target, Then::Upper, None, avoid);
        Lookup::Pending(op)
    }

    /// One lookup step from this node's state: the owner of `target` if it is our successor (or
    /// ourselves), else the closest preceding node we know that is not in `avoid`. What a
    /// [`Request::FindSuccessor`] is answered with; public so benchmarks can time it.
    pub fn route(&self, target: Id, avoid: &BTreeSet<Id>) -> Route {
        if let Some(p) = self.pred {
            if in_half_open(p.id, self.me.id, target) && !avoid.contains(&self.me.id) {
                return Route::Found(self.me);
            }
        }
        let succ = self
            .succs
            .iter()
            .find(|s| !avoid.contains(&s.id))
            .copied()
            .unwrap_or(self.me);
        if in_half_open(self.me.id, succ.id, target) {
            return Route::Found(succ);
        }
        match self.closest_preceding(target, avoid) {
            Some(n) => Route::Next(n),
            None => Route::Found(succ),
        }
    }

    /// The known node closest before `target` (fingers and successor list), excluding `avoid`.
    fn closest_preceding(&self, target: Id, avoid: &BTreeSet<Id>) -> Option<NodeRef> {
        self.fingers
            .iter()
            .flatten()
            .chain(self.succs.iter())
            .filter(|n| n.id != self.me.id && !avoid.contains(&n.id))
            .filter(|n| in_open(self.me.id, target, n.id))
            .max_by_key(|n| distance(self.me.id, n.id))
            .copied()
    }

    pub(super) fn start_lookup(
        &mut self,
        io: &mut dyn RingIo,
        target: Id,
        then: Then,
        via: Option<SocketAddr>,
    ) {
        let op = io.next_op();
        let mut avoid = BTreeSet::new();
        if matches!(then, Then::Join | Then::Merge { .. }) {
            avoid.insert(self.me.id);
        }
        self.insert_lookup(io, op, target, then, via, avoid);
    }

    fn insert_lookup(
        &mut self,
        io: &mut dyn RingIo,
        op: u64,
        target: Id,
        then: Then,
        via: Option<SocketAddr>,
        avoid: BTreeSet<Id>,
    ) {
        self.lookups.insert(
            op,
            LookupOp {
                target,
                then,
                hops: 0,
                timeouts: 0,
                path: Vec::new(),
                avoid,
                via,
            },
        );
        self.lookup_step(io, op);
    }

    /// Ask the next node for lookup `op`, or finish it from local state.
    fn lookup_step(&mut self, io: &mut dyn RingIo, op: u64) {
        let Some(l) = self.lookups.get(&op) else {
            return;
        };
        if l.hops + l.timeouts > self.opts.max_hops {
            let l = self.lookups.remove(&op).expect("present");
            let e = Error::Unavailable("lookup exceeded its hop limit".into());
            return self.lookup_failed(io, op, l, e);
        }
        let request = Request::FindSuccessor {
            target: l.target,
            avoid: l.avoid.iter().copied().collect(),
        };
        // Ask the last node that answered, else the bootstrap, else decide from our own state.
        let next = match (l.path.last(), l.via) {
            (Some(n), _) => Err(*n),
            (None, Some(addr)) => Ok(addr),
            (None, None) => match self.route(l.target, &l.avoid) {
                Route::Found(owner) => return self.lookup_done(io, op, owner),
                Route::Next(n) => Err(n),
            },
        };
        let l = self.lookups.get_mut(&op).expect("present");
        l.hops += 1;
        match next {
            Err(node) => self.send(io, node, request, Purpose::Lookup { op }),
            Ok(addr) => {
                let deadline = io.now() + io.rpc_timeout();
                let purpose = Purpose::Lookup { op };
                self.calls
                    .send_addr(io, addr, None, request, purpose, deadline);
            }
        }
    }

    pub(super) fn on_lookup_answer(
        &mut self,
        io: &mut dyn RingIo,
        op: u64,
        asked: Option<NodeRef>,
        response: Result<Response>,
    ) {
        let Some(l) = self.lookups.get_mut(&op) else {
            return;
        };
        match response {
            Ok(Response::Route(Route::Found(owner))) => self.lookup_done(io, op, owner),
            Ok(Response::Route(Route::Next(next))) => {
                if l.avoid.contains(&next.id) || l.path.contains(&next) {
                    // A stale answer pointing back at a dead node or a loop: route locally instead.
                    l.timeouts += 1;
                    l.path.clear();
                } else {
                    l.path.push(next);
                }
                self.lookup_step(io, op);
            }
            other => {
                // The asked node failed: avoid it and ask the one that pointed us to it again.
                l.timeouts += 1;
                l.hops = l.hops.saturating_sub(1);
                match asked {
                    Some(n) => {
                        l.avoid.insert(n.id);
                        if l.path.last() == Some(&n) {
                            l.path.pop();
                        }
                    }
                    None => {
                        // The bootstrap address itself failed.
                        let l = self.lookups.remove(&op).expect("present");
                        let e = match other {
                            Err(e) => e,
                            Ok(r) => Error::InvalidData(format!("unexpected answer {r:?}")),
                        };
                        return self.lookup_failed(io, op, l, e);
                    }
                }
                // With the path empty, a join starts again at the bootstrap; others route locally.
                self.lookup_step(io, op);
            }
        }
    }

    fn lookup_done(&mut self, io: &mut dyn RingIo, op: u64, owner: NodeRef) {
        let Some(l) = self.lookups.get(&op) else {
            return;
        };
        // A lookup answered for a client names a node it has not contacted: the last hop may not
        // have noticed that its successor died. Make sure the owner is alive before answering.
        if matches!(l.then, Then::Reply { .. }) && owner.id != self.me.id {
            return self.send(io, owner, Request::Ping, Purpose::Verify { op, owner });
        }
        self.finish_lookup(io, op, owner);
    }

    pub(super) fn on_verify_answer(
        &mut self,
        io: &mut dyn RingIo,
        op: u64,
        owner: NodeRef,
        response: Result<Response>,
    ) {
        match response {
            Ok(Response::Pong { node }) if node.id == owner.id => self.finish_lookup(io, op, owner),
            _ => {
                // Dead, or another node now answers at that address: route around it.
                if let Some(l) = self.lookups.get_mut(&op) {
                    l.avoid.insert(owner.id);
                    l.timeouts += 1;
                }
                self.lookup_step(io, op);
            }
        }
    }

    fn finish_lookup(&mut self, io: &mut dyn RingIo, op: u64, owner: NodeRef) {
        let Some(l) = self.lookups.remove(&op) else {
            return;
        };
        io.emit(Event::LookupDone {
            hops: l.hops,
            timeouts: l.timeouts,
        });
        match l.then {
            Then::Join => self.on_join_owner(io, owner),
            Then::Merge { via } => self.on_merge_owner(io, via, owner),
            Then::Finger(i) => {
                self.finger_lookup = false;
                let owner = (owner.id != self.me.id).then_some(owner);
                self.fingers[i] = owner;
                let mut j = i + 1;
                // Every later finger start that still precedes the owner has the same owner.
                if let Some(o) = owner {
                    while j < BITS && in_half_open(self.me.id, o.id, self.me.id.add_pow2(j)) {
                        self.fingers[j] = owner;
                        j += 1;
                    }
                }
                self.next_finger = j % BITS;
            }
            Then::Reply { conn, id } => {
                let info = LookupInfo {
                    key_id: l.target,
                    owner,
                    hops: l.hops,
                    timeouts: l.timeouts,
                };
                io.respond(conn, id, Ok(Response::Lookup(info)));
            }
            Then::Upper => self.notices.push_back(Notice::Found { lookup: op, owner }),
        }
    }

    fn lookup_failed(&mut self, io: &mut dyn RingIo, op: u64, l: LookupOp, error: Error) {
        io.emit(Event::LookupFailed {
            error: error.clone(),
        });
        match l.then {
            Then::Join => self.retry_join(io),
            Then::Merge { .. } => {} // still unreachable: it stays on the list for another try
            Then::Finger(_) => self.finger_lookup = false,
            Then::Reply { conn, id } => io.respond(conn, id, Err(error)),
            Then::Upper => self
                .notices
                .push_back(Notice::NotFound { lookup: op, error }),
        }
    }

    /// Refresh the next finger whose start lies past the successor (one lookup at a time).
    pub(super) fn fix_fingers(&mut self, io: &mut dyn RingIo) {
        if self.finger_lookup {
            return;
        }
        let succ = self.successor();
        // Fingers whose start lies in (self, successor] need no lookup.
        let mut scanned = 0;
        while scanned < BITS {
            let i = self.next_finger;
            let start = self.me.id.add_pow2(i);
            if succ == self.me || in_half_open(self.me.id, succ.id, start) {
                self.fingers[i] = (succ != self.me).then_some(succ);
                self.next_finger = (i + 1) % BITS;
                scanned += 1;
                continue;
            }
            self.finger_lookup = true;
            self.start_lookup(io, start, Then::Finger(i), None);
            return;
        }
    }
}
