//! Requests to peers, as both layers of a node make them.
//!
//! The ring ([`crate::ring`]) and the data layer ([`crate::kv`]) are state machines that talk to
//! peers by requests and answers, and neither owns a socket. Each asks its driver, through
//! [`Io`], to send a request (getting back the [`RequestId`] its answer will carry) or to answer
//! one that arrived, and keeps its own requests in flight in a [`Calls`] table: who was asked,
//! by when an answer is due, and what the answer is for. The node ([`crate::node`]) implements
//! [`Io`] once for both layers, so request ids and operation numbers are unique node-wide and
//! every output of either layer joins one queue in the order it was made.

use crate::error::{Error, Result};
use crate::id::Id;
use crate::message::{NodeRef, Request, RequestId, Response};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;

/// Identifies the connection a request arrived on; chosen by the driver, echoed in responses.
pub type ConnId = u64;

/// What a layer asks of its driver. Implemented by the node; layers add their own events on
/// top ([`crate::ring::RingIo`], [`crate::kv::KvIo`]).
pub trait Io {
    /// The time of the input being handled, ms.
    fn now(&self) -> u64;
    /// How long to wait for a peer's answer, ms.
    fn rpc_timeout(&self) -> u64;
    /// A number unique among this node's operations (lookups, client requests, writes).
    fn next_op(&mut self) -> u64;
    /// Send `request` to the node at `to`; its answer will come back with the returned id.
    fn send(&mut self, to: SocketAddr, request: Request) -> RequestId;
    /// Answer the request `id` that arrived on connection `conn`.
    fn respond(&mut self, conn: ConnId, id: RequestId, response: Result<Response>);
}

/// A request in flight.
#[derive(Clone, Debug)]
pub struct Pending<P> {
    /// When to give up on it (the driver then answers it with a timeout).
    pub deadline: u64,
    /// The peer asked, when it is known by id (not when asking a bare bootstrap address).
    pub to: Option<NodeRef>,
    /// What the answer is for.
    pub purpose: P,
}

/// One layer's requests in flight, by request id.
#[derive(Debug)]
pub struct Calls<P> {
    pending: BTreeMap<RequestId, Pending<P>>,
}

impl<P> Default for Calls<P> {
    fn default() -> Self {
        Calls {
            pending: BTreeMap::new(),
        }
    }
}

impl<P> Calls<P> {
    /// Send `request` to `to`, due back within the RPC timeout.
    pub fn send(&mut self, io: &mut dyn Io, to: NodeRef, request: Request, purpose: P) {
        let deadline = io.now() + io.rpc_timeout();
        self.send_addr(io, to.addr, Some(to), request, purpose, deadline);
    }

    /// Send `request` to `to`, due back by `deadline`.
    pub fn send_with_deadline(
        &mut self,
        io: &mut dyn Io,
        to: NodeRef,
        request: Request,
        purpose: P,
        deadline: u64,
    ) {
        self.send_addr(io, to.addr, Some(to), request, purpose, deadline);
    }

    /// Send `request` to whatever node listens at `addr` (`to`, if known by id).
    pub fn send_addr(
        &mut self,
        io: &mut dyn Io,
        addr: SocketAddr,
        to: Option<NodeRef>,
        request: Request,
        purpose: P,
        deadline: u64,
    ) {
        let id = io.send(addr, request);
        self.pending.insert(
            id,
            Pending {
                deadline,
                to,
                purpose,
            },
        );
    }

    /// The request `id`, if it is one of ours and still in flight; it is not any more.
    pub fn take(&mut self, id: RequestId) -> Option<Pending<P>> {
        self.pending.remove(&id)
    }

    /// The requests whose deadline has come by `now`, in id order.
    pub fn expired(&self, now: u64) -> impl Iterator<Item = RequestId> + '_ {
        self.pending
            .iter()
            .filter(move |(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
    }
}

/// Requests refused as implausible, counted by kind ([`Request::kind`]), for metrics and tests.
///
/// A request that changes ownership or deletes data is checked against the receiver's view of
/// the ring (its predecessor, successor list, replicas and hand-overs) before it is applied; one
/// that no correct node could have sent in that view is refused with [`Error::InvalidInput`]
/// (`refused <kind>: <why>`), nothing changed, and counted here. Not retryable: the sender's view
/// is what is wrong, and the protocol repairs views by itself (stabilize, notify, heartbeats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    counts: BTreeMap<&'static str, u64>,
}

impl Refusals {
    /// Count one refused request of `kind` and make its error.
    pub fn refuse(&mut self, kind: &'static str, why: impl std::fmt::Display) -> Error {
        *self.counts.entry(kind).or_default() += 1;
        Error::InvalidInput(format!("refused {kind}: {why}"))
    }

    /// How many requests of `kind` were refused.
    pub fn of(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Every kind with a refusal, and how many, in kind order.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().map(|(k, n)| (*k, *n))
    }

    /// Add another layer's counts to these.
    pub fn add(&mut self, other: &Refusals) {
        for (k, n) in other.counts() {
            *self.counts.entry(k).or_default() += n;
        }
    }
}

/// A node's timer phase: spread by node and seed, so that a thousand simulated nodes started
/// together do not act in lockstep.
pub fn timer_phase(me: Id, seed: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (me, seed).hash(&mut h);
    h.finish()
}
